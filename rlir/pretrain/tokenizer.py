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
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rlir.data import Recording, resize_frames, split_episodes
from rlir.metrics.image import psnr
from rlir.models.tokenizer import VQTokenizer
from rlir.pretrain.common import (SAVE_DTYPES, append_jsonl, atomic_directory, check_output_directory, learning_rate,
                                  resolve_frame_size, shuffled_batches)
from rlir.pretrain.config import TokenizerPretrain, add_flags, set_threads, settings
from rlir.pretrain.config import run as run_target

GRID_FRAMES = 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, [TokenizerPretrain], __doc__.split("\n\n")[0])


def run(args: argparse.Namespace) -> int:
    return run_target("tokenizer", args, {None: TokenizerPretrain}, _train_and_report)


def _train_and_report(cfg: TokenizerPretrain) -> None:
    metrics = train(**cfg.model_dump())
    print(f"{cfg.out}: held-out PSNR {metrics['heldout_psnr_db']:.2f} dB over {metrics['heldout_frames']} "
          f"frames, {metrics['codes_used']}/{metrics['codebook_size']} codes used (perplexity "
          f"{metrics['perplexity']:.0f}), checkpoint {metrics['checkpoint_bytes'] / 1e6:.2f} MB, trained in "
          f"{metrics['train_seconds']:.0f} s")


def train(data: Path | str, out: Path | str, *, progress: bool = True, **options) -> dict:
    """Train a VQTokenizer on the train episodes of the recording ``data``, save it into ``out`` and
    return the held-out metrics written to ``out``/metrics.json (see the module docstring). ``options``: the
    settings of ``TokenizerPretrain`` (steps, batch, lr, codebook_size, patch_size, frame_size: one int or
    (height, width), None for the recording's own size, ...)."""
    s = settings(TokenizerPretrain, data=data, out=out, **options)
    set_threads(s.threads)
    steps, batch, lr, codebook_size, patch_size, seed, dtype = s.steps, s.batch, s.lr, s.codebook_size, \
        s.patch_size, s.seed, s.dtype
    progress = progress and not s.quiet
    out = Path(out)
    check_output_directory(out, s.overwrite)

    recording = Recording(data)
    size = resolve_frame_size(s.frame_size, recording)
    torch.manual_seed(seed)
    model = VQTokenizer(image_size=list(size), codebook_size=codebook_size, patch_size=patch_size)
    train_ids, heldout_ids = split_episodes(recording.episode_ids, s.heldout_fraction)
    if not heldout_ids:
        raise ValueError(f"data: {recording.root} has {len(recording)} episode(s); holding out a fraction "
                         f"needs at least 2")
    train_frames = load_frames(recording, train_ids, size)
    heldout_frames = load_frames(recording, heldout_ids, size)

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    batches = shuffled_batches(len(train_frames), batch, torch.Generator().manual_seed(seed))
    with atomic_directory(out, s.overwrite) as staging:
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
            if step % s.log_every == 0 or step == steps:
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


