"""What a policy samples from and what it returns: ``Prompts`` (B context clips and their commanded actions) and
``Rollout`` (G samples of each, row-aligned, with the log-probs recorded while sampling)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Optional

import torch


@dataclass
class Prompts:
    """B prompts. context: uint8 [B, C, 3, h, w] frames; actions: int [B, n, H], where actions[:, k] leads
    to generated frame k (from the last context frame for k = 0); context_actions: int [B, C-1, H], the
    actions between the context frames (None when C = 1)."""

    context: torch.Tensor
    actions: torch.Tensor
    context_actions: Optional[torch.Tensor] = None

    def __post_init__(self):
        c, a = self.context, self.actions
        if not isinstance(c, torch.Tensor) or c.dtype != torch.uint8 or c.ndim != 5 or c.shape[2] != 3:
            raise ValueError(f"Prompts.context must be uint8 [B, C, 3, h, w], got "
                             f"{getattr(c, 'dtype', type(c).__name__)} {tuple(getattr(c, 'shape', ()))}")
        if not isinstance(a, torch.Tensor) or a.ndim != 3 or a.shape[0] != c.shape[0] or a.is_floating_point():
            raise ValueError(f"Prompts.actions must be integer [B={c.shape[0]}, n, H], got "
                             f"{tuple(getattr(a, 'shape', ()))}")
        ca = self.context_actions
        if c.shape[1] > 1 and (ca is None or tuple(ca.shape) != (c.shape[0], c.shape[1] - 1, a.shape[2])):
            raise ValueError(f"Prompts.context_actions must be [B, C-1, H] = "
                             f"{(c.shape[0], c.shape[1] - 1, a.shape[2])} with C = {c.shape[1]} context frames")

    def __len__(self) -> int:
        return self.context.shape[0]

    @property
    def n_frames(self) -> int:
        return self.actions.shape[1]

    def to(self, device) -> "Prompts":
        ca = None if self.context_actions is None else self.context_actions.to(device)
        return replace(self, context=self.context.to(device), actions=self.actions.to(device), context_actions=ca)

    def rows(self, start: int, stop: int) -> "Prompts":
        """Prompts start..stop-1."""
        ca = None if self.context_actions is None else self.context_actions[start:stop]
        return Prompts(self.context[start:stop], self.actions[start:stop], ca)


@dataclass
class Rollout:
    """G = num_samples samples of each of B prompts, N = B * G rows: row b * G + g is sample g of prompt b, so
    a group is G consecutive rows (what the group advantages assume).

    sample: what the policy sampled, as its own dataclass of row-aligned tensors (AR: ``ARSample``; diffusion:
    ``FlowSample``); only the policy reads it. old_logp: fp32 [N, S] log-probs recorded while sampling, or
    None if sampling records none (the trainer then gets them as loss.old_logprobs says); mask: bool [N, S]
    (valid slots); actions: [N, n, H] the commanded actions (the reward's labels).
    slot_frame: int64 [S], the generated frame (0..n-1) each log-prob slot belongs to; needed for per-frame
    credit (advantage.credit: frame), None if the policy cannot say.
    """

    prompts: Prompts
    num_samples: int
    sample: Any
    old_logp: Optional[torch.Tensor]
    mask: torch.Tensor
    actions: torch.Tensor
    slot_frame: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return self.mask.shape[0]

    @property
    def slots(self) -> int:
        """S: log-prob slots per video."""
        return self.mask.shape[1]


def after_context(prompts: Prompts, num_samples: int, frames: torch.Tensor) -> torch.Tensor:
    """uint8 videos [N, n+1, 3, h, w]: each row's last real context frame, then its generated ``frames``
    [N, n, 3, h, w] (rows b*G + g, G = ``num_samples``)."""
    context = prompts.context[:, -1:].repeat_interleave(num_samples, 0)
    return torch.cat((context.to(frames.device), frames), dim=1)
