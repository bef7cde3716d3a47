"""rlir.grpo: GRPO post-training of world models with an inverse-dynamics reward (the RLIR loop).

    from rlir.grpo import GRPOTrainer, load_config
    trainer = GRPOTrainer.from_config(load_config("configs/crafter_ar.yaml"))
    trainer.train()

Pieces: ``config`` (GRPOConfig, load_config), ``policy`` (the Policy interface, Prompts, Rollout),
``ar_policy`` (ARPolicy: ARWorldModel + VQTokenizer, its ARSample), ``diffusion_policy`` (DiffusionPolicy:
DiTWorldModel with the SDE sampler's step log-probs), ``prompts`` (resumable PromptSampler),
``trainer`` (GRPOTrainer: the loop), ``metrics`` (a step's metrics, read back once), ``evaluation``
(in-training evaluation), ``distributed`` (torchrun, DDP / FSDP), ``checkpoint`` (atomic save, exact resume),
``logging`` (jsonl + TensorBoard).
"""
from .ar_policy import ARPolicy, ARSample
from .checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from .config import ConfigError, GRPOConfig, config_from_dict, load_config
from .diffusion_policy import DiffusionPolicy
from .policy import ModelPolicy, Policy, Prompts, Rollout
from .prompts import PromptSampler, SyntheticClips
from .trainer import GRPOTrainer

__all__ = [
    "ARPolicy",
    "ARSample",
    "ConfigError",
    "DiffusionPolicy",
    "GRPOConfig",
    "GRPOTrainer",
    "ModelPolicy",
    "Policy",
    "PromptSampler",
    "Prompts",
    "Rollout",
    "SyntheticClips",
    "config_from_dict",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_config",
    "save_checkpoint",
]
