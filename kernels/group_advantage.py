"""Group-relative advantages for GRPO (and RLOO / Dr.GRPO).

Every prompt is sampled G times; each sample's advantage is its reward relative to the other samples
of its group:

    grpo: A_i = r_i - mean_g                     rloo: A_i = r_i - mean_{j != i in g} r_j = n/(n-1) (r_i - mean_g)

divided by ``std_g + eps`` (scale="group", unbiased std), by ``std_batch + eps`` (scale="batch") or by
nothing (scale="none", Dr.GRPO). Groups are either fixed-size consecutive slices (``group_size``) or
the sets of equal ids in ``group_index`` (any non-negative ids, any order, uneven sizes).

Robustness: non-finite rewards (NaN, e.g. a video the reward model could not score, or +-inf) are
left out of every statistic and get advantage 0; a group with fewer than two finite rewards, or whose
finite rewards are all equal, gets exactly 0 for every member. The output never holds NaN or inf.
"""
from __future__ import annotations

from typing import Optional

import torch

from ._common import (FLOAT_DTYPES, HAS_TRITON, INDEX_DTYPES, check_choice, check_positive, checking_values,
                      check_same_device, check_shape, check_tensor, next_pow2, num_warps_for, use_triton, tl, triton)
from ._launch import launch

if HAS_TRITON:
    _FLT_MAX = tl.constexpr(3.4028234663852886e38)

SCALES = ("group", "batch", "none")
ESTIMATORS = ("grpo", "rloo")
_SCALE_CODE = {"group": 0, "batch": 1, "none": 2}
# One program holds a whole group in registers; larger groups (never seen in GRPO) take the reference.
_MAX_GROUP_BLOCK = 1 << 14


def _check_inputs(rewards, group_size, group_index, scale, estimator, eps) -> float:
    check_tensor("rewards", rewards, ndim=1, dtypes=FLOAT_DTYPES + (torch.float64,))
    n = rewards.shape[0]
    if (group_size is None) == (group_index is None):
        raise ValueError("exactly one of group_size or group_index must be given")
    if group_size is not None:
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0:
            raise ValueError(f"group_size must be a positive int, got {group_size!r}")
        if n % group_size != 0:
            raise ValueError(f"group_size={group_size} does not divide N={n}")
    else:
        check_tensor("group_index", group_index, ndim=1, dtypes=INDEX_DTYPES)
        check_shape("group_index", group_index, (n,))
        check_same_device(rewards=rewards, group_index=group_index)
        if checking_values() and bool((group_index < 0).any()):
            raise ValueError("group_index must hold non-negative group ids")
    check_choice("scale", scale, SCALES)
    check_choice("estimator", estimator, ESTIMATORS)
    return check_positive("eps", eps, allow_zero=True)


def _batch_std(r: torch.Tensor) -> torch.Tensor:
    """Unbiased std of the finite entries of ``r`` (0 with fewer than two); a 0-d tensor, no host sync."""
    valid = torch.isfinite(r)
    count = valid.sum().to(r.dtype)
    mean = torch.where(valid, r, 0).sum() / count.clamp_min(1)
    dev = torch.where(valid, r - mean, 0)
    return ((dev * dev).sum() / (count - 1).clamp_min(1)).sqrt()


@torch.no_grad()
def group_advantage_reference(
    rewards: torch.Tensor,
    group_size: Optional[int] = None,
    group_index: Optional[torch.Tensor] = None,
    scale: str = "group",
    estimator: str = "grpo",
    eps: float = 1e-6,
) -> torch.Tensor:
    """PyTorch reference (the spec). Computes in float64 for float64 rewards, else in fp32."""
    eps = _check_inputs(rewards, group_size, group_index, scale, estimator, eps)
    return _group_advantage_torch(rewards, group_size, group_index, scale, estimator, eps)


def _group_advantage_torch(rewards, group_size, group_index, scale, estimator, eps) -> torch.Tensor:
    dtype = torch.float64 if rewards.dtype == torch.float64 else torch.float32
    r = rewards.to(dtype)
    n = r.shape[0]
    if group_size is not None:
        ids = torch.arange(n, device=r.device) // group_size
        num_groups = n // group_size
    else:
        uniq, ids = torch.unique(group_index, return_inverse=True)
        num_groups = uniq.numel()

    valid = torch.isfinite(r)
    zeros = torch.zeros(num_groups, dtype=dtype, device=r.device)
    count = zeros.index_add(0, ids, valid.to(dtype))
    mean = zeros.index_add(0, ids, torch.where(valid, r, 0)) / count.clamp_min(1)
    dev = torch.where(valid, r - mean[ids], 0)
    std = (zeros.index_add(0, ids, dev * dev) / (count - 1).clamp_min(1)).sqrt()
    inf = torch.tensor(float("inf"), dtype=dtype, device=r.device)
    gmax = zeros.scatter_reduce(0, ids, torch.where(valid, r, -inf), "amax", include_self=False)
    gmin = zeros.scatter_reduce(0, ids, torch.where(valid, r, inf), "amin", include_self=False)
    if scale == "group":
        denom = std + eps
    elif scale == "batch":
        denom = (_batch_std(r) + eps).expand(num_groups)
    else:
        denom = torch.ones_like(std)
    # denom == 0 only with eps=0 and a std that is 0 (or underflows): treat the group as degenerate.
    live = (count > 1) & (gmax > gmin) & (denom > 0)

    adv = dev / torch.where(denom > 0, denom, 1)[ids]
    if estimator == "rloo":
        adv = adv * (count / (count - 1).clamp_min(1))[ids]
    return torch.where(valid & live[ids], adv, 0)


