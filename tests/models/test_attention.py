import pytest
import torch

from rlir.models.attention import BACKENDS, attention, available_backends, causal_mask

# Eager flex on CPU is unfused (it says so once); that is expected here.
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")

CPU_BACKENDS = [b for b in available_backends() if b in ("sdpa", "flex")]
GPU_BACKENDS = ["flash_attn", "xformers"]

# (B, Hq, Hkv, S, Skv, causal, mask shape or None)
CASES = [
    (2, 4, 4, 7, 7, True, None),            # plain causal self-attention
    (2, 4, 2, 3, 11, True, None),           # GQA, queries are the last 3 of 11 keys (KV-cached chunk)
    (1, 6, 2, 1, 9, True, None),            # single-token decode step
    (2, 6, 2, 3, 5, False, None),           # GQA, no mask: the query-head fold in sdpa
    (2, 4, 1, 5, 8, False, (2, 1, 5, 8)),   # MQA with a per-batch boolean mask
    (2, 4, 2, 4, 10, True, (1, 4, 4, 10)),  # causal offset combined with a per-head mask
]


def _inputs(b, hq, hkv, s, skv, mask_shape, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, s, 16, generator=g)
    k = torch.randn(b, hkv, skv, 16, generator=g)
    v = torch.randn(b, hkv, skv, 16, generator=g)
    mask = None
    if mask_shape is not None:
        mask = torch.rand(mask_shape, generator=g) > 0.4
        rows = torch.arange(s)
        mask[..., rows, rows + skv - s] = True  # every query keeps its own key: no empty rows
    to = dict(dtype=dtype, device=device)
    return q.to(**to), k.to(**to), v.to(**to), None if mask is None else mask.to(device)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_backend_forward_matches_math(backend, case):
    b, hq, hkv, s, skv, causal, mask_shape = case
    q, k, v, mask = _inputs(b, hq, hkv, s, skv, mask_shape)
    ref = attention(q, k, v, causal=causal, mask=mask, backend="math")
    with torch.no_grad():
        out = attention(q, k, v, causal=causal, mask=mask, backend=backend)
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_sdpa_backward_matches_math(case):
    b, hq, hkv, s, skv, causal, mask_shape = case
    grads = {}
    for backend in ("math", "sdpa"):
        q, k, v, mask = _inputs(b, hq, hkv, s, skv, mask_shape)
        for t in (q, k, v):
            t.requires_grad_(True)
        out = attention(q, k, v, causal=causal, mask=mask, backend=backend)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads[backend] = (q.grad, k.grad, v.grad)
    for got, want in zip(grads["sdpa"], grads["math"]):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_math_causal_offset_means_last_queries():
    """Causal with Skv > S is the last S rows of full causal attention; GQA is repeated kv heads."""
    q, k, v, _ = _inputs(2, 4, 2, 9, 9, None)
    full = attention(q, k, v, causal=True, backend="math")
    tail = attention(q[:, :, -3:], k, v, causal=True, backend="math")
    torch.testing.assert_close(tail, full[:, :, -3:])
    expanded = attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), causal=True, backend="math")
    torch.testing.assert_close(full, expanded)
    assert causal_mask(2, 4).tolist() == [[True, True, True, False], [True, True, True, True]]


@pytest.mark.skipif("flex" not in available_backends(), reason="flex_attention not in this torch")
def test_flex_backward_on_cpu_raises():
    q, k, v, _ = _inputs(1, 2, 2, 4, 4, None)
    q.requires_grad_(True)
    with pytest.raises(NotImplementedError, match="flex"):
        attention(q, k, v, causal=True, backend="flex")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_only_backends_raise_clearly_on_cpu(backend):
    q, k, v, _ = _inputs(1, 2, 2, 4, 4, None)
    with pytest.raises(ValueError, match=backend):
        attention(q, k, v, causal=True, backend=backend)


def test_bad_inputs_raise():
    q, k, v, _ = _inputs(1, 4, 2, 4, 6, None)
    with pytest.raises(ValueError, match="backend"):
        attention(q, k, v, backend="nope")
    with pytest.raises(ValueError, match="multiple"):
        attention(q[:, :3], k, v)
    with pytest.raises(ValueError, match="mask"):
        attention(q, k, v, mask=torch.ones(1, 1, 4, 6))
    with pytest.raises(ValueError, match="mask"):
        attention(q, k, v, mask=torch.ones(1, 1, 4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="causal"):
        attention(q, k[:, :, :3], v[:, :, :3], causal=True)
    with pytest.raises(ValueError, match="4-D"):
        attention(q[0], k, v)
    assert set(BACKENDS) >= set(available_backends()) >= {"math", "sdpa"}


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("backend", ["sdpa", "flex", *GPU_BACKENDS])
def test_cuda_backends_match_math(backend, case):
    if backend not in available_backends():
        pytest.skip(f"{backend} is not installed")
    b, hq, hkv, s, skv, causal, mask_shape = case
    if backend == "flash_attn" and mask_shape is not None:
        pytest.skip("flash_attn takes no boolean mask")
    q, k, v, mask = _inputs(b, hq, hkv, s, skv, mask_shape, dtype=torch.bfloat16, device="cuda")
    for t in (q, k, v):
        t.requires_grad_(True)
    out = attention(q, k, v, causal=causal, mask=mask, backend=backend)
    weights = torch.linspace(-1, 1, out.numel(), device="cuda").view_as(out)
    (out.float() * weights).sum().backward()
    got = (out, q.grad, k.grad, v.grad)
    for t in (q, k, v):
        t.grad = None
    ref = attention(q, k, v, causal=causal, mask=mask, backend="math")
    (ref.float() * weights).sum().backward()
    for a, b_ in zip(got, (ref, q.grad, k.grad, v.grad)):
        torch.testing.assert_close(a.float(), b_.float(), atol=3e-2, rtol=3e-2)
