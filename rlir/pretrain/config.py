"""Settings of the `rlir pretrain` targets: one pydantic schema each (rlir.schema), from a YAML file and flags.

    rlir pretrain world-model --config configs/pretrain/crafter_ar_world_model.yaml [--steps 100 ...]

Every setting is a field below, with its default, bounds, choices and meaning; rules between settings are
validators. The command-line flags are generated from the same fields (``clip_frames`` is ``--clip-frames``,
a bool is ``--x`` / ``--no-x``) and override the keys of ``--config``. A target's ``train(...)`` takes the
same names as keyword arguments and validates them with its schema, so the library call and the command
check the same things. Where defaults differ by world-model kind or IDM role, each kind or role is its own
schema (``ARWorldModelPretrain`` / ``DiffusionWorldModelPretrain``, ``IDMPretrain`` / ``EvalIDMPretrain``), and
an option of the other kind is an error.

A bad setting raises ValueError("<key> <what is wrong>"), e.g. ``steps must be an int >= 1, got 0``.
"""
from __future__ import annotations

import argparse
import os
import sys
import typing
from typing import Annotated, Callable, Literal, Optional, Sequence

from pydantic import BeforeValidator, Field, model_validator

from rlir.schema import ConfigError, Number, Schema, describe_type, read_yaml, unwrap_type, validate


def _path(value):
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _sizes(value):
    return [value] if isinstance(value, int) and not isinstance(value, bool) else (
        list(value) if isinstance(value, tuple) else value)


PathStr = Annotated[str, BeforeValidator(_path)]
Sizes = Annotated[list[Annotated[int, Field(ge=1)]], BeforeValidator(_sizes)]

# Settings that several targets take, each with its own default.
Steps = Annotated[int, Field(ge=1, description="optimiser steps")]
ClipsPerStep = Annotated[int, Field(ge=1, description="clips per step")]
PeakLr = Annotated[Number, Field(gt=0.0, description="peak AdamW learning rate")]
EvalEvery = Annotated[int, Field(ge=0, description="steps between held-out lines in metrics.jsonl; 0: only at the end")]
ClipFrames = Annotated[int, Field(ge=2, description="frames per training clip, at most max_frames")]
FrameSize = Annotated[Optional[Sizes], Field(min_length=1, max_length=2, description="frame size the model reads: "
                                             "SIZE (square) or HEIGHT WIDTH (default: the recording's)")]


class Pretrain(Schema):
    """What every target takes."""

    data: PathStr = Field(description="recording directory (holds manifest.json)")
    out: PathStr = Field(description="output directory for the model and its metrics")
    seed: int = Field(0, ge=0, description="seed of the weights, batches and sampling")
    dtype: Literal["fp32", "bf16", "fp16"] = Field("bf16", description="dtype of the saved weights; training is fp32")
    heldout_fraction: Number = Field(0.1, gt=0.0, lt=1.0, description="fraction of episodes held out for evaluation")
    log_every: int = Field(10, ge=1, description="steps between metrics.jsonl lines")
    threads: Optional[int] = Field(None, ge=1, description="CPU threads for torch (default: torch's choice); 1 is "
                                   "fastest on a shared machine")
    quiet: bool = Field(False, description="no progress bar")


class TokenizerPretrain(Pretrain):
    """`rlir pretrain tokenizer`: the VQ frame tokenizer."""

    steps: Steps = 3000
    batch: int = Field(32, ge=1, description="frames per step")
    lr: PeakLr = 3e-3
    codebook_size: int = Field(512, ge=2, description="number of codes")
    patch_size: int = Field(8, ge=1, description="pixels per code, each side")
    frame_size: FrameSize = None
    log_every: int = Field(25, ge=1, description="steps between metrics.jsonl lines")
    overwrite: bool = Field(False, description="replace OUT if it exists")


