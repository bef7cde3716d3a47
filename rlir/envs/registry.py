"""Action spaces and recordable envs by name."""
from __future__ import annotations

from typing import Callable

from rlir.envs.action_space import ActionSpace
from rlir.envs.crafter import CrafterEnv, crafter_action_space
from rlir.envs.minecraft import minecraft_action_space
from rlir.envs.policies import MovementHeavyPolicy

ACTION_SPACES: dict[str, Callable[[], ActionSpace]] = {
    "crafter": crafter_action_space,
    "minecraft": minecraft_action_space,
}
# Envs that `rlir data record` can play; Minecraft recordings come from elsewhere (VPT / MineRL data).
RECORDABLE_ENVS = {"crafter": CrafterEnv}
RECORDING_POLICIES = {"crafter": MovementHeavyPolicy}
# Frame rate written into new recordings: playback metadata only, Crafter has no clock of its own.
RECORDING_FPS = 15
# Frame side of new recordings. Crafter draws its 9x9 tile view at size // 9 px a tile: at 72 a tile is exactly
# one 8x8 tokenizer code, so a move is an exact one-cell shift of the code grid (at 64, 7-px tiles straddle codes).
RECORDING_SIZE = 72


def get_action_space(name: str) -> ActionSpace:
    if name not in ACTION_SPACES:
        raise ValueError(f"unknown env {name!r}; action spaces exist for {sorted(ACTION_SPACES)}")
    return ACTION_SPACES[name]()


def make_env(name: str, seed: int, size: int = RECORDING_SIZE) -> CrafterEnv:
    if name not in RECORDABLE_ENVS:
        raise ValueError(f"env {name!r} cannot be recorded here; recordable envs: {sorted(RECORDABLE_ENVS)}")
    return RECORDABLE_ENVS[name](seed=seed, size=size)


def make_recording_policy(name: str, action_space: ActionSpace, seed: int) -> MovementHeavyPolicy:
    if name not in RECORDING_POLICIES:
        raise ValueError(f"no recording policy for env {name!r}; policies exist for {sorted(RECORDING_POLICIES)}")
    return RECORDING_POLICIES[name](action_space, seed=seed)
