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
import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rlir.data import Recording, split_episodes
from rlir.eval.verify import player_moved
from rlir.models.ar_world_model import ARWorldModel
from rlir.optim import adamw_decaying_matrices
from rlir.policies import evaluation_policy
from rlir.pretrain.tokenized import TokenizedRecording
from rlir.pretrain.common import (SAVE_DTYPES, append_jsonl, atomic_directory, check_output_directory, clip_windows,
                                  learning_rate, load_tokenizer, shuffled_batches)
from rlir.pretrain.config import ARWorldModelPretrain, DiffusionWorldModelPretrain, add_flags, set_threads, settings
from rlir.pretrain.config import run as run_target
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
    steps, batch, lr, clip_frames, eval_frames, seed, dtype = s.steps, s.batch, s.lr, s.clip_frames, \
        s.eval_frames, s.seed, s.dtype
    progress = progress and not s.quiet
    out = Path(out)
    check_output_directory(out, s.overwrite)
    shape = dict(n_layers=s.layers, d_model=s.d_model, n_heads=s.heads, n_kv_heads=s.kv_heads,
                 max_frames=s.max_frames, frame_action_embedding=s.frame_action_embedding)
    ARWorldModel(codebook_size=2, tokens_per_frame=1, **shape)  # raises on a bad shape before the slow part
    if s.previous_frame_input:
        shape.update(previous_frame_input=True)

    recording = Recording(data)
    vq = load_tokenizer(tokenizer)
    train_ids, heldout_ids = split_episodes(recording.episode_ids, s.heldout_fraction)
    if not heldout_ids:
        raise ValueError(f"data: {recording.root} has {len(recording)} episode(s); holding out a fraction needs "
                         f"at least 2")
    started = time.perf_counter()
    tokenized = TokenizedRecording.load_or_build(s.codes if s.codes is not None else out / "codes.safetensors",
                                                 recording, vq)
    tokenize_seconds = time.perf_counter() - started
    train_windows, nll_windows, prompt_windows = clip_windows(tokenized, recording, train_ids, heldout_ids,
                                                              clip_frames, eval_frames + 1, s.eval_prompts)

    torch.manual_seed(seed)
    if s.init is None:
        model = ARWorldModel(codebook_size=tokenized.codebook_size, tokens_per_frame=tokenized.tokens_per_frame,
                             action_head_sizes=list(recording.action_space.head_sizes),
                             frame_grid=list(vq.code_grid), **shape)
    else:
        model = ARWorldModel.from_pretrained(s.init, torch_dtype=torch.float32)
        if model.config.codebook_size != tokenized.codebook_size or clip_frames > model.config.max_frames:
            raise ValueError(f"init: {s.init} has codebook {model.config.codebook_size} and max_frames "
                             f"{model.config.max_frames}; this run has codebook {tokenized.codebook_size} and "
                             f"clip_frames {clip_frames}")
    optimizer = adamw_decaying_matrices(model.parameters(), lr=lr, weight_decay=WEIGHT_DECAY, betas=(0.9, 0.95))
    batches = shuffled_batches(len(train_windows), batch, torch.Generator().manual_seed(seed))
    moved = player_moved(recording, train_ids) if s.changed_codes == "moved" else None
    nll_codes, nll_actions = tokenized.clips(nll_windows, clip_frames)

    with atomic_directory(out, s.overwrite) as staging:
        tokenized.save(staging / "codes.safetensors")
        started = time.perf_counter()
        bar = tqdm(range(1, steps + 1), desc="pretrain world-model", unit="step", disable=not progress)
        for step in bar:
            model.train()
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, steps, lr)
            windows = [train_windows[i] for i in next(batches).tolist()]
            frames, actions = tokenized.clips(windows, clip_frames)
            weighed = None if moved is None else torch.stack([moved[e][i:i + clip_frames - 1] for e, i in windows])
            loss = weighted_code_loss(model, frames, actions, s.changed_code_weight, weighed)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
            optimizer.step()
            if step % s.log_every == 0 or step == steps:
                seconds = time.perf_counter() - started
                append_jsonl(staging / "metrics.jsonl", {
                    "step": step, "loss": loss.item(), "grad_norm": grad_norm.item(),
                    "lr": optimizer.param_groups[0]["lr"], "seconds": seconds,
                    "tokens_per_second": step * batch * clip_frames * model.frame_stride / seconds})
                bar.set_postfix(loss=f"{loss.item():.3f}")
            if s.eval_every and step % s.eval_every == 0 and step < steps:
                model.eval()
                nll = heldout_nll(model, nll_codes[:NLL_CLIPS_DURING_TRAINING], nll_actions[:NLL_CLIPS_DURING_TRAINING])
                append_jsonl(staging / "metrics.jsonl", {"step": step, "heldout_nll": nll["nll"],
                                                         "heldout_perplexity": nll["perplexity"]})
        train_seconds = time.perf_counter() - started

        # Evaluate what is saved: the weights rounded to --dtype, computing in fp32.
        started = time.perf_counter()
        getattr(model, SAVE_DTYPES[dtype])().save_pretrained(staging)
        saved = ARWorldModel.from_pretrained(staging, torch_dtype=torch.float32).eval()
        prompt_codes, prompt_actions = tokenized.clips(prompt_windows, eval_frames + 1)
        policies = {"greedy": evaluation_policy(saved, vq, top_k=1),
                    "sampled": evaluation_policy(saved, vq, temperature=1.0)}
        generation, videos = generation_quality(
            policies, real_frames(recording, prompt_windows, eval_frames + 1, vq.frame_size), prompt_actions,
            ("tokenizer_ceiling", vq.decode_tokens(prompt_codes[:, 1:])), codes=prompt_codes, seed=seed)
        save_videos(staging / "generations.png", videos)
        metrics = {
            "kind": "ar",
            "model": {"parameters": sum(p.numel() for p in saved.parameters()),
                      "checkpoint_bytes": sum(p.stat().st_size for p in staging.glob("diffusion_pytorch_model*")),
                      "dtype": dtype,
                      "config": {k: v for k, v in saved.config.items() if not k.startswith("_")}},
            "training": {"data": str(recording.root), "tokenizer": str(Path(tokenizer).resolve()),
                         "codes_fingerprint": tokenized.fingerprint, "steps": steps, "batch": batch, "lr": lr,
                         "clip_frames": clip_frames, "seed": seed, "init": s.init,
                         "changed_code_weight": s.changed_code_weight,
                         "changed_codes": s.changed_codes, "seconds": round(train_seconds, 1),
                         "tokens_seen": steps * batch * clip_frames * model.frame_stride,
                         "final_loss": loss.item(), "train_episodes": train_ids, "train_windows": len(train_windows),
                         "torch_threads": torch.get_num_threads()},
            "heldout": {"episodes": heldout_ids, **heldout_nll(saved, nll_codes, nll_actions),
                        "generation": generation},
        }
        metrics["training"].update(tokenize_seconds=round(tokenize_seconds, 1),
                                   eval_seconds=round(time.perf_counter() - started, 1))
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n", encoding="utf-8")
    return metrics
