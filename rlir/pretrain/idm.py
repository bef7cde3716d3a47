"""`rlir pretrain idm`: train an inverse dynamics model on a recording and evaluate it on held-out episodes.

Two IDMs come from this command: the reward IDM (default) and, with --eval, the held-out evaluation IDM
(another seed and width) that measures action following without being the thing GRPO optimised.
Train and held-out splits are by episode (``rlir.data.split_episodes``). The output directory holds
config.json + diffusion_pytorch_model.safetensors (load with ``InverseDynamicsModel.from_pretrained``),
metrics.jsonl (training curve), metrics.json (held-out per-class precision/recall/F1 and confusion,
model size, training settings) and confusion.png. It is written to a temporary directory next to
--out and renamed into place at the end, so an interrupted run never leaves a half-written checkpoint.
"""
from __future__ import annotations

import argparse
import inspect
import json
import math
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rlir.data.clips import ClipDataset, split_episodes
from rlir.data.recording import Recording
from rlir.metrics.classification import ClassificationReport, classification_report, format_report
from rlir.metrics.plots import plot_confusion
from rlir.models.idm import InverseDynamicsModel
from rlir.pretrain.common import (SAVE_DTYPES, add_frame_size_argument, atomic_directory, check_int,
                                  resolve_frame_size)

# The evaluation IDM differs from the reward IDM in seed and width, so the two do not share the same
# blind spots; everything else is shared.
ROLE_DEFAULTS = {"reward": {"seed": 0, "width": 128}, "eval": {"seed": 1, "width": 96}}
# Saved-weight dtypes -> the cast. Not .to(dtype): diffusers' ModelMixin.to warns on every dtype cast.
CLASS_WEIGHTS = ("none", "inverse-sqrt")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0]
    parser.add_argument("--data", required=True, help="recording directory (holds manifest.json)")
    parser.add_argument("--out", required=True, help="output directory (replaced if it exists)")
    parser.add_argument("--eval", action="store_true",
                        help="train the held-out evaluation IDM (defaults: seed %d, width %d) instead of the reward "
                        "IDM (seed %d, width %d)" % (ROLE_DEFAULTS["eval"]["seed"], ROLE_DEFAULTS["eval"]["width"],
                                                    ROLE_DEFAULTS["reward"]["seed"], ROLE_DEFAULTS["reward"]["width"]))
    parser.add_argument("--steps", type=int, default=250, help="optimizer steps (default: 250)")
    parser.add_argument("--batch", type=int, default=8, help="clips per step (default: 8)")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate (default: 2e-3)")
    parser.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (default: 0.01)")
    parser.add_argument("--window", type=int, default=16, help="frames per training clip and per transformer "
                        "window (default: 16)")
    parser.add_argument("--width", type=int, default=None, help="embedding width (default: by role, see --eval)")
    parser.add_argument("--depth", type=int, default=2, help="transformer blocks (default: 2)")
    parser.add_argument("--heads", type=int, default=4, help="attention heads (default: 4)")
    parser.add_argument("--channels", type=int, nargs="+", default=[16, 32, 32],
                        help="CNN channels, one stride-2 conv each (default: 16 32 32)")
    add_frame_size_argument(parser)
    parser.add_argument("--seed", type=int, default=None, help="seed of weights and batches (default: by role)")
    parser.add_argument("--heldout-fraction", type=float, default=0.1,
                        help="fraction of episodes held out for evaluation (default: 0.1)")
    parser.add_argument("--class-weights", choices=CLASS_WEIGHTS, default="none",
                        help="cross-entropy class weights: none, or inverse square root of the training frequency")
    parser.add_argument("--dtype", choices=sorted(SAVE_DTYPES), default="fp32", help="dtype of the saved weights")
    parser.add_argument("--eval-every", type=int, default=100,
                        help="held-out evaluation every N steps into metrics.jsonl; 0: only at the end (default: 100)")
    parser.add_argument("--log-every", type=int, default=10, help="training metrics every N steps (default: 10)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no table")


def run(args: argparse.Namespace) -> int:
    role = "eval" if args.eval else "reward"
    options = {k: v for k, v in vars(args).items() if k in inspect.signature(train).parameters}
    for key in ("seed", "width"):
        if options[key] is None:
            options[key] = ROLE_DEFAULTS[role][key]
    try:
        train(role=role, **options)
    except ValueError as error:  # bad arguments or a bad recording
        print(f"rlir pretrain idm: error: {error}", file=sys.stderr)
        return 1
    return 0


