"""Random policies for recording data in which the actions are visible in the video."""
from __future__ import annotations

import numpy as np

from rlir.envs.action_space import ActionSpace


class MovementHeavyPolicy:
    """A seeded random policy over a one-head action space with Crafter's action names.

    Mostly moves, with persistence, so that scrolling direction and facing are visible:
      - after a move, repeat that move with probability ``repeat_move`` (0.5: runs of 2 moves on average);
      - otherwise draw afresh: each of the 4 moves 17.5% (70% in all), "do" 15%, "noop" 10%, and the
        remaining 5% split evenly over the other actions (place_*, make_*).
    In the long run that is about 82% moves, 9% "do", 6% "noop" and 3% other actions.
    "sleep" is never chosen: a sleeping Crafter player ignores every action until its energy is full,
    so the recorded actions would not match the video.
    """

    FRESH_PROBABILITIES = {"move": 0.70, "do": 0.15, "noop": 0.10, "other": 0.05}
    EXCLUDED = ("sleep",)

    def __init__(self, action_space: ActionSpace, seed: int, repeat_move: float = 0.5):
        if action_space.num_heads != 1:
            raise ValueError(f"MovementHeavyPolicy needs a one-head action space, got heads {action_space.head_names}")
        if not 0.0 <= repeat_move <= 1.0:
            raise ValueError(f"repeat_move must be a probability in [0, 1], got {repeat_move}")
        head = action_space.heads[0]
        self.head_name = head.name
        self.repeat_move = repeat_move
        self.probabilities = self._fresh_probabilities(head.classes)
        self.moves = {i for i, name in enumerate(head.classes) if name.startswith("move_")}
        self._rng = np.random.default_rng(seed)
        self._previous: int | None = None

    def _fresh_probabilities(self, classes: tuple[str, ...]) -> np.ndarray:
        groups = {"move": [], "do": [], "noop": [], "other": []}
        for i, name in enumerate(classes):
            if name in self.EXCLUDED:
                continue
            group = "move" if name.startswith("move_") else name if name in ("do", "noop") else "other"
            groups[group].append(i)
        missing = [g for g in ("move", "do", "noop") if not groups[g]]
        if missing:
            raise ValueError(
                f"MovementHeavyPolicy needs classes named move_*, do and noop; none for {missing} in {classes}"
            )
        probabilities = np.zeros(len(classes))
        for group, members in groups.items():
            if members:
                probabilities[members] = self.FRESH_PROBABILITIES[group] / len(members)
        return probabilities / probabilities.sum()

    def __call__(self) -> dict[str, int]:
        if self._previous in self.moves and self._rng.random() < self.repeat_move:
            index = self._previous
        else:
            index = int(self._rng.choice(len(self.probabilities), p=self.probabilities))
        self._previous = index
        return {self.head_name: index}
