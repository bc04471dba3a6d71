"""`prefopt reproduce [NAME] [--out DIR] [--quick] [--seeds N]`: list reproductions or run one.

The lead's `prefopt/cli.py` registers the command with `add_reproduce_command(subparsers)`. Without a
NAME the command lists every reproduction (name, paper, what it checks, runtime); with one it runs
it under a progress bar, prints the checks table and writes report.md, figure.png and result.json
into --out (default ./reproductions/NAME). Exit status: 0 when every check passes, 1 when one fails,
2 for a usage error (unknown name, bad --seeds).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from prefopt.settings import SettingsError

__all__ = ["add_reproduce_command", "cmd_reproduce", "render_listing"]


def add_reproduce_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `reproduce` sub-command to an argparse sub-parsers object; returns its parser."""
    parser = subparsers.add_parser(
        "reproduce",
        help="re-run published results (list them, or run one)",
        description="Re-run a paper's experiment and check its claims; without NAME, list the reproductions.",
    )
    parser.add_argument("name", nargs="?", metavar="NAME", help="the reproduction to run (omit to list them)")
    parser.add_argument("--out", type=Path, metavar="DIR", help="report folder (default ./reproductions/NAME)")
    parser.add_argument("--quick", action="store_true", help="the reduced setting used by the test suite")
    parser.add_argument("--seeds", type=int, metavar="N", help="number of seeds where the experiment has them")
    parser.set_defaults(func=cmd_reproduce)
    return parser


def render_listing() -> str:
    """The table printed by `prefopt reproduce` without a name."""
    from prefopt.reproduce import list_reproductions

    reps = list_reproductions()
    width = max(len(r.name) for r in reps)
    lines = []
    for r in reps:
        lines += [f"{r.name:<{width}}  {r.title}", f"{'':<{width}}  paper:   {r.paper}",
                  f"{'':<{width}}  checks:  {r.checks}", f"{'':<{width}}  runtime: {r.runtime}", ""]
    lines.append(f"{len(reps)} reproductions. `prefopt reproduce NAME` runs one (--quick for the reduced setting).")
    return "\n".join(lines)


class _Bar:
    """A `Progress` drawn with tqdm on stderr: one bar per stage, replaced when the stage changes."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.bar: Any = None
        self.stage = ""

    def __call__(self, done: int, total: int, stage: str) -> None:
        from tqdm.auto import tqdm

        if self.bar is None or stage != self.stage or total != self.bar.total:
            self.close()
            self.bar = tqdm(total=total, desc=f"{self.name}: {stage}", file=sys.stderr, leave=False)
            self.stage = stage
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Run the `reproduce` command from parsed arguments; returns the exit status."""
    from prefopt.reproduce import UnknownReproductionError, get_reproduction, render_checks, run_reproduction

    if not args.name:
        print(render_listing())
        return 0
    if args.seeds is not None and args.seeds < 1:
        print(f"prefopt reproduce: --seeds must be ≥ 1, got {args.seeds}.", file=sys.stderr)
        return 2
    try:
        reproduction = get_reproduction(args.name)
    except UnknownReproductionError as err:
        print(f"prefopt reproduce: {err}", file=sys.stderr)
        return 2
    if args.seeds is not None and not reproduction.seeded:
        print(f"prefopt reproduce: {reproduction.name} is exact (no random replicas); --seeds is ignored.",
              file=sys.stderr)
    out_dir = args.out if args.out is not None else Path("reproductions") / reproduction.name
    bar = _Bar(reproduction.name)
    try:
        result = run_reproduction(reproduction.name, out_dir=out_dir, quick=args.quick, seeds=args.seeds, progress=bar)
    except SettingsError as err:  # e.g. an --out that cannot be written: refused before the experiment runs
        print(f"prefopt reproduce: {err}", file=sys.stderr)
        return 2
    finally:
        bar.close()
    print(f"{reproduction.name}: {reproduction.title}\npaper: {reproduction.paper}\n")
    print(render_checks(result.outcome.checks))
    failed = sum(not c.passed for c in result.outcome.checks)
    verdict = "all checks pass" if not failed else f"{failed} of {len(result.outcome.checks)} checks FAIL"
    print(f"\n{verdict} ({'quick' if args.quick else 'full'} run, {result.seconds:.1f} s)")
    for kind, path in result.files.items():
        print(f"{kind:>7}: {path}")
    return 0 if not failed else 1
