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
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rlir.data import Recording, resize_frames
from rlir.metrics.image import psnr
from rlir.models.tokenizer import VQTokenizer
from rlir.pretrain.common import check_output_directory, heldout_split, resolve_frame_size, shuffled_batches
from rlir.pretrain.config import TokenizerPretrain, add_flags, set_threads, settings
from rlir.pretrain.config import run as run_target
from rlir.pretrain.loop import Target, Trained, pretrain

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
    check_output_directory(Path(out), s.overwrite)
    return pretrain(TokenizerTraining(s), Path(out), overwrite=s.overwrite, steps=s.steps, log_every=s.log_every,
                    eval_every=0, dtype=s.dtype, description="pretrain tokenizer", progress=progress and not s.quiet)


class TokenizerTraining(Target):
    """The tokenizer, its optimiser and the frames of the recording's train and held-out episodes."""

    progress_fields = {"train_psnr_db": ("psnr", ".1f"), "codes_used": ("used", "")}

    def __init__(self, s: TokenizerPretrain):
        self.cfg = s
        self.recording = recording = Recording(s.data)
        size = resolve_frame_size(s.frame_size, recording)
        torch.manual_seed(s.seed)
        self.model = VQTokenizer(image_size=list(size), codebook_size=s.codebook_size, patch_size=s.patch_size)
        self.train_ids, self.heldout_ids = heldout_split(recording, s.heldout_fraction)
        self.train_frames = load_frames(recording, self.train_ids, size)
        self.heldout_frames = load_frames(recording, self.heldout_ids, size)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=s.lr, betas=(0.9, 0.99), weight_decay=0.0)
        self.batches = shuffled_batches(len(self.train_frames), s.batch, torch.Generator().manual_seed(s.seed))

    def loss(self):
        frames = self.train_frames[next(self.batches)]
        recon, vq_loss, codes = self.model(frames)
        recon_loss = F.mse_loss(recon, frames.float() / 255)
        return recon_loss + vq_loss, lambda: {
            "recon_mse": recon_loss.item(), "vq_loss": vq_loss.item(),
            "train_psnr_db": 10 * math.log10(1 / max(recon_loss.item(), 1e-10)),
            **code_statistics(codes, self.cfg.codebook_size), "restarts": self.model.quantizer.restarts}

    def report(self, staging: Path, saved: VQTokenizer, trained: Trained) -> dict:
        s = self.cfg
        reconstructions, metrics = evaluate(saved, self.heldout_frames)
        metrics.update(
            checkpoint_bytes=sum(p.stat().st_size for p in staging.glob("*.safetensors")),
            parameters=sum(p.numel() for p in saved.parameters()),
            dtype=s.dtype, steps=s.steps, batch=s.batch, lr=s.lr, seed=s.seed,
            train_seconds=round(trained.seconds, 1), train_frames=len(self.train_frames),
            train_episodes=self.train_ids, heldout_episodes=self.heldout_ids, data=str(self.recording.root),
        )
        picks = torch.linspace(0, len(self.heldout_frames) - 1, GRID_FRAMES).round().long()
        save_grid(staging / "reconstructions.png", self.heldout_frames[picks], reconstructions[picks])
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


