"""`prefopt reproduce [NAME]`: list the reproductions, or run one (`prefopt.reproduce.run_reproduction`).

With a NAME the run draws a progress bar, prints the checks table and writes report.md, figure.png and
result.json into --out (default ./reproductions/NAME). Exit code: 0 when every check passes, 1 when one
fails, 2 for a mistake (unknown name, bad --seeds, an --out that cannot be written).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

import prefopt.reproduce as reproductions
from prefopt.cli.command import Command, Option, Switch, given_settings
from prefopt.cli.settings import deprecation_note, parse_seeds
from prefopt.errors import SettingsError
from prefopt.reproduce import Reproduction, render_checks
from prefopt.reproduce.base import silent_progress

__all__ = ["COMMAND", "ReproduceCommand", "main", "render_listing"]


@dataclass(frozen=True)
class ReproduceSettings:
    """One reproduction to run (None: list them), where its report goes, and how."""

    reproduction: Reproduction | None
    out_dir: Path
    quick: bool
    seeds: int | None  # replicas 0..seeds-1; None: the paper's count
    progress: bool


class ReproduceCommand(Command):
    name = "reproduce"
    help = "re-run published results (list them, or run one)"
    description = (
        "Re-run a paper's experiment and check its claims against our numbers; without NAME, list the "
        "reproductions with their paper, what they check and their runtime. Exit code 0 when every check "
        "passes, 1 when one fails."
    )
    examples = """\
examples:
  prefopt reproduce                          # list: name, paper, what is checked, runtime
  prefopt reproduce ipo-bandits --quick      # the reduced setting the test suite runs
  prefopt reproduce dpo-optimum --seeds 0,1,2,3 --out results/dpo"""
    flags = {
        "--out": Option("out", Path, "report folder (default ./reproductions/NAME)", metavar="DIR"),
        "--quick": Switch("quick", True, "the reduced setting used by the test suite"),
        "--seeds": Option(
            "seeds",
            str,
            "the seeds of an experiment with random replicas: 0,1,...,N-1 (default: "
            "the paper's count; a bare number N, the old spelling, still means N seeds until the next "
            "release)",
            metavar="SEED,SEED,...",
        ),
        "--quiet": Switch("progress", False, "no progress bar"),
    }

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("name", nargs="?", metavar="NAME", help="the reproduction to run (omit to list them)")

    def settings(self, args: argparse.Namespace) -> ReproduceSettings:
        given: dict[str, Any] = given_settings(args, self.flags)
        seeds = seed_count(given["seeds"]) if "seeds" in given else None
        # through the module: tests (and plug-ins) may replace prefopt.reproduce.get_reproduction
        reproduction = reproductions.get_reproduction(args.name) if args.name else None
        if reproduction is not None and seeds is not None and not reproduction.seeded:
            print(
                f"prefopt reproduce: {reproduction.name} is exact (no random replicas); --seeds is ignored.",
                file=sys.stderr,
            )
        out_dir = given.get("out") or Path("reproductions") / (reproduction.name if reproduction else "")
        return ReproduceSettings(reproduction, out_dir, given.get("quick", False), seeds, given.get("progress", True))

    def execute(self, settings: ReproduceSettings, args: argparse.Namespace) -> int:
        reproduction = settings.reproduction
        if reproduction is None:
            print(render_listing())
            return 0
        bar = _Bar(reproduction.name) if settings.progress else None
        try:
            result = reproductions.run_reproduction(
                reproduction.name,
                out_dir=settings.out_dir,
                quick=settings.quick,
                seeds=settings.seeds,
                progress=bar or silent_progress,
            )
        finally:
            if bar is not None:
                bar.close()
        print(f"{reproduction.name}: {reproduction.title}\npaper: {reproduction.paper}\n")
        print(render_checks(result.outcome.checks))
        failed = sum(not c.passed for c in result.outcome.checks)
        verdict = "all checks pass" if not failed else f"{failed} of {len(result.outcome.checks)} checks FAIL"
        print(f"\n{verdict} ({'quick' if settings.quick else 'full'} run, {result.seconds:.1f} s)")
        for kind, path in result.files.items():
            print(f"{kind:>7}: {path}")
        return 0 if not failed else 1


def seed_count(text: str) -> int:
    """`--seeds 0,1,2` → 3 replicas. A reproduction draws its replicas in order, so the list is 0..N-1. A bare
    number N is the old spelling, N seeds 0..N-1, accepted until the next release with a note."""
    if text.strip().isdigit():
        count = int(text)
        if count < 1:
            raise SettingsError(
                f"--seeds {text}: a single number still means a number of seeds (seeds 0..N-1) "
                "until the next release, so it must be ≥ 1; give the seeds, e.g. --seeds 0,1,2"
            )
        deprecation_note("reproduce", f"--seeds {count} (a number of seeds)", f"--seeds {_listed(count)}")
        return count
    seeds = parse_seeds(text)
    if seeds != tuple(range(len(seeds))):
        raise SettingsError(
            f"--seeds {text}: a reproduction draws its replicas in order, seeds 0..N-1; give "
            f"--seeds {_listed(len(seeds))}"
        )
    return len(seeds)


def _listed(count: int) -> str:
    return ",".join(str(s) for s in range(count)) if count <= 4 else f"0,1,...,{count - 1}"


def render_listing() -> str:
    """The table printed by `prefopt reproduce` without a name."""
    reps = reproductions.list_reproductions()
    width = max(len(r.name) for r in reps)
    lines = []
    for r in reps:
        lines += [
            f"{r.name:<{width}}  {r.title}",
            f"{'':<{width}}  paper:   {r.paper}",
            f"{'':<{width}}  checks:  {r.checks}",
            f"{'':<{width}}  runtime: {r.runtime}",
            "",
        ]
    lines.append(f"{len(reps)} reproductions. `prefopt reproduce NAME` runs one (--quick for the reduced setting).")
    return "\n".join(lines)


class _Bar:
    """A `Progress` drawn with tqdm on stderr: one bar per stage, replaced when the stage changes."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.bar: Any = None
        self.stage = ""

    def __call__(self, done: int, total: int, stage: str) -> None:
        if self.bar is None or stage != self.stage or total != self.bar.total:
            self.close()
            self.bar = tqdm(total=total, desc=f"{self.name}: {stage}", file=sys.stderr, leave=False)
            self.stage = stage
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


COMMAND = ReproduceCommand()


def main(argv: Sequence[str] | None = None) -> int:
    """`prefopt reproduce` with `argv` (the arguments after `reproduce`)."""
    return COMMAND.main(argv)
