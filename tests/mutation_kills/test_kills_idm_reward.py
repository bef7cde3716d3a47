"""Cases that kill mutants of kernels/idm_reward.py which the main kernel tests let through (docs/mutation.md):
the Triton path runs the kernel (no silent fall-back to the reference) on ordinary, 1 x 1 and widest-head
inputs; logits whose class axis is not contiguous; one head given as a list; zero frames."""
import importlib

import pytest
import torch

from rlir.kernels.idm_reward import idm_reward, idm_reward_reference

idm_module = importlib.import_module("rlir.kernels.idm_reward")


def _assert_same(got, want):
    torch.testing.assert_close(got.reward, want.reward.float(), equal_nan=True)
    torch.testing.assert_close(got.frame_match, want.frame_match.float())
    torch.testing.assert_close(got.head_accuracy, want.head_accuracy.float(), equal_nan=True)


@pytest.mark.interpreter
@pytest.mark.parametrize("n,t,sizes", [(3, 4, [5, 3]), (1, 1, [7]), (1, 2, [idm_module._MAX_BLOCK_C])])
def test_triton_path_runs_the_kernel(monkeypatch, n, t, sizes):
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(n, t, c, generator=g) for c in sizes]
    actions = torch.stack([torch.randint(0, c, (n, t), generator=g) for c in sizes], -1)
    modes = ("exact", "per_head", "loglik")
    want = {mode: idm_reward_reference(logits, actions, mode=mode) for mode in modes}

    def refuse(*args, **kwargs):
        raise AssertionError("the Triton path fell back to the reference")

    monkeypatch.setenv("RLIR_KERNELS", "triton")
    monkeypatch.setattr(idm_module, "_idm_reward_torch", refuse)
    for mode in modes:
        _assert_same(idm_reward(logits, actions, mode=mode), want[mode])


@pytest.mark.parametrize("layout", ["permuted", "every_other"])
def test_packed_logits_with_a_strided_class_axis(backend, layout):
    g = torch.Generator().manual_seed(1)
    n, t, sizes = 3, 5, [4, 6]
    width = sum(sizes)
    if layout == "permuted":
        packed = torch.randn(width, n, t, generator=g).permute(1, 2, 0)  # class stride N * T
    else:
        packed = torch.randn(n, t, 2 * width, generator=g)[..., ::2]  # class stride 2
    assert packed.stride(2) != 1
    actions = torch.stack([torch.randint(0, c, (n, t), generator=g) for c in sizes], -1)
    want = idm_reward_reference(list(packed.contiguous().split(sizes, 2)), actions, mode="per_head")
    _assert_same(idm_reward(packed, actions, mode="per_head", head_sizes=sizes), want)


def test_one_head_as_a_list(backend):
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 5, generator=g)
    actions = torch.randint(0, 5, (2, 3, 1), generator=g)
    _assert_same(idm_reward([logits], actions), idm_reward_reference([logits], actions))


def test_zero_frames(backend):
    got = idm_reward([torch.zeros(2, 0, 5)], torch.zeros(2, 0, 1, dtype=torch.long))
    assert got.reward.shape == (2,) and got.reward.isnan().all() and got.frame_match.shape == (2, 0)


def _ok():
    return dict(logits=[torch.zeros(2, 3, 5)], actions=torch.zeros(2, 3, 1, dtype=torch.long))


BAD_INPUTS = [
    (dict(mode="best"), r"^mode must be one of"),
    (dict(head_sizes=5), r"^head_sizes must be a list of ints, got int$"),
    (dict(logits=[]), r"^logits must be a non-empty list of \[N, T, C_h\] tensors$"),
    (dict(logits=[torch.zeros(2, 3)]), r"^logits\[0\] must have 3 dims"),
    (dict(logits=[torch.zeros(2, 3, 0)]), r"^every logits head needs at least one class, got widths \[0\]$"),
    (dict(logits=torch.zeros(2, 3, 5, dtype=torch.long)), r"^logits must have dtype in"),
    (dict(logits=torch.zeros(2, 3)), r"^logits must have 3 dims"),
    (dict(actions=torch.zeros(2, 3, 1, 1, dtype=torch.long)), r"^actions must have 2 or 3 dims"),
    (dict(actions=torch.zeros(2, 4, 1, dtype=torch.long)), r"^actions must have shape \(2, 3, 1\), got \(2, 4, 1\)$"),
]


@pytest.mark.parametrize("override,message", BAD_INPUTS)
def test_errors_name_the_argument(backend, override, message):
    with pytest.raises(ValueError, match=message):
        idm_reward(**{**_ok(), **override})
