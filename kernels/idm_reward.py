"""The RLIR reward: how well an inverse dynamics model (IDM) recovers the conditioning actions.

The IDM reads a generated video back into per-frame action logits, one categorical head per action
group. With ``mode``:

    "exact"    (the paper) a frame scores 1 when the argmax of EVERY head equals its action, else 0;
    "per_head" a frame scores the fraction of heads whose argmax equals the action;
    "loglik"   a frame scores sum_h log_softmax(logits_h)[action_h] (a dense reward).

reward[n] = sum_t score[n, t] * mask[n, t] / sum_t mask[n, t]; a row without a valid frame gets NaN,
which ``group_advantage`` leaves out of its group's statistics and gives advantage 0.
Argmax ties break to the lowest index (as torch.argmax). Rewards are not differentiable: everything
here runs under torch.no_grad.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Union

import torch

from ._common import (FLOAT_DTYPES, HAS_TRITON, INDEX_DTYPES, check_choice, check_index_range, check_same_device,
                      check_shape, check_tensor, mask_or_ones, next_pow2, num_warps_for, use_triton, tl, triton)
from ._launch import launch
from .group_advantage import group_advantage

MODES = ("exact", "per_head", "loglik")
_MODE_CODE = {"exact": 0, "per_head": 1, "loglik": 2}
# Widest head the kernel holds in one block; wider heads (never seen in IDMs) take the reference.
_MAX_BLOCK_C = 1 << 14
# Target elements of one [BLOCK_T, BLOCK_C] logits tile.
_TILE = 4096

Logits = Union[torch.Tensor, Sequence[torch.Tensor]]


class IDMReward(NamedTuple):
    reward: torch.Tensor  # [N] matched valid frames / valid frames; NaN for a row without valid frames
    frame_match: torch.Tensor  # [N, T] per-frame score (see ``mode``), 0 where masked
    head_accuracy: torch.Tensor  # [H] argmax accuracy per head over all valid frames (NaN if none)


def _check_inputs(logits: Logits, actions, mask, mode, head_sizes):
    """Validates. Returns the heads as a list of [N, T, C_h] tensors, the packed [N, T, sum C_h] tensor
    (None when given a list), actions [N, T, H], a bool mask [N, T] and the head sizes."""
    check_choice("mode", mode, MODES)
    if head_sizes is not None and not isinstance(head_sizes, (list, tuple)):
        raise ValueError(f"head_sizes must be a list of ints, got {type(head_sizes).__name__}")
    dtypes = FLOAT_DTYPES + (torch.float64,)
    if isinstance(logits, (list, tuple)):
        if len(logits) == 0:
            raise ValueError("logits must be a non-empty list of [N, T, C_h] tensors")
        for h, lg in enumerate(logits):
            check_tensor(f"logits[{h}]", lg, ndim=3, dtypes=dtypes)
            check_shape(f"logits[{h}]", lg, (*logits[0].shape[:2], lg.shape[2]))
        heads, packed = list(logits), None
        sizes = [lg.shape[2] for lg in heads]
        if head_sizes is not None and list(head_sizes) != sizes:
            raise ValueError(f"head_sizes {list(head_sizes)} disagrees with the logits list's widths {sizes}")
    else:
        check_tensor("logits", logits, ndim=3, dtypes=dtypes)
        width = logits.shape[2]
        sizes = [width] if head_sizes is None else list(head_sizes)
        if not sizes or any(isinstance(c, bool) or not isinstance(c, int) or c <= 0 for c in sizes):
            raise ValueError(f"head_sizes must be a non-empty list of positive ints, got {head_sizes!r}")
        if sum(sizes) != width:
            raise ValueError(f"head_sizes {sizes} sum to {sum(sizes)}, but logits has width {width}")
        heads, packed = list(torch.split(logits, sizes, dim=2)), logits
    if min(sizes) <= 0:
        raise ValueError(f"every logits head needs at least one class, got widths {sizes}")
    n, t, num_heads = heads[0].shape[0], heads[0].shape[1], len(sizes)

    check_tensor("actions", actions, ndim=(2, 3), dtypes=INDEX_DTYPES)
    if actions.ndim == 2:
        if num_heads != 1:
            raise ValueError(f"actions of shape [N, T] only fit a single head; there are {num_heads}: "
                             f"give actions as [N, T, {num_heads}]")
        actions = actions.unsqueeze(-1)
    check_shape("actions", actions, (n, t, num_heads))
    mask = mask_or_ones(mask, actions[..., 0])
    check_same_device(actions=actions, mask=mask, **{f"logits[{h}]": lg for h, lg in enumerate(heads)})
    for h, c in enumerate(sizes):
        check_index_range(f"actions[..., {h}]", actions[..., h], c, valid=mask)
    return heads, packed, actions, mask, sizes


def _idm_reward_torch(heads, actions, mask, mode) -> IDMReward:
    dtype = torch.float64 if any(lg.dtype == torch.float64 for lg in heads) else torch.float32
    n, t = mask.shape
    hits = []
    loglik = torch.zeros(n, t, dtype=dtype, device=mask.device)
    for h, lg in enumerate(heads):
        lg = lg.to(dtype)
        # Masked frames may hold any action (padding ids such as -100): clamp so gather stays in bounds.
        a = actions[..., h].long().clamp(0, lg.shape[-1] - 1)
        hits.append(lg.argmax(-1) == a)
        if mode == "loglik":
            loglik += torch.log_softmax(lg, dim=-1).gather(-1, a.unsqueeze(-1)).squeeze(-1)
    hits = torch.stack(hits, dim=-1) & mask.unsqueeze(-1)  # [N, T, H]
    if mode == "exact":
        score = hits.all(-1).to(dtype)
    elif mode == "per_head":
        score = hits.to(dtype).mean(-1)
    else:
        score = loglik
    score = torch.where(mask, score, 0)
    valid = mask.to(dtype).sum(-1)
    reward = score.sum(-1) / valid  # 0/0 = NaN for a row without valid frames
    head_accuracy = hits.to(dtype).sum((0, 1)) / valid.sum()
    return IDMReward(reward, score, head_accuracy)


@torch.no_grad()
def idm_reward_reference(
    logits: Logits,
    actions: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    mode: str = "exact",
    head_sizes: Optional[Sequence[int]] = None,
) -> IDMReward:
    """PyTorch reference (the spec). Computes in float64 when any logits are float64, else in fp32."""
    heads, _, actions, mask, _ = _check_inputs(logits, actions, mask, mode, head_sizes)
    return _idm_reward_torch(heads, actions, mask, mode)


if HAS_TRITON:

    @triton.jit
    def _idm_reward_kernel(
        logits_ptr, actions_ptr, mask_ptr, head_off_ptr, head_size_ptr,
        frame_ptr, reward_ptr, count_ptr, hits_ptr,
        T, H,
        stride_ln, stride_lt, stride_an, stride_at, stride_ah, stride_mn, stride_mt,
        MODE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr,
    ):
        # One program per video: loops over blocks of frames, and per block over the heads.
        n = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK_C)
        head_ids = tl.arange(0, BLOCK_H)
        score_acc = tl.zeros([BLOCK_T], dtype=tl.float32)
        count_acc = tl.zeros([BLOCK_T], dtype=tl.float32)
        hits_acc = tl.zeros([BLOCK_H], dtype=tl.float32)
        for t0 in range(0, T, BLOCK_T):
            t = t0 + tl.arange(0, BLOCK_T)
            in_t = t < T
            valid = tl.load(mask_ptr + n * stride_mn + t * stride_mt, mask=in_t, other=0) != 0
            num_hits = tl.zeros([BLOCK_T], dtype=tl.float32)
            loglik = tl.zeros([BLOCK_T], dtype=tl.float32)
            for h in range(H):
                offset = tl.load(head_off_ptr + h)
                in_c = cols < tl.load(head_size_ptr + h)
                a = tl.load(actions_ptr + n * stride_an + t * stride_at + h * stride_ah, mask=in_t, other=0)
                a = a.to(tl.int32)
                x = tl.load(
                    logits_ptr + n * stride_ln + t[:, None] * stride_lt + offset + cols[None, :],
                    mask=in_t[:, None] & in_c[None, :], other=0.0,
                ).to(tl.float32)
                # -inf only in the padding columns, so padding frames (t >= T) stay NaN-free.
                x = tl.where(in_c[None, :], x, -float("inf"))
                hit = tl.where(valid & (tl.argmax(x, axis=1, tie_break_left=True) == a), 1.0, 0.0)
                num_hits += hit
                hits_acc += tl.where(head_ids == h, tl.sum(hit, axis=0), 0.0)
                if MODE == 2:
                    x_max = tl.max(x, axis=1)
                    lse = x_max + tl.log(tl.sum(tl.exp(x - x_max[:, None]), axis=1))
                    target = tl.sum(tl.where(cols[None, :] == a[:, None], x, 0.0), axis=1)
                    loglik += target - lse
            if MODE == 0:
                score = tl.where(num_hits == H, 1.0, 0.0)  # num_hits is 0 on masked frames
            elif MODE == 1:
                score = num_hits / H
            else:
                score = tl.where(valid, loglik, 0.0)
            tl.store(frame_ptr + n * T + t, score, mask=in_t)
            score_acc += score
            count_acc += tl.where(valid, 1.0, 0.0)
        count = tl.sum(count_acc, axis=0)
        reward = tl.sum(score_acc, axis=0) / tl.maximum(count, 1.0)
        tl.store(reward_ptr + n, tl.where(count > 0.5, reward, float("nan")))
        tl.store(count_ptr + n, count)
        tl.store(hits_ptr + n * H + head_ids, hits_acc, mask=head_ids < H)


def _idm_reward_triton(heads, packed, actions, mask, mode, sizes) -> Optional[IDMReward]:
    """One launch over all rows; None where the reference should run (empty input, too wide a head)."""
    n, t, num_heads = actions.shape
    block_c = next_pow2(max(sizes))
    if n * t == 0 or block_c > _MAX_BLOCK_C:
        return None
    if packed is None:
        packed = heads[0] if len(heads) == 1 else torch.cat(heads, dim=2)
    if packed.stride(2) != 1:
        packed = packed.contiguous()
    device = packed.device
    offsets = torch.tensor([0] + sizes[:-1], device=device).cumsum(0)
    head_sizes = torch.tensor(sizes, device=device)
    frame = torch.empty(n, t, dtype=torch.float32, device=device)
    reward = torch.empty(n, dtype=torch.float32, device=device)
    count = torch.empty(n, dtype=torch.float32, device=device)
    hits = torch.empty(n, num_heads, dtype=torch.float32, device=device)
    mask_u8 = mask.view(torch.uint8)
    block_t = max(1, min(next_pow2(t), _TILE // block_c))
    launch(
        _idm_reward_kernel, (n,),
        packed, actions, mask_u8, offsets, head_sizes,
        frame, reward, count, hits,
        t, num_heads,
        packed.stride(0), packed.stride(1), actions.stride(0), actions.stride(1), actions.stride(2),
        mask_u8.stride(0), mask_u8.stride(1),
        MODE=_MODE_CODE[mode], BLOCK_T=block_t, BLOCK_C=block_c, BLOCK_H=next_pow2(num_heads),
        num_warps=num_warps_for(block_t * block_c),
    )
    return IDMReward(reward, frame, hits.sum(0) / count.sum())


@torch.no_grad()
def idm_reward(
    logits: Logits,
    actions: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    mode: str = "exact",
    head_sizes: Optional[Sequence[int]] = None,
) -> IDMReward:
    """Per-video IDM reward (see the module docstring); fp32 outputs, not differentiable.

    logits: a list of H tensors [N, T, C_h], or one packed [N, T, sum C_h] tensor with ``head_sizes``
    (packed without head_sizes is a single head). actions: integer [N, T, H] (or [N, T] for one head)
    class ids, each in [0, C_h) on valid frames. mask: [N, T] bool or 0/1, None = every frame valid.
    """
    heads, packed, actions, mask, sizes = _check_inputs(logits, actions, mask, mode, head_sizes)
    if use_triton(*heads, actions, mask):
        out = _idm_reward_triton(heads, packed, actions, mask, mode, sizes)
        if out is not None:
            return out
    return IDMReward(*(x.float() for x in _idm_reward_torch(heads, actions, mask, mode)))


@torch.no_grad()
def idm_advantage(
    logits: Logits,
    actions: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    *,
    group_size: Optional[int] = None,
    group_index: Optional[torch.Tensor] = None,
    mode: str = "exact",
    head_sizes: Optional[Sequence[int]] = None,
    scale: str = "group",
    estimator: str = "grpo",
    eps: float = 1e-6,
) -> tuple[IDMReward, torch.Tensor]:
    """IDM logits straight to GRPO advantages: ``idm_reward`` then ``group_advantage`` (two launches).

    Rows without a valid frame (reward NaN) get advantage 0 and do not enter their group's statistics.
    Returns (IDMReward, advantages [N] fp32).
    """
    out = idm_reward(logits, actions, mask, mode=mode, head_sizes=head_sizes)
    adv = group_advantage(out.reward, group_size=group_size, group_index=group_index,
                          scale=scale, estimator=estimator, eps=eps)
    return out, adv
