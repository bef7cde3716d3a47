"""Every benchmark in one call, inside a time budget: what a lent GPU runs in its one device call
(../shared/gpu/README.md; benchmarks/gpu_call.sh is that call).

Stages, most wanted first; a stage starts only when its estimate fits what is left of --budget-s, and the ones
that do not are listed as skipped in run_all_<cpu|cuda>.json:
  rollout       bench_rollout.py: the Crafter AR rollout eager / compiled / CUDA graphs, the MineWorld-300M-sized
                model at batch 1 (CUDA)
  grpo_step     bench_grpo_step.py: one GRPO step of configs/crafter_ar.yaml, rlir vs the competent and the
                straightforward loops (records a small Crafter recording first when data/crafter is missing)
  attention     bench_attention.py: frame-causal flex attention vs sdpa
  kernels       bench_kernels.py's suites without their torch.compile providers, then (if time is left) the
                torch.compile providers suite by suite (each compiles: tens of seconds)
  memory        bench_memory.py's peak-memory comparison
then report.py (RESULTS.md; plots when matplotlib is installed). A stage that fails is recorded and the next
one runs. --bundle PATH packs the results folder into one .tar.gz (the device call returns at most 8 files).

--dry-run runs every stage at tiny sizes (the tiny rollout, configs/tiny_ar.yaml's GRPO step, the smallest case of
each suite, one timed call per provider, no torch.compile providers, no memory stage) to check the plumbing on
CPU in under a minute (tests/benchmarks/test_run_all.py).

Run: python benchmarks/run_all.py [--out DIR] [--budget-s 230] [--only STAGE ...] [--dry-run] [--bundle PATH]
"""
from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from harness import RESULTS_DIR, run_cases, write_results  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STAGES = ("rollout", "grpo_step", "attention", "kernels", "memory")
# Seconds a stage is expected to take on a lent H200 (compilation included), used to decide what fits.
ESTIMATE_CUDA = {"rollout": 150, "grpo_step": 60, "attention": 25, "kernels": 90, "memory": 45,
                 "kernels_compiled_suite": 40}
ESTIMATE_CPU = {"rollout": 60, "grpo_step": 240, "attention": 30, "kernels": 120, "memory": 120,
                "kernels_compiled_suite": 90}
TINY_GRPO = ["--config", "configs/tiny_ar.yaml", "--prompts", "2", "--group-size", "4", "--frames", "2",
             "--repeats", "1", "--set", "loss.beta=0.0", "train.inner_epochs=1", "train.micro_batch_size=4",
             "train.grad_accumulation=2", "train.eval_interval=0", "train.checkpoint_interval=0"]


class StageTimeout(BaseException):
    """A stage ran past its limit (2.5x its estimate, or what is left of the budget). A BaseException, so that
    the benchmarks' per-provider ``except Exception`` does not swallow it."""


_TIMED_OUT = {"stage": False}


def _alarm(signum, frame):
    # Library code (torch.compile's tracer, for one) may catch the exception and carry on, so the alarm re-arms
    # itself each second until the stage returns, and the flag marks the stage failed even if every raise was eaten.
    _TIMED_OUT["stage"] = True
    signal.alarm(1)
    raise StageTimeout("stage ran past its time limit")


