"""The worked example in rlir/policies/policy.py's docstring, run as written: a user's own world model with its own
sample dataclass trains under GRPOTrainer."""
import textwrap
from dataclasses import dataclass

import torch
import torch.nn as nn

import rlir.policies.policy as policy_module
from rlir.grpo import GRPOTrainer, PromptSampler, SyntheticClips
from rlir.policies import Policy, Rollout, to_uint8

from .conftest import ToyIDM, toy_config


class MyModel(nn.Module):
    """A per-frame Gaussian over 4x4 frames whose mean depends on the commanded action."""

    def __init__(self):
        super().__init__()
        self.mean = nn.Parameter(torch.rand(4, 3, 4, 4, generator=torch.Generator().manual_seed(0)))

    def sample(self, context, actions, generator):
        mean = self.mean[actions[..., 0]]
        generator = getattr(generator, "shared", generator)  # a torch.Generator, or the trainer's GroupGenerators
        frames = mean + 0.2 * torch.randn(mean.shape, generator=generator)
        return frames, self.score(context, actions, frames)

    def score(self, context, actions, frames):
        return torch.distributions.Normal(self.mean[actions[..., 0]], 0.2).log_prob(frames).flatten(2).mean(-1)


def docstring_policy_class():
    code = policy_module.__doc__.split("::\n", 1)[1].split("    trainer = GRPOTrainer")[0]
    namespace = {"dataclass": dataclass, "torch": torch, "Policy": Policy, "Rollout": Rollout, "to_uint8": to_uint8}
    exec(textwrap.dedent(code), namespace)  # noqa: S102 - the documented example, verbatim
    return namespace["MyPolicy"]


def test_the_documented_policy_trains():
    cfg = toy_config(loss={"old_logprobs": "recompute"}, advantage={"credit": "frame"})
    clips = SyntheticClips(32, 1, cfg.rollout.n_frames, image_size=4, head_sizes=[4], seed=0)
    prompts = PromptSampler(clips, cfg.rollout.prompts_per_step, context_frames=1, n_frames=cfg.rollout.n_frames)
    model = MyModel()
    before = model.mean.detach().clone()
    trainer = GRPOTrainer(cfg, docstring_policy_class()(model), ToyIDM(), prompts)
    m = trainer.step()
    assert m["adv/abs_max"] > 0 and m["optim/grad_norm"] > 0
    assert m["loss/first_update_logratio_max"] == 0.0
    assert not torch.equal(model.mean.detach(), before)
