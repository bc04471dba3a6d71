"""The report of a reproduction's run: the checks table, a PNG figure, Markdown and JSON.

Files land in `out_dir` (the CLI's default is ./reproductions/NAME):

    report.md      the checks table (claim / paper / ours / tolerance / PASS-FAIL), detail tables,
                   notes, configuration, runtime and environment
    figure.png     the reproduction's figure (matplotlib, Agg backend)
    result.json    the checks and raw numbers, for tools

Each file is written to a temporary name in the same folder and renamed into place (`os.replace`),
so a reader never sees a half-written report and an interrupted run leaves the previous one intact.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import platform
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from prefopt import __version__
from prefopt.atomic import write_atomic
from prefopt.reproduce.base import Check, Outcome, Reproduction, Table

__all__ = ["RunResult", "write_report", "render_checks", "render_markdown", "figure_png", "environment"]


@dataclass
class RunResult:
    """One finished run: what ran, with which config, its outcome, wall time and the files written."""

    reproduction: Reproduction
    config: Any
    outcome: Outcome
    seconds: float
    quick: bool
    environment: dict[str, str]
    files: dict[str, Path] = field(default_factory=dict)


def write_report(result: RunResult, out_dir: Path) -> None:
    """Write figure.png (when the outcome draws one), report.md and result.json into `out_dir`, each atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if result.outcome.draw is not None:
        result.files["figure"] = out_dir / "figure.png"
        write_atomic(result.files["figure"], figure_png(result.outcome))
    result.files["report"] = out_dir / "report.md"
    write_atomic(
        result.files["report"], render_markdown(result, figure="figure.png" if "figure" in result.files else None)
    )
    result.files["json"] = out_dir / "result.json"
    write_atomic(result.files["json"], json.dumps(_json(result), indent=2, default=_jsonable))


def figure_png(outcome: Outcome) -> bytes:
    """Render `outcome.draw` to PNG bytes with the Agg backend (no display needed, pyplot untouched)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # heavy: loaded on first use
    from matplotlib.figure import Figure  # heavy: loaded on first use

    fig = Figure(figsize=outcome.figsize, layout="constrained")
    FigureCanvasAgg(fig)
    assert outcome.draw is not None
    outcome.draw(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def render_checks(checks: list[Check]) -> str:
    """The checks as an aligned plain-text table with a PASS/FAIL column."""
    header = ("claim", "paper", "ours", "tolerance", "result")
    rows = [(c.claim, c.paper, c.ours, c.tolerance, "PASS" if c.passed else "FAIL") for c in checks]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _md_table(header: Any, rows: Any) -> list[str]:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|")

    out = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return out


def render_markdown(result: RunResult, figure: str | None = None) -> str:
    """The Markdown report of a run (`figure`: the PNG's path relative to the report, if any)."""
    rep, outcome = result.reproduction, result.outcome
    verdict = "all checks pass" if outcome.passed else f"{sum(not c.passed for c in outcome.checks)} check(s) FAIL"
    lines = [
        f"# {rep.name}: {rep.title}",
        "",
        f"Paper: {rep.paper}",
        "",
        f"**{verdict}** — {'quick' if result.quick else 'full'} run, {result.seconds:.1f} s.",
        "",
    ]
    rows = [(c.claim, c.paper, c.ours, c.tolerance, "PASS" if c.passed else "**FAIL**") for c in outcome.checks]
    lines += _md_table(("claim", "paper", "ours", "tolerance", "result"), rows) + [""]
    if figure:
        lines += [f"![{rep.name}]({figure})", ""]
    for table in outcome.tables:
        lines += [f"## {table.title}", "", *_md_table(table.header, table.rows), ""]
    if outcome.notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in outcome.notes] + [""]
    config = dataclasses.asdict(result.config) if dataclasses.is_dataclass(result.config) else {"config": result.config}
    lines += ["## Configuration", "", "```", *(f"{k} = {v!r}" for k, v in config.items()), "```", ""]
    lines += ["## Environment", ""] + [f"- {k}: {v}" for k, v in result.environment.items()] + [""]
    return "\n".join(lines)


def _json(result: RunResult) -> dict[str, Any]:
    return {
        "name": result.reproduction.name,
        "paper": result.reproduction.paper,
        "quick": result.quick,
        "seconds": result.seconds,
        "passed": result.outcome.passed,
        "checks": [dataclasses.asdict(c) for c in result.outcome.checks],
        "tables": [dataclasses.asdict(t) if isinstance(t, Table) else t for t in result.outcome.tables],
        "data": result.outcome.data,
        "environment": result.environment,
    }


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)


def environment() -> dict[str, str]:
    """Machine and versions for the report: CPU, threads, torch, Python, prefopt, git commit, UTC time."""
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                timeout=5,
                cwd=Path(__file__).resolve().parent,
            ).stdout.strip()
            or "unknown"
        )
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return {
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores ({platform.processor() or platform.system()})",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "prefopt": f"{__version__} (commit {commit})",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
