"""A recording pre-tokenised once: every frame of every episode as frame-tokenizer codes, in one safetensors file.

World-model training reads clips of codes from memory instead of running the tokenizer every step.
The file holds, per episode, ``codes/<id>`` (int16 [frames, tokens_per_frame], row-major over the code
grid; int32 for codebooks over 32768 codes) and ``actions/<id>`` (int64 [frames - 1, heads]), and in its
metadata the format, the code vocabulary and a fingerprint of the recording files and tokenizer weights
it was made from, so a stale cache is rebuilt rather than silently reused.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from rlir.data import Recording, resize_frames
from rlir.data.layout import actions_path, video_path

FORMAT = "rlir-codes/1"


def fingerprint(recording: Recording, tokenizer: torch.nn.Module) -> str:
    """SHA-256 of the recording's manifest and episode files and of the tokenizer's config and weights."""
    digest = hashlib.sha256()
    paths = [recording.root / "manifest.json"]
    for episode in recording.episode_ids:
        paths += [video_path(recording.root, episode), actions_path(recording.root, episode)]
    for path in paths:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    digest.update(json.dumps(dict(tokenizer.config), sort_keys=True, default=str).encode())
    for name, tensor in sorted(tokenizer.state_dict().items()):
        digest.update(name.encode() + b"\0" + tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass
class TokenizedRecording:
    """Codes int64 [frames, tokens_per_frame] and actions int64 [frames - 1, heads] of each episode id."""

    codes: dict[str, torch.Tensor]
    actions: dict[str, torch.Tensor]
    codebook_size: int
    fingerprint: str

    @property
    def episode_ids(self) -> list[str]:
        return list(self.codes)

    @property
    def tokens_per_frame(self) -> int:
        return next(iter(self.codes.values())).shape[1]

    @classmethod
    @torch.no_grad()
    def build(cls, recording: Recording, tokenizer, batch: int = 256) -> "TokenizedRecording":
        """Encode every frame of ``recording`` (resized to the tokenizer's image size) with ``tokenizer``."""
        codes, actions = {}, {}
        for episode in recording.episode_ids:
            frames, episode_actions = recording.load_episode(episode)
            frames = torch.from_numpy(resize_frames(frames, tokenizer.frame_size).copy()).permute(0, 3, 1, 2)
            codes[episode] = torch.cat([tokenizer.encode(frames[i:i + batch]).flatten(1).cpu()
                                        for i in range(0, len(frames), batch)])
            actions[episode] = torch.from_numpy(np.array(episode_actions, dtype=np.int64))
        return cls(codes, actions, tokenizer.codebook_size, fingerprint(recording, tokenizer))

    @classmethod
    def load(cls, path: Path | str) -> "TokenizedRecording":
        path = Path(path)
        try:
            with safe_open(path, framework="pt") as handle:
                metadata = handle.metadata() or {}
        except SafetensorError as error:
            raise ValueError(f"{path}: not a safetensors file ({error})") from error
        if metadata.get("format") != FORMAT:
            raise ValueError(f"{path}: not a pre-tokenised recording (format {metadata.get('format')!r}, "
                             f"expected {FORMAT!r})")
        tensors = load_file(path)
        episodes = json.loads(metadata["episodes"])
        return cls({e: tensors[f"codes/{e}"].long() for e in episodes},
                   {e: tensors[f"actions/{e}"] for e in episodes},
                   int(metadata["codebook_size"]), metadata["fingerprint"])

    def save(self, path: Path | str) -> None:
        """Write to ``path`` atomically (a temporary sibling renamed into place)."""
        path = Path(path)
        dtype = torch.int16 if self.codebook_size <= 2**15 else torch.int32
        tensors = {f"codes/{e}": c.to(dtype).contiguous() for e, c in self.codes.items()}
        tensors.update({f"actions/{e}": a.long().contiguous() for e, a in self.actions.items()})
        metadata = {"format": FORMAT, "codebook_size": str(self.codebook_size), "fingerprint": self.fingerprint,
                    "episodes": json.dumps(self.episode_ids)}
        tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
        try:
            save_file(tensors, tmp, metadata=metadata)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def load_or_build(cls, path: Path | str | None, recording: Recording, tokenizer) -> "TokenizedRecording":
        """The cache at ``path`` when it was made from these recording files and tokenizer weights, else a
        fresh ``build`` (``path`` is not written: call ``save``)."""
        if path is not None and Path(path).is_file():
            try:
                cached = cls.load(path)
            except (ValueError, KeyError):
                cached = None  # not a cache of this format: rebuild
            if cached is not None and cached.fingerprint == fingerprint(recording, tokenizer):
                return cached
        return cls.build(recording, tokenizer)

    def windows(self, episode_ids: Sequence[str], frames: int, stride: int) -> list[tuple[str, int]]:
        """(episode, start) of every window of ``frames`` consecutive frames, starting every ``stride`` frames."""
        return [(e, s) for e in episode_ids for s in range(0, len(self.codes[e]) - frames + 1, stride)]

    def clips(self, windows: Sequence[tuple[str, int]], frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Stack windows into (codes int64 [N, frames, F], actions int64 [N, frames - 1, heads])."""
        codes = torch.stack([self.codes[e][s:s + frames] for e, s in windows])
        actions = torch.stack([self.actions[e][s:s + frames - 1] for e, s in windows])
        return codes, actions
