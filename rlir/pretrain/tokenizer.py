"""`rlir pretrain tokenizer`: train the VQ frame tokenizer on the train episodes of a recording.

Writes OUT (built in a temporary sibling directory and renamed into place only when complete):

    config.json, diffusion_pytorch_model.safetensors   the model: VQTokenizer.from_pretrained(OUT)
    metrics.jsonl        training metrics every --log-every steps
    metrics.json         held-out evaluation of the saved checkpoint and the run's settings
    reconstructions.png  held-out originals (top row) over their reconstructions (bottom row)

The held-out episodes are the recording's split_episodes(..., heldout_fraction) split, so they are the
same episodes the world model and the IDM hold out.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rlir.data import Recording, resize_frames, split_episodes
from rlir.metrics.image import psnr
from rlir.models.tokenizer import VQTokenizer
from rlir.pretrain.common import (SAVE_DTYPES, add_frame_size_argument, append_jsonl, atomic_directory,
                                  check_common_args, check_int, check_output_directory, learning_rate,
                                  resolve_frame_size, shuffled_batches)

GRID_FRAMES = 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="recording directory (holds manifest.json)")
    parser.add_argument("--out", required=True, help="output directory for the model, metrics and a PNG")
    parser.add_argument("--steps", type=int, default=3000, help="optimiser steps (default: 3000)")
    parser.add_argument("--batch", type=int, default=32, help="frames per step (default: 32)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default: 3e-3)")
    parser.add_argument("--codebook-size", type=int, default=512, help="number of codes (default: 512)")
    parser.add_argument("--patch-size", type=int, default=8, help="pixels per code, each side (default: 8)")
    add_frame_size_argument(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the batch order (default: 0)")
    parser.add_argument("--dtype", choices=sorted(SAVE_DTYPES), default="bf16",
                        help="dtype of the saved weights; training is fp32 (default: bf16)")
    parser.add_argument("--heldout-fraction", type=float, default=0.1,
                        help="fraction of episodes held out for evaluation (default: 0.1)")
    parser.add_argument("--log-every", type=int, default=25, help="steps between metrics.jsonl lines (default: 25)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's choice); 1 is fastest on a shared machine")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    try:
        if args.threads is not None:
            if args.threads < 1:
                raise ValueError(f"threads must be an int >= 1, got {args.threads}")
            torch.set_num_threads(args.threads)
        metrics = train(
            args.data, args.out, steps=args.steps, batch=args.batch, lr=args.lr, codebook_size=args.codebook_size,
            seed=args.seed, dtype=args.dtype, heldout_fraction=args.heldout_fraction, log_every=args.log_every,
            frame_size=args.frame_size, patch_size=args.patch_size,
            overwrite=args.overwrite, progress=not args.quiet,
        )
    except ValueError as error:  # bad arguments, or a broken recording (RecordingError names the file)
        print(f"rlir pretrain tokenizer: error: {error}", file=sys.stderr)
        return 1
    print(f"{args.out}: held-out PSNR {metrics['heldout_psnr_db']:.2f} dB over {metrics['heldout_frames']} frames, "
          f"{metrics['codes_used']}/{metrics['codebook_size']} codes used (perplexity {metrics['perplexity']:.0f}), "
          f"checkpoint {metrics['checkpoint_bytes'] / 1e6:.2f} MB, trained in {metrics['train_seconds']:.0f} s")
    return 0


def train(
    data: Path | str,
    out: Path | str,
    steps: int = 3000,
    batch: int = 32,
    lr: float = 3e-3,
    codebook_size: int = 512,
    seed: int = 0,
    dtype: str = "bf16",
    heldout_fraction: float = 0.1,
    log_every: int = 25,
    overwrite: bool = False,
    progress: bool = True,
    frame_size=None,
    patch_size: int = 8,
) -> dict:
    """Train a VQTokenizer on the train episodes of the recording ``data``, save it into ``out`` and
    return the held-out metrics written to ``out``/metrics.json (see the module docstring). Frames are
    resized to ``frame_size`` ((height, width) or one int; None: the recording's own size)."""
    for name, value, minimum in (("steps", steps, 1), ("batch", batch, 1), ("codebook_size", codebook_size, 2),
                                 ("seed", seed, 0), ("log_every", log_every, 1)):
        check_int(name, value, minimum)
    check_common_args(lr, dtype, heldout_fraction)
    out = Path(out)
    check_output_directory(out, overwrite)

    recording = Recording(data)
    size = resolve_frame_size(frame_size, recording)
    torch.manual_seed(seed)
    model = VQTokenizer(image_size=list(size), codebook_size=codebook_size, patch_size=patch_size)
    train_ids, heldout_ids = split_episodes(recording.episode_ids, heldout_fraction)
    if not heldout_ids:
        raise ValueError(f"data: {recording.root} has {len(recording)} episode(s); holding out a fraction "
                         f"needs at least 2")
    train_frames = load_frames(recording, train_ids, size)
    heldout_frames = load_frames(recording, heldout_ids, size)

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    batches = shuffled_batches(len(train_frames), batch, torch.Generator().manual_seed(seed))
    with atomic_directory(out, overwrite) as staging:
        started = time.perf_counter()
        model.train()
        bar = tqdm(range(1, steps + 1), desc="pretrain tokenizer", unit="step", disable=not progress)
        for step in bar:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, steps, lr)
            frames = train_frames[next(batches)]
            recon, vq_loss, codes = model(frames)
            recon_loss = F.mse_loss(recon, frames.float() / 255)
            loss = recon_loss + vq_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step % log_every == 0 or step == steps:
                record = {"step": step, "loss": loss.item(), "recon_mse": recon_loss.item(), "vq_loss": vq_loss.item(),
                          "train_psnr_db": 10 * math.log10(1 / max(recon_loss.item(), 1e-10)),
                          **code_statistics(codes, codebook_size), "restarts": model.quantizer.restarts,
                          "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - started}
                append_jsonl(staging / "metrics.jsonl", record)
                bar.set_postfix(psnr=f"{record['train_psnr_db']:.1f}", used=record["codes_used"])
        train_seconds = time.perf_counter() - started

        getattr(model, SAVE_DTYPES[dtype])().save_pretrained(staging)
        saved = VQTokenizer.from_pretrained(staging, torch_dtype=torch.float32).eval()
        reconstructions, metrics = evaluate(saved, heldout_frames)
        metrics.update(
            checkpoint_bytes=sum(p.stat().st_size for p in staging.glob("*.safetensors")),
            parameters=sum(p.numel() for p in saved.parameters()),
            dtype=dtype, steps=steps, batch=batch, lr=lr, seed=seed, train_seconds=round(train_seconds, 1),
            train_frames=len(train_frames), train_episodes=train_ids, heldout_episodes=heldout_ids,
            data=str(recording.root),
        )
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n", encoding="utf-8")
        picks = torch.linspace(0, len(heldout_frames) - 1, GRID_FRAMES).round().long()
        save_grid(staging / "reconstructions.png", heldout_frames[picks], reconstructions[picks])
    return metrics


def load_frames(recording: Recording, episode_ids: list[str], size: tuple[int, int]) -> torch.Tensor:
    """All frames of ``episode_ids`` as one uint8 tensor [N, 3, height, width], resized to ``size``."""
    frames = [resize_frames(recording.load_episode(e)[0], tuple(size)) for e in episode_ids]
    return torch.from_numpy(np.concatenate(frames)).permute(0, 3, 1, 2).contiguous()


def code_statistics(codes: torch.Tensor, codebook_size: int) -> dict:
    """Codes used (distinct) and perplexity (exp of the entropy of the code histogram) of a batch of codes."""
    counts = torch.bincount(codes.reshape(-1), minlength=codebook_size).double()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum().item()
    return {"codes_used": int((counts > 0).sum()), "perplexity": math.exp(entropy)}


@torch.no_grad()
def evaluate(model: VQTokenizer, frames: torch.Tensor, batch: int = 256) -> tuple[torch.Tensor, dict]:
    """Round-trip uint8 ``frames`` [N, 3, H, W] through codes -> (reconstructions uint8, metrics): the mean
    per-frame PSNR and the codebook usage over all of them."""
    codes = torch.cat([model.encode(frames[i : i + batch]) for i in range(0, len(frames), batch)])
    reconstructions = torch.cat([model.to_uint8(model.decode(codes[i : i + batch]))
                                 for i in range(0, len(codes), batch)])
    statistics = code_statistics(codes, model.codebook_size)
    metrics = {
        "heldout_psnr_db": psnr(frames, reconstructions).mean().item(),
        "heldout_frames": len(frames),
        "codes_used": statistics["codes_used"],
        "codebook_size": model.codebook_size,
        "codebook_usage": statistics["codes_used"] / model.codebook_size,
        "perplexity": statistics["perplexity"],
    }
    return reconstructions, metrics


def save_grid(path: Path, top: torch.Tensor, bottom: torch.Tensor, scale: int = 4, gap: int = 2) -> None:
    """Save uint8 frames [N, 3, H, W] as a PNG: ``top`` in one row over ``bottom``, each pixel scale x scale."""
    from PIL import Image

    rows = [torch.cat([F.pad(f, (0, gap, 0, gap), value=255) for f in row], dim=2)
            for row in (top, bottom)]
    image = torch.cat(rows, dim=1).permute(1, 2, 0).numpy()
    Image.fromarray(image).resize((image.shape[1] * scale, image.shape[0] * scale), Image.NEAREST).save(path)


