"""Cases that kill mutants of kernels/group_advantage.py which the main kernel tests let through (docs/mutation.md).

Each error names the argument at fault, and two numerical corner cases: a batch std over exactly two finite
rewards (the unbiased n - 1 = 1 divisor) and a group of equal negative rewards whose mean carries rounding
error (the degenerate-group test must see max == min, not compare against an initial 0).
"""
import importlib
import math

import pytest
import torch

from rlir.kernels.group_advantage import group_advantage, group_advantage_reference

ga_module = importlib.import_module("rlir.kernels.group_advantage")

BAD_INPUTS = [
    (dict(rewards=torch.zeros(4, 1), group_size=2), r"^rewards must have 1 dims"),
    (dict(rewards=torch.zeros(4)), r"^exactly one of group_size or group_index must be given$"),
    (dict(rewards=torch.zeros(4), group_size=2, group_index=torch.zeros(4, dtype=torch.long)),
     r"^exactly one of group_size or group_index must be given$"),
    (dict(rewards=torch.zeros(4), group_index=torch.zeros(4)), r"^group_index must have dtype in"),
    (dict(rewards=torch.zeros(4), group_index=torch.zeros(4, 1, dtype=torch.long)), r"^group_index must have 1 dims"),
    (dict(rewards=torch.zeros(4), group_index=torch.zeros(3, dtype=torch.long)),
     r"^group_index must have shape \(4,\), got \(3,\)$"),
    (dict(rewards=torch.zeros(4), group_index=torch.tensor([0, 0, -1, 1])),
     r"^group_index must hold non-negative group ids$"),
    (dict(rewards=torch.zeros(4), group_size=2, scale="groups"), r"^scale must be one of"),
    (dict(rewards=torch.zeros(4), group_size=2, estimator="ppo"), r"^estimator must be one of"),
    (dict(rewards=torch.zeros(4), group_size=2, eps=-1.0), r"^eps must be >= 0, got -1.0$"),
]


@pytest.mark.parametrize("kwargs,message", BAD_INPUTS)
def test_errors_name_the_argument(backend, kwargs, message):
    with pytest.raises(ValueError, match=message):
        group_advantage(**kwargs)


def test_batch_std_over_two_finite_rewards(backend):
    # Finite rewards {1, 3}: unbiased batch std sqrt(2 / 1); the other group has no finite reward.
    r = torch.tensor([1.0, 3.0, float("nan"), float("nan")])
    got = group_advantage(r, group_size=2, scale="batch", eps=0.0)
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(got, torch.tensor([-s, s, 0.0, 0.0]))


def test_equal_negative_rewards_with_rounding_error_are_degenerate(backend):
    # The fp32 mean of seven -0.1s is not exactly -0.1, so deviations are ~1e-8 and so is the std: without the
    # max == min test the group would get advantages of order 1 from rounding noise.
    r = torch.full((7,), -0.1)
    for scale in ("group", "none"):
        assert group_advantage(r, group_size=7, scale=scale, eps=0.0).eq(0).all()
        assert group_advantage(r, group_index=torch.zeros(7, dtype=torch.long), scale=scale, eps=0.0).eq(0).all()


@pytest.mark.interpreter
def test_triton_path_runs_the_kernel_up_to_the_largest_group(monkeypatch):
    # A group of _MAX_GROUP_BLOCK rewards still fits one program: the Triton path must not hand it to PyTorch.
    r = torch.randn(ga_module._MAX_GROUP_BLOCK, generator=torch.Generator().manual_seed(0))
    want = group_advantage_reference(r.double(), group_size=len(r))

    def refuse(*args, **kwargs):
        raise AssertionError("the Triton path fell back to the reference")

    monkeypatch.setenv("RLIR_KERNELS", "triton")
    monkeypatch.setattr(ga_module, "_group_advantage_torch", refuse)
    torch.testing.assert_close(group_advantage(r, group_size=len(r)).double(), want, rtol=1e-4, atol=1e-5)
