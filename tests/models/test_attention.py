import importlib

import pytest
import torch

from rlir.models.attention import BACKENDS, attention, available_backends, causal_mask
from rlir.models.dit_world_model import frame_causal_mask
from rlir.models.masks import FrameCausal

attention_module = importlib.import_module("rlir.models.attention")  # rlir.models re-exports the function

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


# ---- FrameCausal: the frame-causal mask as index arithmetic ------------------------------------------------

def _expand(frame_mask, p):
    return frame_mask.repeat_interleave(p, 0).repeat_interleave(p, 1)


@pytest.mark.parametrize("p, clean, noisy", [(1, 3, [1, 2, 3]), (4, 5, [3, 1, 5, 1]), (3, 1, [1]), (2, 6, [])])
def test_teacher_forced_spec_is_the_dits_frame_causal_mask(p, clean, noisy):
    """The DiT's training layout [clean 0..Tc-1 ; noisy slots of frames noisy_index], any order, repeats."""
    spec = FrameCausal.teacher_forced(p, clean, torch.tensor(noisy))
    s = (clean + len(noisy)) * p
    want = _expand(frame_causal_mask(clean, torch.tensor(noisy, dtype=torch.long)), p)
    assert torch.equal(spec.dense(s, s), want)
    every_pair = spec.mask_mod(s, s)(None, None, torch.arange(s)[:, None], torch.arange(s)[None, :])
    assert torch.equal(every_pair, want)  # flex's per-token rule


@pytest.mark.parametrize("cached, new", [(0, 3), (2, 3), (4, 1)])
def test_clean_spec_is_frame_causal_over_a_kv_cache(cached, new):
    """New clean frames after cached ones (the DiT's cache_frames): every cached frame, and their own causally."""
    p = 3
    own = torch.arange(new)
    want = _expand(torch.cat((torch.ones(new, cached, dtype=torch.bool), own[None] <= own[:, None]), 1), p)
    spec = FrameCausal.clean(p, cached + new)
    assert torch.equal(spec.dense(new * p, (cached + new) * p), want)
    q, kv = torch.arange(new * p)[:, None] + cached * p, torch.arange((cached + new) * p)[None, :]
    assert torch.equal(want, q // p >= kv // p)  # the attention-gym rule itself


SPEC_CASES = [  # (B, Hq, Hkv, spec, S)
    (2, 4, 4, FrameCausal.teacher_forced(5, 3, [1, 3, 2]), 30),
    (1, 6, 2, FrameCausal.teacher_forced(16, 7, range(1, 8)), 224),  # Crafter DiT: 8-frame clip, P=16, GQA
    (2, 4, 2, FrameCausal.clean(4, 6), 8),                             # two new frames over four cached
]


@pytest.mark.skipif("flex" not in available_backends(), reason="flex_attention not in this torch")
@pytest.mark.parametrize("b, hq, hkv, spec, s", SPEC_CASES)
def test_flex_with_a_spec_matches_sdpa_with_the_dense_mask(b, hq, hkv, spec, s):
    skv = spec.key_tokens
    q, k, v, _ = _inputs(b, hq, hkv, s, skv, None)
    dense = spec.dense(s, skv)
    with torch.no_grad():
        want = attention(q, k, v, mask=dense, backend="sdpa")
        for backend in ("flex", "sdpa", "math"):
            torch.testing.assert_close(attention(q, k, v, mask=spec, backend=backend), want, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif("flex" not in available_backends(), reason="flex_attention not in this torch")
def test_flex_builds_the_block_mask_once_per_spec_and_shape(monkeypatch):
    import torch.nn.attention.flex_attention as fa

    calls = []
    real = fa.create_block_mask
    monkeypatch.setattr(fa, "create_block_mask", lambda *a, **kw: calls.append(a[3:5]) or real(*a, **kw))
    attention_module._frame_block_mask.cache_clear()
    spec = FrameCausal.teacher_forced(4, 3, [1, 2, 3])
    q, k, v, _ = _inputs(1, 2, 2, 24, 24, None)
    with torch.no_grad():
        first = attention(q, k, v, mask=spec, backend="flex")
        second = attention(q, k, v, mask=FrameCausal.teacher_forced(4, 3, [1, 2, 3]), backend="flex")  # equal spec
        assert calls == [(24, 24)] and torch.equal(first, second)
        attention(q[:, :, -8:], k, v, mask=spec, backend="flex")  # another shape: one more build
    assert calls == [(24, 24), (8, 24)]
    assert attention_module._frame_block_mask.cache_info().hits == 1


def test_frame_causal_bad_inputs_raise():
    spec = FrameCausal.clean(4, 3)
    q, k, v, _ = _inputs(1, 2, 2, 12, 12, None)
    with pytest.raises(ValueError, match="mask"):
        attention(q, k[:, :, :8], v[:, :, :8], mask=spec)  # Skv is not 3 frames of 4
    with pytest.raises(ValueError, match="mask"):
        attention(q[:, :, :6], k, v, mask=spec)  # queries must be whole trailing frames
    with pytest.raises(ValueError, match="causal"):
        attention(q, k, v, mask=spec, causal=True)
    with pytest.raises(ValueError, match="tokens_per_frame"):
        FrameCausal.clean(0, 3)
    with pytest.raises(ValueError, match="noisy_index"):
        FrameCausal.teacher_forced(4, 3, [1, -1])
    with pytest.raises(ValueError, match="times and noisy"):
        FrameCausal(4, (0, 1), (False,))
    assert hash(FrameCausal.clean(4, 3)) == hash(FrameCausal(4, [0, 1, 2], [0, 0, 0]))


@pytest.mark.gpu
@pytest.mark.parametrize("b, hq, hkv, spec, s", SPEC_CASES)
@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_cuda_spec_matches_math(backend, b, hq, hkv, spec, s):
    skv = spec.key_tokens
    q, k, v, _ = _inputs(b, hq, hkv, s, skv, None, dtype=torch.bfloat16, device="cuda")
    outs = {}
    for name in (backend, "math"):
        leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
        out = attention(*leaves, mask=spec if name == backend else spec.dense(s, skv, "cuda"), backend=name)
        (out.float() * torch.linspace(-1, 1, out.numel(), device="cuda").view_as(out)).sum().backward()
        outs[name] = (out, *(t.grad for t in leaves))
    for a, b_ in zip(outs[backend], outs["math"]):
        torch.testing.assert_close(a.float(), b_.float(), atol=3e-2, rtol=3e-2)
