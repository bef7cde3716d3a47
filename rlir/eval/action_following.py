"""Action-following of a world model: the paper's headline metric.

From held-out prompts (the real first frame and the real commanded actions), the world model generates the
next frames; an IDM reads the generated video back into actions. Action-following is the per-frame accuracy
of the recovered actions against the commanded ones, with precision / recall / F1 per action (MineWorld's
report). Use the *evaluation* IDM, which the reward never saw, for honest numbers; the reward IDM's score is
reported beside it. The same IDMs on the real continuation give the ceiling.

The videos come from the policy's evaluation sampler (rlir.eval.generation).
"""
from __future__ import annotations

from typing import Dict

import torch

from rlir.kernels import idm_reward
from rlir.metrics import classification_report
from rlir.models.idm import InverseDynamicsModel
from rlir.rewards import idm_logits


@torch.no_grad()
def idm_scores(idm: InverseDynamicsModel, videos: torch.Tensor, actions: torch.Tensor, action_space,
               batch: int = 32) -> Dict[str, object]:
    """How well ``idm`` recovers the commanded actions [K, n, H] from uint8 videos [K, n + 1, 3, S, S]:
    exact-match frame accuracy (the reward), per-head accuracy, and the per-action ClassificationReport."""
    logits = idm_logits(idm, videos, batch)
    result = idm_reward(logits, actions)
    predicted = torch.stack([head.argmax(-1) for head in logits], dim=-1)
    report = classification_report(actions.reshape(-1, actions.shape[-1]), predicted.reshape(-1, actions.shape[-1]),
                                   action_space)
    return {"frame_accuracy": result.reward.mean().item(),
            "per_video": result.reward.float().tolist(),
            "head_accuracy": result.head_accuracy.tolist(),
            "report": report}
