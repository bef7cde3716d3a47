"""group_advantage: both backends against the float64 reference, against TRL's and verl's published
formulas (written out here), and the robustness rules: NaN rewards, degenerate groups, no NaN ever."""
from __future__ import annotations

import math
import os
from collections import defaultdict
from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlir.kernels.group_advantage import group_advantage, group_advantage_reference

BACKENDS = ["torch", "triton"]
SCALES = ["group", "batch", "none"]
ESTIMATORS = ["grpo", "rloo"]
NAN = float("nan")


def check_against_reference(rewards, **kwargs) -> torch.Tensor:
    """The public op on ``rewards`` vs the float64 reference on the same values."""
    got = group_advantage(rewards, **kwargs)
    want = group_advantage_reference(rewards.double(), **kwargs)
    assert got.dtype == torch.float32 and got.shape == rewards.shape
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)
    # Degenerate groups and NaN rewards must agree exactly (zeros), not just closely.
    assert torch.equal(got == 0, want == 0)
    return got


def random_rewards(num_groups: int, group_size: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    """Continuous rewards, with one binary group, one constant group and ~10% NaN."""
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(num_groups, group_size, generator=g, dtype=torch.float64) * 3 + 1
    if num_groups > 1:
        r[1] = torch.randint(0, 2, (group_size,), generator=g).double()
    if num_groups > 2:
        r[2] = 0.1
    r = r.flatten()
    r[torch.rand(r.shape, generator=g) < 0.1] = NAN
    return r.to(dtype)


# ---------------------------------------------------------------------------------------------------
# against the float64 reference


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("group_size", [1, 3, 5, 8])
@pytest.mark.parametrize("seed", [0, 1])
def test_fixed_groups_match_reference(backend, seed, group_size, dtype):
    rewards = random_rewards(4, group_size, seed, dtype)
    for scale in SCALES:
        for estimator in ESTIMATORS:
            check_against_reference(rewards, group_size=group_size, scale=scale, estimator=estimator)


@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32, torch.uint8])
@pytest.mark.parametrize("seed", [0, 1])
def test_uneven_shuffled_groups_match_reference_and_a_loop(backend, seed, index_dtype):
    g = torch.Generator().manual_seed(seed)
    sizes, labels = [1, 3, 5, 2, 7, 4], [42, 7, 200, 3, 0, 9]  # non-contiguous ids, uneven sizes
    ids = torch.cat([torch.full((s,), lab) for s, lab in zip(sizes, labels)])
    perm = torch.randperm(ids.numel(), generator=g)
    ids = ids[perm].to(index_dtype)
    rewards = random_rewards(1, ids.numel(), seed)
    rewards[ids == 200] = torch.tensor([2.0, NAN, 2.0, 2.0, NAN])[: int((ids == 200).sum())]  # constant
    rewards[ids == 3] = torch.tensor([NAN, 1.5])  # a single finite reward
    for scale in SCALES:
        for estimator in ESTIMATORS:
            got = check_against_reference(rewards, group_index=ids, scale=scale, estimator=estimator)
            want = loop_advantage(rewards.double(), ids.tolist(), scale, estimator, 1e-6)
            torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)
    for lab in (42, 200, 3):  # size-1, constant and single-valid groups
        assert (group_advantage(rewards, group_index=ids)[ids == lab] == 0).all()


def loop_advantage(r: torch.Tensor, ids: list, scale: str, estimator: str, eps: float) -> torch.Tensor:
    """The semantics spelled out one group at a time (an oracle independent of the reference)."""
    finite = [i for i in range(len(r)) if math.isfinite(r[i])]
    batch = r[finite]
    batch_std = batch.std().item() if len(finite) > 1 else 0.0
    out = torch.zeros_like(r)
    for gid in set(ids):
        members = [i for i in finite if ids[i] == gid]
        vals = r[members]
        if len(members) < 2 or vals.max() == vals.min():
            continue
        n, mean, std = len(members), vals.mean(), vals.std()
        for i in members:
            a = r[i] - mean if estimator == "grpo" else r[i] - (vals.sum() - r[i]) / (n - 1)
            out[i] = a / {"group": std + eps, "batch": batch_std + eps, "none": 1.0}[scale]
    return out


def test_group_index_matches_group_size_and_is_order_free(backend):
    rewards = random_rewards(5, 4, seed=3)
    ids = torch.arange(20) // 4
    for scale in SCALES:
        for estimator in ESTIMATORS:
            fixed = group_advantage(rewards, group_size=4, scale=scale, estimator=estimator)
            indexed = group_advantage(rewards, group_index=ids, scale=scale, estimator=estimator)
            torch.testing.assert_close(indexed, fixed, rtol=1e-6, atol=1e-7)
            perm = torch.randperm(20, generator=torch.Generator().manual_seed(0))
            shuffled = group_advantage(rewards[perm], group_index=ids[perm] * 3 + 11, scale=scale,
                                       estimator=estimator)
            torch.testing.assert_close(shuffled, fixed[perm], rtol=1e-6, atol=1e-7)


