"""The on-disk recording layout (a public contract: users and other tools write it too).

    DIR/manifest.json   {"format": "rlir-recordings/1", "env": "crafter", "fps": 15, "frame_size": [64, 64],
                         "action_space": {"heads": [{"name": "action", "classes": [...]}]},
                         "episodes": [{"id": "ep00000", "frames": 501, "seed": 0}, ...]}
    DIR/<id>.mp4        the episode's frames (RGB, any size); frame 0 is the first observation
    DIR/<id>.jsonl      one line per transition t -> t+1: {"t": 0, "action": {"action": 3}}

"frame_size" is [height, width]: the size frames are resized to on load. An episode of T actions has
T + 1 frames. Extra keys anywhere are allowed and ignored (the manifest parser keeps top-level ones in
``Manifest.extra``). Every problem with a recording raises ``RecordingError`` naming the file.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlir.envs.action_space import ActionSpace

FORMAT = "rlir-recordings/1"
MANIFEST_NAME = "manifest.json"


class RecordingError(ValueError):
    """A recording on disk is missing, corrupt or inconsistent; the message names the file."""


def manifest_path(root: Path) -> Path:
    return Path(root) / MANIFEST_NAME


def video_path(root: Path, episode_id: str) -> Path:
    return Path(root) / f"{episode_id}.mp4"


def actions_path(root: Path, episode_id: str) -> Path:
    return Path(root) / f"{episode_id}.jsonl"


def episode_id(index: int) -> str:
    return f"ep{index:05d}"


@dataclass
class EpisodeInfo:
    id: str
    frames: int  # T + 1 for T actions
    seed: int | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id, "frames": self.frames}
        if self.seed is not None:
            data["seed"] = self.seed
        return data


@dataclass
class Manifest:
    env: str
    fps: float
    frame_size: tuple[int, int]  # (height, width)
    action_space: ActionSpace
    episodes: list[EpisodeInfo]
    extra: dict[str, Any] = field(default_factory=dict)  # other top-level keys, kept as they are

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "env": self.env,
            "fps": self.fps,
            "frame_size": list(self.frame_size),
            "action_space": self.action_space.to_json(),
            "episodes": [e.to_json() for e in self.episodes],
            **self.extra,
        }

    @classmethod
    def from_json(cls, data: Any, source: Path | str) -> "Manifest":
        """Validate a parsed manifest.json; errors name ``source`` and the offending key."""
        def fail(message: str) -> RecordingError:
            return RecordingError(f"{source}: {message}")

        if not isinstance(data, dict):
            raise fail(f"the manifest must be a JSON object, got {type(data).__name__}")
        missing = [k for k in ("format", "env", "fps", "frame_size", "action_space", "episodes") if k not in data]
        if missing:
            raise fail(f"missing keys {missing}")
        if data["format"] != FORMAT:
            raise fail(f'"format" must be {FORMAT!r}, got {data["format"]!r}')
        if not isinstance(data["env"], str):
            raise fail(f'"env" must be a string, got {data["env"]!r}')
        fps = data["fps"]
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0:
            raise fail(f'"fps" must be a positive number, got {fps!r}')
        size = data["frame_size"]
        if not (isinstance(size, list) and len(size) == 2 and all(_is_positive_int(s) for s in size)):
            raise fail(f'"frame_size" must be [height, width] of positive ints, got {size!r}')
        try:
            action_space = ActionSpace.from_json(data["action_space"])
        except ValueError as error:
            raise fail(f'bad "action_space": {error}') from None
        if not isinstance(data["episodes"], list):
            raise fail(f'"episodes" must be a list, got {type(data["episodes"]).__name__}')
        episodes = [_parse_episode(entry, f"episodes[{i}]", source) for i, entry in enumerate(data["episodes"])]
        ids = [e.id for e in episodes]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise fail(f"episode ids must be unique; repeated: {duplicates}")
        known = {"format", "env", "fps", "frame_size", "action_space", "episodes"}
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(data["env"], fps, (size[0], size[1]), action_space, episodes, extra)


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _parse_episode(entry: Any, where: str, source: Path | str) -> EpisodeInfo:
    def fail(message: str) -> RecordingError:
        return RecordingError(f"{source}: {message}")

    if not isinstance(entry, dict) or "id" not in entry or "frames" not in entry:
        raise fail(f'{where} must be an object with "id" and "frames", got {entry!r}')
    episode = entry["id"]
    # The id names files in DIR, so it must be a plain file-name stem.
    if not isinstance(episode, str) or not episode or "/" in episode or "\\" in episode or episode.startswith("."):
        raise fail(f'{where}.id must be a file-name stem like "ep00000", got {episode!r}')
    if not _is_positive_int(entry["frames"]):
        raise fail(f'{where}.frames must be a positive int, got {entry["frames"]!r}')
    seed = entry.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise fail(f'{where}.seed must be an int, got {seed!r}')
    return EpisodeInfo(episode, entry["frames"], seed)


def read_manifest(root: Path | str) -> Manifest:
    path = manifest_path(root)
    if not path.is_file():
        raise RecordingError(f"{path}: no manifest (is {root} a recording directory?)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RecordingError(f"{path}: not valid JSON ({error})") from None
    return Manifest.from_json(data, path)


def replace_atomically(temporary: Path, final: Path) -> None:
    """Move a fully written file into place: readers see the old file or the new one, never a partial one."""
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, final)


def write_manifest(root: Path | str, manifest: Manifest) -> None:
    path = manifest_path(root)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(manifest.to_json(), indent=1) + "\n", encoding="utf-8")
    replace_atomically(temporary, path)
