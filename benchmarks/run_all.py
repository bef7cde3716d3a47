"""Every benchmark in one call (what a lent GPU runs): the kernel suites and the peak-memory comparison
(bench_kernels.py), one end-to-end GRPO step against a straightforward loop (bench_grpo_step.py; needs the
Crafter recording, see configs/crafter_ar.yaml), then the markdown tables and plots (report.py).
Run: python benchmarks/run_all.py [--out DIR] [--skip-grpo-step]"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_grpo_step  # noqa: E402
import bench_kernels  # noqa: E402
import report  # noqa: E402
from harness import RESULTS_DIR  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(RESULTS_DIR), help="results folder (default benchmarks/results)")
    parser.add_argument("--skip-grpo-step", action="store_true", help="skip the end-to-end GRPO step")
    args = parser.parse_args()
    bench_kernels.main(["--out", args.out])
    if not args.skip_grpo_step:
        print("\n== grpo_step")
        bench_grpo_step.main(["--out", args.out])
    report.main(["--results", args.out])


if __name__ == "__main__":
    main()
