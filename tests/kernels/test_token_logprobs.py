"""token_logprobs: both backends against the float64 reference (values and logits gradients)."""
import importlib
import math
import zlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlir.kernels.token_logprobs import token_logprobs, token_logprobs_reference

# rlir.kernels re-exports the function under the module's name, so fetch the module itself.
tlp_module = importlib.import_module("rlir.kernels.token_logprobs")

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Values are computed in fp32 from identically rounded inputs, so they match tightly for every input dtype;
# gradients are written in the logits' dtype, so their tolerance is that dtype's rounding.
VALUE_TOL = dict(rtol=2e-5, atol=2e-5)
GRAD_TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),  # fp32 rounding of x - lse at |x| ~ 30 (logits 3σ / τ 0.3)
    torch.float16: dict(rtol=2e-3, atol=1e-4),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-3),
}


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    # Small vocabulary chunks so that V=300 / V=1000 run the online logsumexp over several chunks plus a tail.
    monkeypatch.setattr(tlp_module, "MAX_BLOCK_V", 128)


@pytest.fixture
def gen(request):
    """A generator seeded from the test id: every parametrized case draws its own fresh inputs."""
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))


def make_case(gen, shape, dtype, scale=3.0):
    logits = (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)
    ids = torch.randint(0, shape[-1], shape[:-1], generator=gen)
    return logits, ids


def reference64(logits, ids, temperature, grads=None):
    """float64 ground truth: (logp, entropy[, d(Σ g·out)/d logits]) on the same rounded inputs."""
    z = logits.detach().double().requires_grad_(grads is not None)
    logp, ent = token_logprobs_reference(z, ids, temperature, return_entropy=True)
    if grads is None:
        return logp, ent
    (logp * grads[0] + ent * grads[1]).sum().backward()
    return logp, ent, z.grad


