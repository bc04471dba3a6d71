"""The `prefopt` command line: one module per command, each a `Command` (prefopt.cli.command) that goes
flag table → settings → validate → run → exit code, with one vocabulary across commands.

    prefopt losses [NAME]          # the registry: every loss, or one in detail        (cli/losses.py)
    prefopt data synth --out DIR   # write the synthetic task's data, model, tokenizer  (cli/data.py)
    prefopt reproduce [NAME]       # list, or re-run, a published result                (cli/reproduce.py)
    prefopt compare                # several losses on the same data, model and seeds   (cli/compare.py)
    prefopt report RUN_DIR         # a comparison's report again, from its folder        (cli/report.py)
    prefopt train --loss dpo       # one offline run                                    (cli/train.py)
    prefopt train-online --loss ppo  # one online run                                   (cli/train_online.py)
    prefopt train-rm               # a reward model                                     (cli/train_rm.py)

The library never imports this package; library functions take keyword arguments and never read argparse
namespaces or YAML.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from prefopt import __version__
from prefopt.cli import compare, losses, report, reproduce, train, train_online, train_rm
from prefopt.cli.command import CommandParser
from prefopt.cli.data import add_data_commands

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The `prefopt` parser with every command; a parsed command's `func(args)` runs it."""
    parser = CommandParser(
        prog="prefopt",
        description="Preference-optimization losses for language models on one fused log-prob engine.",
        epilog="`prefopt COMMAND --help` describes a command's flags.",
    )
    parser.add_argument("--version", action="version", version=f"prefopt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    losses.COMMAND.add_to(sub)
    add_data_commands(sub)
    reproduce.COMMAND.add_to(sub)
    train.COMMAND.add_to(sub)
    train_rm.COMMAND.add_to(sub)
    train_online.COMMAND.add_to(sub)
    compare.COMMAND.add_to(sub)
    report.COMMAND.add_to(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `prefopt` with `argv` (default: the process's arguments); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, --version, or a usage mistake (one line printed by CommandParser)
        return stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    finally:
        _end_process_group()


def _end_process_group() -> None:
    """Under torchrun / accelerate launch: end the process group the command started (`accelerate.PartialState`),
    so that gloo's threads do not outlive the interpreter's teardown and abort a finished process at exit."""
    dist = sys.modules.get("torch.distributed")  # never imported: no group to end
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
