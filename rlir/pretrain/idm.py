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
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from rlir.data.clips import ClipDataset, split_episodes
from rlir.data.recording import Recording
from rlir.eval.verify import player_moved
from rlir.metrics.classification import ClassificationReport, classification_report, format_report
from rlir.metrics.plots import plot_confusion
from rlir.models.idm import InverseDynamicsModel
from rlir.pretrain.common import resolve_frame_size
from rlir.pretrain.config import EvalIDMPretrain, IDMPretrain, add_flags, set_threads, settings
from rlir.pretrain.config import run as run_target
from rlir.pretrain.loop import Target, Trained, pretrain, checkpoint_summary

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
    metrics = pretrain(IDMTraining(s), Path(out), overwrite=True,  # an existing --out is replaced only when complete
                       steps=s.steps, log_every=s.log_every, eval_every=s.eval_every, dtype=s.dtype,
                       description=f"pretrain idm ({role})", progress=not s.quiet)
    if not s.quiet:
        print(format_report(ClassificationReport.from_json(metrics["heldout"])))
        size = metrics["model"]
        print(f"{Path(out)}: {size['parameters']:,} parameters, {size['checkpoint_bytes'] / 1e6:.2f} MB ({s.dtype}), "
              f"trained in {metrics['training']['seconds']:.0f} s")
    return metrics


class IDMTraining(Target):
    """The IDM, its optimiser, the recording's train clips (some made counterfeit) and its held-out episodes."""

    progress_fields = {"loss": ("loss", ".3f"), "frame_accuracy": ("acc", ".3f")}

    def __init__(self, s: IDMPretrain):
        self.cfg = s
        self.recording = recording = Recording(s.data)
        self.clips = ClipDataset(recording, "train", context_frames=1, clip_frames=s.window - 1, stride=1,
                                 heldout_fraction=s.heldout_fraction)
        self.heldout = split_episodes(recording.episode_ids, s.heldout_fraction)[1]
        space = recording.action_space
        torch.manual_seed(s.seed)
        self.model = InverseDynamicsModel(head_sizes=space.head_sizes, window=s.window, width=s.width, depth=s.depth,
                                          heads=s.heads, channels=s.channels,
                                          frame_size=list(resolve_frame_size(s.frame_size, recording)),
                                          ignore_box=s.avatar_box if s.avatar == "ignored" else None)
        moved = (player_moved(recording, self.clips.episode_ids)
                 if s.world_only or (s.counterfeits and s.counterfeit_labels == "as_shown") else None)
        self.counterfeit = _counterfeiter(space, s.avatar_box, s.counterfeits, s.world_only, moved,
                                          self.model.frame_size)
        self.class_weights = _class_weights(recording, self.clips.episode_ids, s.class_weights)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
        self.generator = torch.Generator().manual_seed(s.seed)

    def learning_rate(self, step: int) -> float:
        """Linear warm-up over steps // 20 steps, then cosine decay to 0."""
        warmup, steps = max(1, self.cfg.steps // 20), self.cfg.steps
        return self.cfg.lr * (min(1.0, step / warmup) * 0.5 * (1 + math.cos(math.pi * (step - 1) / steps)))

    def loss(self):
        frames, actions = self.counterfeit(*_batch(self.clips, self.cfg.batch, self.generator), self.generator)
        logits = self.model(frames)
        loss = sum(F.cross_entropy(lg.flatten(0, 1), actions[..., h].flatten(), weight=self.class_weights[h])
                   for h, lg in enumerate(logits)) / len(logits)
        return loss, lambda: {"frame_accuracy": _frame_accuracy(logits, actions)}

    def validate(self) -> dict:
        return {"heldout_frame_accuracy": evaluate(self.model, self.recording, self.heldout).frame_accuracy}

    def report(self, staging: Path, saved: InverseDynamicsModel, trained: Trained) -> dict:
        s, recording = self.cfg, self.recording
        report = evaluate(saved, recording, self.heldout)
        plot_confusion(report, staging / "confusion.png", f"{s.role} IDM, held-out episodes of {recording.root.name}")
        return {
            "role": s.role,
            "model": checkpoint_summary(saved, staging, s.dtype),
            "training": {
                "data": str(recording.root), "steps": s.steps, "batch": s.batch, "lr": s.lr,
                "weight_decay": s.weight_decay, "seed": s.seed, "class_weights": s.class_weights,
                "avatar_box": s.avatar_box, "avatar": s.avatar, "counterfeits": s.counterfeits,
                "counterfeit_labels": s.counterfeit_labels, "world_only": s.world_only, "seconds": trained.seconds,
                "transitions_seen": s.steps * s.batch * (s.window - 1), "train_episodes": len(self.clips.episode_ids),
                "torch_threads": torch.get_num_threads(),
            },
            "heldout": {"episodes": self.heldout, **report.to_json()},
        }


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

