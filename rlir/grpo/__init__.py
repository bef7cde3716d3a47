"""rlir.grpo: GRPO post-training of world models with an inverse-dynamics reward (the RLIR loop).

    from rlir.grpo import GRPOTrainer, load_config
    trainer = GRPOTrainer.from_config(load_config("configs/crafter_ar.yaml"))
    trainer.train()

Pieces: ``config`` (GRPOConfig, load_config), ``model_checks`` (what a config asks of the models, checked as it
loads), ``builders`` (a run's models, policy and prompts from a config), ``prompts`` (resumable PromptSampler),
``trainer`` (GRPOTrainer: the loop), ``advantages`` (a step's advantages), ``metrics`` (a step's metrics, read back
once), ``held_out`` (in-training evaluation), ``distributed`` (DDP / FSDP, how a step splits over ranks),
``checkpoint`` (atomic save, exact resume), ``trained_world_model`` (a run's world model, for rlir eval and export),
``logging`` (jsonl + TensorBoard). The policies it trains (the Policy interface, Prompts, Rollout, ARPolicy, the
diffusion policies, make_policy) are ``rlir.policies``; the parallel job it runs in is ``rlir.parallel``.
"""
from .checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from .config import ConfigError, GRPOConfig, config_from_dict, load_config
from .prompts import PromptSampler, SyntheticClips
from .trainer import GRPOTrainer

__all__ = [
    "ConfigError",
    "GRPOConfig",
    "GRPOTrainer",
    "PromptSampler",
    "SyntheticClips",
    "config_from_dict",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_config",
    "save_checkpoint",
]
