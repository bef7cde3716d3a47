"""Held-out evaluation of a pretrained world model: teacher-forced NLL (token models), and PSNR of generations.

Generation quality (both world models): from each prompt's first real frame, the model generates the next
frames under the real (commanded) actions through ``Policy.generate`` with the evaluation sampler, the path
training and ``rlir eval`` take (the AR model greedily and by sampling at temperature 1; the DiT with the ODE
sampler), and each is compared with the real continuation by PSNR. Two references frame it: repeating the
context frame (what a model that ignores actions and dynamics scores) and the real continuation through the
model's frame space (the tokenizer's reconstruction: the ceiling any model over that space can reach).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F

from rlir.data import Recording, resize_frames
from rlir.models.ar_world_model import ARWorldModel
from rlir.metrics.image import psnr
from rlir.policies import Policy, Prompts


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
def generation_quality(policies: Mapping[str, Policy], frames: torch.Tensor, actions: torch.Tensor,
                       ceiling: tuple[str, torch.Tensor], *, codes: Optional[torch.Tensor] = None, seed: int = 0,
                       batch: Optional[int] = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """Each of ``policies`` generates frames 1..T-1 of every prompt from its real frame 0 (uint8 frames
    [K, T, 3, S, S], actions [K, T-1, H]) with ``Policy.generate(..., sampler="eval")``, ``batch`` prompts a call
    (None: all at once) from one generator seeded with ``seed``; each is compared with the real frames by
    PSNR, beside copying the context frame and ``ceiling``: (name, the real frames 1..T-1 through the model's
    frame space). ``codes``: the real clips' codes [K, T, F] of a token model, whose samples' code accuracy
    is then reported too.

    Returns (metrics, videos): videos "real" and one per policy, uint8 [K, T, 3, S, S] (frame 0 real).
    """
    real = frames[:, 1:]
    batch = batch or len(frames)
    metrics = {"prompts": len(frames), "context_frames": 1, "generated_frames": real.shape[1]}
    videos = {"real": frames}
    for name, policy in policies.items():
        generator = torch.Generator(policy.device).manual_seed(seed)
        generated, tokens = [], []
        for i in range(0, len(frames), batch):
            prompts = Prompts(frames[i:i + batch, :1], actions[i:i + batch])
            if codes is None:
                generated.append(policy.generate(prompts, sampler="eval", generator=generator).cpu())
            else:
                video, rollout = policy.generate(prompts, sampler="eval", generator=generator, return_rollout=True)
                generated.append(video.cpu())
                tokens.append(rollout.sample.tokens.cpu())
        videos[name] = torch.cat(generated)
        metrics[name] = _psnr_summary(real, videos[name][:, 1:])
        if codes is not None:
            metrics[name]["code_accuracy"] = (torch.cat(tokens) == codes[:, 1:]).float().mean().item()
    metrics["copy_context"] = _psnr_summary(real, frames[:, :1].expand_as(real))
    metrics[ceiling[0]] = _psnr_summary(real, ceiling[1])
    return metrics, videos


def save_videos(path: Path, videos: dict[str, torch.Tensor], prompts: int = 4, scale: int = 2, gap: int = 2) -> None:
    """A PNG with, for each of the first ``prompts`` prompts, one row per video (the real one, then each generation)."""
    from PIL import Image

    rows = []
    for k in range(min(prompts, len(next(iter(videos.values()))))):
        for video in videos.values():
            rows.append(torch.cat([F.pad(f, (0, gap, 0, gap), value=255) for f in video[k]], dim=2))
        rows.append(torch.full_like(rows[-1][:, :2 * gap], 255))  # a wider gap between prompts
    image = torch.cat(rows, dim=1).permute(1, 2, 0).numpy()
    Image.fromarray(image).resize((image.shape[1] * scale, image.shape[0] * scale), Image.NEAREST).save(path)
