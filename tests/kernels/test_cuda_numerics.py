"""Numerical checks on a CUDA device of the kernels whose other gpu-marked tests only check device errors
(group_advantage, idm_reward) or that had none (fused_linear_logprobs): the compiled Triton path, taken by
default for CUDA tensors, against the float64 PyTorch reference at realistic sizes. Skipped without CUDA (the
same cases run on CPU through the Triton interpreter in the other tests of this folder). The remaining kernels'
CUDA checks are ``test_cuda_default_dispatch_matches_reference`` in test_grpo_loss.py, test_token_logprobs.py
and test_flow_sde_step.py; the attention backends' (flash-attn, xformers, flex, with backward) are in
tests/models/test_attention.py."""
import importlib

import pytest
import torch

from rlir.kernels import fused_linear_logprobs, fused_linear_logprobs_reference
from rlir.kernels.group_advantage import group_advantage, group_advantage_reference
from rlir.kernels.idm_reward import idm_reward, idm_reward_reference

pytestmark = pytest.mark.gpu
ga_module = importlib.import_module("rlir.kernels.group_advantage")
idm_module = importlib.import_module("rlir.kernels.idm_reward")


def _no_reference_fallback(monkeypatch, module, name):
    """The default CUDA path must run the Triton kernel, not hand the work to the PyTorch path."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"{module.__name__}: the CUDA path fell back to {name}")
    monkeypatch.delenv("RLIR_KERNELS", raising=False)
    monkeypatch.setattr(module, name, refuse)


def group_advantage_case(device, monkeypatch=None):
    gen = torch.Generator().manual_seed(0)
    rewards = torch.randn(4096, generator=gen, dtype=torch.float64)
    rewards[::37] = float("nan")  # missing rewards are left out of their group's statistics
    rewards[64:80] = 0.5  # one degenerate group (all equal): advantage 0
    shuffled = torch.randperm(4096, generator=gen) % 300  # uneven groups in any order
    cases = [dict(group_size=16), dict(group_size=1024), dict(group_index=shuffled)]
    wants = [{(scale, est): group_advantage_reference(rewards, scale=scale, estimator=est, **kw)
              for scale in ("group", "batch", "none") for est in ("grpo", "rloo")} for kw in cases]
    if monkeypatch is not None:
        _no_reference_fallback(monkeypatch, ga_module, "_group_advantage_torch")
    for kw, want in zip(cases, wants):
        kw = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
        for (scale, est), expected in want.items():
            for dtype in (torch.float32, torch.bfloat16):
                r = rewards.to(dtype)
                exp = expected if dtype == torch.float32 else group_advantage_reference(
                    r.double(), scale=scale, estimator=est, **{k: v.cpu() if isinstance(v, torch.Tensor) else v
                                                               for k, v in kw.items()})
                got = group_advantage(r.to(device), scale=scale, estimator=est, **kw)
                assert got.dtype == torch.float32 and got.device.type == torch.device(device).type
                torch.testing.assert_close(got.cpu().double(), exp, rtol=1e-4, atol=1e-5)


def idm_reward_case(device, monkeypatch=None):
    gen = torch.Generator().manual_seed(1)
    n, t = 64, 15
    cases = []
    for sizes in ([17], [3, 100, 17], [16384]):
        logits = [torch.randn(n, t, c, generator=gen, dtype=torch.float64) for c in sizes]
        actions = torch.stack([torch.randint(0, c, (n, t), generator=gen) for c in sizes], -1)
        mask = torch.rand(n, t, generator=gen) > 0.2
        mask[0] = False  # a row without valid frames: NaN reward
        for mode in ("exact", "per_head", "loglik"):
            cases.append((logits, actions, mask, mode, idm_reward_reference(logits, actions, mask, mode)))
    if monkeypatch is not None:
        _no_reference_fallback(monkeypatch, idm_module, "_idm_reward_torch")
    for logits, actions, mask, mode, want in cases:
        for dtype in (torch.float32, torch.bfloat16):
            heads = [lg.to(dtype).to(device) for lg in logits]
            exp = want if dtype == torch.float32 else idm_reward_reference(
                [h.cpu().double() for h in heads], actions, mask, mode)
            packed = torch.cat(heads, 2)
            sizes = [h.shape[2] for h in heads]
            for got in (idm_reward(heads, actions.to(device), mask.to(device), mode),
                        idm_reward(packed, actions.to(device), mask.to(device), mode, head_sizes=sizes)):
                torch.testing.assert_close(got.reward.cpu().double(), exp.reward, rtol=1e-4, atol=1e-4,
                                           equal_nan=True)
                torch.testing.assert_close(got.frame_match.cpu().double(), exp.frame_match, rtol=1e-4, atol=1e-4)
                torch.testing.assert_close(got.head_accuracy.cpu().double(), exp.head_accuracy, rtol=1e-4,
                                           atol=1e-4)


FLL_TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.bfloat16: dict(rtol=5e-2, atol=5e-2)}


def fused_linear_logprobs_case(device, dtype, rows=512, hidden_size=256, vocab=32003, chunk_size=96):
    gen = torch.Generator().manual_seed(2)
    hidden = torch.randn(rows, hidden_size, generator=gen, dtype=torch.float64)
    weight = torch.randn(vocab, hidden_size, generator=gen, dtype=torch.float64) / hidden_size**0.5
    ids = torch.randint(0, vocab, (rows,), generator=gen)
    g_logp, g_ent = torch.randn(2, rows, generator=gen, dtype=torch.float64)
    h64 = hidden.to(dtype).double().requires_grad_()
    w64 = weight.to(dtype).double().requires_grad_()
    logp64, ent64 = fused_linear_logprobs_reference(h64, w64, ids, 0.7, return_entropy=True)
    (logp64 * g_logp + ent64 * g_ent).sum().backward()

    h = hidden.to(dtype).to(device).requires_grad_()
    w = weight.to(dtype).to(device).requires_grad_()
    logp, ent = fused_linear_logprobs(h, w, ids.to(device), 0.7, chunk_size=chunk_size, return_entropy=True)
    (logp * g_logp.float().to(device) + ent * g_ent.float().to(device)).sum().backward()
    tol = FLL_TOL[dtype]
    torch.testing.assert_close(logp.cpu().double(), logp64.detach(), **tol)
    torch.testing.assert_close(ent.cpu().double(), ent64.detach(), **tol)
    scale_h, scale_w = h64.grad.abs().max(), w64.grad.abs().max()
    torch.testing.assert_close(h.grad.cpu().double() / scale_h, h64.grad / scale_h, **tol)
    torch.testing.assert_close(w.grad.cpu().double() / scale_w, w64.grad / scale_w, **tol)


def test_cuda_group_advantage_matches_reference(monkeypatch):
    group_advantage_case("cuda", monkeypatch)


def test_cuda_idm_reward_matches_reference(monkeypatch):
    idm_reward_case("cuda", monkeypatch)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_fused_linear_logprobs_matches_reference(dtype, monkeypatch):
    monkeypatch.delenv("RLIR_KERNELS", raising=False)
    fused_linear_logprobs_case("cuda", dtype)
