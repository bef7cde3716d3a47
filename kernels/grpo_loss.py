"""GRPO clipped policy-gradient loss with optional k3 KL penalty, as used by TRL, verl and DAPO.

Per token, with A the row's advantage and ratio = exp(logp - old_logp)
(``is_level="sequence"``, GSPO: exp of the row's masked mean log-ratio, shared by every token of the row):
    pg  = -min(min(ratio, delta) · A, clamp(ratio, 1 - eps_low, 1 + eps_high) · A)   (no cap if delta is None)
    kl  = exp(ref - logp) - (ref - logp) - 1
    per_token = pg + beta · kl
aggregated over valid tokens by ``loss_agg``:
    "token-mean"           Σ per_token / Σ mask                       (DAPO, TRL "dapo")
    "seq-mean-token-mean"  mean over non-empty rows of the row mean   (original GRPO, TRL "grpo")
    "seq-sum-norm"         Σ per_token / (N · T)                      (Dr.GRPO, T = padded length)

Every aggregation weights all valid tokens of a row equally (by w_row), so the gradient is local:
    d loss / d logp_t = w_row · (d pg / d ratio · ratio + beta · (1 - exp(ref_t - logp_t))).
At sequence level the row's n tokens share one ratio whose log is the mean of their log-ratios; the
n identical pg terms times 1/n from the mean give the same formula. The Triton kernel therefore
computes the loss and its gradient in one pass per row (plus a first pass for the sequence-level mean).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from ._common import (
    FLOAT_DTYPES,
    HAS_TRITON,
    INDEX_DTYPES,
    check_choice,
    check_positive,
    check_same_device,
    check_shape,
    check_tensor,
    mask_or_ones,
    next_pow2,
    use_triton,
)
from ._launch import launch
from .token_logprobs import token_logprobs

if HAS_TRITON:
    import triton
    import triton.language as tl

LOSS_AGGS = ("token-mean", "seq-mean-token-mean", "seq-sum-norm")
IS_LEVELS = ("token", "sequence")
METRICS = ("kl", "clip_frac_low", "clip_frac_high", "clip_frac", "ratio_mean")

# Largest chunk of a row one program holds at a time (tests lower it to exercise the chunk loop).
MAX_BLOCK_T = 1024


def aggregate_tokens(per_token: torch.Tensor, mask: Optional[torch.Tensor],
                     loss_agg: str = "token-mean") -> torch.Tensor:
    """Reduce a per-token term [N, T] over the valid tokens (mask: [N, T] bool or 0/1, None = all) as
    ``loss_agg`` says: token-mean (sum / valid tokens), seq-mean-token-mean (mean over non-empty rows of each
    row's token mean) or seq-sum-norm (sum / (N * T), Dr.GRPO). Masked entries may hold anything (even inf)."""
    check_choice("loss_agg", loss_agg, LOSS_AGGS)
    N, T = per_token.shape
    mask = mask_or_ones(mask, per_token)
    masked = torch.where(mask, per_token, 0.0)
    n_row = mask.sum(1).to(per_token.dtype)
    if loss_agg == "token-mean":
        return masked.sum() / n_row.sum().clamp(min=1)
    if loss_agg == "seq-mean-token-mean":
        return (masked.sum(1) / n_row.clamp(min=1)).sum() / (n_row > 0).sum().clamp(min=1)
    return masked.sum() / max(N * T, 1)


def grpo_loss_reference(logp: torch.Tensor, old_logp: Optional[torch.Tensor], advantages: torch.Tensor,
                        mask: Optional[torch.Tensor] = None, ref_logp: Optional[torch.Tensor] = None, *,
                        eps_low: float = 0.2, eps_high: float = 0.2, delta: Optional[float] = None,
                        beta: float = 0.0, loss_agg: str = "token-mean",
                        is_level: str = "token") -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """The spec: plain PyTorch, differentiable w.r.t. logp; float64 logp -> float64 results, else fp32."""
    dtype = torch.float64 if logp.dtype == torch.float64 else torch.float32
    N, T = logp.shape
    valid = mask_or_ones(mask, logp)
    w = valid.to(dtype)
    # Padded positions may hold anything (even inf): zero them so they cannot leak NaN into sums or grads.
    lp = torch.where(valid, logp.to(dtype), 0.0)
    old = lp.detach() if old_logp is None else torch.where(valid, old_logp.detach().to(dtype), 0.0)
    adv = advantages.detach().to(dtype)
    adv = adv[:, None] if adv.ndim == 1 else torch.where(valid, adv, 0.0)
    n_row = w.sum(1)
    n_tok = n_row.sum()

    log_ratio = lp - old
    if is_level == "sequence":
        log_ratio = ((log_ratio * w).sum(1, keepdim=True) / n_row.clamp(min=1)[:, None]).expand(N, T)
    ratio = torch.exp(log_ratio)
    capped = ratio if delta is None else ratio.clamp(max=delta)
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high)
    per_token = -torch.minimum(capped * adv, clipped * adv)
    kl = None
    if ref_logp is not None:
        d = torch.where(valid, ref_logp.detach().to(dtype), 0.0) - lp
        kl = torch.exp(d) - d - 1
        if beta > 0:
            per_token = per_token + beta * kl

    loss = aggregate_tokens(per_token, valid, loss_agg)

    with torch.no_grad():
        denom = n_tok.clamp(min=1)
        r = ratio.detach()
        low = (r < 1 - eps_low) & (adv < 0)
        high = (r > 1 + eps_high) & (adv > 0)
        metrics = {
            "kl": (kl * w).sum() / denom if kl is not None else torch.zeros((), dtype=dtype, device=logp.device),
            "clip_frac_low": (low * w).sum() / denom,
            "clip_frac_high": (high * w).sum() / denom,
            "clip_frac": ((low | high) * w).sum() / denom,
            "ratio_mean": (r * w).sum() / denom,
        }
    return loss, metrics


