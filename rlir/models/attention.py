"""One attention function, several backends, all checked against the fp32 "math" reference.

Shapes: q [B, Hq, S, D], k and v [B, Hkv, Skv, D] with Hq a multiple of Hkv (GQA: query head h
reads kv head h // (Hq // Hkv), as in ``repeat_interleave``). ``mask`` is boolean, True = may
attend, broadcastable to [B, Hq, S, Skv], or a ``rlir.models.masks.FrameCausal`` spec: index
arithmetic that "flex" turns into a BlockMask built once per (spec, S, Skv, device) and cached, and
the other backends into a dense [S, Skv] mask, cached the same way. ``causal`` aligns the queries
with the *last* S keys (query i sits at key position i + Skv - S), which is what KV-cached decoding
needs; PyTorch's ``is_causal`` aligns top-left instead, so it is only used when S == Skv. A query
row with no allowed key is undefined (backends differ: NaN or zeros).

Backends: "math" (explicit softmax(QK^T/sqrt(D) + mask) V in fp32), "sdpa" (default,
``F.scaled_dot_product_attention``), "flex" (``flex_attention`` with a block mask; unfused and
forward-only on CPU), "flash_attn" and "xformers" (when installed; CUDA fp16/bf16 only;
flash_attn takes no ``mask``).
"""
from __future__ import annotations

import functools
import importlib.util
import math
from typing import Optional, Union

import torch
import torch.nn.functional as F

from .masks import FrameCausal

BACKENDS = ("math", "sdpa", "flex", "flash_attn", "xformers")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def available_backends() -> list[str]:
    """Backends usable in this install (flash_attn/xformers also need CUDA tensors at call time)."""
    names = ["math", "sdpa"]
    if _importable("torch.nn.attention.flex_attention"):
        names.append("flex")
    names += [name for name in ("flash_attn", "xformers") if _importable(name)]
    return names


def causal_mask(s: int, skv: int, device=None) -> torch.Tensor:
    """[S, Skv] bool: query i may attend key j iff j <= i + (Skv - S)."""
    return torch.arange(skv, device=device)[None, :] <= torch.arange(s, device=device)[:, None] + (skv - s)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
              mask: Union[torch.Tensor, FrameCausal, None] = None, backend: str = "sdpa") -> torch.Tensor:
    """softmax(q k^T / sqrt(D) + mask) v -> [B, Hq, S, D] in q's dtype."""
    _check_inputs(q, k, v, causal, mask)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    if causal and q.shape[2] == 1:
        causal = False  # the single query is the last position: every key is allowed
    if isinstance(mask, FrameCausal) and backend != "flex":
        mask = _dense_mask(mask, q.shape[2], k.shape[2], str(q.device))
    return _IMPLS[backend](q, k, v, causal, mask)


@functools.lru_cache(maxsize=16)
def _dense_mask(spec: FrameCausal, s: int, skv: int, device: str) -> torch.Tensor:
    return spec.dense(s, skv, device)


@functools.lru_cache(maxsize=32)
def _frame_block_mask(spec: FrameCausal, s: int, skv: int, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(spec.mask_mod(s, skv, device), None, None, s, skv, device=device)


def _check_inputs(q, k, v, causal, mask) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.ndim != 4:
            raise ValueError(f"{name} must be a 4-D tensor [B, H, S, D], got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have one shape, got k {tuple(k.shape)} and v {tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must agree in batch and head dim")
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"q heads ({q.shape[1]}) must be a multiple of k/v heads ({k.shape[1]})")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if causal and k.shape[2] < q.shape[2]:
        raise ValueError(f"causal attention needs at least as many keys ({k.shape[2]}) as queries ({q.shape[2]})")
    if isinstance(mask, FrameCausal):
        if causal:
            raise ValueError("causal must be False with a FrameCausal mask (the spec is causal already)")
        mask.check(q.shape[2], k.shape[2])
    elif mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor or a FrameCausal, got "
                             f"{getattr(mask, 'dtype', type(mask).__name__)}")
        full = torch.Size((q.shape[0], q.shape[1], q.shape[2], k.shape[2]))
        try:
            fits = torch.broadcast_shapes(mask.shape, full) == full
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to [B, Hq, S, Skv] = {tuple(full)}")


def _allowed(q, k, causal, mask) -> Optional[torch.Tensor]:
    """The boolean mask (causal folded in), or None when everything is allowed."""
    allowed = causal_mask(q.shape[2], k.shape[2], q.device) if causal else None
    if mask is not None:
        allowed = mask if allowed is None else allowed & mask
    return allowed


