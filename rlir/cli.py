"""The `rlir` command. Each command group lives in rlir/commands/<name>.py and exposes
``register(subparsers)``; this file only wires them together."""
from __future__ import annotations

import argparse
import importlib
import shlex
import sys

# Command-group modules, in the order `rlir --help` lists them.
COMMAND_MODULES = ["quickstart", "kernels", "data", "pretrain", "train", "export", "profile", "eval", "idm"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlir",
        description="RLIR: GRPO post-training of video world models with inverse-dynamics rewards.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"rlir.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.invocation = "rlir " + shlex.join(argv)  # reports say how they were made
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
