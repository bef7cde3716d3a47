"""Every rlir kernel against its PyTorch reference, torch.compile of it, and (on CUDA) the Triton kernel;
plus the peak-memory comparison of token_logprobs vs log_softmax.gather. Prints tables and writes one JSON
per benchmark under benchmarks/results/. Run: python benchmarks/bench_kernels.py [--out DIR] [--skip-memory]"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_flow_sde_step  # noqa: E402
import bench_fused_linear_logprobs  # noqa: E402
import bench_group_advantage  # noqa: E402
import bench_grpo_loss  # noqa: E402
import bench_memory  # noqa: E402
import bench_token_logprobs  # noqa: E402
from harness import run_cases, write_results  # noqa: E402

SUITES = {
    "group_advantage": bench_group_advantage.cases,
    "token_logprobs": bench_token_logprobs.cases,
    "grpo_loss": bench_grpo_loss.cases,
    "fused_linear_logprobs": bench_fused_linear_logprobs.cases,
    "flow_sde_step": bench_flow_sde_step.cases,
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--only", nargs="*", choices=sorted(SUITES), help="run only these suites")
    parser.add_argument("--skip-memory", action="store_true", help="skip the peak-memory comparison")
    args = parser.parse_args(argv)
    for name, cases in SUITES.items():
        if args.only and name not in args.only:
            continue
        print(f"\n== {name}")
        write_results(name, run_cases(cases()), args.out)
    if not args.skip_memory:
        print("\n== peak memory")
        write_results("memory", bench_memory.run(), args.out)


if __name__ == "__main__":
    main()
