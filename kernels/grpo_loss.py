"""GRPO clipped policy-gradient loss with optional k3 KL penalty, as used by TRL, verl and DAPO.

Per token, with A the row's advantage and ratio = exp(logp - old_logp)
(``is_level="sequence"``, GSPO: exp of the row's masked mean log-ratio, shared by every token of the row):
    pg  = -min(min(ratio, delta) · A, clamp(ratio, 1 - eps_low, 1 + eps_high) · A)   (no cap if delta is None)
    kl  = exp(ref - logp) - (ref - logp) - 1
    per_token = pg + beta · kl
aggregated over valid tokens by ``loss_agg`` as a sum divided by ``loss_normaliser(mask, loss_agg)``:
    "token-mean"           Σ per_token / Σ mask                       (DAPO, TRL "dapo")
    "seq-mean-token-mean"  Σ row means / non-empty rows               (original GRPO, TRL "grpo")
    "seq-sum-norm"         Σ per_token / (N · T)                      (Dr.GRPO, T = padded length)
A caller that splits a batch into micro-batches (gradient accumulation), or follows another trainer's
convention, passes its own denominator as ``normaliser`` (as Liger's ``num_items_in_batch``): the
micro-batch losses then add up to the batch's loss, with no rescaling afterwards.

Every aggregation weights all valid tokens of a row equally (by w_row), so the gradient is local:
    d loss / d logp_t = w_row · (d pg / d ratio · ratio + beta · (1 - exp(ref_t - logp_t))).
At sequence level the row's n tokens share one ratio whose log is the mean of their log-ratios; the
n identical pg terms times 1/n from the mean give the same formula. The Triton kernel therefore
computes the loss and its gradient in one pass per row (plus a first pass for the sequence-level mean).
"""
from __future__ import annotations

from typing import Optional

import torch

from ._common import (FLOAT_DTYPES, HAS_TRITON, INDEX_DTYPES, check_choice, check_positive, check_same_device,
                      check_shape, check_tensor, mask_or_ones, next_pow2, use_triton, tl, triton)
from ._launch import launch
from .token_logprobs import token_logprobs

LOSS_AGGS = ("token-mean", "seq-mean-token-mean", "seq-sum-norm")
IS_LEVELS = ("token", "sequence")
METRICS = ("kl", "clip_frac_low", "clip_frac_high", "clip_frac", "ratio_mean")

# Largest chunk of a row one program holds at a time (tests lower it to exercise the chunk loop).
MAX_BLOCK_T = 1024


def loss_normaliser(mask: torch.Tensor, loss_agg: str = "token-mean") -> torch.Tensor:
    """The denominator ``loss_agg`` divides the summed per-token terms by, for the rows of ``mask`` ([N, T]
    bool or 0/1): valid tokens (token-mean), non-empty rows (seq-mean-token-mean, whose rows are first divided
    by their own token counts) or N * T (seq-sum-norm). fp32 0-d on mask's device, at least 1; no host read.

    The one place the aggregations' denominators are written: ``grpo_loss`` uses it unless given
    ``normaliser``, and a trainer computes it once over a whole minibatch and passes it to every micro-batch."""
    check_choice("loss_agg", loss_agg, LOSS_AGGS)
    check_tensor("mask", mask, ndim=2)
    valid = mask if mask.dtype == torch.bool else mask != 0
    if loss_agg == "token-mean":
        count = valid.sum(dtype=torch.float32)
    elif loss_agg == "seq-mean-token-mean":
        count = valid.any(1).sum(dtype=torch.float32)
    else:
        count = torch.full((), float(valid.numel()), dtype=torch.float32, device=valid.device)
    return count.clamp(min=1)


def _check_normaliser(normaliser) -> None:
    if isinstance(normaliser, torch.Tensor):
        if normaliser.numel() != 1 or normaliser.dtype.is_complex or normaliser.dtype == torch.bool:
            raise ValueError(f"normaliser must be a number or a one-element real tensor, got shape "
                             f"{tuple(normaliser.shape)} {normaliser.dtype}")
    else:
        check_positive("normaliser", normaliser)


