"""idm_reward / idm_advantage: a hand-worked example, both backends against the float64 reference on
random heads (odd widths, a 100-class head, masked rows, low-precision logits), the fused path, and
input validation."""
from __future__ import annotations

import math

import pytest
import torch

from rlir.kernels.group_advantage import group_advantage, group_advantage_reference
from rlir.kernels.idm_reward import IDMReward, idm_advantage, idm_reward, idm_reward_reference

MODES = ["exact", "per_head", "loglik"]
NAN = float("nan")


def assert_reward_close(got: IDMReward, want: IDMReward, mode: str):
    for name, g, w in zip(IDMReward._fields, got, want):
        assert g.dtype == torch.float32 and g.shape == w.shape, name
        tol = dict(rtol=1e-5, atol=1e-4) if mode == "loglik" and name != "head_accuracy" else dict(rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(g.double(), w, equal_nan=True, **tol, msg=lambda m: f"{name}: {m}")
    if mode == "exact":
        assert torch.equal(got.frame_match.double(), want.frame_match)  # 0/1, no rounding


# ---------------------------------------------------------------------------------------------------
# hand-worked example: 2 videos x 3 frames, head 0 with 3 classes, head 1 with 2


HEAD0 = [[[2, 0, 0], [0, 1, 0], [0, 0, 5]],   # argmax 0, 1, 2
         [[1, 1, 0], [0, 0, 0], [3, 0, 1]]]   # argmax 0 (tie), 0 (tie), 0
HEAD1 = [[[0, 1], [2, 0], [0, 0]],            # argmax 1, 0, 0 (tie)
         [[1, 0], [0, 3], [0, 2]]]            # argmax 0, 1, 1
ACTIONS = [[[0, 1], [1, 1], [2, 0]],          # hit+hit, hit+miss, hit+hit
           [[1, 1], [0, 1], [7, -100]]]       # miss+miss, hit+hit, (masked: out-of-range ids are fine)
MASK = [[1, 1, 1], [1, 1, 0]]


def lsm(x, a):
    return x[a] - math.log(sum(math.exp(v) for v in x))


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_hand_example(backend, packed, dtype):
    heads = [torch.tensor(HEAD0, dtype=dtype), torch.tensor(HEAD1, dtype=dtype)]
    logits = torch.cat(heads, -1) if packed else heads
    kw = dict(head_sizes=[3, 2]) if packed else {}
    actions, mask = torch.tensor(ACTIONS), torch.tensor(MASK)

    out = idm_reward(logits, actions, mask, mode="exact", **kw)
    torch.testing.assert_close(out.frame_match, torch.tensor([[1.0, 0, 1], [0, 1, 0]]))
    torch.testing.assert_close(out.reward, torch.tensor([2 / 3, 1 / 2]))
    torch.testing.assert_close(out.head_accuracy, torch.tensor([4 / 5, 3 / 5]))  # over the 5 valid frames

    out = idm_reward(logits, actions, mask, mode="per_head", **kw)
    torch.testing.assert_close(out.frame_match, torch.tensor([[1.0, 0.5, 1], [0, 1, 0]]))
    torch.testing.assert_close(out.reward, torch.tensor([5 / 6, 1 / 2]))
    torch.testing.assert_close(out.head_accuracy, torch.tensor([4 / 5, 3 / 5]))

    out = idm_reward(logits, actions, mask, mode="loglik", **kw)
    frames = [[lsm([2, 0, 0], 0) + lsm([0, 1], 1), lsm([0, 1, 0], 1) + lsm([2, 0], 1),
               lsm([0, 0, 5], 2) + lsm([0, 0], 0)],
              [lsm([1, 1, 0], 1) + lsm([1, 0], 1), lsm([0, 0, 0], 0) + lsm([0, 3], 1), 0.0]]
    torch.testing.assert_close(out.frame_match, torch.tensor(frames))
    torch.testing.assert_close(out.reward, torch.tensor([sum(frames[0]) / 3, sum(frames[1][:2]) / 2]))
    torch.testing.assert_close(out.head_accuracy, torch.tensor([4 / 5, 3 / 5]))


def test_ties_break_to_the_lowest_index(backend):
    logits = torch.zeros(1, 2, 5)
    logits[0, 1, [1, 3]] = 2.0  # frame 1: tie between classes 1 and 3
    out = idm_reward(logits, torch.tensor([[0, 1]]))
    assert out.frame_match.tolist() == [[1.0, 1.0]]
    out = idm_reward(logits, torch.tensor([[4, 3]]))
    assert out.frame_match.tolist() == [[0.0, 0.0]]


# ---------------------------------------------------------------------------------------------------
# random heads against the float64 reference


def make_inputs(n, t, sizes, seed, dtype, p_match=0.7, p_mask=0.2):
    """Logits with actions that mostly equal the argmax (so rewards spread over (0, 1)), a random mask
    with row 0 fully masked when n > 1, and garbage ids on masked frames."""
    g = torch.Generator().manual_seed(seed)
    heads = [(torch.randn(n, t, c, generator=g) * 3).to(dtype) for c in sizes]
    actions = []
    for lg, c in zip(heads, sizes):
        hit = torch.rand(n, t, generator=g) < p_match
        actions.append(torch.where(hit, lg.double().argmax(-1), torch.randint(0, c, (n, t), generator=g)))
    actions = torch.stack(actions, -1)
    mask = torch.rand(n, t, generator=g) >= p_mask
    if n > 1 and p_mask > 0:
        mask[0] = False
    actions[~mask] = -100
    return heads, actions, mask


CONFIGS = [  # (N, T, head sizes, layout)
    (1, 1, [17], "packed"),  # a single head, actions [N, T]
    (4, 5, [3, 100, 17], "list"),  # a 100-class head: not a power of two, > 64
    (3, 9, [2, 5, 1], "packed"),  # a 1-class head
    (2, 40, [100, 3], "list"),  # T over several frame blocks
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"N{c[0]}-T{c[1]}-C{'_'.join(map(str, c[2]))}-{c[3]}")
def test_matches_reference(backend, config, dtype):
    n, t, sizes, layout = config
    heads, actions, mask = make_inputs(n, t, sizes, seed=n * t, dtype=dtype)
    truth = [h.double() for h in heads]
    if layout == "packed":
        logits, truth, kw = torch.cat(heads, -1), torch.cat(truth, -1), dict(head_sizes=sizes)
        if len(sizes) == 1:
            actions, kw = actions[..., 0], {}
    else:
        logits, kw = heads, {}
    for mode in MODES:
        got = idm_reward(logits, actions, mask, mode=mode, **kw)
        want = idm_reward_reference(truth, actions, mask, mode=mode, **kw)
        assert_reward_close(got, want, mode)
        assert torch.isnan(got.reward).tolist() == (mask.sum(1) == 0).tolist()
        assert torch.isfinite(got.frame_match).all() and (got.frame_match[~mask] == 0).all()


def test_no_mask_fully_masked_and_float_mask(backend):
    heads, actions, mask = make_inputs(3, 4, [6, 4], seed=7, dtype=torch.float32, p_mask=0.0)
    full = idm_reward(heads, actions)
    assert_reward_close(full, idm_reward_reference([h.double() for h in heads], actions), "exact")
    torch.testing.assert_close(idm_reward(heads, actions, torch.ones(3, 4)), full)  # 0/1 float mask
    none = idm_reward(heads, actions, torch.zeros(3, 4, dtype=torch.bool), mode="loglik")
    assert none.reward.isnan().all() and none.head_accuracy.isnan().all()
    assert torch.equal(none.frame_match, torch.zeros(3, 4))


def test_strided_inputs(backend):
    heads, actions, mask = make_inputs(3, 6, [5, 7], seed=8, dtype=torch.float32)
    wide = torch.randn(3, 6, 20)
    wide[..., 4:16] = torch.cat(heads, -1)
    logits = wide[..., 4:16]  # rows strided by 20
    acts = torch.stack([actions[..., 0], actions[..., 1]], 0).permute(1, 2, 0)  # non-contiguous
    assert not logits.is_contiguous() and not acts.is_contiguous() and torch.equal(acts, actions)
    for mode in MODES:
        got = idm_reward(logits, acts, mask.t().contiguous().t(), mode=mode, head_sizes=[5, 7])
        assert_reward_close(got, idm_reward_reference([h.double() for h in heads], actions, mask, mode=mode), mode)


def test_not_differentiable(backend):
    logits = torch.randn(2, 3, 4, requires_grad=True)
    out = idm_reward(logits, torch.zeros(2, 3, dtype=torch.long), mode="loglik")
    assert not any(x.requires_grad for x in out)


# ---------------------------------------------------------------------------------------------------
# idm_advantage: the reward kernel, then the group-advantage kernel


@pytest.mark.parametrize("mode", MODES)
def test_idm_advantage_is_reward_then_group_advantage(backend, mode):
    heads, actions, mask = make_inputs(8, 6, [4, 9], seed=9, dtype=torch.bfloat16)
    ids = torch.tensor([3, 1, 3, 1, 3, 1, 3, 1])
    expected = idm_reward(heads, actions, mask, mode=mode)
    truth = idm_reward_reference([h.double() for h in heads], actions, mask, mode=mode)
    for kw in (dict(group_size=4), dict(group_index=ids, scale="batch", estimator="rloo"),
               dict(group_index=ids, scale="none")):
        out, adv = idm_advantage(heads, actions, mask, mode=mode, **kw)
        for g, w in zip(out, expected):
            assert torch.equal(g.nan_to_num(-7), w.nan_to_num(-7))
        assert torch.equal(adv, group_advantage(expected.reward, **kw))
        assert adv.dtype == torch.float32 and torch.isfinite(adv).all()
        assert adv[0] == 0  # row 0 has no valid frame: NaN reward, advantage 0
        torch.testing.assert_close(adv.double(), group_advantage_reference(truth.reward, **kw), rtol=1e-4, atol=1e-4)


def test_idm_advantage_packed_heads(backend):
    heads, actions, mask = make_inputs(6, 3, [3, 5], seed=10, dtype=torch.float16)
    out, adv = idm_advantage(torch.cat(heads, -1), actions, mask, group_size=3, head_sizes=[3, 5])
    ref, ref_adv = idm_advantage(heads, actions, mask, group_size=3)
    assert torch.equal(out.reward.nan_to_num(-1), ref.reward.nan_to_num(-1)) and torch.equal(adv, ref_adv)


# ---------------------------------------------------------------------------------------------------
# input validation


def _inputs():
    return [torch.randn(2, 3, 4), torch.randn(2, 3, 5)], torch.zeros(2, 3, 2, dtype=torch.long)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: dict(actions=a["actions"].float()), "actions"),
        (lambda a: dict(actions=torch.zeros(2, 3, 3, dtype=torch.long)), "actions"),
        (lambda a: dict(actions=torch.zeros(2, 4, 2, dtype=torch.long)), "actions"),
        (lambda a: dict(actions=torch.zeros(2, 3, dtype=torch.long)), "actions"),  # [N, T] with 2 heads
        (lambda a: dict(actions=torch.zeros(2, dtype=torch.long)), "actions"),
        (lambda a: dict(actions=torch.full((2, 3, 2), 4)), "actions"),  # head 0 has 4 classes
        (lambda a: dict(actions=torch.full((2, 3, 2), -1)), "actions"),
        (lambda a: dict(mask=torch.ones(2, 4, dtype=torch.bool)), "mask"),
        (lambda a: dict(mask=torch.ones(2, 3, 1, dtype=torch.bool)), "mask"),
        (lambda a: dict(mask=[[1, 1, 1], [1, 1, 1]]), "mask"),
        (lambda a: dict(mode="argmax"), "mode"),
        (lambda a: dict(logits=[]), "logits"),
        (lambda a: dict(logits=[a["logits"][0], torch.randn(2, 4, 5)]), r"logits\[1\]"),
        (lambda a: dict(logits=[a["logits"][0], torch.zeros(2, 3, 5, dtype=torch.long)]), r"logits\[1\]"),
        (lambda a: dict(logits=torch.randn(2, 9)), "logits"),
        (lambda a: dict(logits=torch.cat(a["logits"], -1), head_sizes=[4, 4]), "head_sizes"),
        (lambda a: dict(logits=torch.cat(a["logits"], -1), head_sizes=[9, 0]), "head_sizes"),
        (lambda a: dict(logits=torch.cat(a["logits"], -1), head_sizes=[4.0, 5.0]), "head_sizes"),
        (lambda a: dict(head_sizes=[5, 4]), "head_sizes"),  # disagrees with the list
        (lambda a: dict(logits=torch.cat(a["logits"], -1), head_sizes=9), "head_sizes"),
    ],
)
def test_bad_inputs_raise(backend, change, match):
    logits, actions = _inputs()
    kwargs = dict(logits=logits, actions=actions, mask=None)
    kwargs.update(change(kwargs))
    with pytest.raises(ValueError, match=match):
        idm_reward(**kwargs)
    with pytest.raises(ValueError, match=match):
        idm_reward_reference(**kwargs)


