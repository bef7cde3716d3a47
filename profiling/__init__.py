"""rlir.profiling: NVTX ranges and a phase timer for the GRPO loop and the benchmarks."""
from .phases import PhaseTimer, nvtx_range
from .memory import current_rss_bytes, max_rss_bytes, peak_memory, reset_peak_memory

__all__ = ["PhaseTimer", "nvtx_range", "peak_memory", "reset_peak_memory", "current_rss_bytes", "max_rss_bytes"]
