"""Named phases: each one is an NVTX range (visible in Nsight Systems) and a wall-clock timer.

On CUDA the timer synchronises at phase boundaries so that a phase's time is its own GPU work, not the
launch time of asynchronous kernels; pass ``sync=False`` to measure host-side time only.
"""
from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from typing import Dict, Iterator

import torch

try:
    import nvtx as _nvtx
except ImportError:  # pragma: no cover - nvtx is a dependency, but keep the loop usable without it
    _nvtx = None


@contextlib.contextmanager
def nvtx_range(name: str, color: str = "blue") -> Iterator[None]:
    """An NVTX push/pop range; a no-op cost without a profiler attached (and without the nvtx package)."""
    if _nvtx is None:
        yield
        return
    with _nvtx.annotate(name, color=color, domain="rlir"):
        yield


class PhaseTimer:
    """Accumulates seconds per phase name; ``with timer.phase("rollout"): ...``."""

    def __init__(self, sync: bool = True):
        self.sync = sync and torch.cuda.is_available()
        self.seconds: Dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        with nvtx_range(name):
            if self.sync:
                torch.cuda.synchronize()
            start = time.perf_counter()
            try:
                yield
            finally:
                if self.sync:
                    torch.cuda.synchronize()
                self.seconds[name] += time.perf_counter() - start

    def total(self) -> float:
        return sum(self.seconds.values())

    def breakdown(self) -> Dict[str, float]:
        """Seconds per phase, in the order the phases first ran."""
        return dict(self.seconds)

    def reset(self) -> None:
        self.seconds.clear()

    def format(self) -> str:
        total = self.total() or 1.0
        return "  ".join(f"{k} {v * 1e3:.1f}ms ({100 * v / total:.0f}%)" for k, v in self.seconds.items())