def test_out_of_range_actions_on_masked_frames_are_fine(backend):
    logits, actions = _inputs()
    actions[1, 2] = torch.tensor([99, -5])
    mask = torch.ones(2, 3, dtype=torch.bool)
    mask[1, 2] = False
    assert torch.isfinite(idm_reward(logits, actions, mask).reward).all()
    with pytest.raises(ValueError, match="actions"):
        idm_reward(logits, actions)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(group_size=3), "group_size=3 does not divide N=2"),
        (dict(), "exactly one of group_size or group_index"),
        (dict(group_size=2, group_index=torch.zeros(2, dtype=torch.long)), "exactly one"),
        (dict(group_index=torch.zeros(3, dtype=torch.long)), "group_index"),
        (dict(group_size=2, scale="std"), "scale"),
        (dict(group_size=2, estimator="ppo"), "estimator"),
        (dict(group_size=2, eps=-1.0), "eps"),
        (dict(group_size=2, mode="argmax"), "mode"),
    ],
)
def test_idm_advantage_bad_inputs_raise(backend, kwargs, match):
    logits, actions = _inputs()
    with pytest.raises(ValueError, match=match):
        idm_advantage(logits, actions, **kwargs)


@pytest.mark.gpu
def test_inputs_on_different_devices():
    logits, actions = _inputs()
    with pytest.raises(ValueError, match="one device"):
        idm_reward([lg.cuda() for lg in logits], actions)
