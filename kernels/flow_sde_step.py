"""One step of the Flow-GRPO SDE sampler for flow-matching models, with the step's Gaussian log-prob.

Flow matching: x_σ = (1 - σ) x0 + σ ε, velocity v = ε - x0, σ goes from 1 (noise) to 0 (data). The
deterministic sampler is the Euler ODE step x_next = x + v·dt with dt = σ_next - σ < 0. Flow-GRPO
(Liu et al., 2025) turns it into an SDE with the same marginals, whose every step is Gaussian:

    σ_t   = a · sqrt(σ / (1 - min(σ, sigma_max)))                      (a = noise_level)
    mean  = x · (1 + σ_t² dt / (2σ)) + v · (1 + σ_t² (1 - σ) / (2σ)) · dt
    std   = σ_t · sqrt(-dt)
    x_next = mean + std · noise                   (sampling; noise ~ N(0, I))
    log_prob = mean over the non-batch dims of  -(x_next - mean)² / (2 std²) - log(std) - log(2π)/2

so with per-sample coefficients c_x, c_v: mean = c_x·x + c_v·v. The drift correction is exact for any
choice of σ_t (it uses the score -(x + (1 - σ) v) / σ implied by v), so changing σ_t changes only how
much noise is injected, never the marginals in continuous time.

Choices (all documented in ``flow_sde_step``):
- σ = 1 makes σ / (1 - σ) infinite. As in Flow-GRPO the σ of the *denominator* is clamped at
  ``sigma_max`` (< 1): 1 - min(σ, sigma_max). Flow-GRPO uses sigma_max = sigmas[1] of its schedule (only
  σ = 1 is affected there); pass that value to reproduce it exactly. The default ``SIGMA_MAX = 0.9``
  caps the drift-correction factor σ_t²|dt|/(2σ) at a²|dt|/(2(1 - 0.9)) for every step, the value it
  has at σ = 0.9, which keeps schedules of 10 or more steps stable for a <= 1 (with 10 uniform steps
  sigmas[1] = 0.9, so it is Flow-GRPO's choice exactly).
- a = 0 is the deterministic Euler step: c_x = 1, c_v = dt, std = 0, x_next = mean + 0·noise = mean,
  and log_prob is defined as 0 (a point mass has no density), with zero gradient: no NaN, in values or
  gradients. (The rule is per sample: log_prob = 0 wherever std == 0.)
- x_next and mean come in the promoted dtype of x and v; log_prob is the log-density of the *returned*
  (rounded) x_next, so scoring a sampled x_next later reproduces the log_prob it was sampled with.

Gradients: w.r.t. x and v only (sigma, noise_level, noise and a given x_next are data). log_prob treats
x_next as data (as Flow-GRPO's ``prev_sample.detach()``), so it is differentiable through the mean:
    d log_prob_n / d mean = (x_next - mean) / (std² · D),   D = elements per sample (0 where std == 0),
identical in sampling and scoring mode. In sampling mode the returned x_next = mean + std·noise is also
differentiable (through mean). Everything flows to x and v by d mean = c_x dx + c_v dv.

Triton path: per-sample coefficients are computed in torch ([N] tensors); the forward kernel runs one
program per (sample, block of elements) on a 1-D grid, writes mean (and x_next) and a partial sum of the squared
standardised residual per block; the per-sample sum of those partials is a deterministic torch
reduction. The backward is a closed-form elementwise Triton kernel that recomputes the fp32 mean from x
and v (no fp32 intermediates saved).
"""
from __future__ import annotations

import math
import numbers
from typing import NamedTuple, Optional, Tuple, Union

import torch

from ._common import (FLOAT_DTYPES, HAS_TRITON, check_positive, checking_values, check_same_device, check_shape,
                      check_tensor, next_pow2, use_triton, tl, triton)
from ._launch import launch

# Default clamp of σ in the denominator of σ_t (see the module docstring).
SIGMA_MAX = 0.9
# Elements of one sample one program handles (tests lower it to exercise several blocks and a tail).
MAX_BLOCK = 2048
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)

Sigma = Union[float, torch.Tensor]


class FlowSDEStep(NamedTuple):
    x_next: torch.Tensor  # [N, ...] sampled (or the given) next state
    mean: torch.Tensor  # [N, ...] mean of the step's Gaussian
    std: torch.Tensor  # [N] its standard deviation, per sample, fp32 (float64 for float64 reference inputs)
    log_prob: torch.Tensor  # [N] mean over the non-batch dims of the log-density of x_next, fp32


