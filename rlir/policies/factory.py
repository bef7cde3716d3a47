"""The one place a built-in world model becomes a policy: ``make_policy`` (training, evaluation, pretraining)."""
from __future__ import annotations

import warnings
from typing import Callable, Optional

import torch.nn as nn

from rlir.models.dit_world_model import DiTWorldModel

from .ar import ARPolicy
from .config import ObjectiveConfig, SamplingConfig
from .diffusion import EVAL_ODE_STEPS
from .flow_matching import FlowMatchingPolicy
from .policy import Policy
from .sde_step import SDEStepPolicy

# loss.objective -> the diffusion policy that scores its slots
DIFFUSION_POLICIES = {"sde_step": SDEStepPolicy, "flow_matching": FlowMatchingPolicy}


def policy_class(kind: str, objective: str = "sde_step") -> type:
    """The Policy class ``make_policy`` builds for a world model of ``kind`` (models.kind: "ar" or "diffusion")
    and ``objective`` (loss.objective), without building it."""
    return ARPolicy if kind == "ar" else DIFFUSION_POLICIES[objective]


def make_policy(world_model: nn.Module, tokenizer: Optional[nn.Module] = None,
                sampling: Optional[SamplingConfig] = None, objective: Optional[ObjectiveConfig] = None, *,
                reference_factory: Optional[Callable[[], nn.Module]] = None,
                eval_steps: int = EVAL_ODE_STEPS, top_k: Optional[int] = None) -> Policy:
    """The policy of a built-in world model: ARPolicy for an ARWorldModel, the ``objective.objective`` policy for a
    DiTWorldModel (given the tokenizer only when it works on tokenizer latents). ``sampling`` (a run's ``rollout``
    section) and ``objective`` (its ``loss`` section) default to their defaults; ``reference_factory`` returns the
    initial weights for the KL term (None: no KL); ``eval_steps``: the DiT's ODE steps a frame when evaluating;
    ``top_k``: the AR model samples among its k likeliest codes only (to evaluate, e.g. greedy with 1: training
    samples the whole distribution its log-probs score)."""
    sampling = sampling if sampling is not None else SamplingConfig()
    objective = objective if objective is not None else ObjectiveConfig()
    if isinstance(world_model, DiTWorldModel):
        latents = world_model.config.frame_space == "tokenizer_latents"
        return DIFFUSION_POLICIES[objective.objective].from_config(
            world_model, tokenizer if latents else None, sampling, objective, reference_factory=reference_factory,
            eval_steps=eval_steps)
    return ARPolicy(world_model, tokenizer, temperature=sampling.temperature, top_k=top_k,
                    reference_factory=reference_factory, compile=sampling.compile)


def evaluation_policy(world_model: nn.Module, tokenizer: Optional[nn.Module], *, eval_steps: int = EVAL_ODE_STEPS,
                      temperature: float = 1.0, top_k: Optional[int] = None) -> Policy:
    """``make_policy`` for generating only, the AR model sampling at ``temperature`` among its ``top_k`` likeliest
    codes: top_k's off-policy warning concerns training, not evaluation."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make_policy(world_model, tokenizer, SamplingConfig(temperature=temperature), eval_steps=eval_steps,
                           top_k=top_k)
