"""flow_sde_step: both backends against the float64 reference, Flow-GRPO's sde_step_with_logprob and
diffusers' Euler step written out / called, gradients, and the sampling marginal of a 1-D Gaussian toy
whose exact velocity field is known in closed form."""
import importlib
import math
import zlib

import pytest
import torch

from rlir.kernels import FlowSDEStep, flow_sde_step, flow_sde_step_reference

# rlir.kernels re-exports the function under the module's name, so fetch the module itself.
sde_module = importlib.import_module("rlir.kernels.flow_sde_step")

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# mean / x_next are rounded to the input dtype (Triton under the interpreter truncates to bf16 instead of
# rounding to nearest): one ulp of that dtype, plus fp32 rounding of c_x·x + c_v·v near zero.
OUT_TOL = {
    torch.float32: dict(rtol=2e-6, atol=2e-6),
    torch.float16: dict(rtol=2**-10, atol=1e-5),
    torch.bfloat16: dict(rtol=2**-7, atol=1e-5),
}
# log_prob is computed in fp32 from the returned x_next; compared with the float64 log-density of it.
LP_TOL = dict(rtol=1e-5, atol=2e-5)
# Gradients are returned in the input's dtype.
GRAD_TOL = {
    torch.float32: dict(rtol=1e-4, atol=1e-6),
    torch.float16: dict(rtol=2e-3, atol=1e-5),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-4),
}
# (sigma, sigma_next) pairs: σ = 1 and 0.95 hit the sigma_max clamp, σ_next = 0 is the last step.
SIGMA_PAIRS = [(1.0, 0.9), (0.55, 0.5), (0.2, 0.0), (0.95, 0.93), (0.7, 0.3)]


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    # Small blocks so a sample of 17 elements spans two blocks plus a masked tail.
    monkeypatch.setattr(sde_module, "MAX_BLOCK", 8)


def block_for(shape, monkeypatch):
    # Samples of 1000+ elements: 128-element blocks (9 blocks with a tail; the interpreter is slow per block).
    if math.prod(shape[1:]) > 100:
        monkeypatch.setattr(sde_module, "MAX_BLOCK", 128)


@pytest.fixture
def gen(request):
    """A generator seeded from the test id: every parametrized case draws its own fresh inputs."""
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))


def make_inputs(gen, shape, dtype=torch.float32):
    """x, v, noise rounded to ``dtype``; per-sample float64 sigma / sigma_next tensors."""
    x, v, noise = (torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype) for _ in range(3))
    pick = torch.randperm(len(SIGMA_PAIRS), generator=gen).repeat(shape[0] // len(SIGMA_PAIRS) + 1)[:shape[0]]
    pairs = torch.tensor(SIGMA_PAIRS, dtype=torch.float64)[pick]
    return x, v, noise, pairs[:, 0], pairs[:, 1]


def grads(out, x, v, w_mean, w_xn, g_lp):
    """d(Σ w_mean·mean + Σ w_xn·x_next + Σ g_lp·log_prob) w.r.t. (x, v), None where not required."""
    loss = (out.log_prob.double() * g_lp).sum()
    if w_mean is not None:
        loss = loss + (out.mean.double() * w_mean).sum()
    if w_xn is not None:
        loss = loss + (out.x_next.double() * w_xn).sum()
    leaves = [t for t in (x, v) if t.requires_grad]
    got = iter(torch.autograd.grad(loss, leaves))
    return [next(got) if t.requires_grad else None for t in (x, v)]


def weights(gen, shape, dtype=torch.float32):
    """Upstream gradients; those of mean / x_next arrive in their dtype, so they are rounded to it here."""
    w_mean, w_xn = (torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype).double() for _ in range(2))
    return w_mean, w_xn, torch.randn(shape[0], generator=gen, dtype=torch.float64)


