"""GRPO run configuration: a pydantic schema (rlir.schema) loaded from YAML, with ``key=value`` overrides.

    cfg = load_config("configs/crafter_ar.yaml", overrides=["rollout.group_size=16", "optim.lr=2e-5"])

Validation runs completely before anything is built or loaded: an unknown section or key, a value of the
wrong type or out of range, an inconsistent combination, or a missing model/data path raises ``ConfigError``
(a ``ValueError``) whose message starts with the dotted key, e.g. ``optim.lrr: unknown key (known: lr, ...)``.
Types, bounds and choices are on the fields below, rules between fields are validators of the section that
holds them, and what the models themselves accept (constructor arguments, sizes they must share, the class
in a model directory) is checked by ``rlir.grpo.model_checks.check_models``, which loading calls. Every key, with
its type, default and meaning: ``rlir train --help-config`` (generated from these classes). A key that moved
(``MOVED_KEYS``) fails with one line naming where it went, and a key or choice that was removed
(``REMOVED_KEYS``) with one line saying why and what to write instead.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import Field, field_validator, model_validator

from rlir.policies.config import ObjectiveConfig, SamplingConfig
from rlir.schema import ConfigError, Number, Schema, key_reference, read_yaml, reject_old_keys, save_yaml
from rlir.schema import shipped_path, validate, with_overrides

from .model_checks import check_models

__all__ = ["ConfigError", "GRPOConfig", "config_from_dict", "load_config", "save_config", "help_config"]

# old dotted key -> where it is now
MOVED_KEYS = {"rollout.sde.objective": "loss.objective", "rollout.sde.train_sigmas": "loss.train_sigmas"}
# removed dotted key, or "key: choice" -> (why, what to write instead); docs/experiments.md, "Options removed"
REMOVED_KEYS = {
    "advantage.positive_only": ("worse than signed advantages on every seed, docs/experiments.md", "drop the key"),
    "rollout.top_k": ("it sampled off the policy being optimised; no run used it", "drop the key"),
    "rollout.top_p": ("it sampled off the policy being optimised; no run used it", "drop the key"),
    "rollout.sde.stochastic: fraction": ("the runs with it gained at most +2.1 points and the recipes use a "
                                         "window, docs/experiments.md", "use window, e.g. window: [0, 1]"),
    "rollout.sde.fraction": ("it went with stochastic: fraction, docs/experiments.md", "drop the key"),
    "rollout.sde.shift": ("no run moved the schedule's shift from 1", "drop the key"),
    "advantage.eps": ("no run moved it from group_advantage's 1e-6", "drop the key"),
    "reward.mode: per_head": ("no run used it", "use exact or loglik"),
}


class RandomModelsConfig(Schema):
    """Tiny randomly initialised models (CI, tests, smoke runs), built from ``seed``; the sizes the models share
    (codebook, tokens per frame, action heads, frame size) are derived, not given."""

    image_size: int = Field(16, ge=8)
    action_head_sizes: list[Annotated[int, Field(ge=2)]] = Field([5], min_length=1,
                                                                 description="classes per action head")
    tokenizer: dict[str, Any] = Field(
        {"patch_size": 4, "hidden_channels": 16, "encoder_blocks": 0, "decoder_blocks": 1, "code_dim": 8,
         "codebook_size": 32}, description="VQTokenizer arguments")
    world_model: dict[str, Any] = Field(
        {"n_layers": 1, "d_model": 32, "n_heads": 2, "n_kv_heads": 1, "max_frames": 8},
        description="ARWorldModel arguments (models.kind ar) or DiTWorldModel arguments (diffusion)")
    idm: dict[str, Any] = Field({"width": 16, "depth": 1, "heads": 2, "channels": [8, 8]},
                                description="InverseDynamicsModel arguments")


class ModelsConfig(Schema):
    """The world model, tokenizer and IDMs: ``save_pretrained`` directories, or tiny random ones."""

    kind: Literal["ar", "diffusion"] = Field("ar", description="ar: ARWorldModel + ARPolicy; diffusion: "
                                             "DiTWorldModel + a DiffusionPolicy (its sampler in rollout.sde, "
                                             "its objective in loss.objective)")
    source: Literal["pretrained", "random"] = "pretrained"
    world_model: Optional[str] = Field(None, description="ARWorldModel / DiTWorldModel save_pretrained directory")
    tokenizer: Optional[str] = Field(None, description="VQTokenizer save_pretrained directory")
    idm: Optional[str] = Field(None, description="reward IDM directory")
    eval_idm: Optional[str] = Field(None, description="held-out evaluation IDM directory (optional)")
    random: RandomModelsConfig = Field(default_factory=RandomModelsConfig)

    @field_validator("world_model", "tokenizer", "idm", "eval_idm")
    @classmethod
    def _shipped(cls, value):  # the shipped checkpoints resolve to the installed copy from any directory
        return shipped_path(value)

    @model_validator(mode="after")
    def _pretrained_paths(self):
        if self.source == "pretrained":
            for name in ("world_model", "tokenizer", "idm"):
                if getattr(self, name) is None:
                    raise ConfigError(name, "required when models.source is pretrained")
        return self


class DataConfig(Schema):
    """Where prompts come from: a recording's clips (context frames + commanded actions), or synthetic ones."""

    source: Literal["recording", "synthetic"] = "recording"
    path: Optional[str] = Field(None, description="recording directory (manifest.json)")
    heldout_fraction: Number = Field(0.1, ge=0.0, lt=1.0)
    context_frames: int = Field(1, ge=1)
    stride: Optional[int] = Field(None, ge=1, description="frames between clip starts (default n_frames)")
    synthetic_clips: int = Field(64, ge=1, description="clips per split when source is synthetic")

    @model_validator(mode="after")
    def _recording(self):
        if self.source == "recording" and self.path is None:
            raise ConfigError("path", "required when data.source is recording")
        return self


