"""GRPO run configuration: nested dataclasses loaded from YAML, with ``key=value`` overrides.

    cfg = load_config("configs/crafter_ar.yaml", overrides=["rollout.group_size=16", "optim.lr=2e-5"])

Validation runs completely before anything is built or loaded: an unknown section or key, a value of the
wrong type or out of range, an inconsistent combination, or a missing model/data path raises
``ConfigError`` (a ``ValueError``) whose message starts with the dotted key, e.g.
``optim.lrr: unknown key (known: lr, schedule, ...)``. Override values are parsed as YAML scalars
(``top_k=null``, ``optim.betas=[0.9,0.95]``); floats may be written ``1e-5`` (YAML 1.1 would read a string).

Sections and keys (defaults in the dataclasses below):
    seed, device (auto|cpu|cuda|cuda:N), out (run directory)
    models:    kind (ar|diffusion), source (pretrained|random); world_model, tokenizer, idm, eval_idm (pretrained dirs);
               random: image_size, action_head_sizes, tokenizer{...}, world_model{...}, idm{...}
               (constructor kwargs of VQTokenizer / ARWorldModel / InverseDynamicsModel; the shared sizes
               codebook_size, tokens_per_frame, head sizes and frame size are derived, not given)
    data:      source (recording|synthetic), path, heldout_fraction, context_frames, stride, synthetic_clips
    rollout:   prompts_per_step (B), group_size (G), n_frames, temperature, top_k, top_p (AR);
               sde: num_steps, shift, noise_level, stochastic (all|fraction|window), fraction, window (diffusion);
               compile (false|true: the compiled rollout step, CUDA graphs on CUDA)
    reward:    mode (exact|per_head|loglik), idm_batch_size
    advantage: scale (group|batch|none), estimator (grpo|rloo), eps, credit (video|frame)
    loss:      eps_low, eps_high, delta, beta, kl (k3|closed_form), loss_agg, is_level, old_logprobs (rollout|recompute)
    optim:     lr, schedule (constant|cosine), warmup_steps, min_lr_ratio, weight_decay, betas, adam_eps,
               max_grad_norm, trainable (parameter-name regexes; null: all)
    train:     steps, inner_epochs, micro_batch_size, grad_accumulation, bf16 (auto|true|false),
               eval_interval, checkpoint_interval, keep_last, log_interval
    eval:      prompts, num_samples, at_start
    log:       tensorboard, stdout, jsonl
    parallel:  strategy (fsdp|ddp|none), consolidated_weights (under torchrun; see rlir.grpo.distributed)
"""
from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from rlir.assets import resolve as resolve_asset


