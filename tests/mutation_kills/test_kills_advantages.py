"""Cases that kill mutants of rlir/grpo/advantages.py which tests/grpo/test_advantages.py lets through
(docs/mutation.md): ``advantages`` hands its rank and reward mode on under either credit, and the error of a
per-frame credit without ``slot_frame`` names the key and the policy."""
import pytest
import torch

from rlir.grpo.advantages import advantages
from rlir.grpo.config import AdvantageConfig
from rlir.kernels import idm_reward
from rlir.parallel import Parallel
from rlir.policies import Prompts, Rollout
from rlir.schema import ConfigError

G, FRAMES = 4, 3


class SecondRank:
    """Rank 1 of 2, whose rank 0 holds ``other``'s rows: gathering puts them first."""

    rank, world_size, distributed = 1, 2, True

    def __init__(self, other: torch.Tensor):
        self.other = other

    def all_gather_rows(self, t):
        return torch.cat([self.other, t])


def two_prompts(slot_frame=True):
    """(IDM logits with uneven confidence, Rollout) of 2 prompts x G samples; one head of 3 classes."""
    gen = torch.Generator().manual_seed(0)
    logits = [torch.randn(2 * G, FRAMES, 3, generator=gen) * 2]
    actions = torch.randint(0, 3, (2 * G, FRAMES, 1), generator=gen)
    prompts = Prompts(torch.zeros(2, 1, 3, 4, 4, dtype=torch.uint8), actions[::G])
    slots = torch.arange(FRAMES).repeat_interleave(2) if slot_frame else None
    mask = torch.ones(2 * G, 2 * FRAMES, dtype=torch.bool)
    return logits, Rollout(prompts, G, None, None, mask, actions, slots)


@pytest.mark.parametrize("credit", ["video", "frame"])
def test_scale_batch_gathers_the_other_ranks_rows_under_either_credit(credit):
    logits, rollout = two_prompts()
    rewards = idm_reward(logits, rollout.actions, mode="loglik")
    values = rewards.reward if credit == "video" else rewards.frame_match.float()
    config = AdvantageConfig(credit=credit, scale="batch")
    alone = advantages(logits, rollout, config, "loglik", Parallel(), policy_name="Hand")[1]
    with_other = advantages(logits, rollout, config, "loglik", SecondRank(values * 3 + 1), policy_name="Hand")[1]
    assert not torch.allclose(alone, with_other)  # the other rank's rows widen the batch std


def test_the_reward_mode_reaches_the_reward():
    logits, rollout = two_prompts()
    config = AdvantageConfig()
    exact, _ = advantages(logits, rollout, config, "exact", Parallel(), policy_name="Hand")
    loglik, _ = advantages(logits, rollout, config, "loglik", Parallel(), policy_name="Hand")
    torch.testing.assert_close(loglik.reward, idm_reward(logits, rollout.actions, mode="loglik").reward)
    assert not torch.allclose(exact.reward, loglik.reward)


def test_frame_credit_without_slot_frame_names_the_key_and_the_policy():
    logits, rollout = two_prompts(slot_frame=False)
    with pytest.raises(ConfigError) as error:
        advantages(logits, rollout, AdvantageConfig(credit="frame"), "exact", Parallel(), policy_name="MyPolicy")
    assert error.value.key == "advantage.credit"
    assert str(error.value) == ("advantage.credit: 'frame' needs Rollout.slot_frame, which MyPolicy.rollout "
                                "does not set")
