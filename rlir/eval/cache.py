"""A world model's evaluation, cached: the same weights, scoring models, recording and settings give the same
metrics and videos, so the base model of a quickstart is evaluated once and every later run reuses it.

The key is the SHA-256 of the files that decide the result (the model's and the scoring models' config.json and
weights, the recording's manifest) and of the settings. Entries live in the recording's folder, under
``.eval_cache/<key>/``: metrics.json and the videos (safetensors), written atomically.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file

from rlir.metrics.classification import ClassificationReport

REPORT = "eval_idm/report"


def cacheable(model_path: Path) -> bool:
    """A save_pretrained directory (a GRPO run's latest checkpoint changes, so runs are not cached)."""
    model_path = Path(model_path)
    return (model_path / "config.json").is_file() and any(model_path.glob("diffusion_pytorch_model*.safetensors"))


def _digest(paths, settings: dict) -> str:
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for directory in paths:
        directory = Path(directory)
        files = [directory] if directory.is_file() else sorted(directory.glob("config.json")) + sorted(
            directory.glob("diffusion_pytorch_model*.safetensors"))  # the weights, not e.g. a codes cache
        for file in files:
            h.update(file.name.encode())
            h.update(hashlib.sha256(file.read_bytes()).digest())
    return h.hexdigest()[:24]


def entry(recording_root: Path, model_path: Path, scoring_paths, settings: dict) -> Path:
    """The cache folder of one evaluation (it may not exist yet)."""
    key = _digest([model_path, *scoring_paths, Path(recording_root) / "manifest.json"], settings)
    return Path(recording_root) / ".eval_cache" / key


def load(folder: Path) -> Optional[tuple[dict, torch.Tensor]]:
    """(metrics, videos) of a cached evaluation, or None."""
    if not (folder / "metrics.json").is_file() or not (folder / "videos.safetensors").is_file():
        return None
    metrics = json.loads((folder / "metrics.json").read_text())
    if REPORT in metrics:
        metrics[REPORT] = ClassificationReport.from_json(metrics[REPORT])
    return metrics, load_file(folder / "videos.safetensors")["videos"]


def save(folder: Path, metrics: dict, videos: torch.Tensor) -> None:
    """Write an evaluation into ``folder`` (built beside it, then renamed into place)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(folder.name + ".tmp")
    staging.mkdir(exist_ok=True)
    data = {k: (v.to_json() if isinstance(v, ClassificationReport) else v) for k, v in metrics.items()}
    (staging / "metrics.json").write_text(json.dumps(data))
    save_file({"videos": videos.contiguous()}, staging / "videos.safetensors")
    if folder.exists():  # another process cached the same evaluation meanwhile
        shutil.rmtree(staging)
    else:
        staging.rename(folder)
