"""Log-probabilities (and entropies) of chosen token ids under temperature-scaled logits.

With x = z / τ:  logp = x[id] - logsumexp(x)  and  entropy = -Σ_v softmax(x)_v · log_softmax(x)_v.

The Triton forward streams each row once in BLOCK_V chunks with an online (rescaled) logsumexp and
keeps only the row's lse (and entropy), so no [rows, V] log-softmax is ever materialised. The backward
streams the row once more and recomputes p = exp(x - lse):
    dz = (g_logp · (onehot(id) - p) - g_entropy · p · (x - lse + H)) / τ.
"""
from __future__ import annotations

from typing import Optional

import torch

from ._common import (FLOAT_DTYPES, HAS_TRITON, INDEX_DTYPES, check_index_range, check_positive, check_same_device,
                      check_shape, check_tensor, next_pow2, num_warps_for, use_triton, tl, triton)
from ._launch import launch

# Largest vocabulary chunk one program holds at a time (tests lower it to exercise the chunk loop).
MAX_BLOCK_V = 4096


def token_logprobs_reference(logits: torch.Tensor, ids: torch.Tensor, temperature: float = 1.0,
                             return_entropy: bool = False):
    """The spec: plain PyTorch, differentiable by autograd; float64 in -> float64 out, else fp32."""
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    log_probs = torch.log_softmax(logits.to(dtype) / temperature, dim=-1)
    logp = log_probs.gather(-1, ids.long().unsqueeze(-1)).squeeze(-1)
    if not return_entropy:
        return logp
    probs = log_probs.exp()
    # -inf logits have p = 0 and contribute nothing (0 · -inf would be NaN).
    entropy = -(probs * torch.where(probs > 0, log_probs, 0.0)).sum(-1)
    return logp, entropy


