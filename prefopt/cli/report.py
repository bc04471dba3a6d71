"""`prefopt report RUN_DIR`: write a comparison's report again from its folder (`prefopt.compare.report_folder`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from prefopt.cli.command import Command
from prefopt.compare import report_folder

__all__ = ["COMMAND", "ReportCommand", "main"]


class ReportCommand(Command):
    name = "report"
    help = "write a comparison's table, plots, samples.md and report.html again from its folder"
    description = (
        "Render the report of a `prefopt compare` output folder again from what it holds: table.md, table.csv, "
        "results.json, the plots, samples.md and the self-contained report.html. It works on a finished "
        "comparison and on one still running or stopped (the report says which runs it lacks); it trains "
        "and samples nothing."
    )
    examples = """\
examples:
  prefopt report runs/compare          # after `prefopt compare`, or while it runs
  prefopt report runs/beta-sweep"""
    flags = {}

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="the --out folder of `prefopt compare`")

    def settings(self, args: argparse.Namespace) -> Path:
        return Path(args.run_dir).expanduser()

    def execute(self, run_dir: Path, args: argparse.Namespace) -> int:
        report_folder(run_dir)
        return 0


COMMAND = ReportCommand()


def main(argv: Sequence[str] | None = None) -> int:
    """`prefopt report` with `argv` (the arguments after `report`)."""
    return COMMAND.main(argv)