def aggregate_tokens(per_token: torch.Tensor, mask: Optional[torch.Tensor], loss_agg: str = "token-mean",
                     normaliser=None) -> torch.Tensor:
    """Reduce a per-token term [N, T] over the valid tokens (mask: [N, T] bool or 0/1, None = all) as
    ``loss_agg`` says: the sum of the valid entries (seq-mean-token-mean: of each row's entries over its
    token count) divided by ``normaliser`` (default ``loss_normaliser(mask, loss_agg)``). Masked entries may
    hold anything (even inf)."""
    check_choice("loss_agg", loss_agg, LOSS_AGGS)
    valid = mask_or_ones(mask, per_token)
    masked = torch.where(valid, per_token, 0.0)
    if loss_agg == "seq-mean-token-mean":
        total = (masked.sum(1) / valid.sum(1).to(per_token.dtype).clamp(min=1)).sum()
    else:
        total = masked.sum()
    if normaliser is None:
        normaliser = loss_normaliser(valid, loss_agg)
    return total / torch.as_tensor(normaliser, device=per_token.device).to(total.dtype)


def grpo_loss_reference(logp: torch.Tensor, old_logp: Optional[torch.Tensor], advantages: torch.Tensor,
                        mask: Optional[torch.Tensor] = None, ref_logp: Optional[torch.Tensor] = None, *,
                        eps_low: float = 0.2, eps_high: float = 0.2, delta: Optional[float] = None,
                        beta: float = 0.0, loss_agg: str = "token-mean", is_level: str = "token",
                        normaliser=None, return_clip: bool = False):
    """The spec: plain PyTorch, differentiable w.r.t. logp; float64 logp -> float64 results, else fp32.
    Returns (loss, metrics), and the clip indicators (see ``grpo_loss``) with ``return_clip``."""
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

    loss = aggregate_tokens(per_token, valid, loss_agg, normaliser)

    with torch.no_grad():
        denom = n_tok.clamp(min=1)
        r = ratio.detach()
        low = (r < 1 - eps_low) & (adv < 0) & valid
        high = (r > 1 + eps_high) & (adv > 0) & valid
        metrics = {
            "kl": (kl * w).sum() / denom if kl is not None else torch.zeros((), dtype=dtype, device=logp.device),
            "clip_frac_low": (low * w).sum() / denom,
            "clip_frac_high": (high * w).sum() / denom,
            "clip_frac": ((low | high) * w).sum() / denom,
            "ratio_mean": (r * w).sum() / denom,
        }
    if return_clip:
        return loss, metrics, high.to(torch.int8) - low.to(torch.int8)
    return loss, metrics


