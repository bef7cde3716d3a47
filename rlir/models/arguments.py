"""Checks of the models' constructor arguments, so that a bad size fails where the model is built, naming the
argument."""
from __future__ import annotations


def check_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def frame_size_pair(name: str, value) -> tuple[int, int]:
    """A frame size given as one int (square) or [height, width] -> (height, width)."""
    sizes = [value, value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(sizes, (list, tuple)) or len(sizes) != 2:
        raise ValueError(f"{name} must be an int or [height, width], got {value!r}")
    return check_int(name, sizes[0]), check_int(name, sizes[1])
