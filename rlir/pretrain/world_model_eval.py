"""Held-out evaluation of a token world model: teacher-forced NLL, and PSNR of decoded generations.

Generation quality: from each prompt's first real frame, the model generates the next frames under the
real (commanded) actions, greedily (top_k=1) and by sampling at temperature 1; the tokenizer decodes them
and each is compared with the real continuation by PSNR. Two references frame it: repeating the context
frame (what a model that ignores actions and dynamics scores) and the tokenizer's own reconstruction of
the real continuation (the ceiling any model over these codes can reach).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rlir.data import Recording, resize_frames
from rlir.models.ar_world_model import ARWorldModel
from rlir.models.tokenizer import VQTokenizer
from rlir.metrics.image import psnr


@torch.no_grad()
def heldout_nll(model: ARWorldModel, codes: torch.Tensor, actions: torch.Tensor, batch: int = 8) -> dict:
    """Mean teacher-forced negative log-likelihood (nats per code) of frames 1.. of clips codes [N, T, F]
    under actions [N, T-1, H], and its perplexity."""
    total, count = 0.0, 0
    for i in range(0, len(codes), batch):
        logp = model.token_logprobs(codes[i:i + batch], actions[i:i + batch])
        total, count = total - logp.double().sum().item(), count + logp.numel()
    nll = total / count
    return {"nll": nll, "perplexity": math.exp(nll), "clips": len(codes), "tokens": count}


def real_frames(recording: Recording, windows: list[tuple[str, int]], frames: int,
                size: tuple[int, int]) -> torch.Tensor:
    """uint8 frames [N, frames, 3, height, width] of each (episode, start) window of ``recording``, at ``size``."""
    clips = [resize_frames(recording.load_episode(e)[0][s:s + frames], tuple(size)) for e, s in windows]
    return torch.from_numpy(np.stack(clips)).permute(0, 1, 4, 2, 3).contiguous()


def _psnr_summary(real: torch.Tensor, generated: torch.Tensor) -> dict:
    """Mean PSNR over all frames and per generated step (averaged over prompts) of [N, n, 3, S, S] videos."""
    values = psnr(real.flatten(0, 1), generated.flatten(0, 1)).view(real.shape[:2])
    return {"psnr_db": values.mean().item(), "psnr_db_per_step": [round(v, 3) for v in values.mean(0).tolist()]}


@torch.no_grad()
def generation_quality(model: ARWorldModel, tokenizer: VQTokenizer, codes: torch.Tensor, actions: torch.Tensor,
                       frames: torch.Tensor, seed: int = 0) -> tuple[dict, dict[str, torch.Tensor]]:
    """Generate frames 1..T-1 of each prompt from its frame 0 codes (codes [K, T, F], actions [K, T-1, H])
    and compare the decoded frames with the real ones (uint8 frames [K, T, 3, S, S]).

    Returns (metrics, videos): videos "real", "greedy", "sampled" are uint8 [K, T, 3, S, S] (frame 0 real).
    """
    real = frames[:, 1:]
    videos = {"real": frames}
    metrics = {"prompts": len(codes), "context_frames": 1, "generated_frames": codes.shape[1] - 1}
    for name, options in (("greedy", {"top_k": 1}), ("sampled", {"temperature": 1.0})):
        tokens, _ = model.generate(codes[:, :1], actions, generator=torch.Generator().manual_seed(seed), **options)
        generated = tokenizer.decode_tokens(tokens)
        videos[name] = torch.cat((frames[:, :1], generated), dim=1)
        metrics[name] = _psnr_summary(real, generated)
        metrics[name]["code_accuracy"] = (tokens == codes[:, 1:]).float().mean().item()
    metrics["copy_context"] = _psnr_summary(real, frames[:, :1].expand_as(real))
    metrics["tokenizer_ceiling"] = _psnr_summary(real, tokenizer.decode_tokens(codes[:, 1:]))
    return metrics, videos


def save_videos(path: Path, videos: dict[str, torch.Tensor], prompts: int = 4, scale: int = 2, gap: int = 2) -> None:
    """A PNG with, for each of the first ``prompts`` prompts, one row per video (real, greedy, sampled)."""
    from PIL import Image

    rows = []
    for k in range(min(prompts, len(next(iter(videos.values()))))):
        for video in videos.values():
            rows.append(torch.cat([F.pad(f, (0, gap, 0, gap), value=255) for f in video[k]], dim=2))
        rows.append(torch.full_like(rows[-1][:, :2 * gap], 255))  # a wider gap between prompts
    image = torch.cat(rows, dim=1).permute(1, 2, 0).numpy()
    Image.fromarray(image).resize((image.shape[1] * scale, image.shape[0] * scale), Image.NEAREST).save(path)