def test_float64_and_strided_inputs(backend):
    base = random_rewards(3, 6, seed=4, dtype=torch.float64)
    out = group_advantage(base, group_size=6)
    assert out.dtype == torch.float32
    strided = torch.stack([base, base], 1).flatten()[::2]  # stride 2 view of the same values
    assert not strided.is_contiguous()
    torch.testing.assert_close(group_advantage(strided, group_size=6), out)


# ---------------------------------------------------------------------------------------------------
# robustness


def test_hand_example_with_nan(backend):
    # group 0: NaN left out -> finite [1, 3, 5]: mean 3, unbiased std 2. group 1: [2, 4]: mean 3, std sqrt 2.
    rewards = torch.tensor([1.0, NAN, 3.0, 5.0, 2.0, 4.0, NAN, NAN])
    ids = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    eps = 1e-6
    got = group_advantage(rewards, group_index=ids, eps=eps)
    r2 = math.sqrt(2)
    want = torch.tensor([-2 / (2 + eps), 0, 0, 2 / (2 + eps), -1 / (r2 + eps), 1 / (r2 + eps), 0, 0])
    torch.testing.assert_close(got, want)
    # rloo: r_i - mean of the others; group 0: 1 - 4, 5 - 2; group 1: 2 - 4, 4 - 2.
    got = group_advantage(rewards, group_size=4, estimator="rloo", scale="none")
    torch.testing.assert_close(got, torch.tensor([-3.0, 0, 0, 3.0, -2.0, 2.0, 0, 0]))
    # batch std over the 5 finite rewards [1, 3, 5, 2, 4] = sqrt(2.5)
    got = group_advantage(rewards, group_size=4, scale="batch", eps=0.0)
    b = math.sqrt(2.5)
    torch.testing.assert_close(got, torch.tensor([-2 / b, 0, 0, 2 / b, -1 / b, 1 / b, 0, 0]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_equal_rewards_give_exact_zeros(backend, dtype):
    # means of 0.1 * 3 or 1/3 * 5 are not exact in floating point: the zeros must still be exact.
    rewards = torch.tensor([0.1, 0.1, 0.1, NAN, 1 / 3, 1 / 3, 1 / 3, 1 / 3, 1 / 3, 7.0, NAN, 7.0], dtype=dtype)
    ids = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2])
    for scale in SCALES:
        for estimator in ESTIMATORS:
            for eps in (1e-6, 0.0):
                got = group_advantage(rewards, group_index=ids, scale=scale, estimator=estimator, eps=eps)
                assert torch.equal(got, torch.zeros(12)), (scale, estimator, eps, got)


def test_size_one_groups_single_rewards_and_all_nan(backend):
    for scale in SCALES:
        for estimator in ESTIMATORS:
            kw = dict(scale=scale, estimator=estimator)
            assert torch.equal(group_advantage(torch.tensor([3.0]), group_size=1, **kw), torch.zeros(1))
            assert torch.equal(group_advantage(torch.tensor([1.0, -2.0, 5.0]), group_size=1, **kw),
                               torch.zeros(3))
            assert torch.equal(group_advantage(torch.full((6,), NAN), group_size=3, **kw), torch.zeros(6))
            assert torch.equal(group_advantage(torch.tensor([NAN, 4.0, NAN, NAN]), group_size=4, **kw),
                               torch.zeros(4))
            assert group_advantage(torch.zeros(0), group_size=2, **kw).shape == (0,)


def test_infinite_rewards_are_left_out(backend):
    rewards = torch.tensor([1.0, float("inf"), 3.0, -float("inf"), 0.0, 0.0])
    got = group_advantage(rewards, group_size=3)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, group_advantage(torch.tensor([1.0, NAN, 3.0, NAN, 0.0, 0.0]), group_size=3))


def test_eps_zero_never_divides_by_zero(backend):
    # [1e-30, 0]: distinct, but the squared deviations underflow in fp32, so the std is 0.
    rewards = torch.tensor([1e-30, 0.0, 3.0, 3.0, 1.0, 2.0])
    for scale in SCALES:
        got = group_advantage(rewards, group_size=2, scale=scale, eps=0.0)
        assert torch.isfinite(got).all()
        assert (got[2:4] == 0).all() and got[4] < 0 < got[5]
    assert (group_advantage(rewards, group_size=2, eps=0.0)[:2] == 0).all()


