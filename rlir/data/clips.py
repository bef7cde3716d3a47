"""Fixed-length clips from a recording for training and evaluating world models and IDMs.

A clip is a window of ``context_frames + clip_frames`` consecutive frames of one episode, starting at
frame s, with the actions between them. With C = context_frames and F = clip_frames:

    context = frames[s : s+C]                     uint8 [C, 3, H, W]
    target  = frames[s+C : s+C+F]                 uint8 [F, 3, H, W]
    actions = episode actions[s : s+C+F-1]        int64 [C+F-1, num_heads]

Episode action t moves frame t to frame t+1, so ``actions[i]`` moves window frame i to window frame i+1:
the first C-1 act inside the context and ``actions[C-1:]`` (F of them) produce the F target frames.
With the default C = 1, ``actions[j]`` produces ``target[j]``.

Train and held-out splits are by episode, so no held-out frame is ever trained on.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import Dataset

from rlir.data.recording import Recording

SPLITS = ("train", "heldout")


def split_episodes(episode_ids: Sequence[str], heldout_fraction: float = 0.1) -> tuple[list[str], list[str]]:
    """Deterministic (train, heldout) split of episode ids, each in the given order.

    Episodes are ranked by the SHA-256 of their id and the first round(fraction * n) are held out
    (at least 1 and at most n-1 when fraction > 0 and n >= 2), so the split does not depend on the
    manifest order and an episode's side rarely changes when a recording grows.
    """
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    n = len(episode_ids)
    count = round(heldout_fraction * n)
    if heldout_fraction > 0 and n >= 2:
        count = min(max(count, 1), n - 1)
    ranked = sorted(episode_ids, key=lambda e: hashlib.sha256(e.encode("utf-8")).hexdigest())
    heldout = set(ranked[:count])
    return [e for e in episode_ids if e not in heldout], [e for e in episode_ids if e in heldout]


class ClipDataset(Dataset):
    """Clips of one split of a recording; items are dicts with "context", "target", "actions",
    "episode" (id) and "start" (frame index of the window in its episode). See the module docstring.

    Windows start every ``stride`` frames (default: clip_frames, so target frames do not repeat across
    clips); episodes shorter than a window give no clips. ``heldout_episodes``, when given, replaces
    ``heldout_fraction``. Decoded episodes are cached by the Recording.
    """

    def __init__(
        self,
        recording: Recording | Path | str,
        split: str = "train",
        context_frames: int = 1,
        clip_frames: int = 16,
        stride: int | None = None,
        heldout_fraction: float = 0.1,
        heldout_episodes: Sequence[str] | None = None,
    ):
        self.recording = recording if isinstance(recording, Recording) else Recording(recording)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        for name, value, minimum in (("context_frames", context_frames, 1), ("clip_frames", clip_frames, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
        stride = clip_frames if stride is None else stride
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise ValueError(f"stride must be a positive int, got {stride!r}")
        self.split = split
        self.context_frames = context_frames
        self.clip_frames = clip_frames
        self.stride = stride

        all_ids = self.recording.episode_ids
        if heldout_episodes is None:
            train, heldout = split_episodes(all_ids, heldout_fraction)
        else:
            unknown = sorted(set(heldout_episodes) - set(all_ids))
            if unknown:
                raise ValueError(f"heldout_episodes {unknown} are not in {self.recording.root / 'manifest.json'}")
            train = [e for e in all_ids if e not in set(heldout_episodes)]
            heldout = [e for e in all_ids if e in set(heldout_episodes)]
        self.episode_ids = train if split == "train" else heldout

        window = context_frames + clip_frames
        self._index = [
            (episode, start)
            for episode in self.episode_ids
            for start in range(0, self.recording.episode(episode).frames - window + 1, stride)
        ]
        if not self._index:
            raise ValueError(
                f"no {split} clips in {self.recording.root}: {len(self.episode_ids)} {split} episodes, "
                f"and a clip needs {window} frames (context_frames + clip_frames)"
            )

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, index: int) -> dict:
        episode, start = self._index[index]
        frames, actions = self.recording.load_episode(episode)
        window = self.context_frames + self.clip_frames
        clip = torch.from_numpy(frames[start : start + window].copy()).permute(0, 3, 1, 2).contiguous()
        return {
            "context": clip[: self.context_frames],
            "target": clip[self.context_frames :],
            "actions": torch.from_numpy(actions[start : start + window - 1].copy()),
            "episode": episode,
            "start": start,
        }
