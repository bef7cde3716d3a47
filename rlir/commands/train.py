"""`rlir train --config FILE [--resume] [--out DIR] [key=value ...]`: GRPO post-training of a world model
with the IDM reward (RLIR). See rlir/grpo/config.py for every key; overrides use dotted keys, e.g.
``rollout.group_size=16 optim.lr=2e-5``. The run directory gets config.yaml, metrics.jsonl, tb/ (TensorBoard)
and checkpoints/step_*/; --resume continues exactly from the newest checkpoint there.
"""
from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="GRPO post-training with the inverse-dynamics reward",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="YAML run config (e.g. configs/crafter_ar.yaml)")
    parser.add_argument("--out", default=None, help="run directory (default: the config's `out`)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the run directory")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.steps=10")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rlir.grpo.config import ConfigError, load_config

    overrides = list(args.overrides)
    if args.out is not None:
        overrides.append(f"out={args.out}")
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as error:
        print(f"rlir train: error: {error}", file=sys.stderr)
        return 2

    from rlir.grpo.trainer import GRPOTrainer

    try:
        trainer = GRPOTrainer.from_config(cfg, resume=args.resume)
    except (ConfigError, FileNotFoundError) as error:
        print(f"rlir train: error: {error}", file=sys.stderr)
        return 2
    try:
        trainer.train()
    finally:
        trainer.close()
    print(f"rlir train: done at step {trainer.step_count}; run directory {cfg.out}")
    return 0