if HAS_TRITON:

    @triton.jit
    def _load_tile(logp_ptr, mask_ptr, base, offs, T):
        """A tile of one row: which columns are in the row, which are valid (unmasked), their log-probs."""
        in_row = offs < T
        valid = in_row & (tl.load(mask_ptr + base + offs, mask=in_row, other=0) != 0)
        lp = tl.load(logp_ptr + base + offs, mask=valid, other=0.0).to(tl.float32)
        return in_row, valid, lp

    @triton.jit
    def _sequence_log_ratio(logp_ptr, old_ptr, mask_ptr, base, T, n_row, BLOCK_T: tl.constexpr):
        """is_level sequence: the mean of logp - old over the row's valid tokens."""
        acc = tl.zeros([BLOCK_T], dtype=tl.float32)
        for start in range(0, T, BLOCK_T):
            offs = start + tl.arange(0, BLOCK_T)
            in_row, valid, lp = _load_tile(logp_ptr, mask_ptr, base, offs, T)
            acc += lp - tl.load(old_ptr + base + offs, mask=valid, other=0.0).to(tl.float32)
        return tl.sum(acc, axis=0) / tl.maximum(n_row, 1.0)

    @triton.jit
    def _clipped_objective(ratio, adv, eps_low, eps_high, delta, HAS_DELTA: tl.constexpr):
        """The clipped (with delta also capped) policy-gradient loss of each token, and its derivative by logp."""
        clipped = tl.minimum(tl.maximum(ratio, 1.0 - eps_low), 1.0 + eps_high)
        live_clipped = (ratio >= 1.0 - eps_low) & (ratio <= 1.0 + eps_high)
        capped = ratio
        if HAS_DELTA:
            capped = tl.minimum(ratio, delta)
        obj_capped = capped * adv
        obj_clipped = clipped * adv
        use_capped = obj_capped <= obj_clipped
        # d pg / d ratio is -A where the selected branch still moves with the ratio, 0 where clamped.
        # (At ties both branches have the same derivative, so the choice there does not matter.)
        if HAS_DELTA:
            live = tl.where(use_capped, ratio <= delta, live_clipped)
        else:
            live = use_capped | live_clipped
        return -tl.minimum(obj_capped, obj_clipped), tl.where(live, -adv * ratio, 0.0)

    @triton.jit
    def _k3_kl(ref, lp):
        """The k3 estimate of KL(policy || reference) of each token, and its derivative by logp."""
        d = ref - lp
        e_d = tl.exp(d)
        return e_d - d - 1.0, 1.0 - e_d

    @triton.jit
    def _store_partials(out, loss_sum, kl_sum, low_sum, high_sum, ratio_sum):
        # A ratio below the range is clipped only when A < 0, above it only when A > 0: the two are
        # exclusive, so clip_frac = low + high.
        tl.store(out + 0, loss_sum)
        tl.store(out + 1, kl_sum)
        tl.store(out + 2, low_sum)
        tl.store(out + 3, high_sum)
        tl.store(out + 4, low_sum + high_sum)
        tl.store(out + 5, ratio_sum)

    @triton.jit
    def _grpo_loss_kernel(
        logp_ptr, old_ptr, ref_ptr, adv_ptr, mask_ptr, row_count_ptr, norm_ptr, grad_ptr, partial_ptr, clip_ptr,
        T, eps_low, eps_high, delta, beta,
        HAS_REF: tl.constexpr, HAS_DELTA: tl.constexpr, SEQ_MEAN_AGG: tl.constexpr, SEQ_LEVEL: tl.constexpr,
        ADV_PER_TOKEN: tl.constexpr, STORE_CLIP: tl.constexpr, N_PARTIAL: tl.constexpr, BLOCK_T: tl.constexpr,
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
            seq_log_ratio = _sequence_log_ratio(logp_ptr, old_ptr, mask_ptr, base, T, n_row, BLOCK_T)

        loss_acc = tl.zeros([BLOCK_T], dtype=tl.float32)
        kl_acc = tl.zeros([BLOCK_T], dtype=tl.float32)
        below_acc = tl.zeros([BLOCK_T], dtype=tl.float32)
        above_acc = tl.zeros([BLOCK_T], dtype=tl.float32)
        ratio_acc = tl.zeros([BLOCK_T], dtype=tl.float32)
        for start in range(0, T, BLOCK_T):
            offs = start + cols
            in_row, valid, lp = _load_tile(logp_ptr, mask_ptr, base, offs, T)
            if ADV_PER_TOKEN:
                adv = tl.load(adv_ptr + base + offs, mask=valid, other=0.0).to(tl.float32)
            if SEQ_LEVEL:
                log_ratio = tl.zeros([BLOCK_T], dtype=tl.float32) + seq_log_ratio
            else:
                log_ratio = lp - tl.load(old_ptr + base + offs, mask=valid, other=0.0).to(tl.float32)
            ratio = tl.exp(log_ratio)
            per_token, grad = _clipped_objective(ratio, adv, eps_low, eps_high, delta, HAS_DELTA)
            if HAS_REF:
                kl, d_kl = _k3_kl(tl.load(ref_ptr + base + offs, mask=valid, other=0.0).to(tl.float32), lp)
                # Selected, not multiplied by a zero beta: with beta 0 a huge ref - logp must not make 0 * inf = NaN,
                # as the reference skips the term.
                per_token += tl.where(beta > 0, beta * kl, 0.0)
                grad += tl.where(beta > 0, beta * d_kl, 0.0)
                kl_acc += tl.where(valid, kl, 0.0)
            tl.store(grad_ptr + base + offs, tl.where(valid, w * grad, 0.0), mask=in_row)
            loss_acc += tl.where(valid, per_token, 0.0)
            adv_t = tl.zeros([BLOCK_T], dtype=tl.float32) + adv  # a row's advantage as a block, like the ratio
            low = valid & (ratio < 1.0 - eps_low) & (adv_t < 0)
            high = valid & (ratio > 1.0 + eps_high) & (adv_t > 0)
            below_acc += tl.where(low, 1.0, 0.0)
            above_acc += tl.where(high, 1.0, 0.0)
            ratio_acc += tl.where(valid, ratio, 0.0)
            if STORE_CLIP:
                tl.store(clip_ptr + base + offs, tl.where(low, -1, tl.where(high, 1, 0)).to(tl.int8), mask=in_row)
        _store_partials(partial_ptr + row * N_PARTIAL, w * tl.sum(loss_acc, axis=0), tl.sum(kl_acc, axis=0),
                        tl.sum(below_acc, axis=0), tl.sum(above_acc, axis=0), tl.sum(ratio_acc, axis=0))


class _GRPOLossFunction(torch.autograd.Function):
    """Triton path: forward computes the loss, the metric sums, the clip indicators (when asked) and
    d loss / d logp in one kernel."""

    @staticmethod
    def forward(ctx, logp, old_logp, advantages, valid, ref_logp, normaliser, opts):
        eps_low, eps_high, delta, beta, loss_agg, is_level, return_clip = opts
        N, T = logp.shape
        logp = logp.contiguous()
        old_logp = logp if old_logp is None else old_logp.contiguous()  # logp - logp == 0: ratio exactly 1
        has_ref = ref_logp is not None
        ref_logp = ref_logp.contiguous() if has_ref else logp
        advantages = advantages.contiguous()
        mask_u8 = valid.contiguous().view(torch.uint8)

        row_count = valid.sum(1, dtype=torch.float32)
        n_tok = row_count.sum()
        norm = loss_normaliser(valid, loss_agg) if normaliser is None else normaliser
        norm = torch.as_tensor(norm, dtype=torch.float32, device=logp.device).reshape(1)

        grad = torch.empty((N, T), dtype=torch.float32, device=logp.device)
        partial = torch.empty((N, len(METRICS) + 1), dtype=torch.float32, device=logp.device)
        clip = torch.empty((N, T) if return_clip else (0,), dtype=torch.int8, device=logp.device)
        launch(
            _grpo_loss_kernel, (N,),
            logp, old_logp, ref_logp, advantages, mask_u8, row_count, norm, grad, partial, clip,
            T, eps_low, eps_high, 0.0 if delta is None else delta, beta,
            HAS_REF=has_ref, HAS_DELTA=delta is not None, SEQ_MEAN_AGG=loss_agg == "seq-mean-token-mean",
            SEQ_LEVEL=is_level == "sequence", ADV_PER_TOKEN=advantages.ndim == 2, STORE_CLIP=return_clip,
            N_PARTIAL=partial.shape[1], BLOCK_T=min(next_pow2(T), MAX_BLOCK_T), num_warps=4,
        )
        sums = partial.sum(0)
        loss = sums[0]
        metrics = sums[1:] / n_tok.clamp(min=1)
        ctx.mark_non_differentiable(metrics, clip)
        ctx.save_for_backward(grad)
        ctx.logp_dtype = logp.dtype
        return loss, metrics, clip

    @staticmethod
    def backward(ctx, g_loss, g_metrics, g_clip):
        (grad,) = ctx.saved_tensors
        return (grad * g_loss).to(ctx.logp_dtype), None, None, None, None, None, None


def _check_grpo_args(N: int, T: int, old_logp, advantages, ref_logp,
                     eps_low, eps_high, delta, beta, loss_agg, is_level, normaliser=None) -> None:
    """Validate everything but the log-probs (or logits), the mask and devices."""
    if normaliser is not None:
        _check_normaliser(normaliser)
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
              loss_agg: str = "token-mean", is_level: str = "token", normaliser=None,
              return_clip: bool = False):
    """GRPO loss (0-d fp32) and metrics (dict of 0-d fp32: kl, clip_frac_low/high, clip_frac, ratio_mean);
    with ``return_clip``, also the per-token clip indicators: int8 [N, T], -1 where the ratio is clipped
    below (ratio < 1 - eps_low and A < 0), +1 above (ratio > 1 + eps_high and A > 0), 0 elsewhere and at
    masked positions (at sequence level every token of a row carries the row's indicator).

    logp/old_logp/ref_logp: [N, T] per-token log-probs (old_logp None: the rollout policy is the current
    one, ratio exactly 1); advantages: [N] per sequence, or [N, T] per token (e.g. per-frame credit);
    mask: [N, T] bool or 0/1, None = all valid; normaliser: the loss's denominator (a number or a
    one-element tensor, e.g. ``loss_normaliser`` of a whole minibatch), None = ``loss_normaliser(mask,
    loss_agg)``. Differentiable w.r.t. ``logp`` only. Metrics are masked means over valid tokens (whatever
    the normaliser); an empty mask gives 0, never NaN.
    """
    check_tensor("logp", logp, ndim=2, dtypes=FLOAT_DTYPES)
    N, T = logp.shape
    _check_grpo_args(N, T, old_logp, advantages, ref_logp, eps_low, eps_high, delta, beta, loss_agg, is_level,
                     normaliser)
    valid = mask_or_ones(mask, logp)
    check_same_device(logp=logp, old_logp=old_logp, advantages=advantages, mask=mask, ref_logp=ref_logp,
                      normaliser=normaliser if isinstance(normaliser, torch.Tensor) else None)
    options = dict(eps_low=float(eps_low), eps_high=float(eps_high), delta=None if delta is None else float(delta),
                   beta=float(beta), loss_agg=loss_agg, is_level=is_level, return_clip=bool(return_clip))

    if logp.numel() == 0 or not use_triton(logp, old_logp, advantages, mask, ref_logp):
        return grpo_loss_reference(logp, old_logp, advantages, valid, ref_logp, normaliser=normaliser, **options)

    loss, metrics, clip = _GRPOLossFunction.apply(logp, old_logp, advantages, valid, ref_logp, normaliser,
                                                  tuple(options.values()))
    metrics = dict(zip(METRICS, metrics.unbind(0)))
    return (loss, metrics, clip) if return_clip else (loss, metrics)


