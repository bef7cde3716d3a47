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
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rlir.data import Recording, split_episodes
from rlir.models.ar_world_model import ARWorldModel
from rlir.models.dit_world_model import FRAME_SPACES
from rlir.models.tokenizer import VQTokenizer
from rlir.optim import adamw_decaying_matrices
from rlir.pretrain.tokenized import TokenizedRecording
from rlir.pretrain.common import (SAVE_DTYPES, append_jsonl, atomic_directory, check_clip_lengths, check_common_args,
                                  check_int, check_output_directory, clip_windows, learning_rate, shuffled_batches)
from rlir.pretrain.world_model_eval import generation_quality, heldout_nll, real_frames, save_videos

KINDS = ("ar", "diffusion")
GRAD_CLIP = 1.0
WEIGHT_DECAY = 0.05
NLL_CLIPS_DURING_TRAINING = 32


# Options whose default depends on --kind, and the options only one kind takes.
KIND_DEFAULTS = {"ar": dict(steps=600, batch=4, lr=3e-3, clip_frames=16, eval_every=100),
                 "diffusion": dict(steps=3000, batch=8, lr=1e-3, clip_frames=4, eval_every=500)}
ONLY_FOR = {"kv_heads": "ar", "codes": "ar", "frame_action_embedding": "ar", "previous_frame_input": "ar",
            "previous_frame_neighbourhood": "diffusion",
            "frame_space": "diffusion", "patch_size": "diffusion",
            "context_frames": "diffusion", "sample_steps": "diffusion"}


def _kind_default(name: str) -> str:
    return ", ".join(f"{kind} {values[name]}" for kind, values in KIND_DEFAULTS.items())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0]
    parser.add_argument("--kind", choices=KINDS, default="ar",
                        help="world model family: autoregressive over tokenizer codes, or the flow-matching DiT "
                             "(default: ar)")
    parser.add_argument("--data", required=True, help="recording directory (holds manifest.json)")
    parser.add_argument("--tokenizer", default=None,
                        help="trained frame tokenizer directory (rlir pretrain tokenizer); required except for "
                             "--kind diffusion --frame-space pixels")
    parser.add_argument("--out", required=True, help="output directory for the model and metrics")
    parser.add_argument("--steps", type=int, default=None, help=f"optimiser steps (default: {_kind_default('steps')})")
    parser.add_argument("--batch", type=int, default=None, help=f"clips per step (default: {_kind_default('batch')})")
    parser.add_argument("--lr", type=float, default=None, help=f"peak AdamW learning rate (default: {_kind_default('lr')})")
    parser.add_argument("--clip-frames", type=int, default=None,
                        help=f"frames per training clip, at most --max-frames (default: {_kind_default('clip_frames')})")
    parser.add_argument("--max-frames", type=int, default=16,
                        help="longest clip the model takes: RoPE and KV-cache length (default: 16)")
    parser.add_argument("--layers", type=int, default=4, help="transformer blocks (default: 4)")
    parser.add_argument("--d-model", type=int, default=192, help="model width (default: 192)")
    parser.add_argument("--heads", type=int, default=6, help="attention heads (default: 6)")
    parser.add_argument("--kv-heads", type=int, default=None, help="ar: key/value heads (GQA; default: 2)")
    parser.add_argument("--frame-space", choices=FRAME_SPACES, default=None,
                        help="diffusion: what a frame is to the model (default: tokenizer_latents)")
    parser.add_argument("--patch-size", type=int, default=None,
                        help="diffusion: patch side in frame-space cells (default: 2 for latents, 8 for pixels)")
    parser.add_argument("--context-frames", type=int, default=None,
                        help="diffusion: clean frames at the start of each training clip (default: 1)")
    parser.add_argument("--sample-steps", type=int, default=None,
                        help="diffusion: ODE steps per frame in the held-out generation (default: 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights, batches and sampling (default: 0)")
    parser.add_argument("--dtype", choices=sorted(SAVE_DTYPES), default="bf16",
                        help="dtype of the saved weights; training is fp32 (default: bf16)")
    parser.add_argument("--heldout-fraction", type=float, default=0.1,
                        help="fraction of episodes held out for evaluation (default: 0.1)")
    parser.add_argument("--eval-prompts", type=int, default=32,
                        help="held-out prompts for the generation PSNR (default: 32)")
    parser.add_argument("--eval-frames", type=int, default=15,
                        help="frames generated per prompt, at most --max-frames - 1 (default: 15)")
    parser.add_argument("--eval-every", type=int, default=None,
                        help="steps between held-out lines in metrics.jsonl; 0: only at the end "
                             f"(default: {_kind_default('eval_every')})")
    parser.add_argument("--log-every", type=int, default=10, help="steps between metrics.jsonl lines (default: 10)")
    parser.add_argument("--codes", default=None,
                        help="ar: pre-tokenised recording to reuse when it matches --data and --tokenizer "
                             "(default: OUT/codes.safetensors of a previous run)")
    parser.add_argument("--frame-action-embedding", action="store_true", default=None,
                        help="ar: add an embedding of the commanded action to every code of the frame it leads "
                             "to (see ARWorldModel); without it the action is only in the action tokens")
    parser.add_argument("--previous-frame-input", action="store_true", default=None,
                        help="ar: give each position the previous frame's codes around the code it predicts, and "
                             "its row and column (see ARWorldModel)")
    parser.add_argument("--previous-frame-neighbourhood", action="store_true", default=None,
                        help="diffusion: the previous frame enters also shifted by one cell in each direction "
                             "(see DiTWorldModel)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's choice); 1 is fastest on a shared machine")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _options(args: argparse.Namespace) -> dict:
    """The train() keyword arguments of args: unset options take their kind's default; an option of the
    other kind is an error."""
    options = {k: v for k, v in vars(args).items()
               if k not in ("command", "target", "func", "quiet", "threads", "invocation")
               and (v is not None or k == "tokenizer")}
    for name, kind in ONLY_FOR.items():
        if name in options and kind != args.kind:
            raise ValueError(f"--{name.replace('_', '-')} is only for --kind {kind}")
    return {**KIND_DEFAULTS[args.kind], **options}