def _sigmas(sigma: Sigma, sigma_next: Sigma, n: int, device: torch.device,
            dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """Validate sigma and sigma_next (numbers, 0-d or [N] tensors) and return both as [N] tensors.

    0 < sigma <= 1 and 0 <= sigma_next < sigma. Numbers are checked on the host; tensors with one sync
    (none inside ``trusted_inputs()``)."""
    out = []
    for name, value in (("sigma", sigma), ("sigma_next", sigma_next)):
        if isinstance(value, torch.Tensor):
            if not value.is_floating_point():
                raise ValueError(f"{name} must be a float or a floating-point tensor, got {value.dtype}")
            if value.ndim == 0:
                value = value.expand(n)
            elif tuple(value.shape) != (n,):
                raise ValueError(f"{name} must be a number or a tensor of shape () or ({n},), "
                                 f"got shape {tuple(value.shape)}")
            out.append(value.detach().to(device=device, dtype=dtype))
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            out.append(float(value))
        else:
            raise ValueError(f"{name} must be a float or a tensor, got {type(value).__name__}")
    s, sn = out
    if isinstance(s, float) and isinstance(sn, float):
        bad_s = not 0.0 < s <= 1.0
        bad_sn = not 0.0 <= sn < s
    elif not checking_values():  # inside trusted_inputs(): no host read of tensor sigmas
        bad_s = bad_sn = False
    else:
        st = s if isinstance(s, torch.Tensor) else torch.full((n,), s, device=device, dtype=dtype)
        snt = sn if isinstance(sn, torch.Tensor) else torch.full((n,), sn, device=device, dtype=dtype)
        flags = torch.stack([~((st > 0) & (st <= 1)).all(), ~((snt >= 0) & (snt < st)).all()])
        bad_s, bad_sn = flags.tolist()  # one host sync for both checks
    if bad_s:
        raise ValueError(f"sigma must lie in (0, 1], got {s if isinstance(s, float) else s.tolist()}")
    if bad_sn:
        raise ValueError("sigma_next must lie in [0, sigma) (dt = sigma_next - sigma < 0), got "
                         f"sigma_next={sn if isinstance(sn, float) else sn.tolist()}")
    s = s if isinstance(s, torch.Tensor) else torch.full((n,), s, device=device, dtype=dtype)
    sn = sn if isinstance(sn, torch.Tensor) else torch.full((n,), sn, device=device, dtype=dtype)
    return s, sn


def _check_scalars(noise_level, sigma_max) -> Tuple[float, float]:
    a = check_positive("noise_level", noise_level, allow_zero=True)
    if isinstance(sigma_max, torch.Tensor) and sigma_max.ndim == 0 and sigma_max.is_floating_point():
        sigma_max = sigma_max.item()
    if isinstance(sigma_max, bool) or not isinstance(sigma_max, numbers.Real) or not 0 < sigma_max < 1:
        raise ValueError(f"sigma_max must be a number in (0, 1), got {sigma_max!r}")
    return a, float(sigma_max)


def _coefficients(sigma: torch.Tensor, sigma_next: torch.Tensor, a: float,
                  sigma_max: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample (c_x, c_v, std) with mean = c_x·x + c_v·v, in sigma's dtype. a = 0 gives (1, dt, 0)."""
    dt = sigma_next - sigma
    sigma_t = a * torch.sqrt(sigma / (1 - sigma.clamp(max=sigma_max)))
    var_t = sigma_t * sigma_t
    c_x = 1 + var_t * dt / (2 * sigma)
    c_v = (1 + var_t * (1 - sigma) / (2 * sigma)) * dt
    std = sigma_t * torch.sqrt(-dt)
    return c_x, c_v, std


def _log_prob_from_ssq(ssq: torch.Tensor, std: torch.Tensor, d: int) -> torch.Tensor:
    """log_prob from the per-sample sum of squared standardised residuals (0 where std == 0)."""
    live = std > 0
    return torch.where(live, -0.5 * ssq / d - torch.log(torch.where(live, std, 1.0)) - _HALF_LOG_2PI, 0.0)


def _check_inputs(x, v, noise, x_next, dtypes) -> None:
    check_tensor("x", x, dtypes=dtypes)
    if x.ndim == 0:
        raise ValueError("x must have a batch dim: shape [N, ...], got a 0-d tensor")
    if x.shape[0] > 0 and x[0].numel() == 0:
        raise ValueError(f"x must have at least one element per sample, got shape {tuple(x.shape)}")
    check_tensor("v", v, dtypes=dtypes)
    check_shape("v", v, x.shape)
    if (noise is None) == (x_next is None):
        raise ValueError("exactly one of noise (sampling) or x_next (scoring a given transition) must be "
                         f"passed, got {'both' if noise is not None else 'neither'}")
    for name, t in (("noise", noise), ("x_next", x_next)):
        if t is not None:
            check_tensor(name, t, dtypes=dtypes)
            check_shape(name, t, x.shape)
    check_same_device(x=x, v=v, noise=noise, x_next=x_next)


def flow_sde_step_reference(x: torch.Tensor, v: torch.Tensor, sigma: Sigma, sigma_next: Sigma,
                            noise_level: float, *, noise: Optional[torch.Tensor] = None,
                            x_next: Optional[torch.Tensor] = None, sigma_max: float = SIGMA_MAX) -> FlowSDEStep:
    """The spec: plain PyTorch, differentiable by autograd w.r.t. x and v.

    Computes in float64 when x or v is float64 (and then returns float64 std/log_prob), else in fp32."""
    _check_inputs(x, v, noise, x_next, FLOAT_DTYPES + (torch.float64,))
    a, sigma_max = _check_scalars(noise_level, sigma_max)
    dtype = torch.float64 if torch.float64 in (x.dtype, v.dtype) else torch.float32
    out_dtype = torch.promote_types(x.dtype, v.dtype)
    n = x.shape[0]
    d = x[0].numel() if n else 1
    s, sn = _sigmas(sigma, sigma_next, n, x.device, dtype)
    c_x, c_v, std = _coefficients(s, sn, a, sigma_max)
    per_sample = (n,) + (1,) * (x.ndim - 1)
    mean = c_x.view(per_sample) * x.to(dtype) + c_v.view(per_sample) * v.to(dtype)
    if x_next is None:
        x_next = (mean + std.view(per_sample) * noise.detach().to(dtype)).to(out_dtype)
    # log_prob is the density of the returned x_next (rounded to out_dtype), which it treats as data.
    live = std > 0
    inv_std = torch.where(live, 1 / torch.where(live, std, 1.0), 0.0)
    z = (x_next.detach().to(dtype) - mean) * inv_std.view(per_sample)
    ssq = (z * z).reshape(n, d).sum(1)
    return FlowSDEStep(x_next, mean.to(out_dtype), std, _log_prob_from_ssq(ssq, std, d))


if HAS_TRITON:

    @triton.jit
    def _sample_block(cx_ptr, cv_ptr, D, NUM_BLOCKS, BLOCK: tl.constexpr):
        """This program's (sample, block of D): one program each on a 1-D grid, so the samples never meet grid
        y's 65,535 cap. -> the sample, the block, its flat indices and live lanes, the sample's c_x and c_v."""
        pid = tl.program_id(0)
        row = (pid // NUM_BLOCKS).to(tl.int64)
        blk = pid % NUM_BLOCKS
        offs = blk.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        return row, blk, row * D + offs, offs < D, tl.load(cx_ptr + row), tl.load(cv_ptr + row)

    @triton.jit
    def _flow_sde_fwd_kernel(
        x_ptr, v_ptr, aux_ptr, cx_ptr, cv_ptr, std_ptr, inv_std_ptr, mean_ptr, xn_ptr, partial_ptr,
        D, NUM_BLOCKS, SAMPLING: tl.constexpr, BLOCK: tl.constexpr,
    ):
        row, blk, idx, live, c_x, c_v = _sample_block(cx_ptr, cv_ptr, D, NUM_BLOCKS, BLOCK)
        inv_std = tl.load(inv_std_ptr + row)
        x = tl.load(x_ptr + idx, mask=live, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + idx, mask=live, other=0.0).to(tl.float32)
        mean = c_x * x + c_v * v
        tl.store(mean_ptr + idx, mean.to(mean_ptr.dtype.element_ty), mask=live)
        if SAMPLING:
            noise = tl.load(aux_ptr + idx, mask=live, other=0.0).to(tl.float32)
            xn = (mean + tl.load(std_ptr + row) * noise).to(xn_ptr.dtype.element_ty)
            tl.store(xn_ptr + idx, xn, mask=live)
            xn = xn.to(tl.float32)  # the log-prob is that of the stored (rounded) x_next
        else:
            xn = tl.load(aux_ptr + idx, mask=live, other=0.0).to(tl.float32)
        z = tl.where(live, (xn - mean) * inv_std, 0.0)
        tl.store(partial_ptr + row * NUM_BLOCKS + blk, tl.sum(z * z, axis=0))

    @triton.jit
    def _flow_sde_bwd_kernel(
        x_ptr, v_ptr, xn_ptr, g_mean_ptr, g_xn_ptr, cx_ptr, cv_ptr, inv_std_ptr, k_ptr, gx_ptr, gv_ptr, D,
        NUM_BLOCKS,
        HAS_G_MEAN: tl.constexpr, HAS_G_XN: tl.constexpr, HAS_G_LP: tl.constexpr,
        NEED_GX: tl.constexpr, NEED_GV: tl.constexpr, BLOCK: tl.constexpr,
    ):
        row, _, idx, live, c_x, c_v = _sample_block(cx_ptr, cv_ptr, D, NUM_BLOCKS, BLOCK)
        g = tl.zeros([BLOCK], dtype=tl.float32)
        if HAS_G_MEAN:
            g += tl.load(g_mean_ptr + idx, mask=live, other=0.0).to(tl.float32)
        if HAS_G_XN:
            g += tl.load(g_xn_ptr + idx, mask=live, other=0.0).to(tl.float32)
        if HAS_G_LP:
            # d log_prob / d mean = z / (std D) with z = (x_next - mean) / std; k = g_log_prob / (std D)
            # (both 0 where std == 0). Two factors of 1/std, not one of 1/std², which overflows sooner.
            x = tl.load(x_ptr + idx, mask=live, other=0.0).to(tl.float32)
            v = tl.load(v_ptr + idx, mask=live, other=0.0).to(tl.float32)
            xn = tl.load(xn_ptr + idx, mask=live, other=0.0).to(tl.float32)
            z = (xn - (c_x * x + c_v * v)) * tl.load(inv_std_ptr + row)
            g += tl.load(k_ptr + row) * z
        if NEED_GX:
            tl.store(gx_ptr + idx, (g * c_x).to(gx_ptr.dtype.element_ty), mask=live)
        if NEED_GV:
            tl.store(gv_ptr + idx, (g * c_v).to(gv_ptr.dtype.element_ty), mask=live)


class _FlowSDEStepFunction(torch.autograd.Function):
    """Triton path. Inputs are [N, D] contiguous; returns (mean, x_next or an empty placeholder, log_prob)."""

    @staticmethod
    def forward(ctx, x, v, aux, c_x, c_v, std, inv_std, sampling):
        n, d = x.shape
        out_dtype = torch.promote_types(x.dtype, v.dtype)
        block = min(next_pow2(d), MAX_BLOCK)
        num_blocks = triton.cdiv(d, block)
        mean = torch.empty((n, d), dtype=out_dtype, device=x.device)
        x_next = torch.empty((n, d), dtype=out_dtype, device=x.device) if sampling else aux
        partial = torch.empty((n, num_blocks), dtype=torch.float32, device=x.device)
        launch(
            _flow_sde_fwd_kernel, (n * num_blocks,),
            x, v, aux, c_x, c_v, std, inv_std, mean, x_next, partial, d, num_blocks,
            SAMPLING=sampling, BLOCK=block, num_warps=4,
        )
        log_prob = _log_prob_from_ssq(partial.sum(1), std, d)
        ctx.save_for_backward(x, v, x_next, c_x, c_v, inv_std)
        ctx.block = block
        ctx.set_materialize_grads(False)
        if not sampling:  # the given x_next is returned by the caller, not by this Function
            x_next = mean.new_empty(0)
            ctx.mark_non_differentiable(x_next)
        return mean, x_next, log_prob

    @staticmethod
    def backward(ctx, g_mean, g_xn, g_lp):
        x, v, x_next, c_x, c_v, inv_std = ctx.saved_tensors
        need_gx, need_gv = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        has_any = g_mean is not None or g_xn is not None or g_lp is not None
        if not has_any or not (need_gx or need_gv):
            return (None,) * 8
        n, d = x.shape
        g_xn = g_xn if g_xn is not None and g_xn.numel() else None
        k = g_lp.float() * inv_std / d if g_lp is not None else None
        gx = torch.empty_like(x) if need_gx else None
        gv = torch.empty_like(v) if need_gv else None
        num_blocks = triton.cdiv(d, ctx.block)
        launch(
            _flow_sde_bwd_kernel, (n * num_blocks,),
            x, v, x_next,
            g_mean.contiguous() if g_mean is not None else x,
            g_xn.contiguous() if g_xn is not None else x,
            c_x, c_v, inv_std, k if k is not None else c_x,
            gx if gx is not None else x, gv if gv is not None else v, d, num_blocks,
            HAS_G_MEAN=g_mean is not None, HAS_G_XN=g_xn is not None, HAS_G_LP=k is not None,
            NEED_GX=need_gx, NEED_GV=need_gv, BLOCK=ctx.block, num_warps=4,
        )
        return gx, gv, None, None, None, None, None, None


def flow_sde_step(x: torch.Tensor, v: torch.Tensor, sigma: Sigma, sigma_next: Sigma, noise_level: float, *,
                  noise: Optional[torch.Tensor] = None, x_next: Optional[torch.Tensor] = None,
                  sigma_max: float = SIGMA_MAX) -> FlowSDEStep:
    """One Flow-GRPO SDE step from noise level ``sigma`` to ``sigma_next`` and its Gaussian log-prob.

    x, v: [N, ...] state and predicted velocity (ε - x0), fp32/fp16/bf16 (may differ; mean and x_next
    come in their promoted dtype). sigma, sigma_next: numbers or [N] tensors (per-sample levels,
    broadcast over the non-batch dims) with 0 < sigma <= 1 and 0 <= sigma_next < sigma. noise_level:
    a >= 0 (Flow-GRPO uses ~0.7). Pass exactly one of
      noise:  [N, ...] standard normal draw -> sampling, x_next = mean + std · noise;
      x_next: [N, ...] a recorded next state -> scoring (recompute its log-prob under new weights);
    it is returned unchanged as ``x_next``.
    sigma_max: σ in the denominator of σ_t = a·sqrt(σ / (1 - σ)) is clamped at it, so σ = 1 is finite;
      default 0.9 (``SIGMA_MAX``). Pass your schedule's sigmas[1] to match Flow-GRPO's sampler exactly.

    Returns ``FlowSDEStep(x_next, mean, std, log_prob)``: std [N] fp32 and log_prob [N] fp32 (mean over
    the non-batch dims of the Gaussian log-density of x_next, including -log(std) - log(2π)/2).
    noise_level = 0 is the Euler ODE step x + v·dt with std = 0 and log_prob defined as 0.
    Differentiable w.r.t. x and v: log_prob and mean in both modes, and x_next in sampling mode (through
    mean); log_prob treats x_next as data, so its gradient is the same whether sampled or given.
    """
    dtypes = FLOAT_DTYPES
    _check_inputs(x, v, noise, x_next, dtypes)
    a, sigma_max = _check_scalars(noise_level, sigma_max)
    tensors = [t for t in (sigma, sigma_next) if isinstance(t, torch.Tensor)]
    if x.numel() == 0 or not use_triton(x, v, noise, x_next, *tensors):
        return flow_sde_step_reference(x, v, sigma, sigma_next, a, noise=noise, x_next=x_next, sigma_max=sigma_max)

    n = x.shape[0]
    d = x[0].numel()
    s, sn = _sigmas(sigma, sigma_next, n, x.device, torch.float32)
    c_x, c_v, std = _coefficients(s, sn, a, sigma_max)
    live = std > 0
    inv_std = torch.where(live, 1 / torch.where(live, std, 1.0), 0.0)
    sampling = x_next is None
    aux = noise if sampling else x_next.detach()
    mean, sampled, log_prob = _FlowSDEStepFunction.apply(
        x.reshape(n, d).contiguous(), v.reshape(n, d).contiguous(), aux.reshape(n, d).contiguous(),
        c_x.contiguous(), c_v.contiguous(), std.contiguous(), inv_std.contiguous(), sampling)
    return FlowSDEStep(sampled.view(x.shape) if sampling else x_next, mean.view(x.shape), std, log_prob)
