"""rlir.grpo.advantages on hand-made rewards whose advantages are worked out here, not by the kernels: each group
normalised by its own std, the batch's std only with scale batch (over every rank's rows), per-frame credit
compared frame by frame."""
import pytest
import torch

from rlir.grpo.advantages import advantages, group_normalised
from rlir.grpo.config import AdvantageConfig
from rlir.parallel import Parallel
from rlir.policies import Prompts, Rollout

EPS = 1e-6  # group_advantage's, which the trainer uses
# Two prompts x 4 samples, 4 generated frames each: each row says which frames the IDM reads right. The groups'
# rewards (the share of frames read right) spread differently: [0, 1/4, 1/2, 1] and [0, 0, 1, 1].
MATCHES = torch.tensor([[0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1],
                        [0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]], dtype=torch.float32)
G = 4


def rollout_reading(matches: torch.Tensor, slots_per_frame: int = 2):
    """(IDM logits, Rollout) of videos whose frame k the one-head IDM reads right where matches[:, k] is 1."""
    n_rows, n = matches.shape
    actions = torch.zeros(n_rows, n, 1, dtype=torch.long)
    logits = [torch.stack([matches, 1 - matches], dim=-1) * 10]  # class 0 (the commanded one) where it matches
    slot_frame = torch.arange(n).repeat_interleave(slots_per_frame)
    prompts = Prompts(torch.zeros(n_rows // G, 1, 3, 4, 4, dtype=torch.uint8), actions[::G])
    rollout = Rollout(prompts, G, None, None, torch.ones(n_rows, len(slot_frame), dtype=torch.bool), actions,
                      slot_frame)
    return logits, rollout


def by_hand(values: torch.Tensor, scale: str) -> torch.Tensor:
    """(r - group mean) / (std + eps), the std of the group or of every value, groups of G consecutive rows."""
    groups = values.view(-1, G, *values.shape[1:])
    std = groups.std(dim=1, keepdim=True) if scale == "group" else values.std()
    return ((groups - groups.mean(dim=1, keepdim=True)) / (std + EPS)).view(values.shape)


class OtherRankFirst:
    """Rank 1 of 2, whose rank 0 holds ``other``'s rows (gathering puts them first); counts its gathers."""

    rank, world_size, distributed = 1, 2, True

    def __init__(self, other: torch.Tensor):
        self.other, self.gathers = other, 0

    def all_gather_rows(self, t):
        self.gathers += 1
        return torch.cat([self.other, t])


def one_process(**options):
    return Parallel(), AdvantageConfig(**options)


@pytest.mark.parametrize("scale", ["group", "batch"])
def test_video_credit_normalises_each_group_by_its_own_std_unless_scale_is_batch(scale):
    parallel, config = one_process(scale=scale)
    logits, rollout = rollout_reading(MATCHES)
    rew, adv = advantages(logits, rollout, config, "exact", parallel, policy_name="Hand")
    rewards = MATCHES.mean(1)
    torch.testing.assert_close(rew.reward, rewards)
    torch.testing.assert_close(adv, by_hand(rewards, scale))
    if scale == "group":  # the batch std would give the second group's members other advantages
        assert not torch.allclose(adv, by_hand(rewards, "batch"))


@pytest.mark.parametrize("scale", ["group", "batch"])
def test_frame_credit_compares_each_frame_with_the_same_frame_of_its_group(scale):
    parallel, config = one_process(scale=scale, credit="frame")
    logits, rollout = rollout_reading(MATCHES)
    _, adv = advantages(logits, rollout, config, "exact", parallel, policy_name="Hand")
    per_frame = torch.stack([by_hand(MATCHES[:, k].contiguous(), "group") for k in range(4)], dim=1) \
        if scale == "group" else by_hand(MATCHES, "batch")
    torch.testing.assert_close(adv, per_frame[:, rollout.slot_frame])
    if scale == "group":
        assert not torch.allclose(adv, by_hand(MATCHES, "batch")[:, rollout.slot_frame])


def test_scale_none_leaves_the_rewards_unscaled_and_rloo_leaves_each_sample_out():
    _, adv = advantages(*rollout_reading(MATCHES), AdvantageConfig(scale="none"), "exact", one_process()[0],
                        policy_name="Hand")
    rewards = MATCHES.mean(1).view(2, G)
    torch.testing.assert_close(adv, (rewards - rewards.mean(1, keepdim=True)).view(-1))
    _, adv = advantages(*rollout_reading(MATCHES), AdvantageConfig(scale="none", estimator="rloo"), "exact",
                        one_process()[0], policy_name="Hand")
    others = (rewards.sum(1, keepdim=True) - rewards) / (G - 1)
    torch.testing.assert_close(adv, (rewards - others).view(-1))


def test_scale_batch_over_two_ranks_is_one_process_over_both_ranks_rows():
    _, config = one_process(scale="batch")
    rewards = MATCHES.mean(1)
    rank1 = OtherRankFirst(other=rewards[:G] * 0.5)  # rank 0's group spreads less
    everything = torch.cat([rank1.other, rewards[G:]])
    adv = group_normalised(rewards[G:], G, config, rank1)
    torch.testing.assert_close(adv, by_hand(everything, "batch")[G:])
    assert rank1.gathers == 1


@pytest.mark.parametrize("credit", ["video", "frame"])
def test_scale_group_over_two_ranks_stays_on_the_rank(credit):
    parallel = OtherRankFirst(other=torch.full((G, 4), 7.0))
    logits, rollout = rollout_reading(MATCHES[G:])
    _, adv = advantages(logits, rollout, AdvantageConfig(credit=credit), "exact", parallel,
                        policy_name="Hand")
    one = advantages(logits, rollout, AdvantageConfig(credit=credit), "exact", one_process()[0],
                     policy_name="Hand")[1]
    torch.testing.assert_close(adv, one)
    assert parallel.gathers == 0
