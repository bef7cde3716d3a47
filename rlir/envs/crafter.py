"""Crafter (pip `crafter`): its action space and a thin env wrapper with the rlir interface.

The wrapper takes per-head action dicts ({"action": 3}) and returns uint8 [size, size, 3] frames,
and makes Crafter deterministic per seed (see ``_InsertionOrderedSet``).
"""
from __future__ import annotations

import collections
from typing import Mapping

import numpy as np

from rlir.envs.action_space import ActionHead, ActionSpace


def _import_crafter():
    try:
        import crafter
    except ImportError as error:
        raise ImportError("the crafter env needs the `crafter` package: pip install crafter") from error
    return crafter


def crafter_action_space() -> ActionSpace:
    """One head, "action", with Crafter's 17 action names in Crafter's own order."""
    return ActionSpace([ActionHead("action", _import_crafter().constants.actions)])


class _InsertionOrderedSet:
    """The part of the set interface that Crafter's World uses for its chunks, iterating in insertion order.

    Crafter 1.8 keeps each chunk's creatures in a ``set``; objects hash by memory address, so the set's
    order (and with it which creature despawns, via a seeded random index into it) depends on where
    Python allocated them. The same seed then gives different episodes within one process.
    Replacing the sets by insertion-ordered ones makes an episode a function of its seed and actions.
    """

    def __init__(self):
        self._items: dict = {}

    def add(self, item) -> None:
        self._items[item] = None

    def remove(self, item) -> None:
        del self._items[item]

    def __contains__(self, item) -> bool:
        return item in self._items

    def __iter__(self):
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


def _make_chunks_ordered(world) -> None:
    """Make ``world.reset`` (called by every env reset) build insertion-ordered chunk sets."""
    original_reset = world.reset

    def reset(seed=None):
        original_reset(seed=seed)
        world._chunks = collections.defaultdict(_InsertionOrderedSet)

    world.reset = reset


class CrafterEnv:
    """One Crafter world. ``step`` returns (frame, done); done means the player died."""

    def __init__(self, seed: int, size: int = 72):
        if not isinstance(size, int) or size < 9:
            raise ValueError(f"size must be an int >= 9 (Crafter draws a 9x9 grid of tiles), got {size!r}")
        crafter = _import_crafter()
        self.action_space = crafter_action_space()
        # length=None: no time limit (the recorder decides the episode length); reward=False: rewards unused.
        self._env = crafter.Env(size=(size, size), seed=seed, length=None, reward=False)
        _make_chunks_ordered(self._env._world)

    def reset(self) -> np.ndarray:
        return self._env.reset()

    def step(self, action: Mapping[str, int]) -> tuple[np.ndarray, bool]:
        (index,) = self.action_space.encode(action)
        frame, _reward, done, _info = self._env.step(int(index))
        return frame, bool(done)