def train(data: str | Path, out: str | Path, role: str = "reward", steps: int = 250, batch: int = 8,
          lr: float = 2e-3, weight_decay: float = 0.01, window: int = 16, width: int = 128, depth: int = 2,
          heads: int = 4, channels: Sequence[int] = (16, 32, 32), seed: int = 0, heldout_fraction: float = 0.1,
          class_weights: str = "none", dtype: str = "fp32", eval_every: int = 100, log_every: int = 10,
          quiet: bool = False, frame_size=None) -> dict:
    """Train, evaluate on the held-out episodes and write --out (see the module docstring).
    Returns the content of metrics.json."""
    if role not in ROLE_DEFAULTS:
        raise ValueError(f"role must be one of {sorted(ROLE_DEFAULTS)}, got {role!r}")
    for name, value, minimum in (("steps", steps, 1), ("batch", batch, 1), ("eval_every", eval_every, 0),
                                 ("log_every", log_every, 1)):
        check_int(name, value, minimum)
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be a number > 0, got {lr!r}")
    if not (isinstance(weight_decay, (int, float)) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
    if class_weights not in CLASS_WEIGHTS:
        raise ValueError(f"class_weights must be one of {list(CLASS_WEIGHTS)}, got {class_weights!r}")
    if dtype not in SAVE_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(SAVE_DTYPES)}, got {dtype!r}")
    if not 0 < heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must be in (0, 1): the IDM is evaluated on held-out episodes, "
                         f"got {heldout_fraction!r}")
    out = Path(out)
    recording = Recording(data)
    check_int("window", window, 2)
    clips = ClipDataset(recording, "train", context_frames=1, clip_frames=window - 1, stride=1,
                        heldout_fraction=heldout_fraction)
    heldout = split_episodes(recording.episode_ids, heldout_fraction)[1]
    space = recording.action_space

    torch.manual_seed(seed)
    model = InverseDynamicsModel(head_sizes=space.head_sizes, frame_size=list(resolve_frame_size(frame_size, recording)),
                                 window=window,
                                 width=width, depth=depth, heads=heads, channels=list(channels))
    weights = _class_weights(recording, clips.episode_ids, class_weights)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    generator = torch.Generator().manual_seed(seed)

    with atomic_directory(out, overwrite=True) as tmp:  # an existing --out is replaced only when complete
        start = time.perf_counter()
        with open(tmp / "metrics.jsonl", "w") as log, \
                tqdm(total=steps, desc=f"pretrain idm ({role})", unit="step", disable=quiet) as bar:
            for step in range(1, steps + 1):
                model.train()
                frames, actions = _batch(clips, batch, generator)
                logits = model(frames)
                loss = sum(F.cross_entropy(lg.flatten(0, 1), actions[..., h].flatten(), weight=weights[h])
                           for h, lg in enumerate(logits)) / len(logits)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                bar.update()
                if step % log_every == 0 or step == steps:
                    accuracy = _frame_accuracy(logits, actions)
                    bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{accuracy:.3f}")
                    _log(log, {"step": step, "loss": loss.item(), "frame_accuracy": accuracy,
                               "lr": schedule.get_last_lr()[0], "seconds": time.perf_counter() - start})
                if eval_every and step % eval_every == 0 and step < steps:
                    report = evaluate(model, recording, heldout)
                    _log(log, {"step": step, "heldout_frame_accuracy": report.frame_accuracy})
        seconds = time.perf_counter() - start

        # Evaluate what is saved: the weights rounded to --dtype (computing in fp32).
        getattr(model, SAVE_DTYPES[dtype])().save_pretrained(tmp)
        model.float()
        report = evaluate(model, recording, heldout)
        metrics = {
            "role": role,
            "model": {
                "parameters": sum(p.numel() for p in model.parameters()),
                "checkpoint_bytes": sum(f.stat().st_size for f in tmp.glob("*.safetensors")),
                "dtype": dtype,
                "config": {k: v for k, v in model.config.items() if not k.startswith("_")},
            },
            "training": {
                "data": str(recording.root), "steps": steps, "batch": batch, "lr": lr, "weight_decay": weight_decay,
                "seed": seed, "class_weights": class_weights, "seconds": seconds,
                "transitions_seen": steps * batch * (window - 1), "train_episodes": len(clips.episode_ids),
                "torch_threads": torch.get_num_threads(),
            },
            "heldout": {"episodes": heldout, **report.to_json()},
        }
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1))
        plot_confusion(report, tmp / "confusion.png", f"{role} IDM, held-out episodes of {recording.root.name}")
    if not quiet:
        print(format_report(report))
        size = metrics["model"]
        print(f"{out}: {size['parameters']:,} parameters, {size['checkpoint_bytes'] / 1e6:.2f} MB ({dtype}), "
              f"trained in {seconds:.0f} s")
    return metrics


@torch.no_grad()
def evaluate(model: InverseDynamicsModel, recording: Recording, episode_ids: Sequence[str]) -> ClassificationReport:
    """Predict every transition of the given episodes (each read whole) and score the predictions."""
    model.eval()
    targets, predictions = [], []
    for episode in episode_ids:
        frames, actions = recording.load_episode(episode)
        video = torch.from_numpy(frames.copy()).permute(0, 3, 1, 2)[None]
        predictions.append(model.predict(video)[0].numpy())
        targets.append(actions)
    return classification_report(np.concatenate(targets), np.concatenate(predictions), recording.action_space)


def _batch(clips: ClipDataset, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    items = [clips[i] for i in torch.randint(len(clips), (size,), generator=generator).tolist()]
    frames = torch.stack([torch.cat([item["context"], item["target"]]) for item in items])
    return frames, torch.stack([item["actions"] for item in items])


def _class_weights(recording: Recording, episode_ids: Sequence[str], kind: str) -> list[torch.Tensor | None]:
    """Per-head weights ~ 1/sqrt(frequency) (unseen classes count as seen once), scaled to weigh the
    training data 1 on average; or None per head."""
    if kind == "none":
        return [None] * recording.action_space.num_heads
    actions = np.concatenate([recording.load_episode(e)[1] for e in episode_ids])
    weights = []
    for h, size in enumerate(recording.action_space.head_sizes):
        counts = np.bincount(actions[:, h], minlength=size).astype(np.float64)
        w = 1 / np.sqrt(np.maximum(counts, 1))
        weights.append(torch.tensor(w * counts.sum() / (w * counts).sum(), dtype=torch.float32))
    return weights


def _frame_accuracy(logits: list[torch.Tensor], actions: torch.Tensor) -> float:
    predicted = torch.stack([lg.argmax(-1) for lg in logits], dim=-1)
    return (predicted == actions).all(-1).float().mean().item()


def _log(log, record: dict) -> None:
    log.write(json.dumps(record) + "\n")
    log.flush()
