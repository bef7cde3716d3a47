"""Failure classes other fused GRPO / log-prob kernels shipped (verl, Liger, PyTorch issue threads), as tests.

Each runs on the PyTorch path and on the Triton path (interpreted on CPU) against the float64 PyTorch reference:
vocabularies that are not a multiple of any block size, log-probs above 0 under a large common logit offset,
non-contiguous and expanded upstream gradients, a temperature applied to the log-probs but not the entropy,
and batches of 65,536 rows or more on a grid dimension CUDA caps at 65,535.
"""
import importlib

import pytest
import torch

from rlir.kernels import (
    flow_sde_step,
    flow_sde_step_reference,
    fused_linear_logprobs,
    fused_linear_logprobs_reference,
    group_advantage,
    grpo_loss,
    idm_reward,
    token_logprobs,
    token_logprobs_reference,
)
from rlir.kernels._compile import all_kernels
from rlir.kernels._launch import GRID_LIMITS, check_grid, recording

sde_module = importlib.import_module("rlir.kernels.flow_sde_step")

VALUE_TOL = dict(rtol=2e-5, atol=2e-5)
GRAD_TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.bfloat16: dict(rtol=1.6e-2, atol=1e-3)}


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def logprobs_and_grads(fn, leaves, g_logp, g_ent):
    """fn() -> (logp, entropy); returns them and d(Σ g_logp·logp + Σ g_ent·entropy)/d leaves, all float64."""
    logp, ent = fn()
    grads = torch.autograd.grad((logp, ent), leaves, grad_outputs=(g_logp, g_ent))
    return [t.double() for t in (logp.detach(), ent.detach(), *grads)]


# ---- vocabularies that are not a multiple of any block size ------------------------------------------------

@pytest.mark.parametrize("V, rows", [(8262, 3), (129920, 1)])
def test_vocabulary_not_a_multiple_of_the_block(backend, V, rows):
    """MineWorld's 8,262 and 129,920 tokens at the default block (4096): the last chunk is partial. The id and
    the row maximum sit in that tail, where a missing mask would read past the row or drop them."""
    logits = torch.randn(rows, V, generator=gen(V)) * 3
    logits[:, -1] += 12.0  # the row maximum is the very last logit
    ids = torch.tensor([V - 1, 0, V - 4097][:rows])
    g = (torch.randn(rows, generator=gen(1)), torch.randn(rows, generator=gen(2)))
    z = logits.clone().requires_grad_()
    got = logprobs_and_grads(lambda: token_logprobs(z, ids, 0.8, return_entropy=True), z, *g)
    z64 = logits.double().requires_grad_()
    want = logprobs_and_grads(lambda: token_logprobs_reference(z64, ids, 0.8, return_entropy=True), z64,
                              *(t.double() for t in g))
    for a, b in zip(got[:2], want[:2]):
        torch.testing.assert_close(a, b, **VALUE_TOL)
    torch.testing.assert_close(got[2], want[2], **GRAD_TOL[torch.float32])