SHAPES = [(1,), (3,), (1, 17), (3, 17), (2, 1031), (3, 2, 3, 5)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sampling_matches_float64_reference(backend, gen, shape, dtype, monkeypatch):
    block_for(shape, monkeypatch)
    x, v, noise, s, sn = make_inputs(gen, shape, dtype)
    xl, vl = x.clone().requires_grad_(), v.clone().requires_grad_()
    out = flow_sde_step(xl, vl, s, sn, 0.7, noise=noise)
    assert isinstance(out, FlowSDEStep)
    assert out.x_next.dtype == out.mean.dtype == dtype and out.x_next.shape == out.mean.shape == x.shape
    assert out.std.dtype == out.log_prob.dtype == torch.float32
    assert out.std.shape == out.log_prob.shape == (shape[0],)

    expected = flow_sde_step_reference(x.double(), v.double(), s, sn, 0.7, noise=noise.double())
    torch.testing.assert_close(out.x_next.double(), expected.x_next, **OUT_TOL[dtype])
    torch.testing.assert_close(out.mean.double(), expected.mean, **OUT_TOL[dtype])
    torch.testing.assert_close(out.std.double(), expected.std, rtol=1e-6, atol=0)
    # log_prob is the float64 log-density of the x_next that was returned (rounded to dtype).
    x64, v64 = x.double().requires_grad_(), v.double().requires_grad_()
    scored = flow_sde_step_reference(x64, v64, s, sn, 0.7, x_next=out.x_next.detach().double())
    torch.testing.assert_close(out.log_prob.double(), scored.log_prob, **LP_TOL)

    # Gradients of all three outputs: x_next moves with mean, log_prob treats x_next as data.
    w_mean, w_xn, g_lp = weights(gen, shape, dtype)
    gx, gv = grads(out, xl, vl, w_mean, w_xn, g_lp)
    scored = scored._replace(x_next=scored.mean)  # d x_next = d mean in sampling mode
    ex, ev = grads(scored, x64, v64, w_mean, w_xn, g_lp)
    assert gx.dtype == gv.dtype == dtype
    torch.testing.assert_close(gx.double(), ex, **GRAD_TOL[dtype])
    torch.testing.assert_close(gv.double(), ev, **GRAD_TOL[dtype])


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_scoring_matches_float64_reference(backend, gen, shape, dtype, monkeypatch):
    block_for(shape, monkeypatch)
    x, v, noise, s, sn = make_inputs(gen, shape, dtype)
    # A recorded transition: sampled under slightly different weights (v + perturbation).
    recorded = flow_sde_step_reference(x.double(), v.double() + 0.1 * noise.double(), s, sn, 0.7,
                                       noise=noise.double()).x_next.to(dtype)
    xl, vl = x.clone().requires_grad_(), v.clone().requires_grad_()
    out = flow_sde_step(xl, vl, s, sn, 0.7, x_next=recorded)
    assert out.x_next is recorded
    x64, v64 = x.double().requires_grad_(), v.double().requires_grad_()
    expected = flow_sde_step_reference(x64, v64, s, sn, 0.7, x_next=recorded.double())
    torch.testing.assert_close(out.mean.double(), expected.mean, **OUT_TOL[dtype])
    torch.testing.assert_close(out.std.double(), expected.std, rtol=1e-6, atol=0)
    torch.testing.assert_close(out.log_prob.double(), expected.log_prob, **LP_TOL)

    w_mean, _, g_lp = weights(gen, shape, dtype)
    gx, gv = grads(out, xl, vl, w_mean, None, g_lp)
    ex, ev = grads(expected, x64, v64, w_mean, None, g_lp)
    torch.testing.assert_close(gx.double(), ex, **GRAD_TOL[dtype])
    torch.testing.assert_close(gv.double(), ev, **GRAD_TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sample_then_score_gives_the_same_log_prob_and_gradient(backend, gen, dtype):
    x, v, noise, s, sn = make_inputs(gen, (3, 4, 5), dtype)
    v1, v2 = v.clone().requires_grad_(), v.clone().requires_grad_()
    sampled = flow_sde_step(x, v1, s, sn, 0.7, noise=noise)
    scored = flow_sde_step(x, v2, s, sn, 0.7, x_next=sampled.x_next.detach())
    torch.testing.assert_close(scored.log_prob, sampled.log_prob, rtol=1e-6, atol=1e-6)
    assert torch.equal(scored.mean, sampled.mean) and torch.equal(scored.std, sampled.std)
    (g1,) = torch.autograd.grad(sampled.log_prob.sum(), v1)
    (g2,) = torch.autograd.grad(scored.log_prob.sum(), v2)
    torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-6)
    # The noise is recovered from x_next up to its rounding: log_prob ≈ mean(-noise²/2) - log std - log(2π)/2.
    if dtype == torch.float32:
        explicit = (-0.5 * noise.double() ** 2).flatten(1).mean(1) - sampled.std.double().log() - 0.5 * math.log(
            2 * math.pi)
        torch.testing.assert_close(sampled.log_prob.double(), explicit, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("wrt, outputs", [("v", "log_prob"), ("x", "mean"), ("x", "x_next"), ("v", "mean"),
                                          ("both", "log_prob")])
def test_partial_gradients(backend, gen, wrt, outputs):
    """Only some inputs require grad, only some outputs reach the loss (the others get no gradient)."""
    x, v, noise, s, sn = make_inputs(gen, (3, 17))
    xl = x.clone().requires_grad_(wrt in ("x", "both"))
    vl = v.clone().requires_grad_(wrt in ("v", "both"))
    out = flow_sde_step(xl, vl, s, sn, 0.9, noise=noise)
    w_mean, w_xn, g_lp = weights(gen, x.shape)
    got = grads(out, xl, vl, w_mean if outputs == "mean" else None, w_xn if outputs == "x_next" else None,
                g_lp if outputs == "log_prob" else torch.zeros_like(g_lp))
    x64, v64 = x.double().requires_grad_(xl.requires_grad), v.double().requires_grad_(vl.requires_grad)
    ref = flow_sde_step_reference(x64, v64, s, sn, 0.9, x_next=out.x_next.detach().double())
    ref = ref._replace(x_next=ref.mean)
    expected = grads(ref, x64, v64, w_mean if outputs == "mean" else None, w_xn if outputs == "x_next" else None,
                     g_lp if outputs == "log_prob" else torch.zeros_like(g_lp))
    for a, b in zip(got, expected):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a.double(), b, **GRAD_TOL[torch.float32])


def test_reference_gradcheck():
    g = torch.Generator().manual_seed(0)
    x, v, noise = (torch.randn(3, 2, 3, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    s, sn = torch.tensor([1.0, 0.6, 0.2], dtype=torch.float64), torch.tensor([0.8, 0.4, 0.0], dtype=torch.float64)
    x_next = flow_sde_step_reference(x, v, s, sn, 0.7, noise=noise).x_next.detach()

    def sampling(x, v):
        out = flow_sde_step_reference(x, v, s, sn, 0.7, noise=noise.detach())
        return out.x_next, out.mean

    def scoring(x, v):
        out = flow_sde_step_reference(x, v, s, sn, 0.7, x_next=x_next)
        return out.mean, out.log_prob

    assert torch.autograd.gradcheck(sampling, (x, v))
    assert torch.autograd.gradcheck(scoring, (x, v))


def test_mixed_input_dtypes(backend, gen):
    """fp32 latents with a bf16 model output: computed in fp32, results in the promoted dtype (fp32)."""
    x, v, noise, s, sn = make_inputs(gen, (3, 17))
    v = v.bfloat16()
    out = flow_sde_step(x, v, s, sn, 0.7, noise=noise.half())
    assert out.x_next.dtype == out.mean.dtype == torch.float32
    expected = flow_sde_step_reference(x.double(), v.double(), s, sn, 0.7, noise=noise.half().double())
    torch.testing.assert_close(out.x_next.double(), expected.x_next, **OUT_TOL[torch.float32])
    torch.testing.assert_close(out.log_prob.double(), expected.log_prob, **LP_TOL)


# --- sigma handling -------------------------------------------------------------------------------------------
def test_scalar_and_per_sample_sigmas_agree(backend, gen):
    """A number, a 0-d tensor and an [N] tensor of equal values give the same step; a per-sample
    tensor equals running each sample alone with its own numbers."""
    x, v, noise, s, sn = make_inputs(gen, (4, 3, 5))
    runs = [flow_sde_step(x, v, 0.6, 0.45, 0.8, noise=noise),
            flow_sde_step(x, v, torch.tensor(0.6), torch.tensor(0.45, dtype=torch.float64), 0.8, noise=noise),
            flow_sde_step(x, v, torch.full((4,), 0.6), torch.full((4,), 0.45), 0.8, noise=noise)]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    batch = flow_sde_step(x, v, s, sn, 0.8, noise=noise)
    for i in range(4):
        alone = flow_sde_step(x[i:i + 1], v[i:i + 1], s[i].item(), sn[i].item(), 0.8, noise=noise[i:i + 1])
        for a, b in zip(batch, alone):
            torch.testing.assert_close(a[i:i + 1], b, rtol=1e-6, atol=1e-6)


def flow_grpo_sde_step(sample, model_output, sigma, sigma_prev, sigma_max, noise_level, variance_noise):
    """Flow-GRPO's sde_step_with_logprob (flow_grpo/diffusers_patch/sd3_sde_with_logprob.py), written out
    on explicit sigmas: sigma_max is its schedule's sigmas[1], substituted for σ = 1 in the denominator."""
    sigma = sigma.view(-1, *([1] * (sample.ndim - 1)))
    sigma_prev = sigma_prev.view(-1, *([1] * (sample.ndim - 1)))
    dt = sigma_prev - sigma
    std_dev_t = torch.sqrt(sigma / (1 - torch.where(sigma == 1, sigma_max, sigma))) * noise_level
    prev_sample_mean = (sample * (1 + std_dev_t ** 2 / (2 * sigma) * dt)
                        + model_output * (1 + std_dev_t ** 2 * (1 - sigma) / (2 * sigma)) * dt)
    prev_sample = prev_sample_mean + std_dev_t * torch.sqrt(-1 * dt) * variance_noise
    log_prob = (-((prev_sample.detach() - prev_sample_mean) ** 2) / (2 * ((std_dev_t * torch.sqrt(-1 * dt)) ** 2))
                - torch.log(std_dev_t * torch.sqrt(-1 * dt)) - torch.log(torch.sqrt(2 * torch.as_tensor(math.pi))))
    return prev_sample, log_prob.mean(dim=tuple(range(1, log_prob.ndim))), prev_sample_mean, std_dev_t


def test_matches_flow_grpo_with_its_sigma_max(backend, gen):
    """With sigma_max = the schedule's sigmas[1] this is Flow-GRPO's step exactly (SD3 schedule, shift 3)."""
    steps = 10
    t = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    sigmas = 3 * t / (1 + 2 * t)
    x, v, noise, _, _ = make_inputs(gen, (steps, 2, 9))
    s, sn = sigmas[:-1], sigmas[1:]
    out = flow_sde_step(x, v, s, sn, 0.7, noise=noise, sigma_max=sigmas[1].item())
    prev, lp, mean, std_dev_t = flow_grpo_sde_step(x.double(), v.double(), s, sn, sigmas[1].item(), 0.7,
                                                   noise.double())
    torch.testing.assert_close(out.x_next.double(), prev, **OUT_TOL[torch.float32])
    torch.testing.assert_close(out.mean.double(), mean, **OUT_TOL[torch.float32])
    torch.testing.assert_close(out.std.double(), std_dev_t.flatten() * (s - sn).sqrt(), rtol=1e-6, atol=0)
    torch.testing.assert_close(out.log_prob.double(), lp, **LP_TOL)


def test_sigma_one_uses_the_sigma_max_clamp(backend, gen):
    """σ = 1: σ_t = a·sqrt(1 / (1 - sigma_max)), finite; σ <= sigma_max is untouched by sigma_max."""
    x, v, noise, _, _ = make_inputs(gen, (2, 17))
    s, sn = torch.tensor([1.0, 0.5]), torch.tensor([0.95, 0.4])
    for sigma_max in (sde_module.SIGMA_MAX, 0.99, 0.6):
        out = flow_sde_step(x, v, s, sn, 0.7, noise=noise, sigma_max=sigma_max)
        assert torch.isfinite(out.x_next).all() and torch.isfinite(out.log_prob).all()
        sigma_t = 0.7 * math.sqrt(1 / (1 - sigma_max))
        assert out.std[0].item() == pytest.approx(sigma_t * math.sqrt(0.05), rel=1e-6)
        clamped = min(0.5, sigma_max)
        assert out.std[1].item() == pytest.approx(0.7 * math.sqrt(0.5 / (1 - clamped)) * math.sqrt(0.1), rel=1e-6)
    assert sde_module.SIGMA_MAX == 0.9


# --- noise_level -> 0: the Euler ODE step ---------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_noise_level_zero_is_the_euler_step(backend, gen, dtype):
    x, v, noise, s, sn = make_inputs(gen, (5, 3, 7), dtype)
    vl = v.clone().requires_grad_()
    dt = (sn - s).view(-1, 1, 1)
    euler = (x.double() + v.double() * dt)
    for kwargs in (dict(noise=noise), dict(x_next=noise)):
        out = flow_sde_step(x, vl, s, sn, 0.0, **kwargs)
        assert torch.all(out.std == 0) and torch.all(out.log_prob == 0)
        torch.testing.assert_close(out.mean.double(), euler, **OUT_TOL[dtype])
        if "noise" in kwargs:
            assert torch.equal(out.x_next, out.mean)
        (g,) = torch.autograd.grad(out.log_prob.sum() + (out.mean.double() * 2).sum(), vl)
        torch.testing.assert_close(g.double(), (2 * dt).expand_as(g), **GRAD_TOL[dtype])  # log_prob adds 0


def test_small_noise_level_tends_to_the_euler_step(backend, gen):
    """mean - Euler = O(a²) (σ_t² ∝ a²) and x_next - mean = O(a)."""
    x, v, noise, s, sn = make_inputs(gen, (5, 3, 7))
    euler = flow_sde_step(x, v, s, sn, 0.0, noise=noise).mean.double()
    for a in (1e-1, 1e-2):
        out = flow_sde_step(x, v, s, sn, a, noise=noise)
        scale = (x.abs() + v.abs()).double().max() * 10
        assert (out.mean.double() - euler).abs().max() <= a * a * scale
        assert (out.x_next.double() - euler).abs().max() <= a * noise.abs().max() * 10


def test_noise_level_zero_matches_diffusers_euler_scheduler(backend, gen):
    """A whole ODE trajectory with FlowMatchEulerDiscreteScheduler's sigmas (shift 3, ending at σ = 0)."""
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(8)
    x = torch.randn(2, 4, 9, generator=gen)
    ours = x.clone()
    w = torch.randn(4, 4, generator=gen, dtype=torch.float64).float() * 0.3
    for i, t in enumerate(scheduler.timesteps):
        sigma, sigma_next = scheduler.sigmas[i], scheduler.sigmas[i + 1]
        x = scheduler.step(torch.tanh(w @ x), t, x).prev_sample
        ours = flow_sde_step(ours, torch.tanh(w @ ours), sigma, sigma_next, 0.0, noise=torch.zeros_like(ours)).x_next
    assert scheduler.sigmas[-1] == 0
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5)


# --- the sampling marginal ------------------------------------------------------------------------------------
MU0, S0 = 1.5, 0.5


def toy_velocity(x, sigma):
    """E[ε - x0 | x_σ = x] for x0 ~ N(MU0, S0²), ε ~ N(0, 1), x_σ = (1 - σ) x0 + σ ε: linear in x."""
    var = (1 - sigma) ** 2 * S0 ** 2 + sigma ** 2
    return -MU0 + (sigma - (1 - sigma) * S0 ** 2) / var * (x - (1 - sigma) * MU0)


def exact_discrete_moments(sigmas, a, sigma_max):
    """Mean and std after the discrete chain, propagated exactly: v is linear, so each step is affine + Gaussian."""
    m, var = 0.0, 1.0
    for s, sn in zip(sigmas[:-1], sigmas[1:]):
        dt = sn - s
        sigma_t2 = a * a * s / (1 - min(s, sigma_max))
        c_x, c_v = 1 + sigma_t2 * dt / (2 * s), (1 + sigma_t2 * (1 - s) / (2 * s)) * dt
        beta = (s - (1 - s) * S0 ** 2) / ((1 - s) ** 2 * S0 ** 2 + s ** 2)
        gain, shift = c_x + c_v * beta, c_v * (-MU0 - beta * (1 - s) * MU0)
        m, var = gain * m + shift, gain * gain * var + sigma_t2 * -dt
    return m, math.sqrt(var)


@pytest.mark.parametrize("sigma_max", [sde_module.SIGMA_MAX, 0.99])
def test_sampling_marginal_of_a_gaussian_toy(backend, sigma_max, monkeypatch):
    """Run the SDE (a = 0.7, the op under test) and the ODE (a = 0, the float64 reference) from σ = 1,
    x ~ N(0, 1), over 100 uniform steps for 16,384 samples (the elements of one [1, 16384] sample).
    Statistical tolerance: the standard errors are S0/128 ≈ 0.004 (mean) and ≈ 0.003 (std); the
    discretisation bias of the std at 100 steps is 0.003 (SDE) / 0.007 (ODE) (exact_discrete_moments).
      - halfway (σ = 0.5) and at σ = 0 the SDE samples follow the exact marginal
        N((1-σ)·MU0, (1-σ)²S0² + σ²) within 0.02 (mean and std);
      - its final mean/std equal the exact moments of the discrete chain within 5 standard errors;
      - SDE and ODE end at the same mean/std within 0.025 (and the ODE at N(MU0, S0²) within 0.02)."""
    if backend == "triton" and sigma_max != sde_module.SIGMA_MAX:
        pytest.skip("the clamp is host-side code shared by both backends; one Triton run suffices")
    monkeypatch.setattr(sde_module, "MAX_BLOCK", 16384)  # one program per step under the interpreter
    steps = 100
    sigmas = [1 - i / steps for i in range(steps + 1)]
    gen = torch.Generator().manual_seed(1234)
    start = torch.randn(1, 16384, generator=gen)
    finals = {}
    for a, step in ((0.7, flow_sde_step), (0.0, flow_sde_step_reference)):
        x = start.clone()
        for s, sn in zip(sigmas[:-1], sigmas[1:]):
            noise = torch.randn(x.shape, generator=gen)
            x = step(x, toy_velocity(x, s), s, sn, a, noise=noise, sigma_max=sigma_max).x_next
            if sn == 0.5 and a > 0:
                assert x.mean().item() == pytest.approx(0.5 * MU0, abs=0.02)
                assert x.std().item() == pytest.approx(math.sqrt(0.25 * S0 ** 2 + 0.25), abs=0.02)
        m, sd = x.double().mean().item(), x.double().std().item()
        if a > 0:  # (the ODE is a deterministic map of the start samples: its error is the start's)
            exact_m, exact_sd = exact_discrete_moments(sigmas, a, sigma_max)
            assert m == pytest.approx(exact_m, abs=5 * S0 / 128)
            assert sd == pytest.approx(exact_sd, abs=5 * S0 / 128 / math.sqrt(2))
        assert m == pytest.approx(MU0, abs=0.02) and sd == pytest.approx(S0, abs=0.02)
        finals[a] = (m, sd)
    assert finals[0.7][0] == pytest.approx(finals[0.0][0], abs=0.025)
    assert finals[0.7][1] == pytest.approx(finals[0.0][1], abs=0.025)


# --- layout, dispatch, dtypes ----------------------------------------------------------------------------------
def test_non_contiguous_inputs(backend, gen):
    x, v, noise, s, sn = make_inputs(gen, (3, 6, 5))
    xt, vt, nt = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (x, v, noise))
    assert not xt.is_contiguous()
    vl = vt.clone().requires_grad_()
    a = flow_sde_step(xt, vl, s[::1], sn, 0.7, noise=nt)
    b = flow_sde_step_reference(x.double(), v.double(), s, sn, 0.7, noise=noise.double())
    torch.testing.assert_close(a.x_next.double(), b.x_next, **OUT_TOL[torch.float32])
    torch.testing.assert_close(a.log_prob.double(), b.log_prob, **LP_TOL)
    a.log_prob.sum().backward()
    assert vl.grad.shape == vt.shape and torch.isfinite(vl.grad).all()


def test_dispatch_takes_the_requested_path(backend, gen, monkeypatch):
    calls = []
    apply = sde_module._FlowSDEStepFunction.apply
    monkeypatch.setattr(sde_module._FlowSDEStepFunction, "apply", lambda *a: calls.append(1) or apply(*a))
    x, v, noise, s, sn = make_inputs(gen, (2, 5))
    flow_sde_step(x, v, s, sn, 0.7, noise=noise)
    assert len(calls) == (backend == "triton")


def test_reference_keeps_float64(gen):
    x, v, noise, s, sn = make_inputs(gen, (2, 5), torch.float64)
    out = flow_sde_step_reference(x, v, s, sn, 0.7, noise=noise)
    assert all(t.dtype == torch.float64 for t in out)
    out = flow_sde_step_reference(x.half(), v.half(), s, sn, 0.7, noise=noise)
    assert out.x_next.dtype == out.mean.dtype == torch.float16
    assert out.std.dtype == out.log_prob.dtype == torch.float32


def test_empty_batch(backend):
    x = torch.zeros(0, 3, 4)
    out = flow_sde_step(x, x, 0.5, 0.4, 0.7, noise=x)
    assert out.x_next.shape == (0, 3, 4) and out.log_prob.shape == out.std.shape == (0,)


# --- validation ----------------------------------------------------------------------------------------------
def _good_args():
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))
    return dict(x=x, v=x.flip(0), sigma=torch.tensor([1.0, 0.5]), sigma_next=0.3, noise_level=0.7,
                noise=torch.randn_like(x), x_next=None)


