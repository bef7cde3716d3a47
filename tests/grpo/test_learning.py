"""GRPO on a toy world whose optimum is known moves the reward the right way."""
import torch


def test_toy_reward_goes_up(toy_trainer):
    trainer = toy_trainer(eval={"num_samples": 8})
    before = trainer.evaluate()["eval/reward_mean"]
    history = trainer.train()
    after = trainer.evaluate()["eval/reward_mean"]
    rewards = [m["reward/mean"] for m in history]
    assert history[0]["adv/abs_max"] > 0 and history[0]["optim/grad_norm"] > 0
    assert 0.1 < before < 0.45, before  # a near-uniform model: about 1/4
    assert after > before + 0.2, (before, after, rewards)
    assert sum(rewards[-2:]) / 2 > sum(rewards[:2]) / 2, rewards
    for m in history:
        assert m["optim/updates"] == 2.0 and m["optim/skipped_updates"] == 0.0
        assert torch.isfinite(torch.tensor(m["loss/loss"]))


def test_evaluate_leaves_training_streams_alone(toy_trainer):
    a, b = toy_trainer(train={"steps": 2}), toy_trainer(train={"steps": 2})
    b.evaluate()
    ma, mb = a.train(), b.train()
    assert [m["reward/mean"] for m in ma] == [m["reward/mean"] for m in mb]
    assert [m["loss/loss"] for m in ma] == [m["loss/loss"] for m in mb]
