"""The TRL and Liger-Kernel providers of the kernel benchmarks compute what rlir's references compute, and say
why when they cannot run. Tiny shapes; Liger's Triton kernels only under the interpreter (CPU)."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_fused_linear_logprobs  # noqa: E402
import bench_grpo_loss  # noqa: E402
import bench_token_logprobs  # noqa: E402
from harness import Case, Unavailable, run_cases, unavailable  # noqa: E402
from rlir.kernels import fused_linear_logprobs_reference, token_logprobs_reference  # noqa: E402

N, T, H, V = 2, 8, 16, 40


def loss_inputs():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(N, T, H, generator=g)
    weight = torch.randn(V, H, generator=g) / 4
    ids = torch.randint(0, V, (N, T), generator=g)
    old = token_logprobs_reference(hidden @ weight.T, ids) + 0.3 * torch.randn(N, T, generator=g)
    ref = old + 0.05 * torch.randn(N, T, generator=g)
    adv = torch.randn(N, generator=g)
    mask = torch.rand(N, T, generator=g) < 0.8
    return hidden, weight, ids, old, adv, mask, ref


def reference_loss(hidden, weight, ids, old, adv, mask, ref):
    return bench_grpo_loss.reference_from_logits(hidden @ weight.T, ids, old, adv, mask, ref)[0]


def test_trl_selective_log_softmax_equals_reference():
    pytest.importorskip("trl")
    logits, ids = torch.randn(16, V), torch.randint(0, V, (16,))
    torch.testing.assert_close(bench_token_logprobs.trl_selective_log_softmax(logits, ids),
                               token_logprobs_reference(logits, ids), atol=1e-5, rtol=0)


def test_liger_chunked_grpo_loss_equals_reference():
    pytest.importorskip("liger_kernel")
    inputs = loss_inputs()
    loss = bench_grpo_loss.liger_chunked_from_hidden(*inputs)[0]
    torch.testing.assert_close(loss, reference_loss(*inputs), atol=1e-5, rtol=1e-5)


@pytest.mark.interpreter
def test_liger_triton_kernels_equal_reference():
    pytest.importorskip("liger_kernel")
    hidden, weight, ids, old, adv, mask, ref = loss_inputs()
    logits = hidden @ weight.T
    liger_layout = torch.cat((logits, torch.zeros_like(logits[:, :1])), dim=1)  # one unused last position
    loss = bench_grpo_loss.liger_triton_from_logits(liger_layout, ids, old, adv, mask, ref)
    torch.testing.assert_close(loss, reference_loss(hidden, weight, ids, old, adv, mask, ref), atol=1e-5, rtol=1e-5)

    rows = hidden.reshape(-1, H)
    torch.testing.assert_close(bench_fused_linear_logprobs.liger_fused_linear_cross_entropy(rows, weight, ids.view(-1)),
                               fused_linear_logprobs_reference(rows, weight, ids.view(-1)), atol=1e-5, rtol=0)

    # Liger reads [B, L+1, V]: position l of each sequence scores that sequence's id l+1.
    flat = torch.randn(16, V)
    flat_ids = torch.randint(0, V, (16,))
    per_sequence = bench_token_logprobs.SEQUENCES
    scored = bench_token_logprobs.liger_selective_log_softmax(flat, flat_ids)
    expected = token_logprobs_reference(flat.view(per_sequence, -1, V)[:, :-1].reshape(-1, V),
                                        flat_ids.view(per_sequence, -1)[:, 1:].reshape(-1))
    torch.testing.assert_close(scored.reshape(-1), expected, atol=1e-5, rtol=0)


def test_unavailable_providers_are_recorded_with_their_reason():
    case = Case("op", {"n": 1}, "fp32", "forward",
                {"fast": lambda: (lambda: None), "gone": unavailable("needs a CUDA device")})
    rows = run_cases([case])
    assert "error" not in rows[0]
    assert rows[1]["error"] == "Unavailable: needs a CUDA device"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU listing")
def test_cpu_cases_list_liger_triton_as_unavailable():
    pytest.importorskip("liger_kernel")
    cases = [c for c in bench_grpo_loss.from_logits_cases(torch.device("cpu"))]
    build = cases[0].providers["liger triton_grpo_loss"]
    with pytest.raises(Unavailable, match="needs a CUDA device"):
        build()