BAD_ARGS = [
    (dict(x=torch.zeros(2, 3, 4, dtype=torch.long)), "^x "),
    (dict(x=torch.zeros(2, 3, 4, dtype=torch.float64)), "^x "),
    (dict(x=torch.tensor(1.0)), "^x "),
    (dict(x=[[1.0]]), "^x "),
    (dict(x=torch.zeros(2, 0)), "^x "),
    (dict(v=torch.zeros(2, 3, 5)), "^v "),
    (dict(v=torch.zeros(2, 3, 4, dtype=torch.int32)), "^v "),
    (dict(noise=torch.zeros(2, 12)), "^noise "),
    (dict(noise=None, x_next=torch.zeros(3, 3, 4)), "^x_next "),
    (dict(noise=None, x_next=torch.zeros(2, 3, 4, dtype=torch.long)), "^x_next "),
    (dict(x_next=torch.zeros(2, 3, 4)), "exactly one of noise .* or x_next"),
    (dict(noise=None), "exactly one of noise .* or x_next"),
    (dict(sigma=torch.tensor([1.0, 0.5, 0.4])), "^sigma "),
    (dict(sigma=torch.ones(2, 1)), "^sigma "),
    (dict(sigma=torch.tensor([1, 1])), "^sigma "),
    (dict(sigma="1.0"), "^sigma "),
    (dict(sigma=torch.tensor([1.2, 0.5])), "^sigma "),
    (dict(sigma=torch.tensor([1.0, 0.0]), sigma_next=0.0), "^sigma "),
    (dict(sigma=torch.tensor([1.0, float("nan")])), "^sigma "),
    (dict(sigma=1.5), "^sigma "),
    (dict(sigma=0.3, sigma_next=0.3), "^sigma_next "),
    (dict(sigma=0.3, sigma_next=0.5), "^sigma_next "),
    (dict(sigma_next=torch.tensor([0.3, 0.5])), "^sigma_next "),
    (dict(sigma_next=-0.1), "^sigma_next "),
    (dict(sigma_next=torch.zeros(3)), "^sigma_next "),
    (dict(noise_level=-0.5), "^noise_level "),
    (dict(noise_level=float("nan")), "^noise_level "),
    (dict(noise_level="0.7"), "^noise_level "),
    (dict(sigma_max=1.0), "^sigma_max "),
    (dict(sigma_max=0.0), "^sigma_max "),
]


