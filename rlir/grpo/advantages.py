"""A step's advantages (``advantage.*``): the IDM reward of every video, relative to the other samples of its prompt.

``advantages`` is what the trainer calls; the kernels do the arithmetic (``rlir.kernels.idm_reward`` scores the
videos, ``rlir.kernels.group_advantage`` normalises each group).

- credit ``video`` (the paper): one advantage per video, from its reward; ``grpo_loss`` broadcasts it to every slot.
- credit ``frame`` / ``reward_to_go``: the group advantage of each generated frame position (``frame_credit``'s
  value of frame k compared with frame k of the other G - 1 samples, which were commanded the same action), given
  to the log-prob slots of that frame (``Rollout.slot_frame``).
- scale ``batch`` divides by the std of the whole batch: over several ranks every rank's values are gathered and
  normalised as one process would, and each rank keeps its own rows. ``group`` and ``none`` never leave a rank, since
  a group never spans ranks.
"""
from __future__ import annotations

from typing import Tuple

import torch

from rlir.kernels import IDMReward, group_advantage, idm_reward
from rlir.parallel import Parallel
from rlir.policies import Rollout
from rlir.schema import ConfigError

from .config import AdvantageConfig


def advantages(logits, rollout: Rollout, advantage: AdvantageConfig, reward_mode: str, parallel: Parallel, *,
               policy_name: str) -> Tuple[IDMReward, torch.Tensor]:
    """IDM logits of this rank's videos -> (their IDMReward, advantages fp32: [N] with video credit, else [N, S]).
    ``policy_name`` names the policy that made ``rollout`` when per-frame credit finds no ``slot_frame``."""
    rew = idm_reward(logits, rollout.actions, mode=reward_mode)
    if advantage.credit == "video":
        adv = group_normalised(rew.reward, rollout.num_samples, advantage, parallel)
    else:
        adv = frame_advantages(frame_credit(rew.frame_match, advantage.credit), rollout, advantage, parallel,
                               policy_name=policy_name)
    return rew, adv


def frame_advantages(values: torch.Tensor, rollout: Rollout, advantage: AdvantageConfig,
                     parallel: Parallel = Parallel(), *, policy_name: str) -> torch.Tensor:
    """Per-frame values [N, n] -> advantages [N, S]: frame k of every video compared with frame k of the other
    samples of its prompt, and each log-prob slot given its frame's advantage."""
    if rollout.slot_frame is None:
        raise ConfigError("advantage.credit", f"'{advantage.credit}' needs Rollout.slot_frame, which "
                          f"{policy_name}.rollout does not set")
    by_frame = group_normalised(values, rollout.num_samples, advantage, parallel)
    return by_frame[:, rollout.slot_frame.to(by_frame.device)].contiguous()


def frame_credit(frame_match: torch.Tensor, credit: str) -> torch.Tensor:
    """Per-frame values [N, n] to normalise within each group: ``frame`` the frame's own IDM match; ``reward_to_go``
    the matches of that frame and every later one, since frame k conditions frames k+1.. of its video."""
    values = frame_match.float()
    if credit == "reward_to_go":
        return values.flip(-1).cumsum(-1).flip(-1)
    return values


def group_normalised(values: torch.Tensor, group_size: int, advantage: AdvantageConfig,
                     parallel: Parallel = Parallel()) -> torch.Tensor:
    """Group advantages of this rank's values: [N] one per video, or [N, n] one per frame position (each column
    normalised on its own). Rows are prompt-major, so groups are ``group_size`` consecutive rows."""
    everything = parallel.all_gather_rows(values) if advantage.scale == "batch" else values
    flat = everything.t().reshape(-1) if everything.ndim == 2 else everything  # frame-major: groups stay contiguous
    adv = group_advantage(flat, group_size=group_size, scale=advantage.scale, estimator=advantage.estimator)
    adv = adv.view(everything.shape[::-1]).t() if everything.ndim == 2 else adv
    if everything is values:
        return adv
    first = parallel.rank * len(values)
    return adv[first:first + len(values)]