def test_fused_linear_vocabulary_not_a_multiple_of_the_block(backend):
    hidden = torch.randn(3, 16, generator=gen(3))
    weight = torch.randn(8262, 16, generator=gen(4)) * 0.5
    ids = torch.tensor([8261, 4096, 7])
    g = (torch.randn(3, generator=gen(5)), torch.randn(3, generator=gen(6)))
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    got = logprobs_and_grads(lambda: fused_linear_logprobs(h, w, ids, 0.7, chunk_size=2, return_entropy=True),
                             (h, w), *g)
    h64, w64 = hidden.double().requires_grad_(), weight.double().requires_grad_()
    want = logprobs_and_grads(lambda: fused_linear_logprobs_reference(h64, w64, ids, 0.7, return_entropy=True),
                              (h64, w64), *(t.double() for t in g))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# ---- log-probs never above 0 under a large common logit offset ---------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_never_above_zero_under_a_large_offset(backend, dtype, temperature):
    """logits + 1e4: bf16 rounds them to multiples of 64, fp32 to ~1e-3; log-softmax is shift-invariant, and a
    kernel that forms x_id - lse at |lse| ~ 1e4 (instead of (x_id - max) - log Σ) can return logp > 0."""
    logits = torch.randn(64, 1000, generator=gen(7)) * 3 + 1e4
    ids = torch.randint(0, 1000, (64,), generator=gen(8))
    logits[::2][torch.arange(32), ids[::2]] += 256  # half the rows: the id dominates, its logp is ~ -1e-80 or 0
    logits = logits.to(dtype)
    logp, ent = token_logprobs(logits, ids, temperature, return_entropy=True)
    assert logp.max() <= 0 and ent.min() >= 0
    want_logp, want_ent = token_logprobs_reference(logits.double(), ids, temperature, return_entropy=True)
    torch.testing.assert_close(logp.double(), want_logp, rtol=0, atol=2e-3)
    torch.testing.assert_close(ent.double(), want_ent, rtol=0, atol=2e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_fused_linear_logprobs_never_above_zero_under_a_large_offset(backend, dtype):
    hidden = torch.randn(32, 8, generator=gen(9))
    weight = torch.randn(500, 8, generator=gen(10))
    hidden[:, 0], weight[:, 0] = 1.0, 1e4  # every logit gets +1e4 from the first feature
    logp = fused_linear_logprobs(hidden.to(dtype), weight.to(dtype), torch.arange(32) * 13)
    assert logp.max() <= 0


def test_grpo_ratio_is_one_on_policy_under_a_large_offset(backend):
    """Identical logits give identical log-probs, so the on-policy ratio is exactly 1 even at |logits| ~ 1e4."""
    logits = torch.randn(4, 6, 300, generator=gen(11)) * 3 + 1e4
    ids = torch.randint(0, 300, (4, 6), generator=gen(12))
    logp = token_logprobs(logits, ids)
    _, metrics = grpo_loss(logp, token_logprobs(logits.clone(), ids), torch.randn(4, generator=gen(13)))
    assert logp.max() <= 0 and metrics["ratio_mean"].item() == 1.0 and metrics["clip_frac"].item() == 0.0


# ---- non-contiguous and expanded upstream gradients --------------------------------------------------------

def upstream(kind, shape, seed):
    if kind == "expanded":
        return torch.randn((1,) * len(shape), generator=gen(seed)).expand(shape)
    return torch.randn(*shape[:-1], 2 * shape[-1], generator=gen(seed))[..., ::2]  # non-contiguous


@pytest.mark.parametrize("kind", ["expanded", "non_contiguous"])
@pytest.mark.parametrize("shape", [(6, 300), (2, 3, 300)], ids=str)
def test_token_logprobs_upstream_gradient_layouts(backend, kind, shape):
    logits = torch.randn(*shape, generator=gen(14)) * 2
    ids = torch.randint(0, shape[-1], shape[:-1], generator=gen(15))
    g = (upstream(kind, shape[:-1], 16), upstream(kind, shape[:-1], 17))
    assert not any(t.is_contiguous() for t in g)
    z = logits.clone().requires_grad_()
    got = logprobs_and_grads(lambda: token_logprobs(z, ids, 0.9, return_entropy=True), z, *g)
    z64 = logits.double().requires_grad_()
    want = logprobs_and_grads(lambda: token_logprobs_reference(z64, ids, 0.9, return_entropy=True), z64,
                              *(t.double() for t in g))
    torch.testing.assert_close(got[2], want[2], **GRAD_TOL[torch.float32])


@pytest.mark.parametrize("kind", ["expanded", "non_contiguous"])
def test_fused_linear_upstream_gradient_layouts(backend, kind):
    hidden = torch.randn(2, 5, 8, generator=gen(18))
    weight = torch.randn(40, 8, generator=gen(19))
    ids = torch.randint(0, 40, (2, 5), generator=gen(20))
    g = (upstream(kind, (2, 5), 21), upstream(kind, (2, 5), 22))
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    got = logprobs_and_grads(lambda: fused_linear_logprobs(h, w, ids, 1.3, chunk_size=3, return_entropy=True),
                             (h, w), *g)
    h64, w64 = hidden.double().requires_grad_(), weight.double().requires_grad_()
    want = logprobs_and_grads(lambda: fused_linear_logprobs_reference(h64, w64, ids, 1.3, return_entropy=True),
                              (h64, w64), *(t.double() for t in g))
    for a, b in zip(got[2:], want[2:]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["expanded", "non_contiguous"])
def test_flow_sde_step_upstream_gradient_layouts(backend, kind, monkeypatch):
    monkeypatch.setattr(sde_module, "MAX_BLOCK", 8)  # 15 elements a sample: two blocks and a tail
    x, v, noise = (torch.randn(3, 3, 5, generator=gen(s)) for s in (23, 24, 25))
    g_mean, g_xn = upstream(kind, (3, 3, 5), 26), upstream(kind, (3, 3, 5), 27)
    g_lp = upstream(kind, (3,), 28)

    def grads(step, dtype):
        xs, vs = x.to(dtype).requires_grad_(), v.to(dtype).requires_grad_()
        out = step(xs, vs, 0.8, 0.6, 0.7, noise=noise.to(dtype))
        outs = (out.mean, out.x_next, out.log_prob)
        return torch.autograd.grad(outs, (xs, vs), grad_outputs=tuple(g.to(dtype) for g in (g_mean, g_xn, g_lp)))

    for got, want in zip(grads(flow_sde_step, torch.float32), grads(flow_sde_step_reference, torch.float64)):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


# ---- the same temperature in log-probs and entropy ---------------------------------------------------------

@pytest.mark.parametrize("temperature", [0.6, 1.7])
def test_entropy_uses_the_log_probs_temperature(backend, temperature):
    """The entropy is that of the tempered distribution the log-probs come from (verl once tempered only the
    log-probs): both equal the untempered op on logits / temperature, gradients included."""
    logits = torch.randn(5, 200, generator=gen(29)) * 3
    ids = torch.randint(0, 200, (5,), generator=gen(30))
    g = (torch.randn(5, generator=gen(31)), torch.randn(5, generator=gen(32)))
    z = logits.clone().requires_grad_()
    tempered = logprobs_and_grads(lambda: token_logprobs(z, ids, temperature, return_entropy=True), z, *g)
    z1 = logits.clone().requires_grad_()
    scaled = logprobs_and_grads(lambda: token_logprobs(z1 / temperature, ids, 1.0, return_entropy=True), z1, *g)
    for a, b in zip(tempered, scaled):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    untempered = token_logprobs(logits, ids, 1.0, return_entropy=True)[1]
    assert (tempered[1] - untempered.double()).abs().min() > 1e-3  # the temperature did change the entropy

    h, w = torch.randn(5, 8, generator=gen(33)), torch.randn(200, 8, generator=gen(34))
    fused = fused_linear_logprobs(h, w, ids, temperature, return_entropy=True)
    plain = token_logprobs(h @ w.T, ids, temperature, return_entropy=True)
    for a, b in zip(fused, plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# ---- 65,536 rows and more: no rows on a grid dimension capped at 65,535 ------------------------------------

ROWS = 65536 + 3


def every_op_at(rows):
    """Call every op (forward and backward) on ``rows`` rows (tokens, videos, samples) with tiny rows."""
    z = torch.zeros(rows, 5, requires_grad=True)
    ids = torch.zeros(rows, dtype=torch.long)
    logp, ent = token_logprobs(z, ids, 1.0, return_entropy=True)
    (logp.sum() + ent.sum()).backward()
    fused_linear_logprobs(torch.zeros(rows, 4, requires_grad=True), torch.zeros(5, 4), ids).sum().backward()
    loss, _ = grpo_loss(torch.zeros(rows, 2, requires_grad=True), torch.zeros(rows, 2), torch.zeros(rows))
    loss.backward()
    group_advantage(torch.zeros(rows), group_size=1)
    group_advantage(torch.zeros(rows), group_index=torch.arange(rows))
    idm_reward(torch.zeros(rows, 1, 3), torch.zeros(rows, 1, dtype=torch.long))
    x = torch.zeros(rows, 3, requires_grad=True)
    flow_sde_step(x, x, 0.5, 0.4, 0.7, noise=torch.zeros(rows, 3)).log_prob.sum().backward()


def test_rows_beyond_65535_stay_on_grid_x():
    """Every kernel's launch at 65,539 rows, recorded (not run): rows go on grid x, whose cap is 2**31 - 1."""
    with recording() as launches:
        every_op_at(ROWS)
    assert {launch.name for launch in launches} == set(all_kernels())
    for launch in launches:
        assert launch.grid[0] >= ROWS, (launch.name, launch.grid)
        assert all(g <= limit for g, limit in zip(launch.grid, GRID_LIMITS))
        assert all(g == 1 for g in launch.grid[1:]), (launch.name, launch.grid)


def test_grid_check_rejects_what_cuda_would():
    check_grid("k", (2**31 - 1,))
    check_grid("k", (1, 65535, 65535))
    for grid in [(4, ROWS), (1, 1, 65536), (2**31,), (), (1, 1, 1, 1)]:
        with pytest.raises(ValueError, match="grid"):
            check_grid("k", grid)


def test_flow_sde_step_runs_many_samples_over_several_blocks(backend, monkeypatch):
    """A real run at a moderate size: 600 samples x 2 blocks on the 1-D grid, forward and backward."""
    monkeypatch.setattr(sde_module, "MAX_BLOCK", 4)
    x, v, noise = (torch.randn(600, 5, generator=gen(s)) for s in (35, 36, 37))

    def run(step, dtype):
        vs = v.to(dtype).requires_grad_()
        out = step(x.to(dtype), vs, 0.8, 0.6, 0.7, noise=noise.to(dtype))
        (grad,) = torch.autograd.grad(out.log_prob.sum(), vs)
        return out.x_next.double(), out.log_prob.double(), grad.double()

    for got, want in zip(run(flow_sde_step, torch.float32), run(flow_sde_step_reference, torch.float64)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
