"""Load a world model for evaluation from any of the places one lives.

- a ``save_pretrained`` directory (config.json + safetensors: the shipped checkpoints);
- a GRPO checkpoint directory (``.../checkpoints/step_00000100``): the policy weights on top of the world
  model its run started from (``models.world_model`` in the saved config);
- a GRPO run directory (``rlir train --out DIR``): its latest checkpoint.
The model class comes from config.json's ``_class_name``.
"""
from __future__ import annotations

import importlib
import json
import warnings
from pathlib import Path
from typing import Optional, Tuple

import torch.nn as nn
from safetensors.torch import load_file

# _class_name in config.json -> "module:Class"
WORLD_MODEL_CLASSES = {
    "ARWorldModel": "rlir.models.ar_world_model:ARWorldModel",
    "DiTWorldModel": "rlir.models.dit_world_model:DiTWorldModel",
}


def world_model_class(directory: Path):
    config = Path(directory) / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{directory}: no config.json (not a save_pretrained world model directory)")
    name = json.loads(config.read_text()).get("_class_name")
    if name not in WORLD_MODEL_CLASSES:
        raise ValueError(f"{config}: _class_name {name!r} is not a world model ({sorted(WORLD_MODEL_CLASSES)})")
    module, cls = WORLD_MODEL_CLASSES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def load_pretrained_world_model(directory) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return world_model_class(directory).from_pretrained(directory).float().eval()


def run_checkpoint(path) -> Optional[Path]:
    """The checkpoint directory ``path`` stands for (itself, or a run's latest), or None for a plain model."""
    from rlir.grpo.checkpoint import latest_checkpoint

    path = Path(path)
    if (path / "meta.json").is_file() and (path / "policy.safetensors").is_file():
        return path
    if (path / "checkpoints").is_dir():
        latest = latest_checkpoint(path / "checkpoints")
        if latest is None:
            raise FileNotFoundError(f"{path}: a GRPO run without a complete checkpoint")
        return latest
    return None


def load_world_model(path) -> Tuple[nn.Module, dict]:
    """-> (model in eval mode, info: {"source", "base", "step"}) from any of the places above."""
    checkpoint = run_checkpoint(path)
    if checkpoint is None:
        return load_pretrained_world_model(path), {"source": str(path), "base": str(path), "step": 0}
    meta = json.loads((checkpoint / "meta.json").read_text())
    base = (meta.get("config") or {}).get("models", {}).get("world_model")
    if not base:
        raise ValueError(f"{checkpoint}: its run config has no models.world_model (a random-model run cannot "
                         f"be evaluated as a pretrained world model)")
    model = load_pretrained_world_model(base)
    model.load_state_dict(load_file(str(checkpoint / "policy.safetensors")))
    return model.eval(), {"source": str(checkpoint), "base": base, "step": int(meta["step"])}


def run_base_world_model(path) -> Optional[str]:
    """The world model a GRPO run (or checkpoint) started from, or None if ``path`` is not one."""
    checkpoint = run_checkpoint(path)
    if checkpoint is None:
        return None
    return json.loads((checkpoint / "meta.json").read_text())["config"]["models"]["world_model"]