class ConfigError(ValueError):
    """A bad configuration; the message starts with the dotted key at fault."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key


def _meta(choices=None, min=None, gt=None, max=None, lt=None, help=""):
    return {"choices": choices, "min": min, "gt": gt, "max": max, "lt": lt, "help": help}


def _f(default, **meta):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=_meta(**meta))
    return field(default=default, metadata=_meta(**meta))


@dataclass
class RandomModelsConfig:
    """Tiny randomly initialised models (CI, tests, smoke runs), built from ``seed``."""

    image_size: int = _f(16, min=8)
    action_head_sizes: list[int] = _f([5], help="classes per action head")
    tokenizer: dict = _f({"patch_size": 4, "hidden_channels": 16, "encoder_blocks": 0, "decoder_blocks": 1,
                          "code_dim": 8, "codebook_size": 32})
    world_model: dict = _f({"n_layers": 1, "d_model": 32, "n_heads": 2, "n_kv_heads": 1, "max_frames": 8},
                           help="ARWorldModel kwargs (models.kind ar) or DiTWorldModel kwargs (diffusion)")
    idm: dict = _f({"width": 16, "depth": 1, "heads": 2, "channels": [8, 8]})


@dataclass
class ModelsConfig:
    kind: str = _f("ar", choices=("ar", "diffusion"), help="ar: ARWorldModel + ARPolicy; diffusion: DiTWorldModel "
                   "+ DiffusionPolicy (SDE sampler, rollout.sde)")
    source: str = _f("pretrained", choices=("pretrained", "random"))
    world_model: Optional[str] = _f(None, help="ARWorldModel / DiTWorldModel save_pretrained directory")
    tokenizer: Optional[str] = _f(None, help="VQTokenizer.save_pretrained directory")
    idm: Optional[str] = _f(None, help="reward IDM directory")
    eval_idm: Optional[str] = _f(None, help="held-out evaluation IDM directory (optional)")
    random: RandomModelsConfig = field(default_factory=RandomModelsConfig)


@dataclass
class DataConfig:
    source: str = _f("recording", choices=("recording", "synthetic"))
    path: Optional[str] = _f(None, help="recording directory (manifest.json)")
    heldout_fraction: float = _f(0.1, min=0.0, lt=1.0)
    context_frames: int = _f(1, min=1)
    stride: Optional[int] = _f(None, min=1, help="frames between clip starts (default n_frames)")
    synthetic_clips: int = _f(64, min=1, help="clips per split when source is synthetic")


@dataclass
class SDEConfig:
    """The diffusion world model's sampler (models.kind diffusion): Flow-GRPO's SDE on the stochastic steps."""

    num_steps: int = _f(8, min=1, help="denoising steps per generated frame")
    shift: float = _f(1.0, gt=0.0, help="schedule shift of FlowMatchEulerDiscreteScheduler")
    noise_level: float = _f(0.7, gt=0.0, help="the SDE's a: sigma_t = a sqrt(sigma / (1 - sigma))")
    stochastic: str = _f("all", choices=("all", "fraction", "window"),
                         help="which steps are SDE steps with log-probs: all (Flow-GRPO), a random fraction per "
                         "rollout (DanceGRPO), or a window (MixGRPO); the others are Euler ODE steps")
    fraction: float = _f(0.5, gt=0.0, max=1.0, help="with stochastic: fraction")
    window: list[int] = _f([0, 4], help="with stochastic: window, [first step, number of steps]")

    def stochastic_arg(self):
        """The ``stochastic`` argument of rlir.models.flow_sampling.generate."""
        if self.stochastic == "fraction":
            return float(self.fraction)
        if self.stochastic == "window":
            return tuple(self.window)
        return "all"


@dataclass
class RolloutConfig:
    prompts_per_step: int = _f(4, min=1, help="B")
    group_size: int = _f(8, min=2, help="G: samples per prompt")
    n_frames: int = _f(7, min=1, help="generated frames per video")
    temperature: float = _f(1.0, gt=0.0)
    top_k: Optional[int] = _f(None, min=1)
    top_p: Optional[float] = _f(None, gt=0.0, max=1.0)
    sde: SDEConfig = field(default_factory=SDEConfig)
    compile: bool = _f(False, help="run the rollout's per-token (AR) or per-denoising-step (diffusion) step under "
                       "torch.compile(fullgraph=True), as CUDA graphs on CUDA; the first step compiles (seconds to a "
                       "minute), the samples are the same as eager (rlir.models.compiled)")


@dataclass
class RewardConfig:
    mode: str = _f("exact", choices=("exact", "per_head", "loglik"))
    idm_batch_size: Optional[int] = _f(None, min=1, help="videos per IDM call (default: all in one call)")


@dataclass
class AdvantageConfig:
    scale: str = _f("group", choices=("group", "batch", "none"))
    estimator: str = _f("grpo", choices=("grpo", "rloo"))
    eps: float = _f(1e-6, gt=0.0)
    credit: str = _f("video", choices=("video", "frame"),
                     help="video: one advantage per video from its reward (the paper); frame: each generated "
                     "frame's slots get the group advantage of that frame's own IDM match")


@dataclass
class LossConfig:
    eps_low: float = _f(0.2, min=0.0, lt=1.0)
    eps_high: float = _f(0.2, min=0.0)
    delta: Optional[float] = _f(None, gt=1.0, help="cap of the ratio in the unclipped term")
    beta: float = _f(0.0, min=0.0, help="KL weight; 0 skips the reference model entirely")
    kl: str = _f("k3", choices=("k3", "closed_form"),
                 help="k3: the k3 estimate from the sampled slots' log-probs under the reference model; "
                 "closed_form: the policy's exact per-slot KL (diffusion: the step Gaussians' means vs the "
                 "reference's, as Flow-GRPO)")
    loss_agg: str = _f("token-mean", choices=("token-mean", "seq-mean-token-mean", "seq-sum-norm"))
    is_level: str = _f("token", choices=("token", "sequence"))
    old_logprobs: str = _f("rollout", choices=("rollout", "recompute"),
                           help="rollout: the log-probs recorded while sampling; recompute: a no-grad "
                           "teacher-forced pass before the updates (exact ratio 1 at the first update)")


@dataclass
class OptimConfig:
    lr: float = _f(1e-5, gt=0.0)
    schedule: str = _f("constant", choices=("constant", "cosine"))
    warmup_steps: int = _f(0, min=0, help="GRPO steps of linear warmup")
    min_lr_ratio: float = _f(0.0, min=0.0, max=1.0, help="cosine floor as a fraction of lr")
    weight_decay: float = _f(0.0, min=0.0)
    betas: list[float] = _f([0.9, 0.999])
    adam_eps: float = _f(1e-8, gt=0.0)
    max_grad_norm: Optional[float] = _f(1.0, gt=0.0, help="null: no clipping (the norm is still logged)")
    trainable: Optional[list[str]] = _f(None, help="regexes (re.search) over the world model's parameter names: "
                                        "only those parameters train, e.g. [modulation, action_embeddings]; "
                                        "null: all")


@dataclass
class TrainConfig:
    steps: int = _f(100, min=1)
    inner_epochs: int = _f(1, min=1, help="passes over each step's rollouts")
    micro_batch_size: int = _f(8, min=1, help="videos per forward/backward")
    grad_accumulation: int = _f(4, min=1, help="micro-batches per optimizer update")
    bf16: str = _f("auto", choices=("auto", "true", "false"), help="bf16 autocast (CUDA only); auto = on CUDA")
    eval_interval: int = _f(0, min=0, help="steps between held-out evaluations; 0: never")
    checkpoint_interval: int = _f(0, min=0, help="steps between checkpoints; 0: only the last step")
    keep_last: int = _f(3, min=1)
    log_interval: int = _f(1, min=1)


@dataclass
class EvalConfig:
    prompts: int = _f(16, min=1)
    num_samples: int = _f(1, min=1)
    at_start: bool = _f(True)


@dataclass
class LogConfig:
    tensorboard: bool = _f(True)
    stdout: bool = _f(True)
    jsonl: bool = _f(True)


@dataclass
class ParallelConfig:
    """Multi-process training under ``torchrun`` (rlir.grpo.distributed); a plain ``rlir train`` is one process."""

    strategy: str = _f("fsdp", choices=("fsdp", "ddp", "none"),
                       help="fsdp: the world model sharded per block with FSDP2 (fully_shard); ddp: replicated, "
                       "gradients all-reduced (DistributedDataParallel); none: one process only")
    consolidated_weights: bool = _f(True, help="each checkpoint also holds the whole world model as "
                                    "policy.safetensors (gathered by rank 0), which rlir eval --run reads; "
                                    "false: the DCP shards only (rlir export makes the model directory)")


@dataclass
class GRPOConfig:
    seed: int = _f(0, min=0)
    device: str = _f("auto")
    out: str = _f("runs/grpo")
    models: ModelsConfig = field(default_factory=ModelsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)

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
        return dataclasses.asdict(self)

    def validate(self, check_paths: bool = True) -> "GRPOConfig":
        """Cross-field checks (types and ranges are checked on load). Raises ConfigError naming the key."""
        _validate(self, check_paths)
        return self


# ---- loading ----------------------------------------------------------------------------------------

_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(key: str, value: Any, tp, meta: dict) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union:  # Optional[X]
        if value is None:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner, meta)
    if value is None:
        raise ConfigError(key, f"must be a {_type_name(tp)}, got null")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(key, f"must be a mapping of {_type_name(tp)} keys, got {value!r}")
        return _build(tp, value, key + ".")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"must be an integer, got {value!r}")
    elif tp is float:
        if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"must be a number, got {value!r}")
        value = float(value)
    elif tp is str:
        if isinstance(value, bool):  # bf16: true in YAML -> the choice "true"
            value = "true" if value else "false"
        if not isinstance(value, str):
            raise ConfigError(key, f"must be a string, got {value!r}")
    elif origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"must be a list of {_type_name(args[0])}, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, args[0], meta) for i, v in enumerate(value)]
    elif tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"must be a mapping, got {value!r}")
        return dict(value)
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(key, f"must be one of {list(choices)}, got {value!r}")
    for bound, test, words in (("min", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
                               ("max", lambda v, b: v <= b, "<="), ("lt", lambda v, b: v < b, "<")):
        b = meta.get(bound)
        if b is not None and not test(value, b):
            raise ConfigError(key, f"must be {words} {b}, got {value!r}")
    return value


def _build(cls, data: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in data:
        if name not in fields:
            raise ConfigError(f"{prefix}{name}", f"unknown key (known: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _coerce(prefix + name, data[name], hints[name], dict(f.metadata))
    return cls(**kwargs)


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(".".join(parts[: i + 1]), f"is not a section; cannot set {dotted}")
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides) -> list[tuple[str, Any]]:
    out = []
    for item in overrides or ():
        if "=" not in item:
            raise ConfigError(str(item), "overrides must look like key=value (e.g. rollout.group_size=16)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or not all(key.split(".")):
            raise ConfigError(str(item), "overrides must look like key=value (e.g. rollout.group_size=16)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as error:
            raise ConfigError(key, f"cannot parse override value {raw!r}: {error}") from None
        out.append((key, value))
    return out


def config_from_dict(data: Optional[dict], overrides=(), check_paths: bool = True) -> GRPOConfig:
    data = {} if data is None else _deepcopy(data)
    if not isinstance(data, dict):
        raise ConfigError("<root>", f"a config must be a mapping of sections, got {type(data).__name__}")
    for key, value in parse_overrides(overrides):
        _set_dotted(data, key, value)
    models = data.get("models")
    if isinstance(models, dict):  # shipped checkpoints resolve to the installed copy from any directory
        for key in ("world_model", "tokenizer", "idm", "eval_idm"):
            if isinstance(models.get(key), str):
                models[key] = str(resolve_asset(models[key]))
    return _build(GRPOConfig, data).validate(check_paths)


def load_config(path, overrides=(), check_paths: bool = True) -> GRPOConfig:
    """Read a YAML file, apply ``key=value`` overrides and validate. Relative paths inside the file
    are relative to the working directory (as for ``rlir pretrain``); the shipped configs and checkpoints
    are found wherever rlir is installed (``rlir.assets``)."""
    path = resolve_asset(path)
    if not path.is_file():
        raise ConfigError("config", f"{path}: no such file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError("config", f"{path}: not valid YAML: {error}") from None
    return config_from_dict(data, overrides, check_paths)


def save_config(cfg: GRPOConfig, path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def _deepcopy(x):
    if isinstance(x, dict):
        return {k: _deepcopy(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_deepcopy(v) for v in x]
    return x


# ---- cross-field validation -------------------------------------------------------------------------

# Sizes the builder derives so that the three models agree; giving them in models.random.* is an error.
_DERIVED = {
    "tokenizer": {"image_size"},
    "world_model": {"codebook_size", "tokens_per_frame", "action_head_sizes"},
    "idm": {"head_sizes", "frame_size"},
}


# The DiT's frame shape comes from the tokenizer (latents) or the image size (pixels).
_DERIVED_DIFFUSION = {"action_head_sizes", "in_channels", "frame_size"}
WORLD_MODEL_CLASS_NAMES = {"ar": "ARWorldModel", "diffusion": "DiTWorldModel"}


def _random_model_classes(kind: str = "ar"):
    from rlir.models.ar_world_model import ARWorldModel
    from rlir.models.dit_world_model import DiTWorldModel
    from rlir.models.idm import InverseDynamicsModel
    from rlir.models.tokenizer import VQTokenizer

    world_model = DiTWorldModel if kind == "diffusion" else ARWorldModel
    return {"tokenizer": VQTokenizer, "world_model": world_model, "idm": InverseDynamicsModel}


def _validate(cfg: GRPOConfig, check_paths: bool) -> None:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", cfg.device):
        raise ConfigError("device", f"must be auto, cpu, cuda or cuda:N, got {cfg.device!r}")
    if cfg.train.bf16 == "true" and cfg.device == "cpu":
        raise ConfigError("train.bf16", "bf16 autocast is for CUDA devices; use auto or false with device: cpu")

    for i, pattern in enumerate(cfg.optim.trainable or ()):
        try:
            re.compile(pattern)
        except re.error as error:
            raise ConfigError(f"optim.trainable[{i}]", f"is not a regular expression: {error}") from None
    m = cfg.models
    if cfg.loss.kl == "closed_form" and m.kind == "ar":
        raise ConfigError("loss.kl", "closed_form is the diffusion policy's KL of the step means; the AR policy "
                          "has only k3")
    if m.source == "pretrained":
        for name in ("world_model", "tokenizer", "idm"):
            if getattr(m, name) is None:
                raise ConfigError(f"models.{name}", "required when models.source is pretrained")
        if check_paths:
            for name in ("world_model", "tokenizer", "idm", "eval_idm"):
                value = getattr(m, name)
                if value is not None and not (Path(value) / "config.json").is_file():
                    raise ConfigError(f"models.{name}", f"{value}: not a saved model directory (no config.json)")
            import json

            found = json.loads((Path(m.world_model) / "config.json").read_text()).get("_class_name")
            if found != WORLD_MODEL_CLASS_NAMES[m.kind]:
                raise ConfigError("models.kind", f"{m.kind} needs a {WORLD_MODEL_CLASS_NAMES[m.kind]}, "
                                  f"models.world_model {m.world_model} holds a {found}")
    else:
        r = m.random
        if not r.action_head_sizes or any(s < 2 for s in r.action_head_sizes):
            raise ConfigError("models.random.action_head_sizes", f"must be a non-empty list of ints >= 2, got "
                              f"{r.action_head_sizes!r}")
        for name, cls in _random_model_classes(m.kind).items():
            params = inspect.signature(cls.__init__).parameters
            derived = _DERIVED_DIFFUSION if (name == "world_model" and m.kind == "diffusion") else _DERIVED[name]
            for key in getattr(r, name):
                if key in derived:
                    raise ConfigError(f"models.random.{name}.{key}", "is derived from the other models; remove it")
                if key not in params or key == "self":
                    known = [p for p in params if p != "self" and p not in derived]
                    raise ConfigError(f"models.random.{name}.{key}",
                                      f"unknown {cls.__name__} argument (known: {', '.join(known)})")
        patch = r.tokenizer.get("patch_size", 8)
        if not isinstance(patch, int) or r.image_size % patch:
            raise ConfigError("models.random.image_size", f"{r.image_size} must be a multiple of "
                              f"models.random.tokenizer.patch_size ({patch!r})")

    d = cfg.data
    if d.source == "recording":
        if d.path is None:
            raise ConfigError("data.path", "required when data.source is recording")
        if check_paths and not (Path(d.path) / "manifest.json").is_file():
            raise ConfigError("data.path", f"{d.path}: not a recording directory (no manifest.json)")

    r = cfg.rollout
    if m.source == "random":
        max_frames = m.random.world_model.get("max_frames", 16)
        if isinstance(max_frames, int) and d.context_frames + r.n_frames > max_frames:
            raise ConfigError("rollout.n_frames", f"data.context_frames + rollout.n_frames = "
                              f"{d.context_frames + r.n_frames} exceeds models.random.world_model.max_frames "
                              f"({max_frames})")

    sde = r.sde
    if sde.stochastic == "window" and (len(sde.window) != 2 or not 0 <= sde.window[0] < sde.num_steps
                                       or sde.window[1] < 1):
        raise ConfigError("rollout.sde.window", f"must be [first step, number of steps] with 0 <= first < "
                          f"rollout.sde.num_steps ({sde.num_steps}) and number >= 1, got {sde.window!r}")

    t = cfg.train
    n = cfg.videos_per_step
    if t.micro_batch_size * t.grad_accumulation > n or n % (t.micro_batch_size * t.grad_accumulation):
        raise ConfigError("train.micro_batch_size", f"micro_batch_size x grad_accumulation = "
                          f"{t.micro_batch_size} x {t.grad_accumulation} must divide the "
                          f"{n} videos per step (rollout.prompts_per_step x rollout.group_size)")
    if len(cfg.optim.betas) != 2 or not all(0.0 <= b < 1.0 for b in cfg.optim.betas):
        raise ConfigError("optim.betas", f"must be two numbers in [0, 1), got {cfg.optim.betas!r}")