@pytest.mark.parametrize("overrides, pattern", BAD_ARGS)
def test_bad_inputs(backend, overrides, pattern):
    args = {**_good_args(), **overrides}
    with pytest.raises(ValueError, match=pattern):
        flow_sde_step(args.pop("x"), args.pop("v"), args.pop("sigma"), args.pop("sigma_next"),
                      args.pop("noise_level"), **args)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_default_dispatch_matches_reference(dtype, monkeypatch):
    """On a GPU: CUDA tensors take the compiled Triton path by default; samples span many blocks."""
    monkeypatch.delenv("RLIR_KERNELS", raising=False)
    monkeypatch.setattr(sde_module, "MAX_BLOCK", 2048)
    gen = torch.Generator().manual_seed(0)
    x, v, noise, s, sn = make_inputs(gen, (5, 4, 16, 17, 19), dtype)
    vl = v.cuda().requires_grad_()
    out = flow_sde_step(x.cuda(), vl, s.cuda(), sn.cuda(), 0.7, noise=noise.cuda())
    expected = flow_sde_step_reference(x.double(), v.double(), s, sn, 0.7, noise=noise.double())
    torch.testing.assert_close(out.x_next.cpu().double(), expected.x_next, **OUT_TOL[dtype])
    v64 = v.double().requires_grad_()
    scored = flow_sde_step_reference(x.double(), v64, s, sn, 0.7, x_next=out.x_next.detach().cpu().double())
    torch.testing.assert_close(out.log_prob.cpu().double(), scored.log_prob, **LP_TOL)
    (g,) = torch.autograd.grad(out.log_prob.sum(), vl)
    (e,) = torch.autograd.grad(scored.log_prob.sum(), v64)
    torch.testing.assert_close(g.cpu().double(), e, **GRAD_TOL[dtype])
