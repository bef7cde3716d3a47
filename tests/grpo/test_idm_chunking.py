"""reward.idm_batch_size: the IDM scores the step's videos in chunks, and the result is that of one call."""
import copy

import pytest
import torch
import torch.nn as nn

import rlir.grpo.trainer as trainer_module
from rlir.grpo import GRPOTrainer, config_from_dict
from rlir.grpo.builders import build_run


class CountingIDM(nn.Module):
    """The IDM, recording the batch size of every call."""

    def __init__(self, idm):
        super().__init__()
        self.idm, self.calls = idm, []

    def forward(self, frames):
        self.calls.append(frames.shape[0])
        return self.idm(frames)


def step_with(tiny_dict, monkeypatch, idm_batch_size):
    """One GRPO step and an evaluation on the tiny AR config (8 videos, dense reward); -> (metrics, the reward
    IDM's batch size in each call of the step, the step's IDM logits, rewards and advantages)."""
    tiny_dict["reward"].update(mode="loglik", idm_batch_size=idm_batch_size)
    tiny_dict["train"].update(eval_interval=1)
    cfg = config_from_dict(tiny_dict)
    run = build_run(cfg, torch.device("cpu"))
    idm = CountingIDM(run.idm)
    trainer = GRPOTrainer(cfg, run.policy, idm, run.prompts, eval_prompts=run.eval_prompts)
    seen = {}
    real = trainer_module.advantages

    def recording_advantages(logits, *args, **kwargs):
        rewards, advantages = real(logits, *args, **kwargs)
        seen.update(logits=[x.clone() for x in logits], advantages=advantages.clone(), reward=rewards.reward.clone())
        return rewards, advantages

    monkeypatch.setattr(trainer_module, "advantages", recording_advantages)
    m = trainer.step()
    calls = list(idm.calls)
    m.update(trainer.evaluate())
    return m, calls, seen


@pytest.mark.parametrize("chunk, calls", [(1, [1] * 8), (3, [3, 3, 2]), (4, [4, 4]), (8, [8]), (100, [8])])
def test_chunked_idm_equals_one_call(tiny_dict, monkeypatch, chunk, calls):
    one_m, one_calls, one = step_with(copy.deepcopy(tiny_dict), monkeypatch, None)
    assert one_calls == [8]
    assert one["advantages"].abs().max() > 0 and one_m["optim/grad_norm"] > 0  # a learning signal
    assert one["reward"].unique().numel() == 8  # every video its own reward: a reordering would show

    m, got_calls, seen = step_with(copy.deepcopy(tiny_dict), monkeypatch, chunk)
    assert got_calls == calls
    for a, b in zip(seen["logits"], one["logits"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(seen["advantages"], one["advantages"], rtol=1e-4, atol=1e-5)
    for key in ("reward/mean", "adv/std", "optim/grad_norm", "eval/reward_mean"):
        assert m[key] == pytest.approx(one_m[key], rel=1e-4, abs=1e-6), key
    assert m["loss/loss"] == pytest.approx(one_m["loss/loss"], abs=1e-5)  # about 0: a mean of advantages