class RolloutConfig(SamplingConfig):
    """What each step samples: B prompts x G samples of n frames, with the policy's sampler (rlir.policies.config)."""

    prompts_per_step: int = Field(4, ge=1, description="B")
    group_size: int = Field(8, ge=2, description="G: samples per prompt")
    n_frames: int = Field(7, ge=1, description="generated frames per video")


class RewardConfig(Schema):
    """The IDM reward: how the IDM's reading of each video scores against the commanded actions."""

    mode: Literal["exact", "loglik"] = Field(
        "exact", description="exact: a frame scores when every head's argmax is the commanded action (the paper); "
        "loglik: the IDM's log-likelihood of the commanded action, a dense reward (rlir.kernels.idm_reward)")
    idm_batch_size: Optional[int] = Field(None, ge=1, description="videos per IDM call (default: all in one call)")


class AdvantageConfig(Schema):
    """Rewards -> advantages (rlir.kernels.group_advantage)."""

    scale: Literal["group", "batch", "none"] = "group"
    estimator: Literal["grpo", "rloo"] = "grpo"
    credit: Literal["video", "frame", "reward_to_go"] = Field(
        "video", description="video: one advantage per video from its reward (the paper); frame: each generated "
        "frame's slots get the group advantage of that frame's own IDM match; reward_to_go: of the matches of that "
        "frame and every later one, which it conditions")


