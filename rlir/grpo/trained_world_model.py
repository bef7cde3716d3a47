"""The world model a GRPO run trained, wherever it lives: loaded for ``rlir eval``, exported by ``rlir export``.

A GRPO run directory (``rlir train --out DIR``) stands for its latest checkpoint; a checkpoint directory
(``.../checkpoints/step_00000100``) holds the weights. The model is rebuilt as its run started it (the saved
``models.world_model``, or from ``seed`` for ``models.source: random``), then takes the checkpoint's weights: its
policy.safetensors (the whole model, gathered by rank 0) or, without one (``parallel.consolidated_weights:
false``), the DCP shards (``dcp/``, from any number of ranks). Anything else is a ``save_pretrained`` directory
(rlir.models.loading).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Tuple

import torch
import torch.nn as nn

from rlir.models.loading import load_pretrained_world_model

from . import checkpoint as ckpt


class CheckpointError(ValueError):
    """Not a checkpoint or run this can read; the message names the path."""


def find_checkpoint(path) -> Optional[Path]:
    """The checkpoint directory ``path`` stands for (itself, or a run's latest), or None for anything else."""
    path = Path(path)
    if (path / "meta.json").is_file():
        return path
    if (path / "checkpoints").is_dir():
        latest = ckpt.latest_checkpoint(path / "checkpoints")
        if latest is None:
            raise FileNotFoundError(f"{path}: a GRPO run without a complete checkpoint")
        return latest
    return None


def checkpoint_world_model(checkpoint) -> Tuple[nn.Module, dict]:
    """(the world model with the checkpoint's weights, fp32 on the CPU, in eval mode; meta.json)."""
    from .builders import initial_world_model
    from .config import config_from_dict
    from .distributed import ScoringModule

    checkpoint = Path(checkpoint)
    meta = json.loads((checkpoint / "meta.json").read_text())
    if "config" not in meta:
        raise CheckpointError(f"{checkpoint}/meta.json holds no run config")
    models = meta["config"].get("models", {})
    if models.get("source") == "random":
        model = initial_world_model(config_from_dict(meta["config"], check_paths=False))
    else:
        model = load_pretrained_world_model(models.get("world_model"), "models.world_model")
    model = model.float()
    policy_state, _, _ = ckpt.load_checkpoint(checkpoint)
    if policy_state is not None:
        model.load_state_dict(policy_state)
    else:  # parallel.consolidated_weights: false left the DCP shards alone
        module = ScoringModule(model)  # the checkpoint's key names: model.<name>
        state = {"model": module.state_dict()}
        ckpt.load_sharded(checkpoint, state)
        module.load_state_dict(state["model"])
    return model.eval(), meta


def load_world_model(path, key: str) -> Tuple[nn.Module, dict]:
    """(model in eval mode, {"source", "base", "step"}) from a run, a checkpoint or a save_pretrained directory;
    ``key`` names the argument that gave ``path``."""
    checkpoint = find_checkpoint(path)
    if checkpoint is None:
        return load_pretrained_world_model(path, key), {"source": str(path), "base": str(path), "step": 0}
    model, meta = checkpoint_world_model(checkpoint)
    base = meta["config"].get("models", {}).get("world_model")
    return model, {"source": str(checkpoint), "base": base, "step": int(meta["step"])}


def run_base_world_model(path) -> Optional[str]:
    """The world model a GRPO run (or checkpoint) started from, or None if ``path`` is not one."""
    checkpoint = find_checkpoint(path)
    if checkpoint is None:
        return None
    return json.loads((checkpoint / "meta.json").read_text())["config"]["models"]["world_model"]


def export_world_model(run, out, dtype: str = "fp32") -> dict:
    checkpoint = find_checkpoint(run)
    if checkpoint is None:
        raise CheckpointError(f"{run}: neither a checkpoint (no meta.json) nor a GRPO run (no checkpoints/)")
    model, meta = checkpoint_world_model(checkpoint)
    if dtype == "bf16":
        model = model.to(torch.bfloat16)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    return {"class": type(model).__name__, "checkpoint": str(checkpoint), "step": int(meta["step"])}
