"""Reproductions of published results: each re-runs a paper's experiment and checks its claims.

    prefopt reproduce                     # list them: name, paper, what is checked, runtime
    prefopt reproduce ipo-bandits         # run one: table of claims, PNG figure, Markdown report

    from prefopt.reproduce import run_reproduction
    result = run_reproduction("single-pair", quick=True, out_dir=None)   # no files written
    result.outcome.passed

Each reproduction is one module (see `prefopt.reproduce.base` for the contract) listed in
`REPRODUCTIONS`; modules are imported when listed or run, never at `import prefopt`.
"""

from __future__ import annotations

import difflib
import importlib

from prefopt.reproduce.base import Check, Outcome, Reproduction, Table
from prefopt.reproduce.report import RunResult, render_checks, run_reproduction

__all__ = [
    "REPRODUCTIONS",
    "Check",
    "Outcome",
    "Reproduction",
    "RunResult",
    "Table",
    "UnknownReproductionError",
    "get_reproduction",
    "list_reproductions",
    "render_checks",
    "run_reproduction",
]

# Module names under prefopt.reproduce, in listing order. A new reproduction adds its module here.
REPRODUCTIONS: tuple[str, ...] = (
    "ipo_bandits",
    "dpo_optimum",
    "best_of_n",
    "kto_contradictory",
    "single_pair",
    "likelihood_displacement",
    "length_exploitation",
    "dpo_frontier",
    "overoptimization",
)


class UnknownReproductionError(ValueError):
    """An unknown reproduction name; the message lists the valid ones."""


def list_reproductions() -> list[Reproduction]:
    """Every registered reproduction's declaration, in listing order."""
    return [importlib.import_module(f"prefopt.reproduce.{module}").REPRODUCTION for module in REPRODUCTIONS]


def get_reproduction(name: str) -> Reproduction:
    """The reproduction called `name` (as listed); an unknown name raises an error listing the valid ones."""
    known = {r.name: r for r in list_reproductions()}
    if name in known:
        return known[name]
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UnknownReproductionError(f"unknown reproduction {name!r}.{hint} Valid names: {', '.join(known)}.")