# ---------------------------------------------------------------------------------------------------
# published definitions, written out here


@pytest.mark.parametrize("scale", SCALES)
def test_matches_trl_grpo_trainer(backend, scale):
    # TRL GRPOTrainer._generate_and_score_completions: advantages = rewards - group mean, divided by
    # (std + 1e-4) where std is the group's std ("group"), the whole batch's std ("batch"), or not at all.
    G = 4
    rewards = torch.randn(6 * G, generator=torch.Generator().manual_seed(5))
    r = rewards.double()
    mean_grouped = r.view(-1, G).mean(dim=1).repeat_interleave(G, dim=0)
    advantages = r - mean_grouped
    if scale == "group":
        advantages = advantages / (r.view(-1, G).std(dim=1).repeat_interleave(G, dim=0) + 1e-4)
    elif scale == "batch":
        advantages = advantages / (r.std().expand_as(r) + 1e-4)
    got = group_advantage(rewards, group_size=G, scale=scale, eps=1e-4)
    torch.testing.assert_close(got.double(), advantages, rtol=1e-5, atol=1e-5)


def verl_grpo(scores: torch.Tensor, index: list, epsilon: float = 1e-6, norm_adv_by_std_in_grpo=True):
    """verl compute_grpo_outcome_advantage, per sample."""
    id2score, id2mean, id2std = defaultdict(list), {}, {}
    for i in range(len(scores)):
        id2score[index[i]].append(scores[i])
    for idx in id2score:
        if len(id2score[idx]) == 1:
            id2mean[idx], id2std[idx] = torch.tensor(0.0), torch.tensor(1.0)
        else:
            id2mean[idx] = torch.mean(torch.stack(id2score[idx]))
            id2std[idx] = torch.std(torch.stack(id2score[idx]))
    out = scores.clone()
    for i in range(len(scores)):
        if norm_adv_by_std_in_grpo:
            out[i] = (scores[i] - id2mean[index[i]]) / (id2std[index[i]] + epsilon)
        else:
            out[i] = scores[i] - id2mean[index[i]]
    return out


def verl_rloo(scores: torch.Tensor, index: list):
    """verl compute_rloo_outcome_advantage, per sample."""
    id2score, id2mean = defaultdict(list), {}
    for i in range(len(scores)):
        id2score[index[i]].append(scores[i])
    for idx in id2score:
        id2mean[idx] = torch.tensor(0.0) if len(id2score[idx]) == 1 else torch.mean(torch.stack(id2score[idx]))
    out = scores.clone()
    for i in range(len(scores)):
        n = len(id2score[index[i]])
        if n > 1:
            out[i] = scores[i] * n / (n - 1) - id2mean[index[i]] * n / (n - 1)
    return out


def test_matches_verl(backend):
    g = torch.Generator().manual_seed(6)
    index = [5, 1, 5, 8, 1, 5, 1, 1, 2, 5]  # group 8 and group 2 have one sample each
    scores = torch.randn(len(index), generator=g).double()
    ids = torch.tensor(index)
    big = torch.tensor([index.count(i) > 1 for i in index])

    ours = group_advantage(scores.float(), group_index=ids, scale="group", eps=1e-6).double()
    theirs = verl_grpo(scores, index, epsilon=1e-6)
    torch.testing.assert_close(ours[big], theirs[big], rtol=1e-5, atol=1e-5)
    # Deliberate difference: verl gives a size-1 group mean 0 and std 1 (advantage score / (1 + eps)),
    # a signal with no comparison behind it; we give it advantage 0.
    assert (ours[~big] == 0).all()
    torch.testing.assert_close(theirs[~big], scores[~big] / (1 + 1e-6))

    ours = group_advantage(scores.float(), group_index=ids, scale="none").double()  # Dr.GRPO
    theirs = verl_grpo(scores, index, norm_adv_by_std_in_grpo=False)
    torch.testing.assert_close(ours[big], theirs[big], rtol=1e-5, atol=1e-5)

    ours = group_advantage(scores.float(), group_index=ids, estimator="rloo", scale="none").double()
    theirs = verl_rloo(scores, index)
    torch.testing.assert_close(ours[big], theirs[big], rtol=1e-5, atol=1e-5)
    assert (ours[~big] == 0).all()  # verl leaves a size-1 group's score as it is


# ---------------------------------------------------------------------------------------------------
# properties


