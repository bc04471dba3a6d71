"""The shape of a reproduction: its declaration, the checks it reports, and small statistics helpers.

A reproduction is one module that defines

    CONFIG / QUICK     frozen dataclasses: the paper's setting and a reduced one for the test suite
    PAPER              the paper's values or claims as data, each citing its section, table or figure
    run(config, progress) -> Outcome
    REPRODUCTION       a `Reproduction` naming all of the above

lives in `prefopt.reproduce.experiments`, listed in `prefopt.reproduce.REPRODUCTIONS`. The runner
(`prefopt.reproduce.run_reproduction`) times the run; `prefopt.reproduce.report` draws the figure and writes
the Markdown report; an experiment never touches files or the terminal.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from prefopt.threads import torch_threads

__all__ = [
    "Check",
    "Table",
    "Outcome",
    "Reproduction",
    "Progress",
    "silent_progress",
    "check_close",
    "check_at_most",
    "check_at_least",
    "mean_ci",
    "single_thread",
    "fmt",
]


class Progress(Protocol):
    """Progress callback: `progress(done, total, stage)`; `stage` names the part being run."""

    def __call__(self, done: int, total: int, stage: str) -> None: ...


def silent_progress(done: int, total: int, stage: str) -> None:
    """A `Progress` that reports nothing (the default for library and test use)."""


@dataclass(frozen=True)
class Check:
    """One row of a reproduction's verdict table.

    Attributes:
        claim: what is checked, in words.
        paper: the paper's value or claim (or the closed form it implies), as printed.
        ours: our measured value, as printed.
        tolerance: the acceptance rule, as printed (e.g. "± 0.02", "≤ 1e-6", "exact").
        passed: whether `ours` satisfies the rule.
        value: the measured number behind `ours` when there is one (for JSON reports).
    """

    claim: str
    paper: str
    ours: str
    tolerance: str
    passed: bool
    value: float | None = None


@dataclass(frozen=True)
class Table:
    """A detail table for the report: a title, column names and rows of already formatted cells."""

    title: str
    header: Sequence[str]
    rows: Sequence[Sequence[str]]

    def __post_init__(self) -> None:
        for i, row in enumerate(self.rows):
            if len(row) != len(self.header):
                raise ValueError(f"Table {self.title!r}: row {i} has {len(row)} cells, header has {len(self.header)}.")


@dataclass
class Outcome:
    """What `run` returns.

    Attributes:
        checks: the verdict rows (claim / paper / ours / tolerance / PASS-FAIL).
        tables: detail tables for the report (per-setting numbers behind the checks).
        draw: draws the figure on a matplotlib Figure it is given (called only when a PNG is wanted).
        figsize: the figure size in inches.
        notes: paragraphs for the report (setting, conventions, deviations from the paper).
        data: raw numbers (JSON-serialisable) written to result.json.
    """

    checks: list[Check]
    tables: list[Table] = field(default_factory=list)
    draw: Callable[[Any], None] | None = None
    figsize: tuple[float, float] = (10.0, 6.0)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """True when every check passed."""
        return all(c.passed for c in self.checks)


@dataclass(frozen=True)
class Reproduction:
    """The declaration of one reproduction, as listed by `prefopt reproduce`.

    Attributes:
        name: the CLI name (`prefopt reproduce NAME`).
        title: one line saying what is reproduced.
        paper: the citation, with the section, table or figure.
        checks: one line saying what the checks assert.
        runtime: the measured runtime of the full run, with the machine.
        make_config: `make_config(quick, seeds)` → the frozen config (`seeds=None`: the paper's count).
        run: `run(config, progress)` → `Outcome`.
        seeded: whether the experiment has random replicas that `seeds` sets (exact ones ignore it).
    """

    name: str
    title: str
    paper: str
    checks: str
    runtime: str
    make_config: Callable[[bool, int | None], Any]
    run: Callable[[Any, Progress], Outcome]
    seeded: bool = False


def fmt(x: float, digits: int = 4) -> str:
    """A number for a report cell: fixed or scientific, whichever is readable, `digits` significant."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "nan"
    if x == 0:
        return "0"
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    if 1e-3 <= abs(x) < 1e5:
        return f"{x:.{digits}g}"
    return f"{x:.{max(digits - 1, 1)}e}"


def check_close(claim: str, paper: str, ours: float, target: float, atol: float, digits: int = 4) -> Check:
    """A check that |ours − target| ≤ atol."""
    ok = math.isfinite(ours) and abs(ours - target) <= atol
    return Check(claim, paper, fmt(ours, digits), f"± {fmt(atol, 2)}", ok, float(ours))


def check_at_most(claim: str, paper: str, ours: float, bound: float, digits: int = 4) -> Check:
    """A check that ours ≤ bound."""
    return Check(claim, paper, fmt(ours, digits), f"≤ {fmt(bound, 3)}", bool(ours <= bound), float(ours))


def check_at_least(claim: str, paper: str, ours: float, bound: float, digits: int = 4) -> Check:
    """A check that ours ≥ bound."""
    return Check(claim, paper, fmt(ours, digits), f"≥ {fmt(bound, 3)}", bool(ours >= bound), float(ours))


def mean_ci(x: torch.Tensor, dim: int = 0, level: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and half-width of the Student-t confidence interval along `dim`.

    half-width = t_{(1+level)/2, n−1} · s / √n with s the sample standard deviation (n−1 in the
    denominator); with n = 1 the half-width is NaN (no spread can be estimated).

    Args:
        x: samples, the replicate axis at `dim` (e.g. [seeds, ...]).
    Returns:
        (mean, half_width), each of x's shape without `dim`.
    """
    from scipy.special import stdtrit  # heavy: the Student-t quantile; scipy.stats would cost seconds to import

    n = x.shape[dim]
    mean = x.mean(dim)
    if n < 2:
        return mean, torch.full_like(mean, float("nan"))
    quantile = float(stdtrit(n - 1, 0.5 + level / 2))
    return mean, quantile * x.std(dim, unbiased=True) / math.sqrt(n)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run tiny-tensor loops on one intra-op thread (restored after).

    Bandit tensors hold tens of numbers; with several threads every op pays a synchronisation that
    costs more than the arithmetic, and on a busy machine the threads spin against each other
    (measured on a shared 2-core CPU: 48 ms per step with 2 threads, 1.9 ms with 1).
    """
    with torch_threads(1):
        yield
