"""Environments and their action spaces (lists of categorical heads)."""
from rlir.envs.action_space import ActionHead, ActionSpace
from rlir.envs.crafter import CrafterEnv, crafter_action_space
from rlir.envs.minecraft import CAMERA_QUANTIZER, heads_from_minerl_action, minecraft_action_space
from rlir.envs.mulaw import MuLawQuantizer
from rlir.envs.policies import MovementHeavyPolicy
from rlir.envs.registry import RECORDABLE_ENVS, get_action_space, make_env, make_recording_policy

__all__ = [
    "ActionHead",
    "ActionSpace",
    "CAMERA_QUANTIZER",
    "CrafterEnv",
    "MovementHeavyPolicy",
    "MuLawQuantizer",
    "RECORDABLE_ENVS",
    "crafter_action_space",
    "get_action_space",
    "heads_from_minerl_action",
    "make_env",
    "make_recording_policy",
    "minecraft_action_space",
]
