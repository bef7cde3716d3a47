"""fused_linear_logprobs / fused_linear_grpo_loss: both backends against the float64 reference that
materialises the logits, plus a check that no [M, V] tensor is ever allocated."""
import importlib
import zlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from rlir.kernels import (
    fused_linear_grpo_loss,
    fused_linear_logprobs,
    fused_linear_logprobs_reference,
    grpo_loss_reference,
    token_logprobs_reference,
)

tlp_module = importlib.import_module("rlir.kernels.token_logprobs")

TOL = {
    torch.float32: dict(rtol=1e-4, atol=1e-4),
    torch.float16: dict(rtol=2e-2, atol=2e-2),
    torch.bfloat16: dict(rtol=5e-2, atol=5e-2),
}


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(tlp_module, "MAX_BLOCK_V", 64)


@pytest.fixture
def gen(request):
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))


def make_case(gen, rows, hidden_size, vocab, dtype):
    hidden = torch.randn(rows, hidden_size, generator=gen, dtype=torch.float64).to(dtype)
    weight = (torch.randn(vocab, hidden_size, generator=gen, dtype=torch.float64) / hidden_size**0.5).to(dtype)
    ids = torch.randint(0, vocab, (rows,), generator=gen)
    return hidden, weight, ids


def reference_with_grads(hidden, weight, ids, temperature, g_logp, g_ent):
    h = hidden.double().requires_grad_()
    w = weight.double().requires_grad_()
    logp, ent = fused_linear_logprobs_reference(h, w, ids, temperature, return_entropy=True)
    (logp * g_logp + ent * g_ent).sum().backward()
    return logp, ent, h.grad, w.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rows,hidden_size,vocab,chunk", [(1, 8, 17, None), (7, 16, 100, 3), (12, 5, 33, 5),
                                                           (9, 32, 300, 100)])
def test_matches_reference_values_and_grads(backend, gen, dtype, rows, hidden_size, vocab, chunk):
    hidden, weight, ids = make_case(gen, rows, hidden_size, vocab, dtype)
    g_logp = torch.randn(rows, generator=gen, dtype=torch.float64)
    g_ent = torch.randn(rows, generator=gen, dtype=torch.float64)
    want = reference_with_grads(hidden, weight, ids, 0.8, g_logp, g_ent)

    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    logp, ent = fused_linear_logprobs(h, w, ids, 0.8, chunk_size=chunk, return_entropy=True)
    (logp * g_logp.float() + ent * g_ent.float()).sum().backward()
    assert logp.dtype == ent.dtype == torch.float32
    assert h.grad.dtype == w.grad.dtype == dtype
    for got, exp in zip((logp, ent, h.grad, w.grad), want):
        torch.testing.assert_close(got.double(), exp, **TOL[dtype])


def test_three_dim_hidden_and_chunk_sizes_agree(backend, gen):
    hidden, weight, ids = make_case(gen, 24, 16, 50, torch.float32)
    hidden, ids = hidden.view(4, 6, 16), ids.view(4, 6)
    outs = [fused_linear_logprobs(hidden, weight, ids, chunk_size=c) for c in (1, 5, 24, 1000)]
    assert outs[0].shape == (4, 6)
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], rtol=1e-6, atol=1e-6)


def test_grpo_loss_from_hidden_equals_unfused(backend, gen):
    n, t, hidden_size, vocab = 3, 5, 16, 40
    hidden, weight, ids = make_case(gen, n * t, hidden_size, vocab, torch.float32)
    hidden, ids = hidden.view(n, t, hidden_size), ids.view(n, t)
    old = token_logprobs_reference(hidden @ weight.T, ids) + 0.1 * torch.randn(n, t, generator=gen)
    ref = old + 0.05 * torch.randn(n, t, generator=gen)
    adv = torch.randn(n, generator=gen)
    mask = torch.rand(n, t, generator=gen) > 0.3
    opts = dict(beta=0.04, eps_high=0.28, loss_agg="seq-mean-token-mean")

    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss, metrics = fused_linear_grpo_loss(h1, w1, ids, old, adv, mask, ref, temperature=0.9, chunk_size=4, **opts)
    loss.backward()
    h2, w2 = hidden.double().requires_grad_(), weight.double().requires_grad_()
    want, want_metrics = grpo_loss_reference(token_logprobs_reference(h2 @ w2.T, ids, 0.9), old.double(), adv.double(),
                                             mask, ref.double(), **opts)
    want.backward()
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h1.grad.double(), h2.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(w1.grad.double(), w2.grad, rtol=1e-4, atol=1e-6)
    for key, value in want_metrics.items():
        torch.testing.assert_close(metrics[key].double(), value.double(), rtol=1e-5, atol=1e-6)


class LargestAllocation(TorchDispatchMode):
    """Records the largest tensor any op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_never_allocates_full_logits(gen):
    rows, hidden_size, vocab, chunk = 64, 8, 512, 4
    hidden, weight, ids = make_case(gen, rows, hidden_size, vocab, torch.float32)
    hidden.requires_grad_()
    weight.requires_grad_()
    with LargestAllocation() as mode:
        logp, ent = fused_linear_logprobs(hidden, weight, ids, chunk_size=chunk, return_entropy=True)
        (logp.sum() + ent.sum()).backward()
    # the largest tensors are the weight (and its grad) and one chunk of logits, never rows x V
    assert mode.largest <= max(vocab * hidden_size, chunk * vocab)
    assert mode.largest < rows * vocab


@pytest.mark.parametrize("kwargs,name", [
    (dict(hidden=torch.zeros(4, 8), weight=torch.zeros(10, 7), ids=torch.zeros(4, dtype=torch.long)), "weight"),
    (dict(hidden=torch.zeros(4, 8), weight=torch.zeros(10, 8), ids=torch.zeros(5, dtype=torch.long)), "ids"),
    (dict(hidden=torch.zeros(4, 8), weight=torch.zeros(10, 8), ids=torch.zeros(4)), "ids"),
    (dict(hidden=torch.zeros(4, 8), weight=torch.zeros(10, 8), ids=torch.full((4,), 10)), "ids"),
    (dict(hidden=torch.zeros(4, 8), weight=torch.zeros(10, 8, dtype=torch.float16),
          ids=torch.zeros(4, dtype=torch.long)), "weight"),
    (dict(hidden=torch.zeros(4, 8), weight=torch.zeros(10, 8), ids=torch.zeros(4, dtype=torch.long),
          chunk_size=0), "chunk_size"),
    (dict(hidden=torch.zeros(4, 8), weight=torch.zeros(10, 8), ids=torch.zeros(4, dtype=torch.long),
          temperature=0.0), "temperature"),
    (dict(hidden=torch.zeros(8), weight=torch.zeros(10, 8), ids=torch.zeros((), dtype=torch.long)), "hidden"),
])
def test_bad_inputs_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        fused_linear_logprobs(**kwargs)
