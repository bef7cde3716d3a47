"""`rlir export RUN --out DIR`: the world model of a GRPO run (its latest checkpoint, or the one given) as a
``save_pretrained`` directory (config.json + safetensors) that ``rlir eval --world-model DIR``, ``rlir train``
(models.world_model) and users' ``from_pretrained`` load. Reads the checkpoint's policy.safetensors, or without
one the DCP shards written by any number of ranks, in one process (no torchrun needed).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser("export", help="a GRPO run's world model as a save_pretrained directory",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a GRPO run directory (its latest checkpoint) or one checkpoint "
                        "directory (RUN/checkpoints/step_*)")
    parser.add_argument("--out", type=Path, required=True, help="the directory to write")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                        help="weights dtype (default fp32, the trained master weights)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rlir.grpo.trained_world_model import export_world_model

    try:
        info = export_world_model(args.run, args.out, dtype=args.dtype)
    except (ValueError, FileNotFoundError) as error:  # CheckpointError, ConfigError: one line each
        print(f"rlir export: error: {error}", file=sys.stderr)
        return 2
    print(f"rlir export: {info['class']} of {info['checkpoint']} (step {info['step']}) -> {args.out}")
    return 0
