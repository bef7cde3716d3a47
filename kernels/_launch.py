"""Every Triton launch of rlir.kernels goes through ``launch``: one place that checks the grid and can record.

CUDA grids allow 2**31 - 1 programs on the first dimension but only 65,535 on the second and third, so the
kernels put rows (tokens, videos, samples: counts that grow with the batch) on the first dimension only, and
``launch`` raises a ValueError for a grid CUDA would reject instead of letting the driver fail at launch.

Inside ``recording()`` the ops take their Triton path for any tensors (CPU ones too), and ``launch`` records
each launch (kernel, grid, arguments, options) instead of running it. That is how ``rlir kernels compile``
compiles every kernel with the exact configurations the ops launch, and how the tests check the grids of
batches too large to run in the interpreter. The ops' outputs inside ``recording()`` are uninitialised.
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Tuple

# The largest grid CUDA launches: (x, y, z).
GRID_LIMITS = (2**31 - 1, 65535, 65535)


class Launch(NamedTuple):
    kernel: Any  # the triton JITFunction (or InterpretedFunction under TRITON_INTERPRET=1)
    grid: Tuple[int, ...]
    args: Tuple[Any, ...]
    kwargs: Dict[str, Any]  # constexprs and launch options (num_warps, ...)

    @property
    def name(self) -> str:
        return kernel_name(self.kernel)


_recorded: Optional[List[Launch]] = None


def kernel_name(kernel) -> str:
    return getattr(kernel, "fn", kernel).__name__


def check_grid(name: str, grid: Tuple[int, ...]) -> None:
    """ValueError unless ``grid`` has 1 to 3 dimensions, each within CUDA's limit."""
    if not 1 <= len(grid) <= 3 or any(g < 0 or g > limit for g, limit in zip(grid, GRID_LIMITS)):
        raise ValueError(f"{name}: grid {tuple(grid)} exceeds CUDA's grid limits {GRID_LIMITS}")


def launch(kernel, grid, *args, **kwargs) -> None:
    """``kernel[grid](*args, **kwargs)`` after checking the grid; recorded instead inside ``recording()``."""
    grid = tuple(int(g) for g in grid)
    check_grid(kernel_name(kernel), grid)
    if _recorded is not None:
        _recorded.append(Launch(kernel, grid, args, kwargs))
        return
    kernel[grid](*args, **kwargs)


def recording_active() -> bool:
    return _recorded is not None


@contextlib.contextmanager
def recording() -> Iterator[List[Launch]]:
    """Within the block every op takes its Triton path and its launches are appended to the yielded list
    instead of running. Not re-entrant."""
    global _recorded
    if _recorded is not None:
        raise RuntimeError("recording() is already active")
    _recorded = []
    try:
        yield _recorded
    finally:
        _recorded = None
