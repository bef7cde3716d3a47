"""Read a recording directory (see rlir.data.layout) into frames and action arrays."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from rlir.data.actions import read_actions
from rlir.data.layout import EpisodeInfo, RecordingError, actions_path, read_manifest, video_path
from rlir.data.video import read_video
from rlir.envs.action_space import ActionSpace


class Recording:
    """A recording on disk: its manifest is validated and its episode files checked on construction;
    episodes are decoded on first use and kept in memory when ``cache`` is on (64x64 episodes are small).
    Frames load at the manifest's frame_size, or at ``frame_size`` (height, width) when given, so a model
    made at another size reads any recording."""

    def __init__(self, root: Path | str, cache: bool = True, frame_size: tuple[int, int] | None = None):
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        self.cache = cache
        self._frame_size = tuple(frame_size) if frame_size is not None else tuple(self.manifest.frame_size)
        self._episodes = {e.id: e for e in self.manifest.episodes}
        self._decoded: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for episode in self.manifest.episodes:
            for path in (video_path(self.root, episode.id), actions_path(self.root, episode.id)):
                if not path.is_file():
                    raise RecordingError(f"{path}: missing; the manifest lists episode {episode.id!r}")

    @property
    def env(self) -> str:
        return self.manifest.env

    @property
    def fps(self) -> float:
        return self.manifest.fps

    @property
    def frame_size(self) -> tuple[int, int]:
        """(height, width) of the frames load_episode returns."""
        return self._frame_size

    @property
    def action_space(self) -> ActionSpace:
        return self.manifest.action_space

    @property
    def episodes(self) -> list[EpisodeInfo]:
        return list(self.manifest.episodes)

    @property
    def episode_ids(self) -> list[str]:
        return [e.id for e in self.manifest.episodes]

    def __len__(self) -> int:
        return len(self.manifest.episodes)

    def episode(self, episode_id: str) -> EpisodeInfo:
        if episode_id not in self._episodes:
            raise ValueError(f"episode {episode_id!r} is not in {self.root / 'manifest.json'}")
        return self._episodes[episode_id]

    def load_episode(self, episode_id: str) -> tuple[np.ndarray, np.ndarray]:
        """-> (frames uint8 [T+1, height, width, 3] at frame_size, actions int64 [T, num_heads]).

        actions[t] is the action that moves frames[t] to frames[t+1]. The arrays are shared with the
        cache: treat them as read-only.
        """
        if episode_id in self._decoded:
            return self._decoded[episode_id]
        info = self.episode(episode_id)
        video, jsonl = video_path(self.root, episode_id), actions_path(self.root, episode_id)
        frames = read_video(video, self.frame_size)
        if len(frames) != info.frames:
            raise RecordingError(f"{video}: has {len(frames)} frames, the manifest says {info.frames}")
        actions = read_actions(jsonl, self.action_space)
        if len(actions) != info.frames - 1:
            raise RecordingError(
                f"{jsonl}: has {len(actions)} actions, expected {info.frames - 1} (one per transition "
                f"between the {info.frames} frames in the manifest); is the file truncated?"
            )
        frames.flags.writeable = False
        actions.flags.writeable = False
        if self.cache:
            self._decoded[episode_id] = (frames, actions)
        return frames, actions

    def __repr__(self) -> str:
        return f"Recording({str(self.root)!r}: env={self.env}, {len(self)} episodes, frame_size={self.frame_size})"
