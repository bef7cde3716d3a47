"""In-training evaluation: the IDM reward of the policy's evaluation sampler on fixed held-out prompts.

The videos come from ``Policy.generate(..., sampler="eval")``, the sampler ``rlir eval`` uses, drawn from
generators seeded per prompt on their own stream (``EVAL``), so evaluating never touches the training RNG
streams and never changes a run. Over N ranks each generates its share of the prompts and the sums are
all-reduced, so the metrics do not depend on N.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence

import torch
import torch.nn as nn

from rlir.kernels import idm_reward
from rlir.models.generators import EVAL, GroupGenerators
from rlir.rewards import idm_logits

from .config import GRPOConfig
from .distributed import Parallel
from .metrics import head_names
from .policy import Policy, Prompts


@torch.no_grad()
def held_out_reward(cfg: GRPOConfig, policy: Policy, prompts: Prompts, idms: Mapping[str, Optional[nn.Module]],
                    parallel: Parallel, device: torch.device,
                    names: Optional[Sequence[str]] = None) -> Dict[str, float]:
    """``<prefix>/reward_mean`` and ``<prefix>/head_acc/<head>`` for each ``prefix: idm`` of ``idms`` (None: left
    out), over ``cfg.eval.num_samples`` videos of each prompt."""
    lo, hi = parallel.shard(len(prompts))
    frames = None
    if hi > lo:
        mine = prompts.rows(lo, hi)
        generator = GroupGenerators.seeded(cfg.seed, 0, range(lo, hi), device, stream=EVAL)
        frames = policy.generate(mine, cfg.eval.num_samples, sampler="eval", generator=generator)
        actions = mine.actions.to(frames.device).repeat_interleave(cfg.eval.num_samples, 0)
    m = {}
    for prefix, idm in idms.items():
        if idm is None:
            continue
        heads = len(names) if names else len(getattr(idm, "head_sizes", [0]))
        if frames is not None:
            out = idm_reward(idm_logits(idm, frames, cfg.reward.idm_batch_size), actions, mode=cfg.reward.mode)
            r = out.reward.double()
            n = float(actions.shape[0] * actions.shape[1])
            sums = torch.cat([torch.stack([r.nansum(), (~r.isnan()).sum().double(), r.new_tensor(n)]),
                              out.head_accuracy.double() * n])
        else:  # a rank without prompts: zeros of the same shape
            sums = torch.zeros(3 + heads, dtype=torch.float64, device=device)
        sums = parallel.all_reduce(sums).tolist()
        m[f"{prefix}/reward_mean"] = sums[0] / sums[1] if sums[1] else float("nan")
        for name, acc in zip(head_names(names, len(sums) - 3), sums[3:]):
            m[f"{prefix}/head_acc/{name}"] = acc / sums[2] if sums[2] else float("nan")
    return m