def run(args: argparse.Namespace) -> int:
    try:
        options = _options(args)
        if args.threads is not None:
            check_int("threads", args.threads, 1)
            torch.set_num_threads(args.threads)
        if args.kind == "diffusion":
            from rlir.pretrain import diffusion_world_model

            del options["kind"]
            metrics = diffusion_world_model.train(**options, progress=not args.quiet)
        else:
            metrics = train(**options, progress=not args.quiet)
    except ValueError as error:  # bad arguments, a broken recording (RecordingError names the file), no tokenizer
        print(f"rlir pretrain world-model: error: {error}", file=sys.stderr)
        return 1
    print(_summary(args.out, metrics))
    return 0


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


def _load_tokenizer(path: Path | str | None) -> VQTokenizer:
    if path is None:
        raise ValueError("tokenizer: --kind ar needs --tokenizer (rlir pretrain tokenizer)")
    if not (Path(path) / "config.json").is_file():
        raise ValueError(f"tokenizer: {path} holds no config.json; train one with `rlir pretrain tokenizer`")
    return VQTokenizer.from_pretrained(path, torch_dtype=torch.float32).eval()


def train(data: Path | str, tokenizer: Path | str | None, out: Path | str, kind: str = "ar", steps: int = 600,
          batch: int = 4, lr: float = 3e-3, clip_frames: int = 16, max_frames: int = 16, layers: int = 4,
          d_model: int = 192, heads: int = 6, kv_heads: int = 2, seed: int = 0, dtype: str = "bf16",
          heldout_fraction: float = 0.1, eval_prompts: int = 32, eval_frames: int = 15, eval_every: int = 100,
          log_every: int = 10, codes: Path | str | None = None, overwrite: bool = False,
          frame_action_embedding: bool = False, previous_frame_input: bool = False, progress: bool = True) -> dict:
    """Train an ARWorldModel on the codes of the train episodes of ``data``, save it into ``out`` and
    return the held-out metrics written to ``out``/metrics.json (see the module docstring)."""
    if kind != "ar":
        raise ValueError(f"kind must be 'ar' here, got {kind!r}: the diffusion world model trains with "
                         f"rlir.pretrain.diffusion_world_model.train")
    for name, value, minimum in (("steps", steps, 1), ("batch", batch, 1), ("clip_frames", clip_frames, 2),
                                 ("max_frames", max_frames, 2), ("seed", seed, 0), ("eval_prompts", eval_prompts, 1),
                                 ("eval_frames", eval_frames, 1), ("eval_every", eval_every, 0),
                                 ("log_every", log_every, 1)):
        check_int(name, value, minimum)
    check_clip_lengths(clip_frames, eval_frames, max_frames)
    check_common_args(lr, dtype, heldout_fraction)
    out = Path(out)
    check_output_directory(out, overwrite)
    shape = dict(n_layers=layers, d_model=d_model, n_heads=heads, n_kv_heads=kv_heads, max_frames=max_frames,
                 frame_action_embedding=bool(frame_action_embedding))
    ARWorldModel(codebook_size=2, tokens_per_frame=1, **shape)  # raises on a bad shape before the slow part
    if previous_frame_input:
        shape.update(previous_frame_input=True)

    recording = Recording(data)
    vq = _load_tokenizer(tokenizer)
    train_ids, heldout_ids = split_episodes(recording.episode_ids, heldout_fraction)
    if not heldout_ids:
        raise ValueError(f"data: {recording.root} has {len(recording)} episode(s); holding out a fraction needs "
                         f"at least 2")
    started = time.perf_counter()
    tokenized = TokenizedRecording.load_or_build(codes if codes is not None else out / "codes.safetensors",
                                                 recording, vq)
    tokenize_seconds = time.perf_counter() - started
    train_windows, nll_windows, prompt_windows = clip_windows(tokenized, recording, train_ids, heldout_ids,
                                                              clip_frames, eval_frames + 1, eval_prompts)

    torch.manual_seed(seed)
    model = ARWorldModel(codebook_size=tokenized.codebook_size, tokens_per_frame=tokenized.tokens_per_frame,
                         action_head_sizes=list(recording.action_space.head_sizes),
                         frame_grid=list(vq.code_grid), **shape)
    optimizer = adamw_decaying_matrices(model.parameters(), lr=lr, weight_decay=WEIGHT_DECAY, betas=(0.9, 0.95))
    batches = shuffled_batches(len(train_windows), batch, torch.Generator().manual_seed(seed))
    nll_codes, nll_actions = tokenized.clips(nll_windows, clip_frames)

    with atomic_directory(out, overwrite) as staging:
        tokenized.save(staging / "codes.safetensors")
        started = time.perf_counter()
        bar = tqdm(range(1, steps + 1), desc="pretrain world-model", unit="step", disable=not progress)
        for step in bar:
            model.train()
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, steps, lr)
            frames, actions = tokenized.clips([train_windows[i] for i in next(batches).tolist()], clip_frames)
            loss = model.loss(frames, actions)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
            optimizer.step()
            if step % log_every == 0 or step == steps:
                seconds = time.perf_counter() - started
                append_jsonl(staging / "metrics.jsonl", {
                    "step": step, "loss": loss.item(), "grad_norm": grad_norm.item(),
                    "lr": optimizer.param_groups[0]["lr"], "seconds": seconds,
                    "tokens_per_second": step * batch * clip_frames * model.frame_stride / seconds})
                bar.set_postfix(loss=f"{loss.item():.3f}")
            if eval_every and step % eval_every == 0 and step < steps:
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
        generation, videos = generation_quality(saved, vq, prompt_codes, prompt_actions,
                                                real_frames(recording, prompt_windows, eval_frames + 1, vq.frame_size),
                                                seed)
        save_videos(staging / "generations.png", videos)
        metrics = {
            "kind": kind,
            "model": {"parameters": sum(p.numel() for p in saved.parameters()),
                      "checkpoint_bytes": sum(p.stat().st_size for p in staging.glob("diffusion_pytorch_model*")),
                      "dtype": dtype,
                      "config": {k: v for k, v in saved.config.items() if not k.startswith("_")}},
            "training": {"data": str(recording.root), "tokenizer": str(Path(tokenizer).resolve()),
                         "codes_fingerprint": tokenized.fingerprint, "steps": steps, "batch": batch, "lr": lr,
                         "clip_frames": clip_frames, "seed": seed, "seconds": round(train_seconds, 1),
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
