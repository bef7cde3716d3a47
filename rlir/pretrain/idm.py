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
import json
import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rlir.data.clips import ClipDataset, split_episodes
from rlir.data.recording import Recording
from rlir.eval.verify import player_moved
from rlir.metrics.classification import ClassificationReport, classification_report, format_report
from rlir.metrics.plots import plot_confusion
from rlir.models.idm import InverseDynamicsModel
from rlir.pretrain.common import SAVE_DTYPES, atomic_directory, resolve_frame_size
from rlir.pretrain.config import EvalIDMPretrain, IDMPretrain, add_flags, set_threads, settings
from rlir.pretrain.config import run as run_target

# The evaluation IDM differs from the reward IDM in seed and width (its schema's defaults), so the two do not
# share the same blind spots; everything else is shared.
ROLES = {"reward": IDMPretrain, "eval": EvalIDMPretrain}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, list(ROLES.values()), __doc__.split("\n\n")[0], selector="role")
    parser.add_argument("--eval", dest="role", action="store_const", const="eval", default=argparse.SUPPRESS,
                        help="train the held-out evaluation IDM (--role eval: seed 1, width 96) instead of the "
                        "reward IDM (seed 0, width 128)")


def run(args: argparse.Namespace) -> int:
    return run_target("idm", args, ROLES, lambda cfg: train(**cfg.model_dump()), selector="role")


def train(data: str | Path, out: str | Path, **options) -> dict:
    """Train, evaluate on the held-out episodes and write ``out`` (see the module docstring); ``options``: the
    settings of ``IDMPretrain`` (role "reward") or ``EvalIDMPretrain`` (role "eval", whose defaults differ).
    Returns the content of metrics.json."""
    role = options.get("role", "reward")
    if role not in ROLES:
        raise ValueError(f"role must be one of {list(ROLES)}, got {role!r}")
    s = settings(ROLES[role], data=data, out=out, **options)
    set_threads(s.threads)
    steps, batch, lr, window, seed, dtype, quiet = s.steps, s.batch, s.lr, s.window, s.seed, s.dtype, s.quiet
    out = Path(out)
    recording = Recording(data)
    clips = ClipDataset(recording, "train", context_frames=1, clip_frames=window - 1, stride=1,
                        heldout_fraction=s.heldout_fraction)
    heldout = split_episodes(recording.episode_ids, s.heldout_fraction)[1]
    space = recording.action_space

    torch.manual_seed(seed)
    model = InverseDynamicsModel(head_sizes=space.head_sizes, window=window, width=s.width, depth=s.depth,
                                 heads=s.heads, channels=s.channels,
                                 frame_size=list(resolve_frame_size(s.frame_size, recording)),
                                 ignore_box=s.avatar_box if s.avatar == "ignored" else None)
    moved = (player_moved(recording, clips.episode_ids)
             if s.world_only or (s.counterfeits and s.counterfeit_labels == "as_shown") else None)
    counterfeit = _counterfeiter(space, s.avatar_box, s.counterfeits, s.world_only, moved, model.frame_size)
    weights = _class_weights(recording, clips.episode_ids, s.class_weights)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=s.weight_decay)
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
                frames, actions = counterfeit(*_batch(clips, batch, generator), generator)
                logits = model(frames)
                loss = sum(F.cross_entropy(lg.flatten(0, 1), actions[..., h].flatten(), weight=weights[h])
                           for h, lg in enumerate(logits)) / len(logits)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                bar.update()
                if step % s.log_every == 0 or step == steps:
                    accuracy = _frame_accuracy(logits, actions)
                    bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{accuracy:.3f}")
                    _log(log, {"step": step, "loss": loss.item(), "frame_accuracy": accuracy,
                               "lr": schedule.get_last_lr()[0], "seconds": time.perf_counter() - start})
                if s.eval_every and step % s.eval_every == 0 and step < steps:
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
                "data": str(recording.root), "steps": steps, "batch": batch, "lr": lr, "weight_decay": s.weight_decay,
                "seed": seed, "class_weights": s.class_weights, "avatar_box": s.avatar_box, "avatar": s.avatar,
                "counterfeits": s.counterfeits, "counterfeit_labels": s.counterfeit_labels,
                "world_only": s.world_only, "seconds": seconds,
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


def _batch(clips: ClipDataset, size: int, generator: torch.Generator):
    """-> frames [B, T+1, 3, H, W], actions [B, T, heads] and each clip's (episode, start)."""
    items = [clips[i] for i in torch.randint(len(clips), (size,), generator=generator).tolist()]
    frames = torch.stack([torch.cat([item["context"], item["target"]]) for item in items])
    return frames, torch.stack([item["actions"] for item in items]), [(item["episode"], item["start"]) for item in items]


def _counterfeiter(space, box, counterfeits: float, world_only: float, moved, frame_size):
    """(frames, actions, windows, generator) -> the batch with a share ``counterfeits`` of its clips replaced by
    avatar-only counterfeits and a share ``world_only`` by world-only clips (``rlir.eval.idm_audit``). Without
    ``moved`` (no replay) every counterfeit transition is labelled noop. With ``moved`` (episode -> bool per
    transition) each is labelled with what it shows: a counterfeit's transition in which the player moved, and a
    world-only clip's move in which the player did not, become noop; the others keep their action."""
    if not counterfeits and not world_only:
        return lambda frames, actions, windows, generator: (frames, actions)
    from rlir.envs.crafter_verifier import MOVE_ACTIONS
    from rlir.eval.idm_audit import avatar_only, world_only as frozen_avatar

    missing = [head.name for head in space.heads if "noop" not in head.classes]
    if missing:
        raise ValueError(f"counterfeits needs a 'noop' class in every action head to label them; none in {missing}")
    noop = torch.tensor([head.classes.index("noop") for head in space.heads])
    move = torch.tensor([c in MOVE_ACTIONS for c in space.heads[0].classes])

    def counterfeit(frames, actions, windows, generator):
        if tuple(frames.shape[-2:]) != tuple(frame_size):
            raise ValueError(f"counterfeits: avatar_box is in px of frame_size {list(frame_size)}, but the "
                             f"recording loads at {list(frames.shape[-2:])}")
        draw = torch.rand(len(frames), generator=generator)
        fakes, worlds = draw < counterfeits, (draw >= counterfeits) & (draw < counterfeits + world_only)
        if not (fakes.any() or worlds.any()):
            return frames, actions
        frames, actions = frames.clone(), actions.clone()
        if moved is None:
            relabel = fakes[:, None].expand(actions.shape[:2])
        else:
            steps = actions.shape[1]
            did_move = torch.stack([moved[e][start:start + steps] for e, start in windows])
            relabel = (fakes[:, None] & did_move) | (worlds[:, None] & move[actions[..., 0]] & ~did_move)
        frames[fakes] = avatar_only(frames[fakes], box)
        frames[worlds] = frozen_avatar(frames[worlds], box)
        actions[relabel] = noop
        return frames, actions

    return counterfeit


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
