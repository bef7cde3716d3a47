"""`rlir pretrain world-model --kind ar|diffusion`: train the autoregressive world model over frame-tokenizer
codes, or (``--kind diffusion``) the frame-causal DiT of ``rlir.pretrain.diffusion_world_model``.

The recording is tokenised once (``rlir.pretrain.tokenized``); training is teacher-forced next-code
cross-entropy on random clips of the train episodes (AdamW, warm-up then cosine learning rate, gradient
clipping), through the fused hidden-states-to-log-probs path so the full logits never exist. Writes OUT
(built in a temporary sibling directory and renamed into place only when complete):

    config.json, diffusion_pytorch_model.safetensors   the model: ARWorldModel.from_pretrained(OUT)
    codes.safetensors    the pre-tokenised recording (reused by a later run with the same data and tokenizer)
    metrics.jsonl        training metrics every --log-every steps (and held-out NLL every --eval-every)
    metrics.json         held-out evaluation of the saved checkpoint and the run's settings
    generations.png      held-out prompts: real, greedy and sampled continuations, one row each

Held-out episodes are the recording's ``split_episodes(..., heldout_fraction)`` split, the same ones the
tokenizer and the IDM hold out.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from rlir.data import Recording
from rlir.eval.verify import player_moved
from rlir.models.ar_world_model import ARWorldModel
from rlir.optim import adamw_decaying_matrices
from rlir.policies import evaluation_policy
from rlir.pretrain.tokenized import TokenizedRecording
from rlir.pretrain.common import (check_output_directory, clip_windows, first_stage, heldout_split, load_tokenizer,
                                  shuffled_batches)
from rlir.pretrain.config import ARWorldModelPretrain, DiffusionWorldModelPretrain, add_flags, set_threads, settings
from rlir.pretrain.config import run as run_target
from rlir.pretrain.loop import Target, Trained, pretrain, checkpoint_summary
from rlir.pretrain.world_model_eval import generation_quality, heldout_nll, real_frames, save_videos

GRAD_CLIP = 1.0
WEIGHT_DECAY = 0.05
NLL_CLIPS_DURING_TRAINING = 32
KINDS = {"ar": ARWorldModelPretrain, "diffusion": DiffusionWorldModelPretrain}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, list(KINDS.values()), __doc__.split("\n\n")[0], selector="kind")


def run(args: argparse.Namespace) -> int:
    return run_target("world-model", args, KINDS, _train_and_report, selector="kind")


def _train_and_report(cfg) -> None:
    if cfg.kind == "diffusion":
        from rlir.pretrain import diffusion_world_model

        metrics = diffusion_world_model.train(**cfg.model_dump())
    else:
        metrics = train(**cfg.model_dump())
    print(_summary(cfg.out, metrics))


def _summary(out, metrics: dict) -> str:
    heldout, generation = metrics["heldout"], metrics["heldout"]["generation"]
    size = (f"{metrics['model']['parameters']:,} parameters, {metrics['model']['checkpoint_bytes'] / 1e6:.2f} MB "
            f"({metrics['model']['dtype']}), trained in {metrics['training']['seconds']:.0f} s")
    if metrics["kind"] == "diffusion":
        return (f"{out}: held-out flow-matching loss {heldout['loss']:.4f}; {generation['generated_frames']}-frame "
                f"generation PSNR ({generation['sample_steps']} ODE steps) {generation['ode']['psnr_db']:.2f} dB "
                f"(copy-context {generation['copy_context']['psnr_db']:.2f} dB, frame-space ceiling "
                f"{generation['frame_space_ceiling']['psnr_db']:.2f} dB); {size}")
    return (f"{out}: held-out perplexity {heldout['perplexity']:.2f} (NLL {heldout['nll']:.3f} nats/code); "
            f"{generation['generated_frames']}-frame generation PSNR greedy {generation['greedy']['psnr_db']:.2f} dB, "
            f"sampled {generation['sampled']['psnr_db']:.2f} dB (copy-context {generation['copy_context']['psnr_db']:.2f}"
            f" dB, tokenizer ceiling {generation['tokenizer_ceiling']['psnr_db']:.2f} dB); {size}")


def weighted_code_loss(model: ARWorldModel, frames: torch.Tensor, actions: torch.Tensor,
                       changed_code_weight: float, weighed: torch.Tensor | None = None) -> torch.Tensor:
    """Teacher-forced cross-entropy of frames 1..T-1, each code that differs from the code at its position in the
    previous frame counting ``changed_code_weight`` times; 1 gives ``model.loss``. ``weighed`` (bool [B, T-1]):
    only the changed codes of these transitions weigh more."""
    logp = model.token_logprobs(frames, actions)
    if changed_code_weight == 1:
        return -logp.mean()
    changed = frames[:, 1:] != frames[:, :-1]
    if weighed is not None:
        changed = changed & weighed[:, :, None]
    weight = 1 + (changed_code_weight - 1) * changed.to(logp.dtype)
    return -(logp * weight).sum() / weight.sum()


def train(data: Path | str, tokenizer: Path | str | None, out: Path | str, *, progress: bool = True,
          **options) -> dict:
    """Train an ARWorldModel on the codes of the train episodes of ``data``, save it into ``out`` and
    return the held-out metrics written to ``out``/metrics.json (see the module docstring). ``options``: the
    settings of ``ARWorldModelPretrain``."""
    if options.get("kind", "ar") != "ar":
        raise ValueError(f"kind must be 'ar' here, got {options['kind']!r}: the diffusion world model trains with "
                         f"rlir.pretrain.diffusion_world_model.train")
    s = settings(ARWorldModelPretrain, data=data, tokenizer=tokenizer, out=out, **options)
    set_threads(s.threads)
    check_output_directory(Path(out), s.overwrite)
    shape = dict(n_layers=s.layers, d_model=s.d_model, n_heads=s.heads, n_kv_heads=s.kv_heads,
                 max_frames=s.max_frames, frame_action_embedding=s.frame_action_embedding)
    ARWorldModel(codebook_size=2, tokens_per_frame=1, **shape)  # raises on a bad shape before the slow part
    if s.previous_frame_input:
        shape.update(previous_frame_input=True)
    return pretrain(ARWorldModelTraining(s, shape), Path(out), overwrite=s.overwrite, steps=s.steps,
                    log_every=s.log_every, eval_every=s.eval_every, dtype=s.dtype, description="pretrain world-model",
                    progress=progress and not s.quiet)


class ARWorldModelTraining(Target):
    """The AR world model, its optimiser and the tokenised recording: train clips, held-out clips and prompts."""

    grad_clip = GRAD_CLIP

    def __init__(self, s: ARWorldModelPretrain, shape: dict):
        self.cfg = s
        self.recording = recording = Recording(s.data)
        self.vq = vq = load_tokenizer(s.tokenizer)
        self.train_ids, self.heldout_ids = heldout_split(recording, s.heldout_fraction)
        started = time.perf_counter()
        self.tokenized = tokenized = TokenizedRecording.load_or_build(
            s.codes if s.codes is not None else Path(s.out) / "codes.safetensors", recording, vq)
        self.tokenize_seconds = time.perf_counter() - started
        self.train_windows, nll_windows, self.prompt_windows = clip_windows(
            tokenized, recording, self.train_ids, self.heldout_ids, s.clip_frames, s.eval_frames + 1, s.eval_prompts)

        torch.manual_seed(s.seed)
        if s.init is None:
            self.model = ARWorldModel(codebook_size=tokenized.codebook_size,
                                      tokens_per_frame=tokenized.tokens_per_frame,
                                      action_head_sizes=list(recording.action_space.head_sizes),
                                      frame_grid=list(vq.code_grid), **shape)
        else:
            self.model = first_stage(ARWorldModel, s.init, s.clip_frames, codebook_size=tokenized.codebook_size)
        self.optimizer = adamw_decaying_matrices(self.model.parameters(), lr=s.lr, weight_decay=WEIGHT_DECAY,
                                                 betas=(0.9, 0.95))
        self.batches = shuffled_batches(len(self.train_windows), s.batch, torch.Generator().manual_seed(s.seed))
        self.moved = player_moved(recording, self.train_ids) if s.changed_codes == "moved" else None
        self.nll_codes, self.nll_actions = tokenized.clips(nll_windows, s.clip_frames)
        self.tokens_per_step = s.batch * s.clip_frames * self.model.frame_stride
        self.throughput = ("tokens_per_second", self.tokens_per_step)

    def loss(self):
        s = self.cfg
        windows = [self.train_windows[i] for i in next(self.batches).tolist()]
        frames, actions = self.tokenized.clips(windows, s.clip_frames)
        weighed = (None if self.moved is None else
                   torch.stack([self.moved[e][i:i + s.clip_frames - 1] for e, i in windows]))
        return weighted_code_loss(self.model, frames, actions, s.changed_code_weight, weighed), lambda: {}

    def validate(self) -> dict:
        nll = heldout_nll(self.model, self.nll_codes[:NLL_CLIPS_DURING_TRAINING],
                          self.nll_actions[:NLL_CLIPS_DURING_TRAINING])
        return {"heldout_nll": nll["nll"], "heldout_perplexity": nll["perplexity"]}

    def report(self, staging: Path, saved: ARWorldModel, trained: Trained) -> dict:
        s, vq, recording = self.cfg, self.vq, self.recording
        self.tokenized.save(staging / "codes.safetensors")
        prompt_codes, prompt_actions = self.tokenized.clips(self.prompt_windows, s.eval_frames + 1)
        policies = {"greedy": evaluation_policy(saved, vq, top_k=1),
                    "sampled": evaluation_policy(saved, vq, temperature=1.0)}
        generation, videos = generation_quality(
            policies, real_frames(recording, self.prompt_windows, s.eval_frames + 1, vq.frame_size), prompt_actions,
            ("tokenizer_ceiling", vq.decode_tokens(prompt_codes[:, 1:])), codes=prompt_codes, seed=s.seed)
        save_videos(staging / "generations.png", videos)
        metrics = {
            "kind": "ar",
            "model": checkpoint_summary(saved, staging, s.dtype),
            "training": {"data": str(recording.root), "tokenizer": str(Path(s.tokenizer).resolve()),
                         "codes_fingerprint": self.tokenized.fingerprint, "steps": s.steps, "batch": s.batch,
                         "lr": s.lr, "clip_frames": s.clip_frames, "seed": s.seed, "init": s.init,
                         "changed_code_weight": s.changed_code_weight, "changed_codes": s.changed_codes,
                         "seconds": round(trained.seconds, 1), "tokens_seen": s.steps * self.tokens_per_step,
                         "final_loss": trained.final_loss, "train_episodes": self.train_ids,
                         "train_windows": len(self.train_windows), "torch_threads": torch.get_num_threads()},
            "heldout": {"episodes": self.heldout_ids, **heldout_nll(saved, self.nll_codes, self.nll_actions),
                        "generation": generation},
        }
        metrics["training"].update(tokenize_seconds=round(self.tokenize_seconds, 1),
                                   eval_seconds=round(time.perf_counter() - trained.finished_at, 1))
        return metrics
