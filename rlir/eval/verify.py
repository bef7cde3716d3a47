"""The Crafter verifier's metrics on videos (no learned model), and its calibration against Crafter's own state.

For K videos of n transitions with their commanded actions, ``verifier_metrics`` scores every transition with
``rlir.envs.crafter_verifier.CrafterVerifier`` and reports, overall and per frame position:

- ``scroll_fidelity``: the share of commanded moves whose world view scrolled the commanded way, a tie counted as
  a miss (the headline; on real video it is the share of unblocked moves, about 0.65-0.75);
- ``scroll_decided``: the same share among the moves the verifier could call;
- ``stillness``: the share of non-moves that the verifier did not call a scroll (here a tie counts as still: flat
  grass cannot show a scroll, and garbled frames already lose on the other metrics);
- ``facing``: the share of moves after which the sprite faces the commanded way (what a sprite-reading IDM sees);
- ``blocked_aware``: the share of moves that did what Crafter's rules say, given the tile walked into in frame t:
  scroll if it takes the player, stay if it blocks (ties and unknown tiles miss; near 1 on real video);
- ``content``: the share of world-view tiles that are not grass (a model that empties the world lowers it).
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import torch

from rlir.envs.crafter_verifier import MOVES, SCROLLS, TIE, CrafterVerifier, PLAYER_WALKABLE

METRICS = ("scroll_fidelity", "scroll_decided", "stillness", "facing", "blocked_aware", "content")
MOVE_ACTIONS = tuple(f"move_{direction}" for direction in MOVES)


def is_crafter(action_space) -> bool:
    """Whether the verifier can read this action space's videos: one head with Crafter's move actions."""
    return action_space.num_heads == 1 and set(MOVE_ACTIONS) <= set(action_space.heads[0].classes)


def _move_index(action_space, actions: np.ndarray) -> np.ndarray:
    """Index into MOVES of each commanded action, -1 for a non-move."""
    classes = action_space.heads[0].classes
    lookup = np.array([MOVE_ACTIONS.index(c) if c in MOVE_ACTIONS else -1 for c in classes])
    return lookup[actions]


def _share(hit: np.ndarray, where: np.ndarray, axis=None):
    count = where.sum(axis)
    value = np.where(count > 0, (hit & where).sum(axis) / np.maximum(count, 1), np.nan)
    return value


def score_transitions(verifier: CrafterVerifier, videos: np.ndarray, moves: np.ndarray) -> Dict[str, np.ndarray]:
    """Per-transition hits [K, n] (and masks) of uint8 videos [K, n + 1, H, W, 3] with move indices [K, n]."""
    k, n = moves.shape
    before = videos[:, :-1].reshape(k * n, *videos.shape[2:])
    after = videos[:, 1:].reshape(k * n, *videos.shape[2:])
    calls = verifier.transitions(before, after)
    move = moves.reshape(-1)
    is_move = move >= 0
    step = np.where(is_move, move, 0)
    commanded = SCROLLS.index("left") + step  # SCROLLS is ("none", *MOVES)
    walkable = calls.walkable[np.arange(len(move)), step]
    expected = np.where(walkable == 1, commanded, SCROLLS.index("none"))
    tiles = verifier.classify(verifier.tiles(after))
    grass = verifier.tile_names.index("grass")
    shape = lambda a: a.reshape(k, n)
    return {
        "is_move": shape(is_move),
        "decided": shape(calls.scroll != TIE),
        "scrolled_as_commanded": shape(calls.scroll == commanded),
        "still": shape((calls.scroll == SCROLLS.index("none")) | (calls.scroll == TIE)),
        "faces_move": shape(calls.facing == step),
        "as_rules_say": shape((calls.scroll == expected) & (walkable >= 0)),
        "content": shape((tiles != grass).mean(axis=(1, 2))),
    }


def verifier_metrics(videos: torch.Tensor, actions: torch.Tensor, action_space,
                     verifier: CrafterVerifier | None = None) -> Dict[str, object]:
    """``verifier/<metric>`` and ``verifier/per_frame`` ({metric: [n values]}) for uint8 videos [K, n + 1, 3, S, S]
    and commanded actions [K, n, 1]; {} for an action space that is not Crafter's."""
    if not is_crafter(action_space):
        return {}
    frames = videos.permute(0, 1, 3, 4, 2).cpu().numpy()
    verifier = verifier or CrafterVerifier(frames.shape[2])
    hits = score_transitions(verifier, frames, _move_index(action_space, actions[..., 0].cpu().numpy()))
    move, still_asked = hits["is_move"], ~hits["is_move"]
    decided_move = move & hits["decided"]
    per_axis = {
        "scroll_fidelity": lambda axis: _share(hits["scrolled_as_commanded"], move, axis),
        "scroll_decided": lambda axis: _share(hits["scrolled_as_commanded"], decided_move, axis),
        "stillness": lambda axis: _share(hits["still"], still_asked, axis),
        "facing": lambda axis: _share(hits["faces_move"], move, axis),
        "blocked_aware": lambda axis: _share(hits["as_rules_say"], move, axis),
        "content": lambda axis: hits["content"].mean(axis),
    }
    out: Dict[str, object] = {f"verifier/{name}": float(f(None)) for name, f in per_axis.items()}
    out["verifier/per_frame"] = {name: [None if np.isnan(v) else float(v) for v in f(0)]
                                 for name, f in per_axis.items()}
    out["verifier/moves"] = int(move.sum())
    return out


