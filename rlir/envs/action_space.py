"""Action spaces as lists of categorical heads.

Every action space in rlir is a tuple of independent categorical heads (Crafter: one head of 17
classes; Minecraft: movement groups, buttons and camera bins). An action is a dict mapping head
name to class index, e.g. ``{"action": 3}``; as a tensor it is an int vector with one entry per head.
The JSON form is the "action_space" entry of a recording's manifest.json.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np


@dataclass(frozen=True)
class ActionHead:
    name: str
    classes: tuple[str, ...]

    def __post_init__(self):
        name, classes = self.name, self.classes
        if not isinstance(name, str) or not name:
            raise ValueError(f"action head name must be a non-empty string, got {name!r}")
        if not isinstance(classes, (list, tuple)) or len(classes) < 2:
            raise ValueError(f"action head {name!r}: classes must be a list of at least 2 names, got {classes!r}")
        if not all(isinstance(c, str) for c in classes):
            raise ValueError(f"action head {name!r}: every class must be a string, got {list(classes)!r}")
        _require_unique(classes, f"action head {name!r}: class names")
        object.__setattr__(self, "classes", tuple(classes))

    @property
    def size(self) -> int:
        return len(self.classes)


def _require_unique(names, what: str) -> None:
    if len(set(names)) != len(names):
        raise ValueError(f"{what} must be unique, got {list(names)!r}")


@dataclass(frozen=True)
class ActionSpace:
    heads: tuple[ActionHead, ...]

    def __post_init__(self):
        heads = self.heads
        if not isinstance(heads, (list, tuple)) or len(heads) == 0:
            raise ValueError(f"an action space needs a non-empty list of heads, got {heads!r}")
        if not all(isinstance(h, ActionHead) for h in heads):
            raise ValueError(f"heads must be ActionHead objects, got {list(heads)!r}")
        _require_unique([h.name for h in heads], "action head names")
        object.__setattr__(self, "heads", tuple(heads))

    @property
    def num_heads(self) -> int:
        return len(self.heads)

    @property
    def head_sizes(self) -> list[int]:
        return [h.size for h in self.heads]

    @property
    def head_names(self) -> list[str]:
        return [h.name for h in self.heads]

    def encode(self, action: Mapping[str, int]) -> np.ndarray:
        """{"head": class index, ...} -> int64 vector [num_heads]. Every head must be present; extra keys are errors."""
        if not isinstance(action, Mapping):
            raise ValueError(f"action must be a dict of head name -> class index, got {action!r}")
        unknown = set(action) - set(self.head_names)
        if unknown:
            raise ValueError(f"action has unknown heads {sorted(unknown)}; the heads are {self.head_names}")
        vector = np.empty(self.num_heads, dtype=np.int64)
        for i, head in enumerate(self.heads):
            if head.name not in action:
                raise ValueError(f"action {dict(action)!r} is missing head {head.name!r}")
            index = action[head.name]
            # bool is an int subclass; True as a class index is almost surely a bug in the caller.
            if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
                raise ValueError(f"action head {head.name!r}: class index must be an int, got {index!r}")
            if not 0 <= index < head.size:
                raise ValueError(f"action head {head.name!r}: class index {index} is out of range [0, {head.size})")
            vector[i] = index
        return vector

    def decode(self, vector: Sequence[int]) -> dict[str, int]:
        """int vector [num_heads] -> {"head": class index, ...} (the inverse of encode)."""
        values = np.asarray(vector)
        if values.shape != (self.num_heads,):
            raise ValueError(f"action vector must have shape ({self.num_heads},), got {values.shape}")
        action = {h.name: int(v) for h, v in zip(self.heads, values)}
        self.encode(action)  # validates the ranges
        return action

    def class_names(self, vector: Sequence[int]) -> dict[str, str]:
        """int vector -> {"head": class name}: for logs and debugging."""
        return {h.name: h.classes[i] for h, i in zip(self.heads, self.decode(vector).values())}

    def to_json(self) -> dict[str, Any]:
        return {"heads": [{"name": h.name, "classes": list(h.classes)} for h in self.heads]}

    @classmethod
    def from_json(cls, data: Any) -> "ActionSpace":
        """Parse a manifest's "action_space" entry; extra keys are ignored."""
        if not isinstance(data, Mapping) or not isinstance(data.get("heads"), list):
            raise ValueError(f'action_space must be {{"heads": [{{"name": str, "classes": [...]}}]}}, got {data!r}')
        heads = []
        for i, head in enumerate(data["heads"]):
            if not isinstance(head, Mapping) or "name" not in head or not isinstance(head.get("classes"), list):
                raise ValueError(f'action_space.heads[{i}] must be {{"name": str, "classes": [str, ...]}}, got {head}')
            heads.append(ActionHead(head["name"], head["classes"]))
        return cls(heads)