class IDMPretrain(Pretrain):
    """`rlir pretrain idm`: the reward IDM (role reward) or the held-out evaluation IDM (role eval, --eval), which
    differs in seed and width so that the two do not share blind spots."""

    role: Literal["reward"] = Field("reward", description="reward: the IDM GRPO optimises against; eval: the "
                                    "held-out evaluation IDM (another seed and width)")
    steps: Steps = 250
    batch: ClipsPerStep = 8
    lr: PeakLr = 2e-3
    weight_decay: Number = Field(0.01, ge=0.0, description="AdamW weight decay")
    window: int = Field(16, ge=2, description="frames per training clip and per transformer window")
    width: int = Field(128, ge=1, description="embedding width")
    depth: int = Field(2, ge=1, description="transformer blocks")
    heads: int = Field(4, ge=1, description="attention heads")
    channels: Sizes = Field([16, 32, 32], min_length=1, description="CNN channels, one stride-2 conv each")
    frame_size: FrameSize = None
    class_weights: Literal["none", "inverse-sqrt"] = Field(
        "none", description="cross-entropy class weights: none, or inverse square root of the training frequency")
    avatar_box: Optional[Sizes] = Field(None, min_length=4, max_length=4, description="TOP LEFT HEIGHT WIDTH in px "
                                        "of the frames the model reads: where the player's avatar is drawn (Crafter "
                                        "at 72 px: 24 32 8 8); used by avatar, counterfeits and world_only")
    avatar: Literal["seen", "ignored"] = Field("seen", description="ignored: the model never sees avatar_box, so it "
                                               "must read the world (an avatar that turns without the world moving "
                                               "cannot fool it)")
    counterfeits: Number = Field(0.0, ge=0.0, lt=1.0, description="share of training clips replaced by avatar-only "
                                 "counterfeits (the first frame's world, the avatar_box of the real frames) labelled "
                                 "noop: turning the avatar alone is not a move")
    counterfeit_labels: Literal["noop", "as_shown"] = Field(
        "noop", description="noop: every transition of a counterfeit is labelled noop; as_shown: only those in which "
        "the player moved (Crafter replayed from the recording's seeds), whose scroll the counterfeit removed; the "
        "rest keep their action, since a blocked move also turns the avatar and moves nothing")
    world_only: Number = Field(0.0, ge=0.0, lt=1.0, description="share of training clips whose avatar_box is frozen "
                               "at the first frame's, labelled as shown: a move in which the player did not move "
                               "(Crafter replayed) becomes noop, a scroll keeps its move whatever the avatar shows")
    dtype: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="dtype of the saved weights")
    eval_every: EvalEvery = 100
    quiet: bool = Field(False, description="no progress bar and no table")


    @model_validator(mode="after")
    def _avatar(self):
        if self.avatar_box is None and (self.avatar == "ignored" or self.counterfeits or self.world_only):
            raise ConfigError("avatar_box", "is needed by avatar: ignored, counterfeits and world_only")
        if self.counterfeits + self.world_only >= 1:
            raise ConfigError("world_only", f"counterfeits + world_only must leave some real clips, got "
                              f"{self.counterfeits} + {self.world_only}")
        return self


class EvalIDMPretrain(IDMPretrain):
    role: Literal["eval"] = "eval"
    seed: int = Field(1, ge=0, description="seed of the weights and batches")
    width: int = Field(96, ge=1, description="embedding width")


class WorldModelPretrain(Pretrain):
    """`rlir pretrain world-model`: what both kinds take."""

    tokenizer: Optional[PathStr] = Field(None, description="trained frame tokenizer directory (rlir pretrain "
                                         "tokenizer); required except for --kind diffusion --frame-space pixels")
    max_frames: int = Field(16, ge=2, description="longest clip the model takes: RoPE and KV-cache length")
    layers: int = Field(4, ge=1, description="transformer blocks")
    d_model: int = Field(192, ge=1, description="model width")
    heads: int = Field(6, ge=1, description="attention heads")
    eval_prompts: int = Field(32, ge=1, description="held-out prompts for the generation PSNR")
    init: Optional[PathStr] = Field(None, description="start from this world model of the same kind (a save_pretrained "
                                    "directory; its config replaces the shape settings) instead of fresh weights: a "
                                    "second stage, e.g. the DiT on longer clips so that every frame position the "
                                    "sampler reaches is trained")
    eval_frames: int = Field(15, ge=1, description="frames generated per prompt, at most max_frames - 1")
    overwrite: bool = Field(False, description="replace OUT if it exists")

    @model_validator(mode="after")
    def _clips_fit(self):
        if self.clip_frames > self.max_frames:
            raise ConfigError("clip_frames", f"({self.clip_frames}) must be <= max_frames ({self.max_frames})")
        if self.eval_frames >= self.max_frames:
            raise ConfigError("eval_frames", f"({self.eval_frames}) must be < max_frames ({self.max_frames}): one "
                              f"context frame plus the generated frames must fit")
        if self.tokenizer is None and getattr(self, "frame_space", "tokenizer_latents") == "tokenizer_latents":
            raise ConfigError("tokenizer", f"missing: --kind {self.kind} needs --tokenizer (rlir pretrain tokenizer)")
        return self


