"""Episode action files: one JSON line per transition, {"t": t, "action": {head: class index}}."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rlir.data.layout import RecordingError
from rlir.envs.action_space import ActionSpace


def action_line(t: int, action: dict[str, int]) -> str:
    return json.dumps({"t": t, "action": action}) + "\n"


def read_actions(path: Path | str, action_space: ActionSpace) -> np.ndarray:
    """Read an episode's jsonl -> int64 [T, num_heads]; line k must have "t": k.

    Blank lines, extra keys and extra action entries (heads not in ``action_space``) are ignored.
    """
    path = Path(path)
    if not path.is_file():
        raise RecordingError(f"{path}: actions file not found")
    rows = []
    with open(path, encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {line_number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise RecordingError(f"{where}: not valid JSON ({error}); is the file truncated?") from None
            if not isinstance(record, dict) or "t" not in record or "action" not in record:
                raise RecordingError(f'{where}: expected {{"t": int, "action": {{...}}}}, got {line.strip()[:200]}')
            if record["t"] != len(rows):
                raise RecordingError(f'{where}: "t" is {record["t"]!r}, expected {len(rows)} (lines must be in order)')
            action = record["action"]
            if not isinstance(action, dict):
                raise RecordingError(f'{where}: "action" must be an object of head -> class index, got {action!r}')
            known_heads = {name: index for name, index in action.items() if name in action_space.head_names}
            try:
                rows.append(action_space.encode(known_heads))
            except ValueError as error:
                raise RecordingError(f"{where}: {error}") from None
    if not rows:
        return np.zeros((0, action_space.num_heads), dtype=np.int64)
    return np.stack(rows)
