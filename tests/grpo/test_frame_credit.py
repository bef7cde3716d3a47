"""advantage.credit = frame: each generated frame's slots get the group advantage of that frame's IDM match."""
import pytest
import torch

from rlir.grpo.advantages import frame_advantages, frame_credit
from rlir.grpo.config import ConfigError


def test_frame_advantages_normalise_each_frame_within_its_group(toy_trainer):
    trainer = toy_trainer(advantage={"credit": "frame"}, rollout={"prompts_per_step": 2, "group_size": 4},
                          train={"micro_batch_size": 4})
    rollout = trainer.policy.rollout(trainer.prompts.next(), 4, generator=torch.Generator().manual_seed(0))
    f = rollout.slots // 2
    # frame 0 matches in one sample of prompt 0 only; frame 1 matches in every sample (no signal).
    match = torch.zeros(8, 2)
    match[0, 0] = 1.0
    match[:, 1] = 1.0
    adv = frame_advantages(match, rollout, trainer.cfg.advantage, policy_name="ARPolicy")
    assert adv.shape == (8, rollout.slots)
    g0 = match[:4, 0]
    expected = (g0 - g0.mean()) / (g0.std() + 1e-6)
    torch.testing.assert_close(adv[:4, :f], expected[:, None].expand(4, f))
    assert (adv[4:, :f] == 0).all() and (adv[:, f:] == 0).all()


def test_frame_credit_learns_the_toy_world(toy_trainer):
    trainer = toy_trainer(advantage={"credit": "frame"}, eval={"num_samples": 8})
    before = trainer.evaluate()["eval/reward_mean"]
    history = trainer.train()
    assert history[0]["adv/abs_max"] > 0 and history[0]["optim/grad_norm"] > 0
    after = trainer.evaluate()["eval/reward_mean"]
    assert after > before + 0.2, (before, after)


def test_frame_credit_needs_slot_frames(toy_trainer):
    trainer = toy_trainer(advantage={"credit": "frame"})
    rollout = trainer.policy.rollout(trainer.prompts.next(), 8, generator=torch.Generator().manual_seed(0))
    rollout.slot_frame = None
    with pytest.raises(ConfigError, match="advantage.credit"):
        frame_advantages(torch.zeros(len(rollout), 2), rollout, trainer.cfg.advantage, policy_name="ARPolicy")


def test_reward_to_go_credits_a_frame_with_its_own_and_every_later_match():
    match = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    torch.testing.assert_close(frame_credit(match, "reward_to_go"), torch.tensor([[2.0, 1.0, 1.0], [1.0, 1.0, 0.0]]))
    torch.testing.assert_close(frame_credit(match, "frame"), match)


def test_reward_to_go_credit_reaches_the_loss_and_learns_the_toy_world(toy_trainer, monkeypatch):
    import rlir.grpo.advantages as advantages_module

    seen = []
    real = advantages_module.frame_credit
    monkeypatch.setattr(advantages_module, "frame_credit", lambda m, c: seen.append(c) or real(m, c))
    trainer = toy_trainer(advantage={"credit": "reward_to_go"}, eval={"num_samples": 8})
    before = trainer.evaluate()["eval/reward_mean"]
    trainer.train()
    after = trainer.evaluate()["eval/reward_mean"]
    assert seen and set(seen) == {"reward_to_go"}
    assert after > before + 0.2, (before, after)