class ARWorldModelPretrain(WorldModelPretrain):
    """The autoregressive world model over tokenizer codes (--kind ar)."""

    kind: Literal["ar"] = Field("ar", description="world model family: ar (autoregressive over tokenizer codes) or "
                                "diffusion (the flow-matching DiT)")
    steps: Steps = 600
    batch: ClipsPerStep = 4
    lr: PeakLr = 3e-3
    clip_frames: ClipFrames = 16
    eval_every: EvalEvery = 100
    kv_heads: int = Field(2, ge=1, description="key/value heads (GQA)")
    codes: Optional[PathStr] = Field(None, description="pre-tokenised recording to reuse when it matches data and "
                                     "tokenizer (default: OUT/codes.safetensors of a previous run)")
    frame_action_embedding: bool = Field(False, description="add an embedding of the commanded action to every code "
                                         "of the frame it leads to (see ARWorldModel)")
    previous_frame_input: bool = Field(False, description="give each position the previous frame's codes around the "
                                       "code it predicts, and its row and column (see ARWorldModel)")
    changed_code_weight: Number = Field(1.0, ge=1.0, description="weight of a code that differs from the previous "
                                        "frame's code at its position in the training loss (1: plain mean); most "
                                        "codes are copies, so a model that copies scores well without the scroll")
    changed_codes: Literal["all", "moved"] = Field("all", description="which changed codes weigh "
                                                   "changed_code_weight: all, or only those of transitions in which "
                                                   "the player moved (Crafter's state replayed from the recording's "
                                                   "seeds), so codec noise and change in still frames weigh 1")


class DiffusionWorldModelPretrain(WorldModelPretrain):
    """The frame-causal DiT trained with flow matching (--kind diffusion)."""

    kind: Literal["diffusion"] = "diffusion"
    steps: Steps = 3000
    batch: ClipsPerStep = 8
    lr: PeakLr = 1e-3
    clip_frames: ClipFrames = 4
    eval_every: EvalEvery = 500
    frame_space: Literal["tokenizer_latents", "pixels"] = Field("tokenizer_latents",
                                                                description="what a frame is to the model")
    patch_size: Optional[int] = Field(None, ge=1, description="patch side in frame-space cells (default: the "
                                      "largest up to 2 for latents, 8 for pixels, that divides the frame grid)")
    context_frames: int = Field(1, ge=1, description="clean frames at the start of each training clip")
    sample_steps: int = Field(16, ge=1, description="ODE steps per frame in the held-out generation (default: "
                              "the evaluation sampler's, rlir.policies.EVAL_ODE_STEPS)")
    previous_frame_neighbourhood: bool = Field(False, description="the previous frame enters also shifted by one "
                                               "cell in each direction (see DiTWorldModel)")

    @model_validator(mode="after")
    def _context(self):
        if self.context_frames >= self.clip_frames:
            raise ConfigError("context_frames", f"({self.context_frames}) must be < clip_frames ({self.clip_frames})")
        return self


def settings(schema: type, **values) -> Schema:
    """``values`` validated by ``schema``; a bad one raises ValueError("<key> <what is wrong>")."""
    try:
        return validate(schema, values)
    except ConfigError as error:
        raise ValueError(f"{error.key} {error.message}") from None


