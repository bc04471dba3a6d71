"""Reproductions of published results: each re-runs a paper's experiment and checks its claims.

    prefopt reproduce                     # list them: name, paper, what is checked, runtime
    prefopt reproduce ipo-bandits         # run one: table of claims, PNG figure, Markdown report

    from prefopt.reproduce import run_reproduction
    result = run_reproduction("single-pair", quick=True, out_dir=None)   # no files written
    result.outcome.passed

The experiments are the modules of `prefopt.reproduce.experiments` (one per reproduction, see
`prefopt.reproduce.base` for the contract), listed in `REPRODUCTIONS` and imported when listed or run,
never at `import prefopt`. Beside them: `base` (the contract, checks and statistics), `report` (the
report files), `bandit` (softmax bandits), `bon_sampling` (best-of-N from a sample pool) and
`synthetic_runs` (training arms on the synthetic task).
"""

from __future__ import annotations

import difflib
import importlib
import time
from pathlib import Path

from prefopt.errors import UnknownReproductionError
from prefopt.preflight import check_output_dir
from prefopt.reproduce.base import Check, Outcome, Progress, Reproduction, Table, silent_progress
from prefopt.reproduce.report import RunResult, environment, render_checks, write_report

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

# Module names under prefopt.reproduce.experiments, in listing order. A new reproduction adds its module here.
REPRODUCTIONS: tuple[str, ...] = (
    "ipo_bandits",
    "dpo_optimum",
    "best_of_n_kl",
    "kto_contradictory",
    "single_pair",
    "likelihood_displacement",
    "length_exploitation",
    "dpo_frontier",
    "overoptimization",
)


def list_reproductions() -> list[Reproduction]:
    """Every registered reproduction's declaration, in listing order."""
    return [importlib.import_module(f"prefopt.reproduce.experiments.{module}").REPRODUCTION for module in REPRODUCTIONS]


def get_reproduction(name: str) -> Reproduction:
    """The reproduction called `name` (as listed); an unknown name raises an error listing the valid ones."""
    known = {r.name: r for r in list_reproductions()}
    if name in known:
        return known[name]
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UnknownReproductionError(f"unknown reproduction {name!r}.{hint} Valid names: {', '.join(known)}.")


def run_reproduction(
    name: str,
    *,
    out_dir: str | Path | None = None,
    quick: bool = False,
    seeds: int | None = None,
    progress: Progress = silent_progress,
) -> RunResult:
    """Run reproduction `name` and, when `out_dir` is given, write report.md, figure.png and result.json there.

    Args:
        name: a listed reproduction name (`prefopt.reproduce.list_reproductions()`).
        out_dir: folder for the report (created if missing); None writes nothing.
        quick: the reduced setting the test suite uses, instead of the paper's.
        seeds: number of seeds/replicas where the reproduction has them (None: the paper's count).
        progress: `progress(done, total, stage)` callback.
    """
    if seeds is not None and (isinstance(seeds, bool) or seeds < 1):
        raise ValueError(f"seeds must be an integer ≥ 1 (or None for the paper's count), got {seeds!r}.")
    reproduction = get_reproduction(name)
    if out_dir is not None:
        check_output_dir(out_dir, "out_dir (--out)")  # before the experiment, not after it
    config = reproduction.make_config(quick, seeds)
    start = time.perf_counter()
    outcome = reproduction.run(config, progress)
    result = RunResult(reproduction, config, outcome, time.perf_counter() - start, quick, environment())
    if out_dir is not None:
        write_report(result, Path(out_dir))
    return result
