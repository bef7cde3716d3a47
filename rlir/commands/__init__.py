"""Subcommands of the `rlir` CLI, one module per command group (see rlir/cli.py)."""