class LossConfig(ObjectiveConfig):
    """What the slots score (the objective, rlir.policies.config), rlir.kernels.grpo_loss's options, and where the
    old and reference log-probs come from."""

    eps_low: Number = Field(0.2, ge=0.0, lt=1.0)
    eps_high: Number = Field(0.2, ge=0.0)
    delta: Optional[Number] = Field(None, gt=1.0, description="cap of the ratio in the unclipped term")
    beta: Number = Field(0.0, ge=0.0, description="KL weight; 0 skips the reference model entirely")
    kl: Literal["k3", "closed_form"] = Field(
        "k3", description="k3: the k3 estimate from the sampled slots' log-probs under the reference model (not "
        "with the DiT's flow_matching objective, whose slots are not sampled); "
        "closed_form: the policy's exact per-slot KL (diffusion: the step Gaussians' means vs the reference's, "
        "as Flow-GRPO)")
    loss_agg: Literal["token-mean", "seq-mean-token-mean", "seq-sum-norm"] = "token-mean"
    is_level: Literal["token", "sequence"] = "token"
    old_logprobs: Literal["rollout", "recompute", "current"] = Field(
        "rollout", description="rollout: the log-probs recorded while sampling (recomputed if the policy "
        "records none, as the DiT's flow-matching objective, or under bf16 autocast, where they are not the "
        "training forward's: the AR rollout runs on a bf16 copy); recompute: a no-grad teacher-forced pass "
        "before the updates (exact ratio 1 at the first update); current: the update's own log-probs, detached, "
        "so the ratio is 1 at every update and no old log-prob pass runs (exact with one update a step; with "
        "more, the later minibatches' off-policy correction and clip are dropped, which the DiT's flow-matching "
        "objective does not accept)")


class OptimConfig(Schema):
    """AdamW (weight decay on matrices only) with warmup and a constant or cosine schedule."""

    lr: Number = Field(1e-5, gt=0.0)
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0, description="GRPO steps of linear warmup")
    min_lr_ratio: Number = Field(0.0, ge=0.0, le=1.0, description="cosine floor as a fraction of lr")
    weight_decay: Number = Field(0.0, ge=0.0)
    betas: list[Annotated[Number, Field(ge=0.0, lt=1.0)]] = Field([0.9, 0.999], min_length=2, max_length=2)
    adam_eps: Number = Field(1e-8, gt=0.0)
    max_grad_norm: Optional[Number] = Field(1.0, gt=0.0, description="null: no clipping (the norm is still logged)")
    trainable: Optional[list[str]] = Field(
        None, description="regexes (re.search) over the world model's parameter names: only those parameters "
        "train, e.g. [modulation, action_embeddings]; null: all")

    @field_validator("trainable")
    @classmethod
    def _regexes(cls, patterns):
        for i, pattern in enumerate(patterns or ()):
            try:
                re.compile(pattern)
            except re.error as error:
                raise ConfigError(f"[{i}]", f"is not a regular expression: {error}") from None
        return patterns


class TrainConfig(Schema):
    """The loop: steps, minibatching, precision, evaluation and checkpoint cadence."""

    steps: int = Field(100, ge=1)
    inner_epochs: int = Field(1, ge=1, description="passes over each step's rollouts")
    micro_batch_size: int = Field(8, ge=1, description="videos per forward/backward")
    grad_accumulation: int = Field(4, ge=1, description="micro-batches per optimizer update")
    bf16: Literal["auto", "true", "false"] = Field("auto", description="bf16 autocast (CUDA only); auto = on CUDA")
    eval_interval: int = Field(0, ge=0, description="steps between held-out evaluations; 0: never")
    checkpoint_interval: int = Field(0, ge=0, description="steps between checkpoints; 0: only the last step")
    keep_last: int = Field(3, ge=1)
    log_interval: int = Field(1, ge=1)

    @field_validator("bf16", mode="before")
    @classmethod
    def _yaml_bool(cls, value):  # bf16: true in YAML is the choice "true"
        return ("true" if value else "false") if isinstance(value, bool) else value


class EvalConfig(Schema):
    """The held-out evaluation every train.eval_interval steps."""

    prompts: int = Field(16, ge=1)
    num_samples: int = Field(1, ge=1)
    at_start: bool = True


class LogConfig(Schema):
    """Where metrics go: metrics.jsonl, TensorBoard, one line per step on stdout, optionally Weights & Biases."""

    tensorboard: bool = True
    stdout: bool = True
    jsonl: bool = True
    wandb: bool = Field(
        False, description="also log to Weights & Biases (needs wandb): the metrics, the eval video grid and the "
        "curves, offline into <out>/wandb unless WANDB_MODE / WANDB_DIR say otherwise (rlir.grpo.logging)")


