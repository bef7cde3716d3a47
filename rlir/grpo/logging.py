"""Per-step metrics of a GRPO run to ``metrics.jsonl``, TensorBoard (``tb/``) and one stdout line.

Every jsonl line is ``{"step": k, "time": unix seconds, <metric>: float, ...}`` with metric names grouped by
"/" (``reward/mean``, ``loss/kl``, ``time/rollout``, ...); TensorBoard gets the same names as scalars.
On resume from step k, ``truncate_after(k)`` drops lines logged after the checkpoint by the interrupted
run, and TensorBoard purges its later events, so each step appears once.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Dict, Mapping, Optional


class MetricsLogger:
    def __init__(self, out_dir, *, jsonl: bool = True, tensorboard: bool = True, stdout: bool = True,
                 resume_step: Optional[int] = None):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.stdout = stdout
        self.jsonl_path = self.out_dir / "metrics.jsonl" if jsonl else None
        if self.jsonl_path is not None and resume_step is not None:
            truncate_after(self.jsonl_path, resume_step)
        self._jsonl = open(self.jsonl_path, "a") if self.jsonl_path is not None else None
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(str(self.out_dir / "tb"), purge_step=purge)

    def log(self, step: int, metrics: Mapping[str, float], line: Optional[str] = None) -> None:
        clean = {k: _to_float(v) for k, v in metrics.items()}
        if self._jsonl is not None:
            record = {"step": int(step), "time": time.time(), **clean}
            self._jsonl.write(json.dumps(record, allow_nan=True) + "\n")
            self._jsonl.flush()
        if self._tb is not None:
            for k, v in clean.items():
                if v is not None and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self.stdout and line is not None:
            print(line, file=sys.stdout, flush=True)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        if self._tb is not None:
            self._tb.add_text(tag, text, step)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _to_float(v) -> Optional[float]:
    if v is None:
        return None
    if hasattr(v, "item"):
        v = v.item()
    return float(v)


def truncate_after(path: Path, step: int) -> None:
    """Drop the jsonl lines whose step is > ``step`` (written after the checkpoint we resume from)."""
    if not path.is_file():
        return
    kept = []
    for raw in path.read_text().splitlines():
        try:
            if int(json.loads(raw).get("step", 0)) <= step:
                kept.append(raw)
        except (ValueError, AttributeError):
            continue  # a torn last line of a killed run
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    tmp.replace(path)


def read_metrics(path) -> list[Dict[str, float]]:
    """All records of a metrics.jsonl file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def format_line(step: int, steps: int, m: Mapping[str, float], phases: Mapping[str, float]) -> str:
    """One compact stdout line for a training step."""
    def g(key, fmt="{:.3f}"):
        v = m.get(key)
        return "nan" if v is None else fmt.format(v)

    total = sum(phases.values()) or 1.0
    phase_str = " ".join(f"{k} {100 * v / total:.0f}%" for k, v in phases.items())
    return (f"step {step}/{steps} | reward {g('reward/mean')}±{g('reward/std')} | loss {g('loss/loss', '{:.4f}')} "
            f"kl {g('loss/kl', '{:.2e}')} clip {g('loss/clip_frac')} ratio {g('loss/ratio_mean', '{:.4f}')} | "
            f"lr {g('optim/lr', '{:.2e}')} gnorm {g('optim/grad_norm')} | {g('time/step', '{:.2f}')}s "
            f"{g('perf/videos_per_s', '{:.1f}')} vid/s {g('perf/tokens_per_s', '{:.0f}')} tok/s | {phase_str}")