def replay_truth(recording, episode_id: str) -> Dict[str, np.ndarray]:
    """Crafter's own state along a recorded episode, replayed from its seed and actions: per transition, how the
    player moved (index into SCROLLS), its facing after (index into MOVES) and, per move direction, whether the
    tile it walks into takes the player."""
    from rlir.envs.crafter import CrafterEnv

    info = recording.episode(episode_id)
    if info.seed is None:
        raise ValueError(f"{recording.root}: episode {episode_id} has no seed to replay")
    _, actions = recording.load_episode(episode_id)
    env = CrafterEnv(seed=info.seed, size=recording.frame_size[0])
    env.reset()
    player, world = env._env._player, env._env._world  # Crafter keeps its state on these private attributes
    steps = {tuple(v[::-1]): SCROLLS.index(k) for k, v in MOVES.items()}  # Crafter's (x, y) -> SCROLLS
    moved, facing, walkable = [], [], []
    for action in actions[:, 0]:
        before = player.pos.copy()
        free = []
        for dr, dc in MOVES.values():
            material, obj = world[before + np.array([dc, dr])]
            free.append(obj is None and material in PLAYER_WALKABLE)
        walkable.append(free)
        env.step({"action": int(action)})
        moved.append(steps.get(tuple(player.pos - before), SCROLLS.index("none")))
        facing.append(steps[tuple(player.facing)] - 1)
    return {"moved": np.array(moved), "facing": np.array(facing), "walkable": np.array(walkable)}


def calibrate(recording, episode_ids: Sequence[str], verifier: CrafterVerifier | None = None) -> Dict[str, float]:
    """The verifier's agreement with Crafter's replayed state on real episodes (see ``replay_truth``)."""
    verifier = verifier or CrafterVerifier(recording.frame_size[0])
    calls, truths, moves = [], [], []
    for episode in episode_ids:
        frames, actions = recording.load_episode(episode)
        calls.append(verifier.transitions(frames[:-1], frames[1:]))
        truths.append(replay_truth(recording, episode))
        moves.append(_move_index(recording.action_space, actions[:, 0]))
    scroll = np.concatenate([c.scroll for c in calls])
    facing = np.concatenate([c.facing for c in calls])
    walkable = np.concatenate([c.walkable for c in calls])
    moved = np.concatenate([t["moved"] for t in truths])
    true_facing = np.concatenate([t["facing"] for t in truths])
    free = np.concatenate([t["walkable"] for t in truths])
    move = np.concatenate(moves)
    decided = scroll != TIE
    is_move = move >= 0
    rows = np.arange(len(move))
    called_walkable = walkable[rows, np.where(is_move, move, 0)][is_move]
    true_walkable = free[rows, np.where(is_move, move, 0)][is_move]
    known = called_walkable >= 0
    return {
        "episodes": len(episode_ids),
        "transitions": int(len(scroll)),
        "decided": float(decided.mean()),
        "scroll_agreement_on_decided": float((scroll[decided] == moved[decided]).mean()),
        "facing_agreement": float((facing == true_facing).mean()),
        "target_tile_known": float(known.mean()),
        "walkable_agreement_on_known": float((called_walkable[known] == true_walkable[known]).mean()),
        "moves_that_moved": float((moved[is_move] == SCROLLS.index("left") + move[is_move]).mean()),
    }
