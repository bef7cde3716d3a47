"""The loop every `rlir pretrain` target trains through; what differs between the tokenizer, the IDMs and the two
world models is a `Target`.

``pretrain`` builds OUT in a temporary sibling directory (renamed into place only when complete), takes ``steps``
optimiser steps, appends to metrics.jsonl every ``log_every`` steps and at the last one, validates on held-out data
every ``eval_every`` steps before the last, saves the target's weights rounded to ``dtype`` and hands them back,
reloaded in fp32, to the target's final evaluation, whose result is metrics.json.
"""
from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from tqdm.auto import tqdm

from rlir.pretrain.common import SAVE_DTYPES, append_jsonl, atomic_directory, learning_rate
from rlir.pretrain.config import Pretrain


@dataclass
class Trained:
    seconds: float  # the training steps' wall-clock time
    final_loss: float
    finished_at: float  # time.perf_counter() after the last step


class Target(ABC):
    """What one `rlir pretrain` target supplies to the loop."""

    cfg: Pretrain  # the target's settings
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    grad_clip: Optional[float] = None  # gradient-norm limit; metrics.jsonl then logs grad_norm
    throughput: Optional[tuple[str, int]] = None  # (metrics.jsonl key, items per step) of a per-second rate
    progress_fields: dict[str, tuple[str, str]] = {"loss": ("loss", ".3f")}  # metrics key -> (bar label, format)

    def learning_rate(self, step: int) -> float:
        """Warm-up, then cosine decay from cfg.lr over cfg.steps (rlir.pretrain.common.learning_rate)."""
        return learning_rate(step, self.cfg.steps, self.cfg.lr)

    @abstractmethod
    def loss(self) -> tuple[torch.Tensor, Callable[[], dict]]:
        """One training batch's loss, and what else metrics.jsonl records of that batch (asked on logged steps)."""

    def after_step(self, step: int) -> None:
        """Anything to do once the optimiser has stepped."""

    def validate(self) -> dict:
        """Held-out metrics for metrics.jsonl (the loop has put the model in eval mode); asked every
        eval_every steps, which the tokenizer's target sets to 0."""
        raise NotImplementedError(f"{type(self).__name__} has no held-out validation")

    def weights(self) -> torch.nn.Module:
        """The model to save (a diffusers ModelMixin)."""
        return self.model

    @abstractmethod
    def report(self, staging: Path, saved: torch.nn.Module, trained: Trained) -> dict:
        """Evaluate ``saved`` (the fp32 reload of what was saved), write any other files into ``staging`` and
        return the content of metrics.json."""


def pretrain(target: Target, out: Path, *, overwrite: bool, steps: int, log_every: int, eval_every: int,
             dtype: str, description: str, progress: bool) -> dict:
    """Train ``target`` and write OUT (see the module docstring); returns the content of metrics.json."""
    model, optimizer = target.model, target.optimizer
    with atomic_directory(out, overwrite) as staging:
        log, shown = staging / "metrics.jsonl", {}
        started = time.perf_counter()
        with tqdm(total=steps, desc=description, unit="step", disable=not progress) as bar:
            for step in range(1, steps + 1):
                model.train()
                for group in optimizer.param_groups:
                    group["lr"] = target.learning_rate(step)
                loss, details = target.loss()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if target.grad_clip is not None:
                    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), target.grad_clip)
                optimizer.step()
                target.after_step(step)
                bar.update()
                if step % log_every == 0 or step == steps:
                    seconds = time.perf_counter() - started
                    record = {"step": step, "loss": loss.item(), **details()}
                    if target.grad_clip is not None:
                        record["grad_norm"] = grad_norm.item()
                    record.update(lr=optimizer.param_groups[0]["lr"], seconds=seconds)
                    if target.throughput is not None:
                        key, per_step = target.throughput
                        record[key] = step * per_step / seconds
                    _log(record, log, bar, shown, target.progress_fields)
                if eval_every and step % eval_every == 0 and step < steps:
                    model.eval()
                    _log({"step": step, **target.validate()}, log, bar, shown, target.progress_fields)
        finished_at = time.perf_counter()
        trained = Trained(finished_at - started, loss.item(), finished_at)

        weights = target.weights()
        getattr(weights, SAVE_DTYPES[dtype])().save_pretrained(staging)
        saved = type(weights).from_pretrained(staging, torch_dtype=torch.float32).eval()
        metrics = target.report(staging, saved, trained)
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n", encoding="utf-8")
    return metrics


def _log(record: dict, path: Path, bar: tqdm, shown: dict, fields: dict) -> None:
    """Append ``record`` to metrics.jsonl and add its ``fields`` to what the progress bar ``shown``."""
    append_jsonl(path, record)
    shown.update({label: format(record[key], spec) for key, (label, spec) in fields.items() if key in record})
    bar.set_postfix(shown)


def checkpoint_summary(saved: torch.nn.Module, staging: Path, dtype: str) -> dict:
    """The "model" entry of metrics.json: size, saved dtype and config of the weights saved into ``staging``."""
    return {"parameters": sum(p.numel() for p in saved.parameters()),
            "checkpoint_bytes": sum(p.stat().st_size for p in staging.glob("diffusion_pytorch_model*")),
            "dtype": dtype,
            "config": {k: v for k, v in saved.config.items() if not k.startswith("_")}}
