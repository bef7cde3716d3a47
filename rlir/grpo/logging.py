"""Per-step metrics of a GRPO run to ``metrics.jsonl``, TensorBoard (``tb/``), Weights & Biases and one stdout line.

Every jsonl line is ``{"step": k, "time": unix seconds, <metric>: float, ...}`` with metric names grouped by
"/" (``reward/mean``, ``loss/kl``, ``time/rollout``, ...); TensorBoard and W&B get the same names as scalars.
On resume from step k, ``truncate_after(k)`` drops lines logged after the checkpoint by the interrupted
run, and TensorBoard purges its later events, so each step appears once.

W&B (``log.wandb: true``) runs offline unless ``WANDB_MODE`` says otherwise (``wandb sync`` uploads an offline run
later), into ``<run>/wandb`` unless ``WANDB_DIR`` is set, in project ``rlir`` unless ``WANDB_PROJECT`` is. Besides
the scalars it gets, at each held-out evaluation, the grid of the evaluation videos (``eval/video_grid``, and its
filmstrip ``eval/filmstrip``; files under ``<run>/media``), and at the end the run's curves (``curves``, the plot
``rlir eval`` draws). A resumed run continues the W&B run of the same id (kept in ``<run>/wandb_run_id``).
The trainer opens this logger on rank 0 only.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional

if TYPE_CHECKING:
    import torch

    from .config import GRPOConfig

WANDB_PROJECT = "rlir"
WANDB_RUN_ID_FILE = "wandb_run_id"
GRID_PROMPTS = 4  # prompts shown in the evaluation video grid


class MetricsLogger:
    def __init__(self, out_dir, *, jsonl: bool = True, tensorboard: bool = True, stdout: bool = True,
                 wandb: bool = False, run_config: Optional[Dict[str, Any]] = None,
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
        self._wandb = open_wandb_run(self.out_dir, run_config, resume_step) if wandb else None
        self._last_step = resume_step or 0

    @classmethod
    def for_run(cls, out_dir, cfg: "GRPOConfig", resume_step: Optional[int] = None) -> "MetricsLogger":
        """The logger a run of ``cfg`` writes with: its log.* options, and the config itself for W&B."""
        return cls(out_dir, jsonl=cfg.log.jsonl, tensorboard=cfg.log.tensorboard, stdout=cfg.log.stdout,
                   wandb=cfg.log.wandb, run_config=cfg.model_dump(mode="json"), resume_step=resume_step)

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
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in clean.items() if v is not None}, step=int(step))
        self._last_step = max(self._last_step, int(step))
        if self.stdout and line is not None:
            print(line, file=sys.stdout, flush=True)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        if self._tb is not None:
            self._tb.add_text(tag, text, step)

    def eval_videos(self, step: int, videos: torch.Tensor) -> None:
        """The evaluation videos (uint8 [n, F, 3, h, w], one per prompt) as a grid of the first prompts, to W&B."""
        if self._wandb is None:
            return
        import wandb

        from rlir.eval.media import write_video_grid

        media = self.out_dir / "media"
        media.mkdir(exist_ok=True)
        paths = write_video_grid(media, {"eval": videos.detach().cpu()}, count=GRID_PROMPTS,
                                 stem=f"eval_step{int(step):06d}")
        self._wandb.log({"eval/video_grid": wandb.Video(str(paths["mp4"])),
                         "eval/filmstrip": wandb.Image(str(paths["png"]))}, step=int(step))

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._log_curves()
            self._wandb.finish()
            self._wandb = None

    def _log_curves(self) -> None:
        """The run's curves as ``rlir eval`` plots them (training reward, held-out scores), once, at the end."""
        if self.jsonl_path is None or not self.jsonl_path.is_file():
            return
        import wandb

        from rlir.eval.media import plot_curves

        (self.out_dir / "media").mkdir(exist_ok=True)
        path = plot_curves(self.jsonl_path, self.out_dir / "media" / "curves.png")
        if path is not None:
            self._wandb.log({"curves": wandb.Image(str(path))}, step=self._last_step)


def open_wandb_run(out_dir: Path, run_config: Optional[Dict[str, Any]], resume_step: Optional[int]):
    """A W&B run for the run directory (see the module docstring for where it goes); a resume continues the
    run of the id saved there."""
    try:
        import wandb
    except ImportError as err:
        raise ImportError("log.wandb: true needs the wandb package: pip install wandb") from err
    id_file = out_dir / WANDB_RUN_ID_FILE
    run_id = id_file.read_text().strip() if resume_step is not None and id_file.is_file() else None
    run = wandb.init(
        project=os.environ.get("WANDB_PROJECT", WANDB_PROJECT), name=out_dir.name, config=run_config,
        # Read here, not left to wandb: it keeps the settings of its first run in a process.
        mode=os.environ.get("WANDB_MODE", "offline"), dir=os.environ.get("WANDB_DIR") or str(out_dir),
        id=run_id, resume="allow" if run_id else None,
        settings=wandb.Settings(console="off"),  # the trainer's stdout stays the trainer's
    )
    id_file.write_text(run.id)
    return run


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
