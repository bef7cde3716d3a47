"""Prompts for GRPO: clips of recorded episodes (context frames + commanded actions), sampled resumably.

``PromptSampler`` visits the dataset in a fresh permutation every epoch, drawn from a generator seeded by
(seed, epoch); its whole state is (epoch, cursor), so a resumed run continues the same prompt stream
exactly. ``SyntheticClips`` makes deterministic random clips in the ClipDataset item format, for CI and
smoke runs without a recording.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from rlir.policies import Prompts


def item_to_prompt(item: dict, context_frames: int, n_frames: int):
    """ClipDataset item -> (context uint8 [C, 3, h, w], commanded actions [n, H], context actions [C-1, H])."""
    actions = item["actions"].long()
    c = context_frames
    return item["context"], actions[c - 1:c - 1 + n_frames], actions[:c - 1]


def collate(items: Sequence[dict], context_frames: int, n_frames: int) -> Prompts:
    parts = [item_to_prompt(item, context_frames, n_frames) for item in items]
    ctx = torch.stack([p[0] for p in parts])
    actions = torch.stack([p[1] for p in parts])
    context_actions = torch.stack([p[2] for p in parts]) if context_frames > 1 else None
    return Prompts(ctx, actions, context_actions)


class PromptSampler:
    """Batches of ``batch_size`` prompts from ``dataset``: epoch e is the permutation drawn by
    torch.Generator().manual_seed(seed * 1_000_003 + e); a batch may span two epochs."""

    def __init__(self, dataset: Dataset, batch_size: int, *, context_frames: int, n_frames: int, seed: int = 0,
                 shuffle: bool = True):
        if len(dataset) == 0:
            raise ValueError("PromptSampler: the dataset is empty")
        self.dataset, self.batch_size = dataset, batch_size
        self.context_frames, self.n_frames = context_frames, n_frames
        self.seed, self.shuffle = seed, shuffle
        self.epoch, self.cursor = 0, 0
        self._order: Optional[torch.Tensor] = None
        self._order_epoch = -1

    def _permutation(self) -> torch.Tensor:
        if self._order_epoch != self.epoch:
            n = len(self.dataset)
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
                self._order = torch.randperm(n, generator=g)
            else:
                self._order = torch.arange(n)
            self._order_epoch = self.epoch
        return self._order

    def next_indices(self) -> list[int]:
        out = []
        while len(out) < self.batch_size:
            order = self._permutation()
            take = min(self.batch_size - len(out), len(order) - self.cursor)
            out += order[self.cursor:self.cursor + take].tolist()
            self.cursor += take
            if self.cursor == len(order):
                self.epoch, self.cursor = self.epoch + 1, 0
        return out

    def next(self) -> Prompts:
        return collate([self.dataset[i] for i in self.next_indices()], self.context_frames, self.n_frames)

    def next_shard(self, rank: int, world_size: int) -> Prompts:
        """Rank ``rank``'s share of the next batch: prompts [rank B/N, (rank+1) B/N) of what ``next`` would return
        (every rank keeps its own copy of the sampler, in the same state; only the share is loaded)."""
        indices = self.next_indices()
        if len(indices) % world_size:
            raise ValueError(f"a batch of {len(indices)} prompts does not split over {world_size} ranks")
        per = len(indices) // world_size
        return collate([self.dataset[i] for i in indices[rank * per:(rank + 1) * per]], self.context_frames,
                       self.n_frames)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed, "size": len(self.dataset)}

    def load_state_dict(self, state: dict) -> None:
        if int(state["size"]) != len(self.dataset):
            raise ValueError(f"prompt sampler: the checkpoint was taken over {int(state['size'])} clips, "
                             f"this dataset has {len(self.dataset)}; the data changed")
        self.seed, self.epoch, self.cursor = int(state["seed"]), int(state["epoch"]), int(state["cursor"])


def fixed_prompts(dataset: Dataset, count: int, context_frames: int, n_frames: int) -> Prompts:
    """``count`` prompts spread evenly over the dataset (the same every call): for evaluation."""
    n = len(dataset)
    count = min(count, n)
    indices = [int(i * n / count) for i in range(count)]
    return collate([dataset[i] for i in indices], context_frames, n_frames)


class SyntheticClips(Dataset):
    """Deterministic random clips in ClipDataset's item format: blocky random frames (a random 4x4 colour
    grid upsampled, shifted by a random offset per frame) and uniformly random actions."""

    def __init__(self, clips: int, context_frames: int, clip_frames: int, image_size: int,
                 head_sizes: Sequence[int], seed: int = 0, split: str = "train"):
        self.clips, self.context_frames, self.clip_frames = clips, context_frames, clip_frames
        self.image_size, self.head_sizes = image_size, list(head_sizes)
        self.seed = seed * 2 + (split == "heldout")

    def __len__(self) -> int:
        return self.clips

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.clips:
            raise IndexError(index)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        t = self.context_frames + self.clip_frames
        s = self.image_size
        base = torch.rand(1, 3, 4, 4, generator=g)
        base = F.interpolate(base, size=(s, s), mode="nearest")[0]
        shifts = torch.randint(-2, 3, (t, 2), generator=g).cumsum(0)
        frames = torch.stack([torch.roll(base, (int(dy), int(dx)), dims=(1, 2)) for dy, dx in shifts.tolist()])
        frames = (frames * 255).round().to(torch.uint8)
        actions = torch.stack([torch.randint(0, h, (t - 1,), generator=g) for h in self.head_sizes], dim=-1)
        return {"context": frames[:self.context_frames], "target": frames[self.context_frames:],
                "actions": actions, "episode": f"synthetic{index:05d}", "start": 0}