def set_threads(threads: Optional[int]) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


# ---- the command line -----------------------------------------------------------------------------------

def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_flags(parser: argparse.ArgumentParser, schemas: Sequence[type], description: str,
              selector: Optional[str] = None) -> None:
    """``--config FILE`` and one flag per field of ``schemas`` (type, choices and help from the schema), each
    left out of the namespace unless given; ``selector`` (kind, role) picks the schema and is listed first."""
    parser.description = description
    parser.add_argument("--config", default=argparse.SUPPRESS, metavar="FILE",
                        help="YAML file of these settings (keys as the flags, with _ for -); flags override it")
    fields: dict = {selector: []} if selector else {}
    for schema in schemas:
        for name, field in schema.model_fields.items():
            fields.setdefault(name, []).append((schema, field))
    for name, owners in fields.items():
        if name == selector:
            parser.add_argument(_flag(name), default=argparse.SUPPRESS, choices=[_label(s) for s in schemas],
                                help=f"{owners[0][1].description} (default: {_label(schemas[0])})")
            continue
        field = owners[0][1]
        annotation = unwrap_type(field.annotation)[0]
        kwargs: dict = {"default": argparse.SUPPRESS}
        if annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(annotation) is list:
            kwargs.update(nargs="+", type=int, metavar="N")
        elif typing.get_origin(annotation) is Literal:
            choices = sorted({c for _, f in owners for c in typing.get_args(f.annotation)})
            kwargs.update(choices=choices)
        else:
            kwargs["type"] = {int: int, float: float}.get(annotation, str)
        defaults = {_default(f) for _, f in owners}
        default = (", ".join(f"{_label(s)} {_default(f)}" for s, f in owners) if len(defaults) > 1
                   else defaults.pop())
        only = "" if len(owners) == len(schemas) else f"{' and '.join(_label(s) for s, _ in owners)}: "
        facts = [] if annotation is bool else [describe_type(field.annotation, field.metadata)]
        facts += ["required"] if field.is_required() else [] if default == "None" else [f"default: {default}"]
        kwargs["help"] = f"{only}{field.description or ''}" + (f" ({'; '.join(facts)})" if facts else "")
        parser.add_argument(_flag(name), **kwargs)


def _label(schema: type) -> str:
    fields = schema.model_fields
    for name in ("kind", "role"):
        if name in fields:
            return str(fields[name].default)
    return schema.__name__


def _default(field) -> str:
    value = field.get_default(call_default_factory=True)
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def from_args(args: argparse.Namespace, schemas: dict, selector: Optional[str] = None) -> Schema:
    """The settings of a command line: its --config file, then the flags given; ``schemas`` maps the value of
    the ``selector`` key (kind, role) to its schema (one entry, key None, when there is no selector)."""
    values = read_yaml(args.config) if "config" in vars(args) else {}
    flags = {k: v for k, v in vars(args).items() if k in {f for s in schemas.values() for f in s.model_fields}}
    values.update(flags)
    choice = values.get(selector, next(iter(schemas))) if selector else None
    schema = schemas.get(choice)
    if schema is None:
        raise ValueError(f"{selector} must be one of {[k for k in schemas if k]}, got {choice!r}")
    for key in values:
        if key not in schema.model_fields:
            owner = next((c for c, s in schemas.items() if key in s.model_fields), None)
            if owner is not None:
                name, other = (_flag(key), f"--{selector} {owner}") if key in flags else (key, f"{selector} {owner}")
                raise ValueError(f"{name} is only for {other}")
    return settings(schema, **values)


def run(target: str, args: argparse.Namespace, schemas: dict, train: Callable, selector: Optional[str] = None) -> int:
    """``train(settings)`` for `rlir pretrain TARGET`; a bad setting or input is one line on stderr (exit 1)."""
    try:
        train(from_args(args, schemas, selector))
    except ValueError as error:  # ConfigError, bad arguments, a broken recording (RecordingError names the file)
        print(f"rlir pretrain {target}: error: {error}", file=sys.stderr)
        return 1
    return 0