class ParallelConfig(Schema):
    """Multi-process training under ``torchrun`` (rlir.grpo.distributed); a plain ``rlir train`` is one process."""

    strategy: Literal["fsdp", "ddp", "none"] = Field(
        "fsdp", description="fsdp: the world model sharded per block with FSDP2 (fully_shard); ddp: replicated, "
        "gradients all-reduced (DistributedDataParallel); none: one process only")
    consolidated_weights: bool = Field(
        True, description="each checkpoint also holds the whole world model as policy.safetensors (gathered by "
        "rank 0), which rlir eval --run reads; false: the DCP shards only (rlir export makes the model directory)")


class GRPOConfig(Schema):
    """An `rlir train` run."""

    seed: int = Field(0, ge=0)
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    out: str = Field("runs/grpo", description="run directory")
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    advantage: AdvantageConfig = Field(default_factory=AdvantageConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)

    @field_validator("device")
    @classmethod
    def _device(cls, value):
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return value

    @model_validator(mode="after")
    def _consistent(self):
        if self.train.bf16 == "true" and self.device == "cpu":
            raise ConfigError("train.bf16", "bf16 autocast is for CUDA devices; use auto or false with device: cpu")
        t, n = self.train, self.videos_per_step
        if n % self.minibatch_size or self.minibatch_size > n:
            raise ConfigError("train.micro_batch_size", f"micro_batch_size x grad_accumulation = "
                              f"{t.micro_batch_size} x {t.grad_accumulation} must divide the {n} videos per step "
                              f"(rollout.prompts_per_step x rollout.group_size)")
        if self.models.kind == "diffusion" and self.loss.objective == "flow_matching":
            # rlir.policies.flow_matching: a flow-matching slot is no sampled log-prob, and its negative-advantage
            # term is bounded only by the clipped ratio against old log-probs fixed before the updates.
            if self.loss.beta > 0 and self.loss.kl == "k3":
                raise ConfigError("loss.kl", "'k3' needs log-probs of samples the policy drew, which a flow_matching "
                                  "slot's are not (loss.objective): use closed_form")
            if self.loss.old_logprobs == "current" and self.updates_per_step > 1:
                raise ConfigError("loss.old_logprobs", f"'current' leaves loss.objective flow_matching "
                                  f"unbounded below after a step's first update ({self.updates_per_step} a step): "
                                  f"use rollout, or one update a step")
        return self

    # ---- derived -----------------------------------------------------------------------------------
    @property
    def videos_per_step(self) -> int:
        return self.rollout.prompts_per_step * self.rollout.group_size

    @property
    def minibatch_size(self) -> int:
        return self.train.micro_batch_size * self.train.grad_accumulation

    @property
    def updates_per_step(self) -> int:
        return self.train.inner_epochs * (self.videos_per_step // self.minibatch_size)

    def to_dict(self) -> dict:
        return self.model_dump()


def config_from_dict(data: Optional[dict], overrides=(), check_paths: bool = True) -> GRPOConfig:
    """Validate a config mapping with ``key=value`` overrides applied (``data`` is not modified); with
    ``check_paths``, the model and data directories must exist. Raises ConfigError naming the key."""
    data = with_overrides(data, overrides)
    reject_old_keys(data, MOVED_KEYS, REMOVED_KEYS)
    cfg = validate(GRPOConfig, data)
    check_models(cfg, check_paths)
    d = cfg.data
    if check_paths and d.source == "recording" and not (Path(d.path) / "manifest.json").is_file():
        raise ConfigError("data.path", f"{d.path}: not a recording directory (no manifest.json)")
    return cfg


def load_config(path, overrides=(), check_paths: bool = True) -> GRPOConfig:
    """Read a YAML file, apply ``key=value`` overrides and validate. Relative paths inside the file
    are relative to the working directory (as for ``rlir pretrain``); the shipped configs and checkpoints
    are found wherever rlir is installed (``rlir.assets``)."""
    return config_from_dict(read_yaml(path), overrides, check_paths)


def save_config(cfg: GRPOConfig, path) -> None:
    save_yaml(cfg, path)


def help_config() -> str:
    """The reference of every key (``rlir train --help-config``), generated from the schema."""
    return key_reference(GRPOConfig)
