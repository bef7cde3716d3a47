import json
from pathlib import Path

import numpy as np
import pytest

from rlir.data import record
from rlir.data.video import VideoWriter


@pytest.fixture(scope="session")
def recording_settings():
    """Arguments of the session's real Crafter recording: few and short, since a Crafter reset costs ~1 s."""
    return {"env": "crafter", "episodes": 2, "steps": 20, "seed": 7, "lossless": True, "progress": False}


@pytest.fixture(scope="session")
def lossless_recording(tmp_path_factory, recording_settings):
    return record(out=tmp_path_factory.mktemp("crafter_lossless"), **recording_settings)


def write_recording(root: Path, episodes: dict, manifest_extra: dict | None = None, frame_size=(32, 32)) -> Path:
    """Write a recording by hand, as a user's tool would: episodes maps id -> (frames uint8 [N,H,W,3],
    list of per-head action dicts of length N-1). Adds unknown keys everywhere to check they are ignored."""
    root.mkdir(parents=True, exist_ok=True)
    manifest = {
        "format": "rlir-recordings/1",
        "env": "my-game",
        "fps": 20,
        "frame_size": list(frame_size),
        "action_space": {
            "heads": [
                {"name": "move", "classes": ["none", "left", "right"], "description": "ignored"},
                {"name": "jump", "classes": ["off", "on"]},
            ]
        },
        "episodes": [],
        "author": "someone",
        **(manifest_extra or {}),
    }
    for episode, (frames, actions) in episodes.items():
        with VideoWriter(root / f"{episode}.mp4", frames.shape[1:3], fps=20, lossless=True) as video:
            for frame in frames:
                video.append(frame)
        with open(root / f"{episode}.jsonl", "w") as lines:
            for t, action in enumerate(actions):
                lines.write(json.dumps({"t": t, "action": {**action, "camera": [0, 0]}, "tick": 100 + t}) + "\n")
        manifest["episodes"].append({"id": episode, "frames": len(frames), "player": "steve"})
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def random_episode(rng: np.random.Generator, frames: int, size=(40, 48)):
    video = rng.integers(0, 256, size=(frames, *size, 3), dtype=np.uint8)
    actions = [{"move": int(rng.integers(3)), "jump": int(rng.integers(2))} for _ in range(frames - 1)]
    return video, actions


@pytest.fixture
def handwritten_recording(tmp_path):
    """A hand-written recording of 3 episodes (6, 9, 12 frames of 40x48, frame_size 32x32, two heads)
    -> (its directory, {id: (frames, actions)})."""
    rng = np.random.default_rng(0)
    episodes = {f"run-{i}": random_episode(rng, frames) for i, frames in enumerate((6, 9, 12))}
    return write_recording(tmp_path / "handwritten", episodes), episodes
