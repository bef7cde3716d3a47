"""Named phases: each one is an NVTX range (visible in Nsight Systems), a ``torch.profiler.record_function`` range
while torch.profiler records (visible in ``rlir profile``'s Chrome trace) and a timer.

How a phase is timed (``PhaseTimer(sync=None)``, the default):
- on CPU, and on CUDA while ``torch.profiler`` is recording (``rlir profile``) or with ``RLIR_SYNC_PHASES=1``:
  wall-clock time, and on CUDA the timer synchronises at the phase boundaries, so that a phase's time is its
  own GPU work and a trace shows each phase's kernels inside its range;
- otherwise on CUDA: CUDA events recorded on the current stream at the phase boundaries, read once by
  ``breakdown()``. Nothing waits inside the step, so a phase's time is the stream time between its boundaries
  (its kernels, plus any time the GPU sat idle waiting for the host to launch them).
``sync=True`` or ``sync=False`` forces synchronised wall-clock or event timing (host-side time only on CPU).
"""
from __future__ import annotations

import contextlib
import os
import time
from collections import defaultdict
from typing import Dict, Iterator, List, Optional, Tuple

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


def profiling_active() -> bool:
    """True while torch.profiler records (``rlir profile``) or when RLIR_SYNC_PHASES=1 asks for synchronised
    phases (e.g. under Nsight Systems, whose NVTX ranges then hold each phase's GPU work)."""
    return os.environ.get("RLIR_SYNC_PHASES", "0") == "1" or torch.autograd._profiler_enabled()


class PhaseTimer:
    """Accumulates seconds per phase name; ``with timer.phase("rollout"): ...``. See the module docstring for
    ``sync``: None decides per phase (synchronise only under a profiler), True always synchronises on CUDA,
    False never does (CUDA events on CUDA)."""

    def __init__(self, sync: Optional[bool] = None):
        self.cuda = torch.cuda.is_available()
        self.sync = sync
        self.seconds: Dict[str, float] = defaultdict(float)
        self._events: List[Tuple[str, "torch.cuda.Event", "torch.cuda.Event"]] = []

    def _synchronising(self) -> bool:
        return self.cuda and (self.sync if self.sync is not None else profiling_active())

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        # The record_function range only while a profiler records: it costs an op record on every call otherwise.
        recording = torch.profiler.record_function(name) if torch.autograd._profiler_enabled() \
            else contextlib.nullcontext()
        with nvtx_range(name), recording:
            if not self.cuda or self._synchronising():
                if self.cuda:
                    torch.cuda.synchronize()
                start = time.perf_counter()
                try:
                    yield
                finally:
                    if self.cuda:
                        torch.cuda.synchronize()
                    self.seconds[name] += time.perf_counter() - start
                return
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            try:
                yield
            finally:
                end.record()
                self.seconds.setdefault(name, 0.0)  # keeps the order the phases first ran in
                self._events.append((name, begin, end))

    def _collect(self) -> None:
        """Fold the recorded events into ``seconds``: waits for the last one (one sync, after the step)."""
        if not self._events:
            return
        self._events[-1][2].synchronize()
        for name, begin, end in self._events:
            self.seconds[name] += begin.elapsed_time(end) / 1e3
        self._events.clear()

    def total(self) -> float:
        self._collect()
        return sum(self.seconds.values())

    def breakdown(self) -> Dict[str, float]:
        """Seconds per phase, in the order the phases first ran."""
        self._collect()
        return dict(self.seconds)

    def reset(self) -> None:
        self.seconds.clear()
        self._events.clear()

    def format(self) -> str:
        self._collect()
        total = self.total() or 1.0
        return "  ".join(f"{k} {v * 1e3:.1f}ms ({100 * v / total:.0f}%)" for k, v in self.seconds.items())