if HAS_TRITON:

    @triton.jit
    def _token_logprobs_fwd_kernel(
        z_ptr, z_row_stride, ids_ptr, logp_ptr, lse_ptr, ent_ptr, V, temperature,
        RETURN_ENTROPY: tl.constexpr, BLOCK_V: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        z_row = z_ptr + row * z_row_stride
        cols = tl.arange(0, BLOCK_V)
        m = float("-inf")  # running max of x
        s = 0.0  # Σ exp(x - m)
        t = 0.0  # Σ exp(x - m) · (x - m): centred on m so the entropy avoids lse - E[x] cancellation
        for start in range(0, V, BLOCK_V):
            offs = start + cols
            x = tl.load(z_row + offs, mask=offs < V, other=float("-inf")).to(tl.float32) / temperature
            m_new = tl.maximum(m, tl.max(x, axis=0))
            # While every logit seen so far is -inf, centre on 0 so exp() gives 0 rather than NaN.
            c = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp(m - c)
            e = tl.exp(x - c)
            if RETURN_ENTROPY:
                # Re-centre the old sum on the new max, then add this chunk (p = 0 terms add nothing).
                t = alpha * (t + s * (tl.where(s > 0, m, c) - c))
                t += tl.sum(e * tl.where(e > 0, x - c, 0.0), axis=0)
            s = s * alpha + tl.sum(e, axis=0)
            m = m_new
        log_s = tl.log(s)
        idx = tl.load(ids_ptr + row).to(tl.int64)
        x_id = tl.load(z_row + idx).to(tl.float32) / temperature
        # (x_id - m) - log(s) rather than x_id - lse: exact subtraction first, no rounding at |lse| scale.
        tl.store(logp_ptr + row, (x_id - m) - log_s)
        tl.store(lse_ptr + row, m + log_s)
        if RETURN_ENTROPY:
            tl.store(ent_ptr + row, log_s - t / s)

    @triton.jit
    def _token_logprobs_bwd_kernel(
        z_ptr, z_row_stride, ids_ptr, lse_ptr, ent_ptr, g_logp_ptr, g_ent_ptr, dz_ptr, dz_row_stride,
        V, temperature,
        HAS_ENTROPY: tl.constexpr, BLOCK_V: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        z_row = z_ptr + row * z_row_stride
        dz_row = dz_ptr + row * dz_row_stride
        cols = tl.arange(0, BLOCK_V)
        idx = tl.load(ids_ptr + row).to(tl.int64)
        lse = tl.load(lse_ptr + row)
        g_logp = tl.load(g_logp_ptr + row).to(tl.float32)
        if HAS_ENTROPY:
            entropy = tl.load(ent_ptr + row)
            g_ent = tl.load(g_ent_ptr + row).to(tl.float32)
        for start in range(0, V, BLOCK_V):
            offs = start + cols
            in_row = offs < V
            x = tl.load(z_row + offs, mask=in_row, other=float("-inf")).to(tl.float32) / temperature
            log_p = x - lse
            p = tl.exp(log_p)
            dx = g_logp * (tl.where(offs == idx, 1.0, 0.0) - p)
            if HAS_ENTROPY:
                dx -= g_ent * p * tl.where(p > 0, log_p + entropy, 0.0)
            tl.store(dz_row + offs, (dx / temperature).to(dz_ptr.dtype.element_ty), mask=in_row)


def _launch_config(V: int):
    block = min(next_pow2(V), MAX_BLOCK_V)
    return block, num_warps_for(block)


def rows_forward(z: torch.Tensor, ids: torch.Tensor, temperature: float, return_entropy: bool):
    """Forward on [rows, V] logits (unit stride along V): (logp, lse, entropy or None), all fp32 [rows].
    Triton when ``use_triton(z)``, else the same math in PyTorch. Shared with fused_linear_logprobs."""
    if not use_triton(z):
        x = z.float() / temperature
        lse = torch.logsumexp(x, dim=-1)
        logp = x.gather(-1, ids.long().unsqueeze(-1)).squeeze(-1) - lse
        entropy = None
        if return_entropy:
            log_p = x - lse.unsqueeze(-1)
            entropy = -(log_p.exp() * torch.where(log_p > float("-inf"), log_p, 0.0)).sum(-1)
        return logp, lse, entropy
    rows, V = z.shape
    logp = torch.empty(rows, dtype=torch.float32, device=z.device)
    lse = torch.empty_like(logp)
    entropy = torch.empty_like(logp) if return_entropy else None
    block, num_warps = _launch_config(V)
    launch(
        _token_logprobs_fwd_kernel, (rows,),
        z, z.stride(0), ids, logp, lse, entropy if return_entropy else lse, V, temperature,
        RETURN_ENTROPY=return_entropy, BLOCK_V=block, num_warps=num_warps,
    )
    return logp, lse, entropy


def rows_backward(z: torch.Tensor, ids: torch.Tensor, lse: torch.Tensor, entropy: Optional[torch.Tensor],
                  g_logp: torch.Tensor, g_ent: Optional[torch.Tensor], temperature: float) -> torch.Tensor:
    """Gradient w.r.t. [rows, V] logits from the saved lse (and entropy), in the logits' dtype."""
    has_entropy = entropy is not None
    g_logp = g_logp.float().contiguous()  # an expanded (stride-0) grad becomes a real buffer
    g_ent = g_ent.float().contiguous() if has_entropy else g_logp
    if not use_triton(z):
        log_p = z.float() / temperature - lse.unsqueeze(-1)
        p = log_p.exp()
        dx = -g_logp.unsqueeze(-1) * p
        dx.scatter_add_(-1, ids.long().unsqueeze(-1), g_logp.unsqueeze(-1))
        if has_entropy:
            dx -= g_ent.unsqueeze(-1) * p * torch.where(p > 0, log_p + entropy.unsqueeze(-1), 0.0)
        return (dx / temperature).to(z.dtype)
    rows, V = z.shape
    dz = torch.empty((rows, V), dtype=z.dtype, device=z.device)
    block, num_warps = _launch_config(V)
    launch(
        _token_logprobs_bwd_kernel, (rows,),
        z, z.stride(0), ids, lse, entropy if has_entropy else lse, g_logp, g_ent, dz, dz.stride(0),
        V, temperature,
        HAS_ENTROPY=has_entropy, BLOCK_V=block, num_warps=num_warps,
    )
    return dz


class _TokenLogprobsFunction(torch.autograd.Function):
    """Autograd over rows_forward / rows_backward; token_logprobs uses it on the Triton path."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, ids: torch.Tensor, temperature: float, return_entropy: bool):
        logp, lse, entropy = rows_forward(z, ids, temperature, return_entropy)
        ctx.save_for_backward(z, ids, lse, entropy)
        ctx.temperature = temperature
        return (logp, entropy) if return_entropy else logp

    @staticmethod
    def backward(ctx, g_logp: torch.Tensor, g_ent: Optional[torch.Tensor] = None):
        z, ids, lse, entropy = ctx.saved_tensors
        return rows_backward(z, ids, lse, entropy, g_logp, g_ent, ctx.temperature), None, None, None


def token_logprobs(logits: torch.Tensor, ids: torch.Tensor, temperature: float = 1.0,
                   return_entropy: bool = False):
    """Log-probability of ``ids`` under ``softmax(logits / temperature)``.

    logits: [N, T, V] or [M, V] in fp32/fp16/bf16; ids: integer tensor of shape ``logits.shape[:-1]``
    with values in [0, V). Returns logp (fp32, shape of ids) and, when ``return_entropy``, the entropy
    of each row's distribution too. Differentiable w.r.t. ``logits`` (including through the entropy).
    """
    check_tensor("logits", logits, ndim=(2, 3), dtypes=FLOAT_DTYPES)
    check_tensor("ids", ids, dtypes=INDEX_DTYPES)
    check_shape("ids", ids, logits.shape[:-1])
    check_same_device(logits=logits, ids=ids)
    temperature = check_positive("temperature", temperature)
    if not isinstance(return_entropy, bool):
        raise ValueError(f"return_entropy must be a bool, got {type(return_entropy).__name__}")
    V = logits.shape[-1]
    if V == 0:
        raise ValueError("logits must have a non-empty last (vocabulary) dimension")
    check_index_range("ids", ids, V)

    if ids.numel() == 0 or not use_triton(logits, ids):
        return token_logprobs_reference(logits, ids, temperature, return_entropy)

    z = logits.reshape(-1, V)
    if z.stride(-1) != 1:
        z = z.contiguous()
    out = _TokenLogprobsFunction.apply(z, ids.reshape(-1).contiguous(), temperature, return_entropy)
    if return_entropy:
        return out[0].view(ids.shape), out[1].view(ids.shape)
    return out.view(ids.shape)