def _math(q, k, v, causal, mask):
    groups = q.shape[1] // k.shape[1]
    qf, kf, vf = q.float(), k.float().repeat_interleave(groups, 1), v.float().repeat_interleave(groups, 1)
    scores = qf @ kf.transpose(-1, -2) / math.sqrt(q.shape[-1])
    allowed = _allowed(q, k, causal, mask)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    return (scores.softmax(-1) @ vf).to(q.dtype)


def _sdpa(q, k, v, causal, mask):
    gqa = q.shape[1] != k.shape[1]
    if gqa and not causal and mask is None:
        # Fold each kv head's query heads into the query length (a decode step becomes one small MHA):
        # ~2.5x faster than enable_gqa for single-token decoding on CPU.
        b, hq, s, d = q.shape
        hkv = k.shape[1]
        out = F.scaled_dot_product_attention(q.reshape(b, hkv, hq // hkv * s, d), k, v)
        return out.reshape(b, hq, s, d)
    if causal and mask is None and q.shape[2] == k.shape[2]:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=_allowed(q, k, causal, mask), enable_gqa=gqa)


@functools.lru_cache(maxsize=32)
def _causal_block_mask(s: int, skv: int, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    offset = skv - s
    return create_block_mask(lambda b, h, qi, ki: ki <= qi + offset, None, None, s, skv, device=device)


def _flex(q, k, v, causal, mask):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    if q.device.type == "cpu" and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise NotImplementedError("attention backend 'flex' has no backward on CPU: run it under torch.no_grad() "
                                  "or train with backend 'sdpa'")
    b, hq, s, skv = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    if isinstance(mask, FrameCausal):
        block_mask = _frame_block_mask(mask, s, skv, str(q.device))
    elif mask is None:
        block_mask = _causal_block_mask(s, skv, str(q.device)) if causal else None
    else:
        full = mask.expand(b, hq, s, skv)
        offset = skv - s

        def mask_mod(bi, hi, qi, ki):
            keep = full[bi, hi, qi, ki]
            return keep & (ki <= qi + offset) if causal else keep

        block_mask = create_block_mask(mask_mod, b, hq, s, skv, device=q.device)
    return flex_attention(q, k, v, block_mask=block_mask, enable_gqa=hq != k.shape[1])


def _needs_cuda_half(backend, q):
    if not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"attention backend {backend!r} needs CUDA fp16/bf16 tensors, got {q.dtype} on {q.device}")


def _flash_attn(q, k, v, causal, mask):
    if not _importable("flash_attn"):
        raise ValueError("attention backend 'flash_attn' needs the flash-attn package (pip install flash-attn)")
    if mask is not None:
        raise ValueError("attention backend 'flash_attn' takes no boolean mask; use 'sdpa' or 'flex'")
    _needs_cuda_half("flash_attn", q)
    from flash_attn import flash_attn_func

    # flash-attn >= 2.1 aligns causal masks bottom-right (our convention) and handles GQA natively.
    out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=causal)
    return out.transpose(1, 2)


def _xformers(q, k, v, causal, mask):
    if not _importable("xformers"):
        raise ValueError("attention backend 'xformers' needs the xformers package (pip install xformers)")
    _needs_cuda_half("xformers", q)
    from xformers.ops import fmha, memory_efficient_attention

    b, hq, s, d = q.shape
    hkv, skv = k.shape[1], k.shape[2]
    groups = hq // hkv
    # GQA in xformers' 5-D layout [B, M, G, H, K]: G = kv heads, H = query heads per kv head.
    q5 = q.transpose(1, 2).reshape(b, s, hkv, groups, d)
    k5 = k.transpose(1, 2)[:, :, :, None].expand(b, skv, hkv, groups, d)
    v5 = v.transpose(1, 2)[:, :, :, None].expand(b, skv, hkv, groups, d)
    if mask is None:
        bias = fmha.attn_bias.LowerTriangularFromBottomRightMask() if causal else None
    else:
        allowed = _allowed(q, k, causal, mask).expand(b, hq, s, skv).reshape(b, hkv, groups, s, skv)
        # xformers wants the bias's last dim 8-aligned in memory: allocate padded, then slice.
        padded = -(-skv // 8) * 8
        bias = torch.zeros(b, hkv, groups, s, padded, dtype=q.dtype, device=q.device)[..., :skv]
        bias.masked_fill_(~allowed, float("-inf"))
    out = memory_efficient_attention(q5, k5, v5, attn_bias=bias)
    return out.reshape(b, s, hq, d).transpose(1, 2)


_IMPLS = {"math": _math, "sdpa": _sdpa, "flex": _flex, "flash_attn": _flash_attn, "xformers": _xformers}
