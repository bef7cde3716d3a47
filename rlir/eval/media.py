"""Pictures of an evaluation: side-by-side video grids (PNG filmstrip, MP4, GIF) and training curves."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from rlir.data.video import VideoWriter

SCALE = 2  # 64x64 frames are shown at 128x128
GAP = 4
LABEL_WIDTH = 64
HEADER = 14
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)


def _upscale(frame: torch.Tensor) -> np.ndarray:
    """uint8 [3, h, w] -> [h*SCALE, w*SCALE, 3] (nearest neighbour: Crafter's tiles stay sharp)."""
    return frame.permute(1, 2, 0).numpy().repeat(SCALE, 0).repeat(SCALE, 1)


def _canvas(width: int, height: int) -> Image.Image:
    # Even sizes: H.264 needs them.
    return Image.new("RGB", (width + width % 2, height + height % 2), BACKGROUND)


def filmstrip(videos: Dict[str, torch.Tensor], actions: Optional[Sequence[Sequence[str]]] = None,
              count: int = 4) -> Image.Image:
    """One block per prompt (the first ``count``): a row per video source (e.g. real | before | after), a
    column per frame, the commanded action above each generated frame."""
    names = list(videos)
    first = videos[names[0]]
    k, t, _, h, w = first.shape
    k = min(k, count)
    cell_h, cell_w = h * SCALE, w * SCALE
    block_h = HEADER + len(names) * (cell_h + GAP) + GAP
    image = _canvas(LABEL_WIDTH + t * (cell_w + GAP), k * block_h)
    draw = ImageDraw.Draw(image)
    for p in range(k):
        top = p * block_h
        for col in range(t):
            x = LABEL_WIDTH + col * (cell_w + GAP)
            label = "prompt" if col == 0 else (actions[p][col - 1] if actions is not None else f"t={col}")
            draw.text((x + 2, top + 1), label[:20], fill=TEXT)
        for row, name in enumerate(names):
            y = top + HEADER + row * (cell_h + GAP)
            draw.text((2, y + cell_h // 2 - 5), name, fill=TEXT)
            for col in range(t):
                image.paste(Image.fromarray(_upscale(videos[name][p, col])), (LABEL_WIDTH + col * (cell_w + GAP), y))
    return image


def grid_frames(videos: Dict[str, torch.Tensor], actions: Optional[Sequence[Sequence[str]]] = None,
                count: int = 4) -> List[np.ndarray]:
    """One image per time step: prompts as rows, video sources as columns, action of the step in the row label."""
    names = list(videos)
    k, t, _, h, w = videos[names[0]].shape
    k = min(k, count)
    cell_h, cell_w = h * SCALE, w * SCALE
    width = LABEL_WIDTH + len(names) * (cell_w + GAP)
    height = HEADER + k * (cell_h + GAP)
    out = []
    for step in range(t):
        image = _canvas(width, height)
        draw = ImageDraw.Draw(image)
        for col, name in enumerate(names):
            draw.text((LABEL_WIDTH + col * (cell_w + GAP) + 2, 1), name, fill=TEXT)
        for p in range(k):
            y = HEADER + p * (cell_h + GAP)
            label = "prompt" if step == 0 else (actions[p][step - 1] if actions is not None else "")
            draw.text((2, y + 2), f"t={step}", fill=TEXT)
            draw.text((2, y + 14), label[:10], fill=TEXT)
            for col, name in enumerate(names):
                image.paste(Image.fromarray(_upscale(videos[name][p, step])), (LABEL_WIDTH + col * (cell_w + GAP), y))
        out.append(np.asarray(image))
    return out


def write_video_grid(out_dir: Path, videos: Dict[str, torch.Tensor], actions=None, count: int = 4,
                     fps: float = 3.0, stem: str = "video_grid") -> Dict[str, Path]:
    """Writes ``stem``.png (filmstrip), ``stem``.mp4 and ``stem``.gif; returns their paths."""
    out_dir = Path(out_dir)
    paths = {"png": out_dir / f"{stem}.png", "mp4": out_dir / f"{stem}.mp4", "gif": out_dir / f"{stem}.gif"}
    filmstrip(videos, actions, count).save(paths["png"])
    frames = grid_frames(videos, actions, count)
    with VideoWriter(paths["mp4"], frames[0].shape[:2], fps=fps) as writer:
        for frame in frames:
            writer.append(frame)
    images = [Image.fromarray(f) for f in frames]
    images[0].save(paths["gif"], save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return paths


def read_metrics(path: Path) -> List[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_curves(metrics_jsonl: Path, path: Path, window: int = 10) -> Optional[Path]:
    """Training reward (per step and its moving average) and the held-out eval scores of a GRPO run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_jsonl)
    train = [(r["step"], r["reward/mean"]) for r in rows if r.get("reward/mean") is not None]
    if not train:
        return None
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    steps, rewards = map(np.array, zip(*train))
    left.plot(steps, rewards, color="0.7", lw=0.8, label="reward (IDM exact match), per step")
    if len(rewards) >= window:
        smooth = np.convolve(rewards, np.ones(window) / window, mode="valid")
        left.plot(steps[window - 1:], smooth, color="C0", lw=2, label=f"moving average ({window})")
    left.set_xlabel("GRPO step")
    left.set_ylabel("training reward")
    left.legend(fontsize=8)
    for key, label, color in (("verifier/scroll_fidelity", "verifier: moves that scroll (no learned model)", "C3"),
                              ("eval_idm/reward_mean", "eval IDM (never a reward)", "C2"),
                              ("eval/reward_mean", "reward IDM", "C1")):
        points = [(r["step"], r[key]) for r in rows if r.get(key) is not None and math.isfinite(r[key])]
        if points:
            xs, ys = zip(*points)
            right.plot(xs, ys, marker="o", color=color, label=label)
    right.set_xlabel("GRPO step")
    right.set_ylabel("held-out action-following")
    right.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)
