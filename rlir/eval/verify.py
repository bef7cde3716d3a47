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

from rlir.envs.crafter_verifier import MOVES, PLAYER_WALKABLE, SCROLLS, TIE, CrafterVerifier, VideoJudge

def _share(hit: np.ndarray, where: np.ndarray, axis=None):
    count = where.sum(axis)
    return np.where(count > 0, (hit & where).sum(axis) / np.maximum(count, 1), np.nan)


def verifier_metrics(videos: torch.Tensor, actions: torch.Tensor, action_space) -> Dict[str, object]:
    """``verifier/<metric>`` and ``verifier/per_frame`` ({metric: [n values]}) for uint8 videos [K, n + 1, 3, S, S]
    and commanded actions [K, n, 1]; {} for an action space that is not Crafter's."""
    judge = VideoJudge.for_action_space(action_space)
    if judge is None:
        return {}
    hits = judge.hits(videos, actions)
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
    out["per_prompt/verifier/scroll_fidelity"] = {"hits": (hits["scrolled_as_commanded"] & move).sum(1).tolist(),
                                                  "count": move.sum(1).tolist()}
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


def player_moved(recording, episode_ids: Sequence[str]) -> Dict[str, torch.Tensor]:
    """bool [frames - 1] per episode: did the player move in that transition (``replay_truth``)."""
    if recording.env != "crafter":
        raise ValueError(f"{recording.root}: a {recording.env!r} recording; telling which transitions moved the "
                         f"player replays Crafter episodes")
    return {e: torch.from_numpy(replay_truth(recording, e)["moved"] != SCROLLS.index("none")) for e in episode_ids}


def calibrate(recording, episode_ids: Sequence[str], verifier: CrafterVerifier | None = None) -> Dict[str, float]:
    """The verifier's agreement with Crafter's replayed state on real episodes (see ``replay_truth``)."""
    verifier = verifier or CrafterVerifier(recording.frame_size[0])
    judge = VideoJudge(recording.action_space)
    calls, truths, moves = [], [], []
    for episode in episode_ids:
        frames, actions = recording.load_episode(episode)
        calls.append(verifier.transitions(frames[:-1], frames[1:]))
        truths.append(replay_truth(recording, episode))
        moves.append(judge.move_indices(actions[:, 0]))
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
