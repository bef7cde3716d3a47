"""Evaluate one world model on fixed held-out prompts (``rlir eval``): action-following (both IDMs), PSNR and SSIM.

The videos come from ``rlir.eval.generation.held_out_videos``, the path training's in-run evaluation takes too; in
a torchrun job each rank generates its share of the prompts (seeded with seed + rank, so the videos depend on the
number of ranks) and every rank gets all the videos and computes the same metrics (the IDM scoring is small next
to generation).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch

from rlir.metrics.image import psnr, ssim
from rlir.parallel import Parallel
from rlir.policies import Prompts, evaluation_policy

from .action_following import idm_scores
from .generation import held_out_videos


@dataclass
class HeldOutPrompts:
    """K held-out clips: real videos uint8 [K, n + 1, 3, S, S] (frame 0 is the prompt) and the commanded
    actions [K, n, H]."""

    real: torch.Tensor
    actions: torch.Tensor

    @classmethod
    def from_recording(cls, recording, count: int, frames: int, all_episodes: bool = False) -> "HeldOutPrompts":
        """``count`` prompts spread over the recording's held-out episodes, or over all of its episodes with
        ``all_episodes`` (a recording of new Crafter seeds that no model was trained on)."""
        from rlir.data import ClipDataset

        heldout = recording.episode_ids if all_episodes else None
        # Every window (stride 1), then ``count`` of them evenly spread: as far apart as the episodes allow.
        clips = ClipDataset(recording, split="heldout", context_frames=1, clip_frames=frames, stride=1,
                            heldout_episodes=heldout)
        if len(clips) == 0:
            raise ValueError(f"the recording {recording.root} has no held-out clip of {frames + 1} frames")
        picks = torch.linspace(0, len(clips) - 1, min(count, len(clips))).round().long().tolist()
        items = [clips[i] for i in picks]
        real = torch.stack([torch.cat([torch.as_tensor(it["context"]), torch.as_tensor(it["target"])])
                            for it in items])
        actions = torch.stack([torch.as_tensor(it["actions"]) for it in items])
        return cls(real, actions)

    def __len__(self) -> int:
        return len(self.real)

    def prompts(self) -> Prompts:
        """The prompts a world model continues: each clip's first frame and its commanded actions."""
        return Prompts(self.real[:, :1], self.actions)


def idm_metrics(idms: Dict[str, torch.nn.Module], videos: torch.Tensor, prompts: HeldOutPrompts,
                action_space) -> Dict[str, object]:
    """Frame accuracy of each IDM on ``videos``, and the eval IDM's per-action P/R/F1 report."""
    out: Dict[str, object] = {}
    for name, idm in idms.items():
        scores = idm_scores(idm, videos, prompts.actions, action_space)
        out[f"{name}/frame_accuracy"] = scores["frame_accuracy"]
        frames = prompts.actions.shape[1]
        out[f"per_prompt/{name}/frame_accuracy"] = {"hits": [v * frames for v in scores["per_video"]],
                                                    "count": [frames] * len(scores["per_video"])}
        if name == "eval_idm":
            out["eval_idm/report"] = scores["report"]
            for metric in ("precision", "recall", "f1"):
                out[f"eval_idm/macro_{metric}"] = scores["report"].macro(metric)
    return out


@torch.no_grad()
def evaluate_world_model(world_model, tokenizer, idms: Dict[str, torch.nn.Module], prompts: HeldOutPrompts,
                         action_space, *, temperature: float = 1.0, seed: int = 0, parallel: Optional[Parallel] = None):
    """-> (metrics, generated uint8 videos [K, n + 1, 3, S, S], every rank's). Metrics: ``<idm>/frame_accuracy`` for
    each IDM, ``eval_idm/report`` (ClassificationReport), ``psnr_db`` and ``ssim`` of the generated frames against
    the real continuation (frame 0, the prompt, excluded). ``parallel``: the job (default: the current one)."""
    parallel = parallel if parallel is not None else Parallel.current()
    policy = evaluation_policy(world_model, tokenizer, temperature=temperature)

    def rank_generator(start: int, stop: int) -> torch.Generator:
        return torch.Generator(policy.device).manual_seed(seed + parallel.rank)

    videos, _ = held_out_videos(policy, prompts.prompts(), rank_generator, batch=64, parallel=parallel)
    videos = parallel.all_gather_uneven(videos)
    metrics = idm_metrics(idms, videos, prompts, action_space)
    real, fake = prompts.real[:, 1:].flatten(0, 1), videos[:, 1:].flatten(0, 1)
    metrics["psnr_db"] = psnr(real, fake).mean().item()
    metrics["ssim"] = ssim(real, fake).mean().item()
    return metrics, videos