if HAS_TRITON:

    @triton.jit
    def _grpo_loss_kernel(
        logp_ptr, old_ptr, ref_ptr, adv_ptr, mask_ptr, row_count_ptr, norm_ptr, grad_ptr, partial_ptr,
        T, eps_low, eps_high, delta, beta,
        HAS_REF: tl.constexpr, HAS_DELTA: tl.constexpr, SEQ_MEAN_AGG: tl.constexpr,
        SEQ_LEVEL: tl.constexpr, ADV_PER_TOKEN: tl.constexpr, N_PARTIAL: tl.constexpr, BLOCK_T: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        base = row * T
        cols = tl.arange(0, BLOCK_T)
        if not ADV_PER_TOKEN:
            adv = tl.load(adv_ptr + row).to(tl.float32)
        n_row = tl.load(row_count_ptr + row)
        # Loss weight of each valid token of this row.
        w = 1.0 / tl.load(norm_ptr)
        if SEQ_MEAN_AGG:
            w = w / tl.maximum(n_row, 1.0)

        if SEQ_LEVEL:
            acc = tl.zeros([BLOCK_T], dtype=tl.float32)
            for start in range(0, T, BLOCK_T):
                offs = start + cols
                in_row = offs < T
                valid = in_row & (tl.load(mask_ptr + base + offs, mask=in_row, other=0) != 0)
                lp = tl.load(logp_ptr + base + offs, mask=valid, other=0.0).to(tl.float32)
                old = tl.load(old_ptr + base + offs, mask=valid, other=0.0).to(tl.float32)
                acc += lp - old
            seq_log_ratio = tl.sum(acc, axis=0) / tl.maximum(n_row, 1.0)

        loss_acc = tl.zeros([BLOCK_T], dtype=tl.float32)
        kl_acc = tl.zeros([BLOCK_T], dtype=tl.float32)
        below_acc = tl.zeros([BLOCK_T], dtype=tl.float32)
        above_acc = tl.zeros([BLOCK_T], dtype=tl.float32)
        ratio_acc = tl.zeros([BLOCK_T], dtype=tl.float32)
        for start in range(0, T, BLOCK_T):
            offs = start + cols
            in_row = offs < T
            valid = in_row & (tl.load(mask_ptr + base + offs, mask=in_row, other=0) != 0)
            lp = tl.load(logp_ptr + base + offs, mask=valid, other=0.0).to(tl.float32)
            if ADV_PER_TOKEN:
                adv = tl.load(adv_ptr + base + offs, mask=valid, other=0.0).to(tl.float32)
            if SEQ_LEVEL:
                log_ratio = tl.zeros([BLOCK_T], dtype=tl.float32) + seq_log_ratio
            else:
                log_ratio = lp - tl.load(old_ptr + base + offs, mask=valid, other=0.0).to(tl.float32)
            ratio = tl.exp(log_ratio)
            clipped = tl.minimum(tl.maximum(ratio, 1.0 - eps_low), 1.0 + eps_high)
            live_clipped = (ratio >= 1.0 - eps_low) & (ratio <= 1.0 + eps_high)
            capped = ratio
            if HAS_DELTA:
                capped = tl.minimum(ratio, delta)
            obj_capped = capped * adv
            obj_clipped = clipped * adv
            use_capped = obj_capped <= obj_clipped
            per_token = -tl.minimum(obj_capped, obj_clipped)
            # d pg / d ratio is -A where the selected branch still moves with the ratio, 0 where clamped.
            # (At ties both branches have the same derivative, so the choice there does not matter.)
            if HAS_DELTA:
                live = tl.where(use_capped, ratio <= delta, live_clipped)
            else:
                live = use_capped | live_clipped
            grad = tl.where(live, -adv * ratio, 0.0)
            if HAS_REF:
                ref = tl.load(ref_ptr + base + offs, mask=valid, other=0.0).to(tl.float32)
                d = ref - lp
                e_d = tl.exp(d)
                kl = e_d - d - 1.0
                per_token += beta * kl
                grad += beta * (1.0 - e_d)
                kl_acc += tl.where(valid, kl, 0.0)
            tl.store(grad_ptr + base + offs, tl.where(valid, w * grad, 0.0), mask=in_row)
            loss_acc += tl.where(valid, per_token, 0.0)
            below_acc += tl.where(valid & (ratio < 1.0 - eps_low), tl.where(adv < 0, 1.0, 0.0), 0.0)
            above_acc += tl.where(valid & (ratio > 1.0 + eps_high), tl.where(adv > 0, 1.0, 0.0), 0.0)
            ratio_acc += tl.where(valid, ratio, 0.0)

        # A ratio below the range is clipped only when A < 0, above it only when A > 0: the two are
        # exclusive, so clip_frac = low + high.
        out = partial_ptr + row * N_PARTIAL
        low_sum = tl.sum(below_acc, axis=0)
        high_sum = tl.sum(above_acc, axis=0)
        tl.store(out + 0, w * tl.sum(loss_acc, axis=0))
        tl.store(out + 1, tl.sum(kl_acc, axis=0))
        tl.store(out + 2, low_sum)
        tl.store(out + 3, high_sum)
        tl.store(out + 4, low_sum + high_sum)
        tl.store(out + 5, tl.sum(ratio_acc, axis=0))


class _GRPOLossFunction(torch.autograd.Function):
    """Triton path: forward computes the loss, the metric sums and d loss / d logp in one kernel."""

    @staticmethod
    def forward(ctx, logp, old_logp, advantages, valid, ref_logp, opts):
        eps_low, eps_high, delta, beta, loss_agg, is_level = opts
        N, T = logp.shape
        logp = logp.contiguous()
        old_logp = logp if old_logp is None else old_logp.contiguous()  # logp - logp == 0: ratio exactly 1
        has_ref = ref_logp is not None
        ref_logp = ref_logp.contiguous() if has_ref else logp
        advantages = advantages.contiguous()
        mask_u8 = valid.contiguous().view(torch.uint8)

        row_count = valid.sum(1, dtype=torch.float32)
        n_tok = row_count.sum()
        if loss_agg == "token-mean":
            norm = n_tok.clamp(min=1)
        elif loss_agg == "seq-mean-token-mean":
            norm = (row_count > 0).sum(dtype=torch.float32).clamp(min=1)
        else:
            norm = torch.full((), float(max(N * T, 1)), dtype=torch.float32, device=logp.device)

        grad = torch.empty((N, T), dtype=torch.float32, device=logp.device)
        partial = torch.empty((N, len(METRICS) + 1), dtype=torch.float32, device=logp.device)
        launch(
            _grpo_loss_kernel, (N,),
            logp, old_logp, ref_logp, advantages, mask_u8, row_count, norm.reshape(1), grad, partial,
            T, eps_low, eps_high, 0.0 if delta is None else delta, beta,
            HAS_REF=has_ref, HAS_DELTA=delta is not None, SEQ_MEAN_AGG=loss_agg == "seq-mean-token-mean",
            SEQ_LEVEL=is_level == "sequence", ADV_PER_TOKEN=advantages.ndim == 2, N_PARTIAL=partial.shape[1],
            BLOCK_T=min(next_pow2(T), MAX_BLOCK_T), num_warps=4,
        )
        sums = partial.sum(0)
        loss = sums[0]
        metrics = sums[1:] / n_tok.clamp(min=1)
        ctx.mark_non_differentiable(metrics)
        ctx.save_for_backward(grad)
        ctx.logp_dtype = logp.dtype
        return loss, metrics

    @staticmethod
    def backward(ctx, g_loss, g_metrics):
        (grad,) = ctx.saved_tensors
        return (grad * g_loss).to(ctx.logp_dtype), None, None, None, None, None


def _check_grpo_args(N: int, T: int, old_logp, advantages, ref_logp,
                     eps_low, eps_high, delta, beta, loss_agg, is_level) -> None:
    """Validate everything but the log-probs (or logits), the mask and devices."""
    if old_logp is not None:
        check_tensor("old_logp", old_logp, ndim=2, dtypes=FLOAT_DTYPES)
        check_shape("old_logp", old_logp, (N, T))
    check_tensor("advantages", advantages, ndim=(1, 2), dtypes=FLOAT_DTYPES)
    check_shape("advantages", advantages, (N,) if advantages.ndim == 1 else (N, T))
    if advantages.ndim == 2 and is_level == "sequence":
        raise ValueError("advantages must be [N] (one per sequence) with is_level='sequence': a sequence-level "
                         "ratio has one importance weight per sequence, so per-token advantages do not apply")
    if ref_logp is not None:
        check_tensor("ref_logp", ref_logp, ndim=2, dtypes=FLOAT_DTYPES)
        check_shape("ref_logp", ref_logp, (N, T))
    check_positive("eps_low", eps_low, allow_zero=True)
    if eps_low >= 1:
        raise ValueError(f"eps_low must be < 1 (the lower clip bound 1 - eps_low must be positive), got {eps_low}")
    check_positive("eps_high", eps_high, allow_zero=True)
    if delta is not None:
        check_positive("delta", delta)
        if delta <= 1:
            raise ValueError(f"delta must be > 1 (it caps the ratio from above), got {delta}")
    check_positive("beta", beta, allow_zero=True)
    check_choice("loss_agg", loss_agg, LOSS_AGGS)
    check_choice("is_level", is_level, IS_LEVELS)
    if beta > 0 and ref_logp is None:
        raise ValueError("ref_logp is required when beta > 0 (the KL penalty needs reference log-probs)")


def grpo_loss(logp: torch.Tensor, old_logp: Optional[torch.Tensor], advantages: torch.Tensor,
              mask: Optional[torch.Tensor] = None, ref_logp: Optional[torch.Tensor] = None, *,
              eps_low: float = 0.2, eps_high: float = 0.2, delta: Optional[float] = None, beta: float = 0.0,
              loss_agg: str = "token-mean",
              is_level: str = "token") -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """GRPO loss (0-d fp32) and metrics (dict of 0-d fp32: kl, clip_frac_low/high, clip_frac, ratio_mean).

    logp/old_logp/ref_logp: [N, T] per-token log-probs (old_logp None: the rollout policy is the current
    one, ratio exactly 1); advantages: [N] per sequence, or [N, T] per token (e.g. per-frame credit);
    mask: [N, T] bool or 0/1, None = all valid. Differentiable
    w.r.t. ``logp`` only. Metrics are masked means over valid tokens; an empty mask gives 0, never NaN.
    """
    check_tensor("logp", logp, ndim=2, dtypes=FLOAT_DTYPES)
    N, T = logp.shape
    _check_grpo_args(N, T, old_logp, advantages, ref_logp, eps_low, eps_high, delta, beta, loss_agg, is_level)
    valid = mask_or_ones(mask, logp)
    check_same_device(logp=logp, old_logp=old_logp, advantages=advantages, mask=mask, ref_logp=ref_logp)
    options = dict(eps_low=float(eps_low), eps_high=float(eps_high), delta=None if delta is None else float(delta),
                   beta=float(beta), loss_agg=loss_agg, is_level=is_level)

    if logp.numel() == 0 or not use_triton(logp, old_logp, advantages, mask, ref_logp):
        return grpo_loss_reference(logp, old_logp, advantages, valid, ref_logp, **options)

    loss, metrics = _GRPOLossFunction.apply(logp, old_logp, advantages, valid, ref_logp, tuple(options.values()))
    return loss, dict(zip(METRICS, metrics.unbind(0)))


def grpo_loss_from_logits(logits: torch.Tensor, ids: torch.Tensor, old_logp: Optional[torch.Tensor],
                          advantages: torch.Tensor, mask: Optional[torch.Tensor] = None,
                          ref_logp: Optional[torch.Tensor] = None, *, temperature: float = 1.0,
                          eps_low: float = 0.2, eps_high: float = 0.2, delta: Optional[float] = None,
                          beta: float = 0.0, loss_agg: str = "token-mean",
                          is_level: str = "token") -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """``grpo_loss(token_logprobs(logits, ids, temperature), ...)``, differentiable w.r.t. ``logits``.

    logits: [N, T, V]; ids: [N, T]. Ids at masked positions are ignored (they may be padding such as -100).
    The logits are read once forward (online logsumexp) and once backward (softmax recomputed from the
    saved lse); the [N, T] log-probs in between are the only intermediate.
    """
    check_tensor("logits", logits, ndim=3, dtypes=FLOAT_DTYPES)
    N, T, _ = logits.shape
    check_tensor("ids", ids, ndim=2, dtypes=INDEX_DTYPES)
    check_shape("ids", ids, (N, T))
    _check_grpo_args(N, T, old_logp, advantages, ref_logp, eps_low, eps_high, delta, beta, loss_agg, is_level)
    valid = mask_or_ones(mask, ids)
    check_same_device(logits=logits, ids=ids, old_logp=old_logp, advantages=advantages, mask=mask,
                      ref_logp=ref_logp)
    logp = token_logprobs(logits, ids.masked_fill(~valid, 0), temperature)
    return grpo_loss(logp, old_logp, advantages, valid, ref_logp, eps_low=eps_low, eps_high=eps_high,
                     delta=delta, beta=beta, loss_agg=loss_agg, is_level=is_level)
