"""In-training evaluation: the IDM reward of the policy's evaluation sampler on the run's fixed held-out prompts.

The videos come from ``rlir.eval.generation.held_out_videos`` (the path ``rlir eval`` takes), drawn from
generators seeded per prompt on their own stream (``EVAL``), so evaluating never touches the training RNG streams,
never changes a run, and draws the same videos whatever the number of ranks. Each rank scores its share of the
prompts and the sums are all-reduced.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence

import torch
import torch.nn as nn

from rlir.eval.generation import held_out_videos
from rlir.kernels import idm_reward
from rlir.models.generators import EVAL, GroupGenerators
from rlir.parallel import Parallel
from rlir.policies import Policy, Prompts
from rlir.rewards import idm_logits

from .config import GRPOConfig
from .metrics import head_names


@torch.no_grad()
def held_out_metrics(cfg: GRPOConfig, policy: Policy, prompts: Prompts, idms: Mapping[str, Optional[nn.Module]],
                     parallel: Parallel, device: torch.device, names: Optional[Sequence[str]] = None, judge=None):
    """-> (metrics, videos). Metrics: ``<prefix>/reward_mean`` and ``<prefix>/head_acc/<head>`` for each
    ``prefix: idm`` of ``idms`` (None: left out), over ``cfg.eval.num_samples`` videos of each prompt; with a
    ``judge`` (Crafter's verifier, ``rlir.envs.crafter_verifier.VideoJudge``) also ``verifier/scroll_fidelity``
    (ties miss), ``verifier/stillness`` and ``verifier/content``, so the curves show whether an IDM's gain moves the
    world. Videos: the first sample of each of this rank's prompts, uint8 [k, F, 3, h, w]."""
    def per_prompt(start: int, stop: int) -> GroupGenerators:
        return GroupGenerators.seeded(cfg.seed, 0, range(start, stop), device, stream=EVAL)

    frames, actions = held_out_videos(policy, prompts, per_prompt, samples=cfg.eval.num_samples, parallel=parallel)
    m = {}
    for prefix, idm in idms.items():
        if idm is None:
            continue
        heads = len(names) if names else len(getattr(idm, "head_sizes", [0]))
        if len(frames):
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
        m.update(_verifier_means(judge, frames, actions, parallel, device))
    return m, frames[::cfg.eval.num_samples]


def _verifier_means(judge, frames, actions, parallel: Parallel, device) -> Dict[str, float]:
    """The verifier's shares over every rank's videos: hits and counts are summed, then divided."""
    sums = torch.zeros(6, dtype=torch.float64, device=device)
    if len(frames):
        hits = judge.hits(frames, actions)
        move = hits["is_move"]
        counts = [(hits["scrolled_as_commanded"] & move).sum(), move.sum(), (hits["still"] & ~move).sum(),
                  (~move).sum(), hits["content"].sum(), move.size]
        sums = torch.tensor([float(c) for c in counts], dtype=torch.float64, device=device)
    s = parallel.all_reduce(sums).tolist()
    share = lambda a, b: a / b if b else float("nan")
    return {"verifier/scroll_fidelity": share(s[0], s[1]), "verifier/stillness": share(s[2], s[3]),
            "verifier/content": share(s[4], s[5])}