def grpo_loss_from_logits(logits: torch.Tensor, ids: torch.Tensor, old_logp: Optional[torch.Tensor],
                          advantages: torch.Tensor, mask: Optional[torch.Tensor] = None,
                          ref_logp: Optional[torch.Tensor] = None, *, temperature: float = 1.0,
                          eps_low: float = 0.2, eps_high: float = 0.2, delta: Optional[float] = None,
                          beta: float = 0.0, loss_agg: str = "token-mean", is_level: str = "token",
                          normaliser=None, return_clip: bool = False):
    """``grpo_loss(token_logprobs(logits, ids, temperature), ...)``, differentiable w.r.t. ``logits``.

    logits: [N, T, V]; ids: [N, T]. Ids at masked positions are ignored (they may be padding such as -100).
    The logits are read once forward (online logsumexp) and once backward (softmax recomputed from the
    saved lse); the [N, T] log-probs in between are the only intermediate.
    """
    check_tensor("logits", logits, ndim=3, dtypes=FLOAT_DTYPES)
    N, T, _ = logits.shape
    check_tensor("ids", ids, ndim=2, dtypes=INDEX_DTYPES)
    check_shape("ids", ids, (N, T))
    _check_grpo_args(N, T, old_logp, advantages, ref_logp, eps_low, eps_high, delta, beta, loss_agg, is_level,
                     normaliser)
    valid = mask_or_ones(mask, ids)
    check_same_device(logits=logits, ids=ids, old_logp=old_logp, advantages=advantages, mask=mask,
                      ref_logp=ref_logp)
    logp = token_logprobs(logits, ids.masked_fill(~valid, 0), temperature)
    return grpo_loss(logp, old_logp, advantages, valid, ref_logp, eps_low=eps_low, eps_high=eps_high,
                     delta=delta, beta=beta, loss_agg=loss_agg, is_level=is_level, normaliser=normaliser,
                     return_clip=return_clip)
