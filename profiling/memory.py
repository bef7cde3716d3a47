"""Peak memory: CUDA allocator statistics on a GPU, the kernel's max-RSS counter on CPU.

On CPU the only trustworthy peak is the process high-water mark (``ru_maxrss``), which never goes down;
measure one piece of work per fresh process (the benchmarks spawn one) and subtract the RSS before it.
"""
from __future__ import annotations

import os
import resource

import torch


def reset_peak_memory(device: torch.device | str | None = None) -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device | str | None = None) -> int:
    """Peak bytes allocated on a CUDA device since the last ``reset_peak_memory``."""
    return int(torch.cuda.max_memory_allocated(device))


def current_rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def max_rss_bytes() -> int:
    """This process's resident-memory high-water mark (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
