"""Shared helpers for the GRPO tests: the tiny CI config and a toy world whose optimum is known."""
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import yaml

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "configs" / "tiny_ar.yaml"


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


@pytest.fixture
def tiny_dict():
    """configs/tiny_ar.yaml as a dict, quiet (no stdout, no TensorBoard)."""
    data = yaml.safe_load(TINY_CONFIG.read_text())
    data["log"] = {"tensorboard": False, "stdout": False, "jsonl": True}
    return data


class ToyTokenizer(nn.Module):
    """4x4 frames <-> a 2x2 grid of codes in [0, 16): a code is the 2x2 block's grey level // 16."""

    codebook_size = 16
    code_grid = (2, 2)
    tokens_per_frame = 4

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        return (frames[..., 0, ::2, ::2].long() // 16).clamp(0, 15)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        grey = (codes.float() * 16 + 8) / 255
        grey = grey.repeat_interleave(2, -1).repeat_interleave(2, -2)
        return grey.unsqueeze(-3).expand(*grey.shape[:-2], 3, *grey.shape[-2:]).contiguous()


class ToyIDM(nn.Module):
    """'Recovers' action (first code of the next frame) mod 4, so the reward is the fraction of generated frames
    whose first code is congruent to the commanded action mod 4 (about 1/4 for a uniform model, 1 at the optimum)."""

    head_sizes = [4]

    def forward(self, frames: torch.Tensor):
        first_code = (frames[:, 1:, 0, 0, 0].long() // 16)
        return [torch.nn.functional.one_hot(first_code % 4, 4).float() * 10]


def toy_model(seed: int = 0):
    from rlir.models import ARWorldModel

    torch.manual_seed(seed)
    return ARWorldModel(codebook_size=16, tokens_per_frame=4, action_head_sizes=[4], n_layers=1, d_model=32,
                        n_heads=2, n_kv_heads=1, max_frames=3)


def toy_config(**sections):
    from rlir.grpo import config_from_dict

    base = {
        "seed": 0, "device": "cpu",
        "models": {"source": "random"}, "data": {"source": "synthetic"},
        "rollout": {"prompts_per_step": 4, "group_size": 8, "n_frames": 2},
        "optim": {"lr": 1e-2, "max_grad_norm": 1.0},
        "train": {"steps": 10, "micro_batch_size": 8, "grad_accumulation": 2},
        "log": {"tensorboard": False, "stdout": False},
    }
    for key, value in sections.items():
        base.setdefault(key, {}).update(value)
    return config_from_dict(base)


@pytest.fixture
def toy_trainer():
    """A GRPOTrainer on the toy world (no out_dir): ARPolicy(tiny ARWorldModel, ToyTokenizer) + ToyIDM, and the
    ``eval_idm`` given (none by default)."""
    from rlir.grpo import GRPOTrainer, PromptSampler, SyntheticClips
    from rlir.policies import ARPolicy
    from rlir.grpo.prompts import fixed_prompts

    def make(seed: int = 0, eval_idm=None, **sections):
        cfg = toy_config(**sections)
        model = toy_model(seed)
        policy = ARPolicy(model, ToyTokenizer(), temperature=cfg.rollout.temperature,
                          reference_factory=lambda: toy_model(seed))
        clips = SyntheticClips(32, 1, cfg.rollout.n_frames, image_size=4, head_sizes=[4], seed=seed)
        heldout = SyntheticClips(32, 1, cfg.rollout.n_frames, image_size=4, head_sizes=[4], seed=seed, split="heldout")
        sampler = PromptSampler(clips, cfg.rollout.prompts_per_step, context_frames=1,
                                n_frames=cfg.rollout.n_frames, seed=seed)
        return GRPOTrainer(cfg, policy, ToyIDM(), sampler, eval_prompts=fixed_prompts(heldout, 16, 1, cfg.rollout.n_frames),
                           eval_idm=eval_idm)

    return make


def config_keys(cls, prefix=""):
    """Every leaf option of a config schema, as a dotted key, in the schema's order."""
    for name, field in cls.model_fields.items():
        if hasattr(field.annotation, "model_fields"):
            yield from config_keys(field.annotation, f"{prefix}{name}.")
        else:
            yield prefix + name
