"""A GRPO checkpoint's world model -> a ``save_pretrained`` directory (``rlir export``).

The model is rebuilt from the run's saved config (``models.world_model`` for a pretrained start, the seed for
``models.source: random``), then its weights come from the checkpoint: the DCP shards (``dcp/``, any number of
ranks, read in this one process) or, for a format-1 checkpoint, policy.safetensors.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from . import checkpoint as ckpt


class ExportError(ValueError):
    """Bad export input; the message names the path."""


def resolve_checkpoint(path) -> Path:
    """A checkpoint directory itself, or a run directory's latest checkpoint."""
    path = Path(path)
    if (path / "meta.json").is_file():
        return path
    latest = ckpt.latest_checkpoint(path / "checkpoints")
    if latest is None:
        raise ExportError(f"{path}: neither a checkpoint (no meta.json) nor a GRPO run with a checkpoint "
                          f"(nothing under {path / 'checkpoints'})")
    return latest


def build_world_model(cfg):
    """The world model a run started from (its weights are replaced by the checkpoint's)."""
    from .builders import _random_models, load_strict
    from .model_checks import WORLD_MODEL_CLASSES

    if cfg.models.source == "random":
        return _random_models(cfg)[0]
    return load_strict(WORLD_MODEL_CLASSES[cfg.models.kind], cfg.models.world_model, "models.world_model")


def checkpoint_world_model(checkpoint) -> tuple[torch.nn.Module, dict]:
    """(the world model with the checkpoint's weights, fp32 on the CPU, meta.json)."""
    from .config import config_from_dict
    from .distributed import ScoringModule

    checkpoint = Path(checkpoint)
    meta = json.loads((checkpoint / "meta.json").read_text())
    if "config" not in meta:
        raise ExportError(f"{checkpoint}/meta.json holds no run config")
    cfg = config_from_dict(meta["config"], check_paths=False)
    model = build_world_model(cfg).float()
    if ckpt.is_sharded(checkpoint):
        module = ScoringModule(model)  # the checkpoint's key names: model.<name>
        state = {"model": module.state_dict()}
        ckpt.load_sharded(checkpoint, state)
        module.load_state_dict(state["model"])
    else:
        policy_state, _, _ = ckpt.load_checkpoint(checkpoint)
        model.load_state_dict(policy_state)
    return model.eval(), meta


def export_world_model(run, out, dtype: str = "fp32") -> dict:
    checkpoint = resolve_checkpoint(run)
    model, meta = checkpoint_world_model(checkpoint)
    if dtype == "bf16":
        model = model.to(torch.bfloat16)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    return {"class": type(model).__name__, "checkpoint": str(checkpoint), "step": int(meta["step"])}
