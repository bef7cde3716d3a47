"""Models from ``save_pretrained`` directories (config.json + safetensors), loaded strictly and in fp32.

diffusers' ``from_pretrained`` silently re-initialises the weights a directory lacks (one saved by an older version
of the model code, or by another class), which would make a reward model or a policy garbage; ``load_strict``
refuses instead. Every failure is a ConfigError naming the config key or command-line flag that pointed at the
directory. ``WORLD_MODEL_CLASSES`` is the one registry of world-model classes (by ``models.kind``); a directory's
config.json says in ``_class_name`` which class it holds.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch.nn as nn
from safetensors import safe_open

from rlir.schema import ConfigError

from .ar_world_model import ARWorldModel
from .dit_world_model import DiTWorldModel

WORLD_MODEL_CLASSES = {"ar": ARWorldModel, "diffusion": DiTWorldModel}


def saved_config(path, key: str) -> dict:
    """The config.json of the model directory ``path``."""
    config = Path(path) / "config.json"
    try:
        return json.loads(config.read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(key, f"{path}: not a saved model directory ({config}: {error})") from None


def load_strict(cls, path, key: str) -> nn.Module:
    """A ``cls`` from the directory ``path``, in fp32, with every weight of the current ``cls`` found there."""
    found = saved_config(path, key).get("_class_name")
    if found != cls.__name__:
        raise ConfigError(key, f"{Path(path) / 'config.json'} holds a {found!r}, not a {cls.__name__}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = cls.from_pretrained(path).float()
    except Exception as error:  # noqa: BLE001 - report which key pointed at the bad directory
        raise ConfigError(key, f"cannot load a {cls.__name__} from {path}: {error}") from error
    files = sorted(Path(path).glob("*.safetensors"))
    weights = [f for f in files if f.name.startswith("diffusion_pytorch_model")]
    if len(weights) == 1:
        with safe_open(str(weights[0]), framework="pt") as f:
            saved = set(f.keys())
        missing = sorted(set(model.state_dict()) - saved)
        if missing:
            raise ConfigError(key, f"{weights[0]} lacks {len(missing)} weights of the current {cls.__name__} "
                              f"(e.g. {missing[:3]}): saved by another version of the model code? retrain it")
    return model


def load_pretrained_world_model(path, key: str) -> nn.Module:
    """The world model saved in ``path``, of whichever class of ``WORLD_MODEL_CLASSES`` it holds, in eval mode."""
    found = saved_config(path, key).get("_class_name")
    classes = {cls.__name__: cls for cls in WORLD_MODEL_CLASSES.values()}
    if found not in classes:
        raise ConfigError(key, f"{Path(path) / 'config.json'}: _class_name {found!r} is not a world model "
                          f"({sorted(classes)})")
    return load_strict(classes[found], path, key).eval()
