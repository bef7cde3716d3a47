"""The in-training evaluation's inputs: each IDM scores under its own name, and the held-out prompts are clips the
run never trains on."""
import pytest
import torch
import torch.nn as nn

from rlir.grpo import config_from_dict
from rlir.grpo.builders import build_run


class AlwaysReads(nn.Module):
    """An IDM that reads action ``c`` off every frame: its reward is the share of commanded actions equal to c,
    whatever the videos show."""

    head_sizes = [4]

    def __init__(self, c: int):
        super().__init__()
        self.c = c

    def forward(self, frames):
        return [nn.functional.one_hot(torch.full(frames.shape[:1] + (frames.shape[1] - 1,), self.c), 4).float() * 10]


def test_eval_idm_metrics_come_from_the_eval_idm_and_eval_metrics_from_the_reward_idm(toy_trainer):
    trainer = toy_trainer(eval_idm=AlwaysReads(2), eval={"num_samples": 2})
    m = trainer.evaluate()
    expected = (trainer.eval_prompts.actions == 2).float().mean().item()
    assert m["eval_idm/reward_mean"] == pytest.approx(expected)
    assert m["eval_idm/head_acc/head0"] == pytest.approx(expected)
    assert abs(m["eval/reward_mean"] - expected) > 0.05  # the reward IDM (ToyIDM) reads the videos instead


def test_synthetic_held_out_prompts_are_none_of_the_training_clips(tiny_dict):
    tiny_dict["eval"]["prompts"] = 16
    run = build_run(config_from_dict(tiny_dict), torch.device("cpu"))
    training = [run.prompts.dataset[i] for i in range(len(run.prompts.dataset))]
    assert len(run.eval_prompts) == 16 and len(training) == 16
    for context in run.eval_prompts.context:  # random blocky frames: equal only when drawn from the same seed
        assert not any(torch.equal(context, clip["context"]) for clip in training)
