"""`rlir profile --config FILE [--steps N] [key=value ...]`: a few GRPO steps under torch.profiler.

Writes a Chrome trace (open it in chrome://tracing or https://ui.perfetto.dev) and prints the top ops, after
one warm-up step. Every phase of the loop is an NVTX range (domain "rlir"), so the same run under Nsight
Systems shows rollout / decode / reward / advantage / logprob / loss / backward / optim on the timeline;
the command line for that is printed too.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser("profile", help="profile GRPO steps (Chrome trace + the Nsight command)",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="YAML run config (e.g. configs/crafter_ar.yaml)")
    parser.add_argument("--steps", type=int, default=2, help="profiled steps after one warm-up step (default 2)")
    parser.add_argument("--out", default="runs/profile", help="where the trace goes (default runs/profile)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. rollout.group_size=4")
    parser.set_defaults(func=run)


def nsys_command(config: str, steps: int, overrides: list[str]) -> str:
    train = ["rlir", "train", "--config", config, f"train.steps={steps + 1}", "train.eval_interval=0",
             "train.checkpoint_interval=0", *overrides]
    return ("nsys profile --trace=cuda,nvtx,osrt,cudnn,cublas --cuda-memory-usage=true "
            f"--output=rlir_grpo --force-overwrite=true {shlex.join(train)}")


def run(args: argparse.Namespace) -> int:
    import torch

    from rlir.grpo.config import ConfigError, load_config
    from rlir.grpo.trainer import GRPOTrainer

    if args.steps < 1:
        print("rlir profile: error: --steps must be >= 1", file=sys.stderr)
        return 2
    out = Path(args.out)
    overrides = [*args.overrides, f"out={out / 'run'}", "train.eval_interval=0", "train.checkpoint_interval=0",
                 "eval.at_start=false"]
    try:
        cfg = load_config(args.config, overrides)
        trainer = GRPOTrainer.from_config(cfg)
    except (ConfigError, FileNotFoundError) as error:
        print(f"rlir profile: error: {error}", file=sys.stderr)
        return 2
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    try:
        trainer.step()  # warm-up: allocator, autotuning, lazy reference model
        with torch.profiler.profile(activities=activities, record_shapes=True, profile_memory=True) as prof:
            for _ in range(args.steps):
                trainer.step()
    finally:
        trainer.close()
    trace = out / "trace.json"
    prof.export_chrome_trace(str(trace))
    sort_by = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort_by, row_limit=15))
    print(f"Chrome trace: {trace}")
    print("Nsight Systems, the same run with the NVTX phase ranges:")
    print("  " + nsys_command(args.config, args.steps, list(args.overrides)))
    return 0
