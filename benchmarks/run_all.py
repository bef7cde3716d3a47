"""Every benchmark in one call (what a lent GPU runs): the kernel suites and the peak-memory comparison
(bench_kernels.py), then the markdown tables and plots (report.py). Run: python benchmarks/run_all.py [--out DIR]"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_kernels  # noqa: E402
import report  # noqa: E402
from harness import RESULTS_DIR  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(RESULTS_DIR), help="results folder (default benchmarks/results)")
    args = parser.parse_args()
    bench_kernels.main(["--out", args.out])
    report.main(["--results", args.out])


if __name__ == "__main__":
    main()
