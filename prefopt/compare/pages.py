"""The pages of a comparison's report beside its table: samples.md and the self-contained report.html.

    write_pages(records, config, columns, cells, note=..., setting=..., files=...)  # → {"samples_md", "report_html"}

`prefopt.compare.report.write_report` calls it after the table and the plots are written; the pages show
the same table, the plots (embedded), the samples side by side (`prefopt.compare.samples`), the exact settings
of the comparison and of each run, and the software and machine each run recorded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from prefopt import __version__
from prefopt.atomic import write_atomic
from prefopt.compare.html import HtmlReport, write_html
from prefopt.compare.samples import render_samples_md, side_by_side

__all__ = ["FIGURES", "environments", "write_pages"]

# (files key of the plot, its caption in report.html), in the page's order.
FIGURES = (
    ("frontier", "Reward against KL to the reference"),
    ("training_curves", "Training curves: loss, reward accuracy and margins against step"),
    ("length_drift", "Length drift: mean sample length against the reference's"),
)


def environments(records: Sequence[dict[str, Any]]) -> list[tuple[list[str], dict[str, Any]]]:
    """The distinct environments the runs recorded, each with the ids of its runs."""
    groups: dict[str, tuple[list[str], dict[str, Any]]] = {}
    for record in records:
        env = record.get("environment")
        if isinstance(env, dict):
            key = json.dumps(env, sort_keys=True, default=str)
            groups.setdefault(key, ([], env))[0].append(str(record.get("run_id")))
    return list(groups.values())


def write_pages(
    records: list[dict[str, Any]],
    config: Any,
    columns: Sequence[tuple[str, str]],
    cells: Sequence[Sequence[tuple[str, Any]]],
    *,
    note: str,
    setting: str,
    files: dict[str, str],
    status: Sequence[str] = (),
) -> dict[str, str]:
    """Write samples.md and report.html into config.output_dir; returns their paths by name."""
    out = Path(config.output_dir)
    side = side_by_side(records, out)
    write_atomic(out / "samples.md", render_samples_md(side))
    page = HtmlReport(
        title=f"prefopt compare: {out.name}",
        setting=setting,
        columns=columns,
        rows=cells,
        note=note,
        status=status,
        images={caption: files.get(key) for key, caption in FIGURES},
        samples=side,
        config=config.to_dict(),
        run_settings={str(r.get("run_id")): r.get("settings") for r in records},
        environments=environments(records),
        generated=f"rendered {datetime.now().astimezone().isoformat(timespec='seconds')} by prefopt {__version__}",
    )
    write_html(page, out / "report.html")
    return {"samples_md": str(out / "samples.md"), "report_html": str(out / "report.html")}
