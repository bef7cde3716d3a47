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
from rlir.policies import Policy, Prompts
from rlir.rewards import idm_logits

from .config import GRPOConfig
from rlir.parallel import Parallel
from .metrics import head_names


@torch.no_grad()
def held_out_reward(cfg: GRPOConfig, policy: Policy, prompts: Prompts, idms: Mapping[str, Optional[nn.Module]],
                    parallel: Parallel, device: torch.device,
                    names: Optional[Sequence[str]] = None, judge=None, return_videos: bool = False):
    """``<prefix>/reward_mean`` and ``<prefix>/head_acc/<head>`` for each ``prefix: idm`` of ``idms`` (None: left
    out), over ``cfg.eval.num_samples`` videos of each prompt; with a ``judge`` (Crafter's verifier,
    ``rlir.envs.crafter_verifier.VideoJudge``) also ``verifier/scroll_fidelity`` (ties miss), ``verifier/stillness``
    and ``verifier/content``, so the curves show whether an IDM's gain moves the world. With ``return_videos``,
    (metrics, videos): the first sample of each of this rank's prompts, uint8 [n, F, 3, h, w] (None without any)."""
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
    if judge is not None:
        m.update(_verifier_means(judge, frames, actions if frames is not None else None, parallel, device))
    if return_videos:
        return m, None if frames is None else frames[::cfg.eval.num_samples]
    return m


def _verifier_means(judge, frames, actions, parallel: Parallel, device) -> Dict[str, float]:
    """The verifier's shares over every rank's videos: hits and counts are summed, then divided."""
    sums = torch.zeros(6, dtype=torch.float64, device=device)
    if frames is not None:
        hits = judge.hits(frames, actions)
        move = hits["is_move"]
        counts = [(hits["scrolled_as_commanded"] & move).sum(), move.sum(), (hits["still"] & ~move).sum(),
                  (~move).sum(), hits["content"].sum(), move.size]
        sums = torch.tensor([float(c) for c in counts], dtype=torch.float64, device=device)
    s = parallel.all_reduce(sums).tolist()
    share = lambda a, b: a / b if b else float("nan")
    return {"verifier/scroll_fidelity": share(s[0], s[1]), "verifier/stillness": share(s[2], s[3]),
            "verifier/content": share(s[4], s[5])}