SHAPES = [(2, 3, 17), (1, 1, 1000), (5, 300), (1, 4, 130)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_values_and_grads_match_float64_reference(backend, gen, dtype, shape, temperature):
    logits, ids = make_case(gen, shape, dtype)
    g_logp = torch.randn(shape[:-1], generator=gen, dtype=torch.float64)
    g_ent = torch.randn(shape[:-1], generator=gen, dtype=torch.float64)
    exp_logp, exp_ent, exp_grad = reference64(logits, ids, temperature, (g_logp, g_ent))

    z = logits.clone().requires_grad_()
    logp, ent = token_logprobs(z, ids, temperature, return_entropy=True)
    assert logp.dtype == ent.dtype == torch.float32 and logp.shape == ids.shape == ent.shape
    torch.testing.assert_close(logp.double(), exp_logp, **VALUE_TOL)
    torch.testing.assert_close(ent.double(), exp_ent, **VALUE_TOL)

    (logp * g_logp.float() + ent * g_ent.float()).sum().backward()
    assert z.grad.dtype == dtype and z.grad.shape == logits.shape
    torch.testing.assert_close(z.grad.double(), exp_grad, **GRAD_TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_logp_only_grad(backend, gen, dtype):
    logits, ids = make_case(gen, (3, 2, 300), dtype)
    g = torch.randn(3, 2, generator=gen, dtype=torch.float64)
    z64 = logits.double().requires_grad_()
    (token_logprobs_reference(z64, ids, 1.3) * g).sum().backward()

    z = logits.clone().requires_grad_()
    logp = token_logprobs(z, ids, 1.3)
    assert isinstance(logp, torch.Tensor) and logp.dtype == torch.float32
    (logp * g.float()).sum().backward()
    torch.testing.assert_close(z.grad.double(), z64.grad, **GRAD_TOL[dtype])


def test_entropy_only_grad(backend, gen):
    """The logp output is unused: its gradient arrives as zeros and only the entropy term remains."""
    logits, ids = make_case(gen, (4, 257), torch.float32)
    z64 = logits.double().requires_grad_()
    token_logprobs_reference(z64, ids, return_entropy=True)[1].sum().backward()
    z = logits.clone().requires_grad_()
    token_logprobs(z, ids, return_entropy=True)[1].sum().backward()
    torch.testing.assert_close(z.grad.double(), z64.grad, **GRAD_TOL[torch.float32])


def test_default_block_size(backend, gen, monkeypatch):
    monkeypatch.setattr(tlp_module, "MAX_BLOCK_V", 4096)  # V=1000 in a single masked chunk
    logits, ids = make_case(gen, (2, 1000), torch.float32)
    g = (torch.randn(2, generator=gen, dtype=torch.float64),) * 2
    exp_logp, exp_ent, exp_grad = reference64(logits, ids, 0.9, g)
    z = logits.clone().requires_grad_()
    logp, ent = token_logprobs(z, ids, 0.9, return_entropy=True)
    (logp * g[0].float() + ent * g[1].float()).sum().backward()
    torch.testing.assert_close(logp.double(), exp_logp, **VALUE_TOL)
    torch.testing.assert_close(ent.double(), exp_ent, **VALUE_TOL)
    torch.testing.assert_close(z.grad.double(), exp_grad, **GRAD_TOL[torch.float32])


@pytest.mark.parametrize("layout", ["transposed", "strided_vocab"])
def test_non_contiguous_inputs(backend, gen, layout):
    if layout == "transposed":
        base = torch.randn(4, 2, 150, generator=gen) * 2
        logits = base.transpose(0, 1)  # [2, 4, 150], rows not contiguous
    else:
        base = torch.randn(2, 4, 300, generator=gen) * 2
        logits = base[..., ::2]  # [2, 4, 150], stride 2 along the vocabulary
    ids = torch.randint(0, 150, (4, 2), generator=gen).t()  # non-contiguous ids too
    assert not logits.is_contiguous() and not ids.is_contiguous()
    g = (torch.randn(ids.shape, generator=gen, dtype=torch.float64),
         torch.randn(ids.shape, generator=gen, dtype=torch.float64))
    exp_logp, exp_ent, exp_grad = reference64(logits, ids, 1.0, g)

    leaf = base.clone().requires_grad_()
    view = leaf.transpose(0, 1) if layout == "transposed" else leaf[..., ::2]
    logp, ent = token_logprobs(view, ids, return_entropy=True)
    (logp * g[0].float() + ent * g[1].float()).sum().backward()
    torch.testing.assert_close(logp.double(), exp_logp, **VALUE_TOL)
    torch.testing.assert_close(ent.double(), exp_ent, **VALUE_TOL)
    grad_view = leaf.grad.transpose(0, 1) if layout == "transposed" else leaf.grad[..., ::2]
    torch.testing.assert_close(grad_view.double(), exp_grad, **GRAD_TOL[torch.float32])
    if layout == "strided_vocab":
        assert torch.all(leaf.grad[..., 1::2] == 0)


@pytest.mark.parametrize("ids_dtype", [torch.int64, torch.int32, torch.int16, torch.uint8], ids=str)
def test_index_dtypes(backend, gen, ids_dtype):
    logits, ids = make_case(gen, (2, 3, 200), torch.float32)
    expected = reference64(logits, ids, 1.0)[0]
    torch.testing.assert_close(token_logprobs(logits, ids.to(ids_dtype)).double(), expected, **VALUE_TOL)


def test_matches_trl_selective_log_softmax(backend, gen):
    """TRL: logits /= temperature; selective_log_softmax = log_softmax gathered at the ids."""
    logits, ids = make_case(gen, (3, 5, 211), torch.float32)
    scaled = logits.double() / 0.6
    trl = torch.gather(scaled.log_softmax(dim=-1), dim=-1, index=ids.unsqueeze(-1)).squeeze(-1)
    probs = scaled.softmax(dim=-1)
    entropy = -(probs * scaled.log_softmax(dim=-1)).sum(-1)
    logp, ent = token_logprobs(logits, ids, 0.6, return_entropy=True)
    torch.testing.assert_close(logp.double(), trl, **VALUE_TOL)
    torch.testing.assert_close(ent.double(), entropy, **VALUE_TOL)


def test_known_values(backend):
    V = 300
    uniform = torch.zeros(2, V)
    ids = torch.tensor([0, V - 1])
    logp, ent = token_logprobs(uniform, ids, return_entropy=True)
    torch.testing.assert_close(logp, torch.full((2,), -math.log(V)))
    torch.testing.assert_close(ent, torch.full((2,), math.log(V)))

    peaked = torch.zeros(1, V)
    peaked[0, 7] = 60.0
    logp, ent = token_logprobs(peaked, torch.tensor([7]), return_entropy=True)
    assert abs(logp.item()) < 1e-6 and 0 <= ent.item() < 1e-6
    # Temperature 1e6 flattens any logits into (almost) the uniform distribution.
    logp, ent = token_logprobs(peaked, torch.tensor([3]), 1e6, return_entropy=True)
    assert abs(ent.item() - math.log(V)) < 1e-4 and abs(logp.item() + math.log(V)) < 1e-4


def test_large_logits_are_stable(backend, gen):
    """Logits near 1e4: no overflow; logp and entropy keep full precision (no rounding at the 1e4 scale)."""
    logits = 1e4 + torch.randn(3, 300, generator=gen) * 2
    ids = torch.randint(0, 300, (3,), generator=gen)
    exp_logp, exp_ent, exp_grad = reference64(logits, ids, 1.0, (torch.ones(3, dtype=torch.float64),) * 2)
    z = logits.clone().requires_grad_()
    logp, ent = token_logprobs(z, ids, return_entropy=True)
    (logp + ent).sum().backward()
    torch.testing.assert_close(logp.double(), exp_logp, **VALUE_TOL)
    torch.testing.assert_close(ent.double(), exp_ent, **VALUE_TOL)
    # The backward recomputes p = exp(x - lse) from an fp32 lse, rounded at ulp(1e4) / 2 ~ 5e-4.
    torch.testing.assert_close(z.grad.double(), exp_grad, rtol=0, atol=2e-3)


def test_minus_inf_logits(backend, gen):
    """Banned vocabulary entries (-inf), including a whole leading chunk of them, have p = 0 exactly."""
    logits = torch.randn(3, 300, generator=gen)
    logits[:, :140] = float("-inf")  # the first 128-wide chunk is entirely -inf
    logits[1, 200:] = float("-inf")
    ids = torch.tensor([150, 199, 299])
    g = (torch.randn(3, generator=gen, dtype=torch.float64), torch.randn(3, generator=gen, dtype=torch.float64))
    exp_logp, exp_ent, exp_grad = reference64(logits, ids, 0.8, g)
    z = logits.clone().requires_grad_()
    logp, ent = token_logprobs(z, ids, 0.8, return_entropy=True)
    (logp * g[0].float() + ent * g[1].float()).sum().backward()
    assert torch.isfinite(logp).all() and torch.isfinite(ent).all() and torch.isfinite(z.grad).all()
    torch.testing.assert_close(logp.double(), exp_logp, **VALUE_TOL)
    torch.testing.assert_close(ent.double(), exp_ent, **VALUE_TOL)
    torch.testing.assert_close(z.grad.double(), exp_grad, **GRAD_TOL[torch.float32])
    assert torch.all(z.grad[:, :140] == 0)
    # Picking a banned token is legal and gives -inf.
    assert token_logprobs(logits, torch.tensor([0, 0, 0])).eq(float("-inf")).all()


def test_gradient_flows_to_logits_only(backend, gen, monkeypatch):
    calls = []
    apply = tlp_module._TokenLogprobsFunction.apply
    monkeypatch.setattr(tlp_module._TokenLogprobsFunction, "apply", lambda *a: calls.append(1) or apply(*a))
    logits, ids = make_case(gen, (2, 2, 40), torch.float32)
    z = logits.clone().requires_grad_()
    logp = token_logprobs(z, ids)
    assert len(calls) == (backend == "triton")  # the dispatch took the requested path
    assert logp.requires_grad and not ids.requires_grad
    (grad,) = torch.autograd.grad(logp.sum(), z)
    # d logp / dz = onehot - softmax: each row sums to zero.
    torch.testing.assert_close(grad.sum(-1), torch.zeros(2, 2), atol=1e-6, rtol=0)
    assert not token_logprobs(logits, ids).requires_grad


@pytest.mark.interpreter
@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(rows=st.integers(1, 4), V=st.integers(1, 700), temperature=st.sampled_from([0.3, 1.0, 2.5]),
       block=st.sampled_from([32, 128, 4096]), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31 - 1))
def test_triton_property_random_shapes(rows, V, temperature, block, dtype, seed):
    """Random vocabulary sizes (V=1 included) and chunk sizes: Triton equals the float64 reference."""
    gen = torch.Generator().manual_seed(seed)
    logits, ids = make_case(gen, (rows, V), dtype)
    g = torch.randn(2, rows, generator=gen, dtype=torch.float64)
    exp_logp, exp_ent, exp_grad = reference64(logits, ids, temperature, g)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RLIR_KERNELS", "triton")
        mp.setattr(tlp_module, "MAX_BLOCK_V", block)
        z = logits.clone().requires_grad_()
        logp, ent = token_logprobs(z, ids, temperature, return_entropy=True)
        (logp * g[0].float() + ent * g[1].float()).sum().backward()
    torch.testing.assert_close(logp.double(), exp_logp, **VALUE_TOL)
    torch.testing.assert_close(ent.double(), exp_ent, **VALUE_TOL)
    torch.testing.assert_close(z.grad.double(), exp_grad, **GRAD_TOL[dtype])


def test_empty_batch(backend):
    logp, ent = token_logprobs(torch.randn(0, 3, 17), torch.zeros(0, 3, dtype=torch.long), return_entropy=True)
    assert logp.shape == ent.shape == (0, 3) and logp.dtype == torch.float32


def test_reference_keeps_float64():
    logits = torch.randn(2, 9, dtype=torch.float64)
    logp, ent = token_logprobs_reference(logits, torch.tensor([1, 2]), return_entropy=True)
    assert logp.dtype == ent.dtype == torch.float64
    assert token_logprobs_reference(logits.half(), torch.tensor([1, 2])).dtype == torch.float32


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(ids=torch.zeros(2, 3)), "ids"),  # float ids
        (dict(ids=torch.zeros(2, 4, dtype=torch.long)), "ids"),  # wrong shape
        (dict(ids=torch.full((2, 3), 17, dtype=torch.long)), "ids"),  # == V
        (dict(ids=torch.full((2, 3), -1, dtype=torch.long)), "ids"),
        (dict(logits=torch.zeros(2, 3, 17, dtype=torch.float64)), "logits"),
        (dict(logits=torch.zeros(2, 3, 17, dtype=torch.long)), "logits"),
        (dict(logits=torch.zeros(17)), "logits"),
        (dict(logits=torch.zeros(1, 2, 3, 17)), "logits"),
        (dict(logits=torch.zeros(2, 3, 0), ids=torch.zeros(2, 3, dtype=torch.long)), "logits"),
        (dict(logits=[[0.0]]), "logits"),
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=-1.0), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(temperature="1"), "temperature"),
        (dict(return_entropy=1), "return_entropy"),
    ],
)
def test_bad_inputs_raise_value_error_naming_argument(backend, kwargs, name):
    args = dict(logits=torch.zeros(2, 3, 17), ids=torch.zeros(2, 3, dtype=torch.long), temperature=1.0,
                return_entropy=False)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        token_logprobs(**args)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_default_dispatch_matches_reference(dtype, monkeypatch):
    """On a GPU: CUDA tensors take the compiled Triton path by default, at a realistic vocabulary size."""
    monkeypatch.delenv("RLIR_KERNELS", raising=False)
    monkeypatch.setattr(tlp_module, "MAX_BLOCK_V", 4096)
    gen = torch.Generator().manual_seed(0)
    logits, ids = make_case(gen, (2, 64, 32003), dtype)
    g = torch.randn(2, 2, 64, generator=gen, dtype=torch.float64)
    exp_logp, exp_ent, exp_grad = reference64(logits, ids, 0.7, g)
    z = logits.cuda().requires_grad_()
    logp, ent = token_logprobs(z, ids.cuda(), 0.7, return_entropy=True)
    (logp * g[0].float().cuda() + ent * g[1].float().cuda()).sum().backward()
    torch.testing.assert_close(logp.double().cpu(), exp_logp, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ent.double().cpu(), exp_ent, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(z.grad.double().cpu(), exp_grad, **GRAD_TOL[dtype])