@pytest.mark.interpreter
@pytest.mark.parametrize("backend_name", BACKENDS)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_properties(backend_name, data):
    num_groups = data.draw(st.integers(1, 4), label="num_groups")
    fixed = data.draw(st.booleans(), label="fixed")
    if fixed:
        sizes = [data.draw(st.integers(1, 6), label="size")] * num_groups
    else:
        sizes = data.draw(st.lists(st.integers(1, 6), min_size=num_groups, max_size=num_groups), label="sizes")
    labels = data.draw(st.lists(st.integers(0, 10**6), min_size=num_groups, max_size=num_groups, unique=True))
    n = sum(sizes)
    ids = [lab for lab, s in zip(labels, sizes) for _ in range(s)]
    if not fixed:
        ids = data.draw(st.permutations(ids), label="ids")
    # Rewards on a 1/8 grid: fp32 statistics stay exact enough that the checks below hold for any
    # draw (a continuous draw can hit fp32 cancellation, a limit of the format, not of the kernel).
    value = st.one_of(st.integers(-40, 40).map(lambda k: k / 8), st.just(NAN))
    rewards = torch.tensor(data.draw(st.lists(value, min_size=n, max_size=n), label="rewards"))
    scale = data.draw(st.sampled_from(SCALES), label="scale")
    estimator = data.draw(st.sampled_from(ESTIMATORS), label="estimator")
    kwargs = dict(scale=scale, estimator=estimator)
    if fixed:
        kwargs["group_size"] = sizes[0]
    else:
        kwargs["group_index"] = torch.tensor(ids)

    with mock.patch.dict(os.environ, {"RLIR_KERNELS": backend_name}):
        adv = group_advantage(rewards, **kwargs)
    assert adv.dtype == torch.float32 and torch.isfinite(adv).all()
    assert (adv[rewards.isnan()] == 0).all()
    want = group_advantage_reference(rewards.double(), **kwargs)
    torch.testing.assert_close(adv.double(), want, rtol=1e-4, atol=1e-4)

    ids_t = torch.tensor(ids)
    for lab in labels:
        members = ids_t == lab
        a, vals = adv[members], rewards[members]
        vals = vals[~vals.isnan()]
        k = vals.numel()
        if k < 2 or vals.max() == vals.min():
            assert (a == 0).all()
            continue
        assert abs(float(a.sum())) <= 1e-4 * max(1.0, float(a.abs().max())) * k  # centered
        if scale == "group":  # |r_i - mean| <= std * sqrt(k - 1), rloo scales by k / (k - 1)
            bound = math.sqrt(k - 1) * (k / (k - 1) if estimator == "rloo" else 1.0)
            assert float(a.abs().max()) <= bound * (1 + 1e-5)


# ---------------------------------------------------------------------------------------------------
# input validation


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rewards=torch.zeros(2, 3), group_size=3), "rewards"),
        (dict(rewards=torch.zeros(6, dtype=torch.int64), group_size=3), "rewards"),
        (dict(rewards=[0.0, 1.0], group_size=1), "rewards"),
        (dict(rewards=torch.zeros(10), group_size=3), "group_size=3 does not divide N=10"),
        (dict(rewards=torch.zeros(6)), "exactly one of group_size or group_index"),
        (dict(rewards=torch.zeros(6), group_size=3, group_index=torch.zeros(6, dtype=torch.long)),
         "exactly one of group_size or group_index"),
        (dict(rewards=torch.zeros(6), group_size=0), "group_size"),
        (dict(rewards=torch.zeros(6), group_size=-3), "group_size"),
        (dict(rewards=torch.zeros(6), group_size=3.0), "group_size"),
        (dict(rewards=torch.zeros(6), group_size=True), "group_size"),
        (dict(rewards=torch.zeros(6), group_index=torch.zeros(6)), "group_index"),
        (dict(rewards=torch.zeros(6), group_index=torch.zeros(5, dtype=torch.long)), "group_index"),
        (dict(rewards=torch.zeros(6), group_index=torch.tensor([0, 0, 1, 1, -1, -1])), "group_index"),
        (dict(rewards=torch.zeros(6), group_size=3, scale="std"), "scale"),
        (dict(rewards=torch.zeros(6), group_size=3, estimator="ppo"), "estimator"),
        (dict(rewards=torch.zeros(6), group_size=3, eps=-1e-6), "eps"),
        (dict(rewards=torch.zeros(6), group_size=3, eps=NAN), "eps"),
    ],
)
def test_bad_inputs_raise(backend, kwargs, match):
    with pytest.raises(ValueError, match=match):
        group_advantage(**kwargs)
    with pytest.raises(ValueError, match=match):
        group_advantage_reference(**kwargs)


@pytest.mark.gpu
def test_rewards_and_group_index_on_different_devices():
    with pytest.raises(ValueError, match="one device"):
        group_advantage(torch.zeros(4, device="cuda"), group_index=torch.zeros(4, dtype=torch.long))