def write_bundle(out: Path, bundle: Path) -> None:
    """Pack the results folder's JSON, markdown and plots into ``bundle`` (rewritten after every stage, so a
    call cut short still returns what finished)."""
    bundle.parent.mkdir(parents=True, exist_ok=True)
    tmp = bundle.with_name(bundle.name + ".tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for path in sorted(out.iterdir()):
            if path.suffix in (".json", ".md", ".png"):
                tar.add(path, arcname=f"results/{path.name}")
    tmp.replace(bundle)


def is_compiled_provider(name: str) -> bool:
    return "compile" in name


def kernel_suites() -> Dict[str, Callable]:
    import bench_attention  # noqa: F401  (fail fast on a missing package, before any stage runs)
    import bench_kernels

    return dict(bench_kernels.SUITES)


def run_suite(name: str, cases_fn: Callable, out: Path, *, dry_run: bool, compiled: bool) -> None:
    """One suite's cases (the smallest only in a dry run), its torch.compile providers or the others; rows merge
    into the suite's JSON, so the two passes make one file."""
    cases = cases_fn()
    if dry_run:
        cases = [min(cases, key=lambda c: sum(v for v in c.shape.values() if isinstance(v, int)))]
    names = {p for c in cases for p in c.providers}
    only = sorted(p for p in names if is_compiled_provider(p) == compiled)
    if not only:
        return
    rows = run_cases(cases, only=only)
    path = out / f"{name}_{'cuda' if torch.cuda.is_available() else 'cpu'}.json"
    if compiled and path.exists():
        previous = json.loads(path.read_text())["rows"]
        rows = previous + rows
    write_results(name, rows, out)


def crafter_data() -> List[str]:
    """--set data.path=... for bench_grpo_step: data/crafter when recorded, else a small recording made now."""
    if (REPO / "data" / "crafter" / "manifest.json").exists():
        return []
    path = Path(tempfile.gettempdir()) / "rlir_bench_crafter"
    if not (path / "manifest.json").exists():
        print(f"no data/crafter: recording 6 short episodes into {path}", flush=True)
        subprocess.run([sys.executable, "-m", "rlir", "data", "record", "--env", "crafter", "--episodes", "6",
                        "--steps", "120", "--seed", "0", "--out", str(path), "--quiet"], check=True, cwd=REPO)
    return [f"data.path={path}"]


def main(argv=None) -> Dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(RESULTS_DIR), help="results folder (default benchmarks/results)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="seconds for all stages (default: unlimited; the device call uses 230)")
    parser.add_argument("--only", nargs="*", choices=STAGES, help="run only these stages")
    parser.add_argument("--dry-run", action="store_true", help="every stage at tiny sizes (plumbing check)")
    parser.add_argument("--bundle", default=None, help="also pack the results folder into this .tar.gz")
    parser.add_argument("--skip-grpo-step", action="store_true", help="(old flag) same as leaving grpo_step out")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    harness.QUICK = args.dry_run
    cuda = torch.cuda.is_available()
    estimate = ESTIMATE_CUDA if cuda else ESTIMATE_CPU
    stages = [s for s in STAGES if (not args.only or s in args.only)
              and not (s == "grpo_step" and args.skip_grpo_step) and not (s == "memory" and args.dry_run)]
    start = time.perf_counter()
    status: Dict[str, dict] = {}

    def left() -> float:
        return float("inf") if args.budget_s is None else args.budget_s - (time.perf_counter() - start)

    def run(name: str, fn: Callable[[], object], cost: float) -> bool:
        if not args.dry_run and cost > left():
            status[name] = {"status": "skipped", "reason": f"estimated {cost:.0f} s, {left():.0f} s left"}
            print(f"\n== {name}: skipped ({status[name]['reason']})", flush=True)
            return False
        print(f"\n== {name}", flush=True)
        t0 = time.perf_counter()
        limit = None if args.dry_run or args.budget_s is None else max(1, int(min(left(), 2.5 * cost)))
        _TIMED_OUT["stage"] = False
        alarm = limit is not None and hasattr(signal, "SIGALRM")
        if alarm:
            signal.signal(signal.SIGALRM, _alarm)
            signal.alarm(limit)
        try:
            try:
                fn()
            finally:
                if alarm:
                    signal.alarm(0)
            if _TIMED_OUT["stage"]:
                raise StageTimeout("stage ran past its time limit (a library caught the first stop)")
        except BaseException as err:  # noqa: BLE001 - one failing stage must not stop the call
            if isinstance(err, KeyboardInterrupt):
                raise
            if _TIMED_OUT["stage"] and not isinstance(err, StageTimeout):  # a library raised its own error instead
                err = StageTimeout(f"stage ran past its time limit (surfaced as {type(err).__name__})")
            status[name] = {"status": "failed", "seconds": round(time.perf_counter() - t0, 1),
                            "error": f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"}
            traceback.print_exc()
            return False
        finally:
            if args.bundle:
                write_bundle(out, Path(args.bundle))
        status[name] = {"status": "ok", "seconds": round(time.perf_counter() - t0, 1)}
        return True

    suites = {}
    if "kernels" in stages or "attention" in stages:
        suites = kernel_suites()
    for stage in stages:
        if stage == "rollout":
            import bench_rollout

            run("rollout", lambda: bench_rollout.main(["--out", str(out), "--repeats", "1" if args.dry_run else "3"]
                                                      + (["--tiny"] if args.dry_run else [])), estimate["rollout"])
        elif stage == "grpo_step":
            import bench_grpo_step

            def grpo_step():
                extra = TINY_GRPO if args.dry_run else ["--repeats", "2", "--set", *crafter_data()]
                bench_grpo_step.main(["--out", str(out), *extra])

            run("grpo_step", grpo_step, estimate["grpo_step"])
        elif stage == "attention":
            import bench_attention

            run("attention", lambda: run_suite("attention", bench_attention.cases, out, dry_run=args.dry_run,
                                               compiled=False), estimate["attention"])
        elif stage == "kernels":
            def kernels():
                for name, cases in suites.items():
                    print(f"\n== kernels/{name}", flush=True)
                    run_suite(name, cases, out, dry_run=args.dry_run, compiled=False)

            run("kernels", kernels, estimate["kernels"])
        elif stage == "memory":
            import bench_memory

            run("memory", lambda: write_results("memory", bench_memory.run(), out), estimate["memory"])
    # What is left of the budget goes to the compiled providers: the attention's compiled flex first.
    if not args.dry_run:
        for name, cases in ([("attention", None)] if "attention" in stages else []) + \
                ([(n, c) for n, c in suites.items()] if "kernels" in stages else []):
            if name == "attention":
                import bench_attention

                cases = bench_attention.cases
            run(f"compiled/{name}", lambda n=name, c=cases: run_suite(n, c, out, dry_run=False, compiled=True),
                estimate["kernels_compiled_suite"])

    import report

    try:
        report.main(["--results", str(out)])
        status["report"] = {"status": "ok"}
    except Exception as err:  # noqa: BLE001
        status["report"] = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
        traceback.print_exc()
    summary = {"environment": harness.environment(), "dry_run": args.dry_run, "budget_s": args.budget_s,
               "seconds": round(time.perf_counter() - start, 1), "stages": status}
    (out / f"run_all_{'cuda' if cuda else 'cpu'}.json").write_text(json.dumps(summary, indent=1, default=str))
    print("\n== run_all: " + ", ".join(f"{k} {v['status']}" for k, v in status.items())
          + f" ({summary['seconds']} s)", flush=True)
    if args.bundle:
        write_bundle(out, Path(args.bundle))
        print(f"wrote {args.bundle}")
    return status


if __name__ == "__main__":
    main()
