"""rlir.policies: world models as policies, the generation API under training, evaluation and pretraining.

    from rlir.policies import Prompts, make_policy
    policy = make_policy(world_model, tokenizer)                      # ARPolicy or a DiffusionPolicy
    videos = policy.generate(Prompts(context, actions), sampler="eval")

Pieces: ``policy`` (the Policy interface, ModelPolicy), ``rollout`` (Prompts, Rollout), ``ar`` (ARPolicy:
ARWorldModel + VQTokenizer), ``diffusion`` (DiffusionPolicy: the DiT's encode, decode, SDE and ODE sampling) with
one subclass an objective, ``sde_step`` (SDEStepPolicy, Flow-GRPO) and ``flow_matching`` (FlowMatchingPolicy),
``config`` (SamplingConfig, ObjectiveConfig: a run's rollout sampler and loss objective), ``factory``
(make_policy). Nothing here imports the training, evaluation or pretraining packages.
"""
from .ar import ARPolicy, ARSample, to_uint8
from .config import ObjectiveConfig, SamplingConfig, SDEConfig
from .diffusion import EVAL_ODE_STEPS, DiffusionPolicy
from .factory import evaluation_policy, make_policy, policy_class
from .flow_matching import FlowMatchingPolicy, MatchingSample
from .policy import ModelPolicy, Policy
from .rollout import Prompts, Rollout
from .sde_step import SDEStepPolicy

__all__ = [
    "ARPolicy",
    "ARSample",
    "DiffusionPolicy",
    "EVAL_ODE_STEPS",
    "FlowMatchingPolicy",
    "MatchingSample",
    "ModelPolicy",
    "ObjectiveConfig",
    "Policy",
    "Prompts",
    "Rollout",
    "SDEConfig",
    "SDEStepPolicy",
    "SamplingConfig",
    "evaluation_policy",
    "make_policy",
    "policy_class",
    "to_uint8",
]
