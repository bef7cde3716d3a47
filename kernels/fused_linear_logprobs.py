"""Per-token log-probs straight from hidden states, without ever holding the full [M, V] logits.

    logp[m] = token_logprobs(hidden[m] @ weight.T, ids[m], temperature)

Rows are processed in chunks: a chunk's logits (``chunk_size`` x V) are made by one matmul, reduced
to (logp, lse, entropy) by the token_logprobs row kernel, and dropped. The backward recomputes each
chunk's logits, turns them into dlogits with the row backward kernel (from the saved lse), and
multiplies back: grad_hidden[chunk] = dlogits @ weight, grad_weight += dlogits.T @ hidden[chunk]
(accumulated across chunks in fp32). Peak extra memory is O(chunk_size x V) instead of O(M x V),
for one more matmul in the backward. Like Liger's fused linear losses and verl's linear_cross_entropy,
but returning per-token log-probs, which is what GRPO needs.
"""
from __future__ import annotations

from typing import Optional

import torch

from ._common import (FLOAT_DTYPES, INDEX_DTYPES, check_index_range, check_positive, check_same_device, check_shape,
                      check_tensor)
from .grpo_loss import grpo_loss
from .token_logprobs import rows_backward, rows_forward, token_logprobs_reference

# Logit elements per chunk when chunk_size is not given: 64 MiB of fp32 logits whatever the vocabulary.
CHUNK_ELEMENTS = 1 << 24


def fused_linear_logprobs_reference(hidden: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor,
                                    temperature: float = 1.0, return_entropy: bool = False):
    """The spec: materialise the logits, then token_logprobs_reference (float64 in -> float64 out)."""
    dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    logits = hidden.to(dtype) @ weight.to(dtype).T
    return token_logprobs_reference(logits, ids, temperature, return_entropy)


def default_chunk_size(vocab: int) -> int:
    return max(1, CHUNK_ELEMENTS // vocab)


class _FusedLinearLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, ids, temperature, chunk_size, return_entropy):
        rows = hidden.shape[0]
        logp = torch.empty(rows, dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(logp)
        entropy = torch.empty_like(logp) if return_entropy else None
        for start in range(0, rows, chunk_size):
            end = min(start + chunk_size, rows)
            z = hidden[start:end] @ weight.T
            lp, ls, ent = rows_forward(z, ids[start:end], temperature, return_entropy)
            logp[start:end], lse[start:end] = lp, ls
            if return_entropy:
                entropy[start:end] = ent
        ctx.save_for_backward(hidden, weight, ids, lse, entropy)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        return (logp, entropy) if return_entropy else logp

    @staticmethod
    def backward(ctx, g_logp, g_ent=None):
        hidden, weight, ids, lse, entropy = ctx.saved_tensors
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        for start in range(0, hidden.shape[0], ctx.chunk_size):
            end = min(start + ctx.chunk_size, hidden.shape[0])
            h = hidden[start:end]
            dz = rows_backward(h @ weight.T, ids[start:end], lse[start:end],
                               None if entropy is None else entropy[start:end], g_logp[start:end],
                               None if g_ent is None else g_ent[start:end], ctx.temperature)
            if need_hidden:
                grad_hidden[start:end] = dz @ weight
            if need_weight and dz.dtype == torch.float32:
                grad_weight.addmm_(dz.T, h)
            elif need_weight:
                grad_weight += (dz.T @ h).float()
        if need_weight:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None, None


def fused_linear_logprobs(hidden: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor,
                          temperature: float = 1.0, chunk_size: Optional[int] = None,
                          return_entropy: bool = False):
    """Log-probability of ``ids`` under ``softmax(hidden @ weight.T / temperature)``, chunked over rows.

    hidden: [M, H] or [N, T, H] (fp32/fp16/bf16); weight: [V, H] (same dtype; an lm head without bias);
    ids: integers in [0, V) of shape ``hidden.shape[:-1]``. Returns fp32 logp (and entropy) of the shape
    of ids; differentiable w.r.t. hidden and weight. ``chunk_size`` rows per chunk (default: as many as
    keep one chunk's logits at 2**24 elements).
    """
    check_tensor("hidden", hidden, ndim=(2, 3), dtypes=FLOAT_DTYPES)
    check_tensor("weight", weight, ndim=2, dtypes=FLOAT_DTYPES)
    check_tensor("ids", ids, dtypes=INDEX_DTYPES)
    check_shape("ids", ids, hidden.shape[:-1])
    check_same_device(hidden=hidden, weight=weight, ids=ids)
    if weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight must have shape [V, {hidden.shape[-1]}] to match hidden, got {tuple(weight.shape)}")
    if weight.dtype != hidden.dtype:
        raise ValueError(f"weight dtype {weight.dtype} must equal hidden dtype {hidden.dtype}")
    if weight.shape[0] == 0:
        raise ValueError("weight must have at least one row (vocabulary entry)")
    temperature = check_positive("temperature", temperature)
    if chunk_size is None:
        chunk_size = default_chunk_size(weight.shape[0])
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if not isinstance(return_entropy, bool):
        raise ValueError(f"return_entropy must be a bool, got {type(return_entropy).__name__}")
    check_index_range("ids", ids, weight.shape[0])

    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    if flat_hidden.shape[0] == 0:
        return fused_linear_logprobs_reference(hidden, weight, ids, temperature, return_entropy)
    out = _FusedLinearLogprobs.apply(flat_hidden, weight, ids.reshape(-1).contiguous(), temperature,
                                     chunk_size, return_entropy)
    if return_entropy:
        return out[0].view(ids.shape), out[1].view(ids.shape)
    return out.view(ids.shape)


def fused_linear_grpo_loss(hidden: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor,
                           old_logp: Optional[torch.Tensor], advantages: torch.Tensor,
                           mask: Optional[torch.Tensor] = None, ref_logp: Optional[torch.Tensor] = None, *,
                           temperature: float = 1.0, chunk_size: Optional[int] = None, **loss_options):
    """The GRPO loss from hidden states [N, T, H]: fused_linear_logprobs then grpo_loss (same options:
    eps_low, eps_high, delta, beta, loss_agg, is_level). Returns (loss, metrics)."""
    check_tensor("hidden", hidden, ndim=3)
    logp = fused_linear_logprobs(hidden, weight, ids, temperature, chunk_size)
    return grpo_loss(logp, old_logp, advantages, mask, ref_logp, **loss_options)
