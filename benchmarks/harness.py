"""What every benchmark script shares: providers, timing, peak memory, the environment record, output.

A benchmark is a list of ``Case``s. Each case names an op, a shape, a dtype and a mode
(forward | backward | full) and holds one zero-argument callable per provider; ``run_cases`` times
each provider (median ms), turns ``bytes_moved`` into GB/s, records peak CUDA memory, prints a table
and returns rows that ``write_results`` stores as JSON under benchmarks/results/.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class Case:
    op: str
    shape: Dict[str, int]
    dtype: str
    mode: str
    providers: Dict[str, Callable[[], Callable[[], object]]]  # name -> builder of the timed callable
    bytes_moved: Optional[int] = None  # minimum HBM traffic of the op, for GB/s against the roofline
    flops: Optional[int] = None
    notes: Dict[str, str] = field(default_factory=dict)


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def environment() -> Dict[str, object]:
    env = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(device=props.name, device_memory_gib=round(props.total_memory / 2**30, 1),
                   cuda=torch.version.cuda, driver=_nvidia_driver())
    else:
        env["device"] = "cpu"
    return env


def _nvidia_driver() -> Optional[str]:
    try:
        import subprocess

        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# Set by ``run_all.py --dry-run``: one warm-up and one timed call per provider (checks the plumbing, not speed).
QUICK = False


def time_ms(fn: Callable[[], object], *, min_runs: int = 5, min_seconds: float = 0.5, max_runs: int = 50) -> float:
    """Median wall time of ``fn`` in ms (Triton's do_bench on CUDA, a perf_counter loop on CPU)."""
    if QUICK:
        fn()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) * 1e3
    if torch.cuda.is_available():
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
    fn()  # warm-up (and torch.compile's compilation)
    times: List[float] = []
    start = time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - start < min_seconds):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def cuda_peak_bytes(fn: Callable[[], object]) -> Optional[int]:
    """Extra CUDA memory ``fn`` needs above what is allocated before it runs."""
    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated() - base)


def run_cases(cases: List[Case], *, only: Optional[List[str]] = None) -> List[Dict[str, object]]:
    rows = []
    for case in cases:
        for name, build in case.providers.items():
            if only and name not in only:
                continue
            row: Dict[str, object] = dict(op=case.op, shape=case.shape, dtype=case.dtype, mode=case.mode,
                                          provider=name)
            try:
                fn = build()
                row["median_ms"] = time_ms(fn)
                row["peak_bytes"] = cuda_peak_bytes(fn)
            except Exception as err:  # a provider that cannot run here is reported, not fatal
                row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
            else:
                seconds = row["median_ms"] / 1e3
                if case.bytes_moved:
                    row["gb_per_s"] = case.bytes_moved / seconds / 1e9
                if case.flops:
                    row["tflop_per_s"] = case.flops / seconds / 1e12
            row.update(case.notes)
            print(format_row(row), flush=True)
            rows.append(row)
    return rows


def format_row(row: Dict[str, object]) -> str:
    shape = ",".join(f"{k}={v}" for k, v in row["shape"].items())
    head = f"{row['op']:<24} {shape:<28} {row['dtype']:<9} {row['mode']:<8} {row['provider']:<16}"
    if "error" in row:
        return f"{head} {row['error']}"
    extra = ""
    if row.get("gb_per_s") is not None:
        extra += f" {row['gb_per_s']:9.1f} GB/s"
    if row.get("tflop_per_s") is not None:
        extra += f" {row['tflop_per_s']:7.2f} TFLOP/s"
    if row.get("peak_bytes") is not None:
        extra += f" {row['peak_bytes'] / 2**20:9.1f} MiB"
    return f"{head} {row['median_ms']:10.3f} ms{extra}"


class Unavailable(Exception):
    """A provider that cannot run on this machine (its row in the JSON says why)."""


def unavailable(reason: str) -> Callable:
    """A provider builder that records ``reason`` instead of running (e.g. a Triton kernel without CUDA)."""
    def build():
        raise Unavailable(reason)
    return build


def installed(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def compiled(fn: Callable) -> Callable:
    """torch.compile of a reference (compiled lazily, on the provider's warm-up call)."""
    return torch.compile(fn, dynamic=False)


def _first_tensor(out) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def provider(fn: Callable, make_inputs: Callable[[bool], tuple], mode: str,
             to_scalar: Callable = lambda out: _first_tensor(out).sum()) -> Callable[[], Callable[[], object]]:
    """A provider builder: ``make_inputs(requires_grad)`` makes the arguments once; the returned callable
    runs ``fn`` (forward), its backward only (the graph is built once and kept), or both (full)."""
    if mode not in ("forward", "backward", "full"):
        raise ValueError(f"mode must be forward, backward or full, got {mode!r}")

    def build() -> Callable[[], object]:
        args = make_inputs(mode != "forward")
        leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
        if mode == "forward":
            def run():
                with torch.no_grad():
                    return fn(*args)
            return run
        if mode == "backward":
            scalar = to_scalar(fn(*args))
            return lambda: torch.autograd.grad(scalar, leaves, retain_graph=True)
        return lambda: torch.autograd.grad(to_scalar(fn(*args)), leaves)

    return build


def write_results(name: str, rows: List[Dict[str, object]], out_dir: Optional[Path] = None,
                  extra: Optional[Dict[str, object]] = None) -> Path:
    out_dir = Path(out_dir or os.environ.get("RLIR_BENCH_OUT") or RESULTS_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = environment()
    tag = "cuda" if torch.cuda.is_available() else "cpu"
    path = out_dir / f"{name}_{tag}.json"
    payload = {"benchmark": name, "environment": env, "rows": rows, **(extra or {})}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    tmp.replace(path)
    print(f"wrote {path}")
    return path


def main(name: str, cases_fn: Callable[[], List[Case]], doc: Optional[str] = None) -> None:
    """The command line every per-op script shares: run its cases, print, write the JSON."""
    import argparse

    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--providers", nargs="*", default=None, help="only these providers")
    args = parser.parse_args()
    write_results(name, run_cases(cases_fn(), only=args.providers), args.out)
