"""`rlir train --config FILE [--resume] [--out DIR] [key=value ...]`: GRPO post-training of a world model
with the IDM reward (RLIR). ``rlir train --help-config`` lists every key; overrides use dotted keys, e.g.
``rollout.group_size=16 optim.lr=2e-5``. The run directory gets config.yaml, metrics.jsonl, tb/ (TensorBoard)
and checkpoints/step_*/; --resume continues exactly from the newest checkpoint there.

On many processes: ``torchrun --nproc_per_node N -m rlir train --config FILE ...`` (and across nodes with
``--nnodes M --rdzv-backend c10d --rdzv-endpoint HOST:PORT``); see rlir/grpo/distributed.py. Under torchrun's
``--max-restarts``, a restarted job resumes from the newest checkpoint by itself.
"""
from __future__ import annotations

import argparse
import os
import sys

from rlir.schema import print_action


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="GRPO post-training with the inverse-dynamics reward",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="YAML run config (e.g. configs/crafter_ar.yaml)")
    parser.add_argument("--out", default=None, help="run directory (default: the config's `out`)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the run directory")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.steps=10")
    parser.add_argument("--help-config", action=print_action(_key_reference),
                        help="print every config key with its type, default and meaning, and exit")
    parser.set_defaults(func=run)


def _key_reference() -> str:
    from rlir.grpo.config import help_config

    return help_config()


def _lost_rank(error: BaseException) -> bool:
    """A collective that failed because another rank went away (killed, crashed, out of memory)."""
    import torch.distributed as dist

    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(
        word in text for word in ("gloo", "nccl", "connection closed", "connection reset", "broken pipe",
                                  "timed out", "socket"))


def run(args: argparse.Namespace) -> int:
    from rlir.grpo.config import ConfigError, load_config
    from rlir.parallel import under_torchrun

    overrides = list(args.overrides)
    if args.out is not None:
        overrides.append(f"out={args.out}")
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as error:
        print(f"rlir train: error: {error}", file=sys.stderr)
        return 2

    from rlir.grpo.distributed import check_divisible
    from rlir.parallel import close_distributed, init_distributed, quiet_unless_main

    try:
        parallel, _ = init_distributed(cfg.device)
        check_divisible(cfg, parallel)  # before any model is built
    except ConfigError as error:
        if not under_torchrun() or int(os.environ.get("RANK", "0")) == 0:
            print(f"rlir train: error: {error}", file=sys.stderr)
        close_distributed()
        return 2
    where = f"rank {parallel.rank}/{parallel.world_size}: " if parallel.distributed else ""
    quiet_unless_main(parallel)
    try:
        return _train(cfg, args, parallel, where)
    finally:
        close_distributed()


def _train(cfg, args, parallel, where: str) -> int:
    from pathlib import Path

    from rlir.grpo.checkpoint import list_checkpoints
    from rlir.grpo.config import ConfigError
    from rlir.grpo.trainer import GRPOTrainer

    resume = args.resume
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if restarts and not resume and list_checkpoints(Path(cfg.out) / "checkpoints"):
        resume = True  # torchrun --max-restarts restarted the job: go on from the newest checkpoint
        if parallel.is_main:
            print(f"rlir train: restart {restarts}: resuming from the newest checkpoint under {cfg.out}", flush=True)
    try:
        trainer = GRPOTrainer.from_config(cfg, resume=resume)
    except (ConfigError, FileNotFoundError) as error:
        if parallel.is_main:
            print(f"rlir train: error: {error}", file=sys.stderr)
        return 2
    try:
        trainer.train()
    except Exception as error:  # noqa: BLE001
        if parallel.distributed and _lost_rank(error):
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            print(f"rlir train: error: {where}a collective failed, another rank has probably died (torchrun's "
                  f"summary names it); the newest checkpoint under {cfg.out}/checkpoints resumes the run "
                  f"(--resume, or torchrun --max-restarts). {type(error).__name__}: {first}", file=sys.stderr)
            return 1
        raise
    finally:
        trainer.close()
    print(f"rlir train: done at step {trainer.step_count}; run directory {cfg.out}")
    return 0