if HAS_TRITON:

    @triton.jit
    def _group_advantage_kernel(
        r_ptr, perm_ptr, start_ptr, count_ptr, batch_std_ptr, out_ptr,
        group_size, eps,
        FIXED: tl.constexpr, SCALE: tl.constexpr, RLOO: tl.constexpr, BLOCK: tl.constexpr,
    ):
        g = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        if FIXED:
            in_group = offs < group_size
            idx = g * group_size + offs
        else:
            # Members of group g sit at perm[start_g : start_g + count_g] (stable sort by id).
            start = tl.load(start_ptr + g)
            in_group = offs < tl.load(count_ptr + g)
            idx = tl.load(perm_ptr + start + offs, mask=in_group, other=0)
        r = tl.load(r_ptr + idx, mask=in_group, other=0.0).to(tl.float32)
        valid = in_group & (tl.abs(r) <= _FLT_MAX)  # false for NaN and +-inf

        count = tl.sum(valid.to(tl.float32), axis=0)
        mean = tl.sum(tl.where(valid, r, 0.0), axis=0) / tl.maximum(count, 1.0)
        dev = tl.where(valid, r - mean, 0.0)
        std = tl.sqrt(tl.sum(dev * dev, axis=0) / tl.maximum(count - 1.0, 1.0))
        gmax = tl.max(tl.where(valid, r, -float("inf")), axis=0)
        gmin = tl.min(tl.where(valid, r, float("inf")), axis=0)

        live = (count > 1.5) & (gmax > gmin)
        adv = dev
        if SCALE != 2:
            if SCALE == 0:
                denom = std + eps
            else:
                denom = tl.load(batch_std_ptr).to(tl.float32) + eps
            # denom == 0 only with eps=0 and a std that is 0 (or underflows): the group is degenerate.
            live = live & (denom > 0.0)
            adv = adv / tl.where(denom > 0.0, denom, 1.0)
        if RLOO:
            adv = adv * (count / tl.maximum(count - 1.0, 1.0))
        # Two wheres, not `valid & live`: the interpreter cannot `&` a block with a scalar boolean.
        adv = tl.where(live, tl.where(valid, adv, 0.0), 0.0)
        tl.store(out_ptr + idx, adv, mask=in_group)


def _group_advantage_triton(rewards, group_size, group_index, scale, estimator, eps) -> Optional[torch.Tensor]:
    """Launches the kernel; None when a group is too large for one program."""
    n = rewards.shape[0]
    r = rewards.contiguous()
    out = torch.empty(n, dtype=torch.float32, device=r.device)
    if n == 0:
        return out
    if group_size is not None:
        num_groups, max_size = n // group_size, group_size
        perm = starts = counts = r  # unused by the FIXED kernel
    else:
        sorted_ids, perm = torch.sort(group_index, stable=True)
        counts = torch.unique_consecutive(sorted_ids, return_counts=True)[1]
        starts = torch.cumsum(counts, 0) - counts
        num_groups, max_size = counts.numel(), int(counts.max())
    block = next_pow2(max_size)
    if block > _MAX_GROUP_BLOCK:
        return None
    batch_std = _batch_std(r.float()) if scale == "batch" else out
    launch(
        _group_advantage_kernel, (num_groups,),
        r, perm, starts, counts, batch_std, out,
        group_size or 0, eps,
        FIXED=group_size is not None, SCALE=_SCALE_CODE[scale], RLOO=estimator == "rloo", BLOCK=block,
        num_warps=num_warps_for(block),
    )
    return out


@torch.no_grad()
def group_advantage(
    rewards: torch.Tensor,
    group_size: Optional[int] = None,
    group_index: Optional[torch.Tensor] = None,
    scale: str = "group",
    estimator: str = "grpo",
    eps: float = 1e-6,
) -> torch.Tensor:
    """Group-relative advantages [N] in fp32 (see the module docstring). Not differentiable.

    rewards: [N] float. Give exactly one of ``group_size`` (consecutive groups of that size; must
    divide N) or ``group_index`` ([N] integer group ids). ``scale`` is "group", "batch" or "none";
    ``estimator`` is "grpo" or "rloo"; ``eps`` (>= 0) is added to the std before dividing.
    """
    eps = _check_inputs(rewards, group_size, group_index, scale, estimator, eps)
    if use_triton(rewards, group_index):
        out = _group_advantage_triton(rewards, group_size, group_index, scale, estimator, eps)
        if out is not None:
            return out
    return _group_advantage_torch(rewards, group_size, group_index, scale, estimator, eps).float()
