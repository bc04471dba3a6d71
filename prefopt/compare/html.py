"""report.html: a comparison in one self-contained page (inline PNGs, styles and script; nothing fetched).

    page = HtmlReport(title="prefopt compare", setting="synthetic task …", columns=[("label", "algorithm"), …],
                      rows=[[("dpo", "dpo"), ("0.760 ± 0.232", 0.76), …], …], images={"frontier": "frontier.png"})
    write_html(page, "runs/compare/report.html")

It holds the table (click a header to sort by it, again to reverse; `report.html#sort=-reward` opens it
sorted by reward, highest first), the plots, the samples side by side, the exact settings, and the
software and machine of the runs. The page asks for nothing over the network: images are base64 data
URIs, the style and the sorting script are inline.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefopt.atomic import write_atomic
from prefopt.compare.samples import SideBySide

__all__ = ["HtmlReport", "render_html", "write_html"]

Cell = tuple[str, Any]  # (text shown, sort value: a number, a string, or None for "—")


@dataclass
class HtmlReport:
    """What report.html shows (see the module docstring).

    Attributes:
        columns: (key, header) per table column; rows: per table row, one (text, sort value) per column.
        note: the line under the table; status: lines on how complete the folder is (partial, stale runs).
        images: caption → PNG path (missing files are left out); samples: the side-by-side samples.
        config: the comparison's settings; run_settings: run id → its exact resolved settings.
        environments: (run ids, environment) per distinct environment the runs recorded.
    """

    title: str
    setting: str
    columns: Sequence[tuple[str, str]]
    rows: Sequence[Sequence[Cell]]
    note: str = ""
    status: Sequence[str] = ()
    images: dict[str, Any] = field(default_factory=dict)
    samples: SideBySide = field(default_factory=SideBySide)
    config: dict[str, Any] = field(default_factory=dict)
    run_settings: dict[str, Any] = field(default_factory=dict)
    environments: Sequence[tuple[Sequence[str], dict[str, Any]]] = ()
    generated: str = ""


_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1200px;padding:0 16px;
color:#1a1a1a;background:#fff}
h1{font-size:1.6em;margin-bottom:4px}h2{font-size:1.25em;margin-top:32px;border-bottom:1px solid #ddd}
.setting{color:#555;font-size:.9em}.status{background:#fff4d6;border:1px solid #e8c96b;padding:6px 10px}
table{border-collapse:collapse;font-size:.85em;margin:8px 0}th,td{border:1px solid #ddd;padding:4px 8px}
th{background:#f3f3f3}table.sortable th{cursor:pointer;user-select:none;white-space:nowrap}
table.sortable th[aria-sort=ascending]::after{content:" \\25B2"}
table.sortable th[aria-sort=descending]::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.reference td{background:#f7f7f7}figure{margin:16px 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:.85em}td.text{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.95em}
pre{background:#f6f6f6;padding:8px;overflow:auto;font-size:.8em;max-height:480px}
.note{color:#555;font-size:.85em}footer{margin-top:40px;color:#777;font-size:.8em}
"""

# Click a header to sort by it (numbers as numbers, "—" last), again to reverse; #sort=KEY or #sort=-KEY on
# load. No console output: the report test counts console lines as errors.
_SCRIPT = """
(function () {
  function sortBy(table, th, ascending) {
    var col = Array.prototype.indexOf.call(th.parentNode.children, th);
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].getAttribute("data-sort"), y = b.cells[col].getAttribute("data-sort");
      var blankX = x === null || x === "", blankY = y === null || y === "";
      if (blankX || blankY) { return blankX === blankY ? 0 : (blankX ? 1 : -1); }
      var nx = Number(x), ny = Number(y);
      var d = (isNaN(nx) || isNaN(ny)) ? String(x).localeCompare(String(y)) : nx - ny;
      return ascending ? d : -d;
    });
    rows.forEach(function (row) { body.appendChild(row); });
    Array.prototype.forEach.call(th.parentNode.children, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) {
      th.addEventListener("click", function () {
        sortBy(table, th, th.getAttribute("aria-sort") !== "ascending");
      });
    });
  });
  var match = /^#sort=(-?)([\\w-]+)$/.exec(window.location.hash);
  var target = match && document.querySelector("table.sortable th[data-key='" + match[2] + "']");
  if (target) { sortBy(target.closest("table"), target, match[1] !== "-"); }
  document.body.setAttribute("data-ready", "1");
})();
"""


_REFERENCE = ' class="reference"'


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _sort_attr(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if value == value else ""  # NaN sorts as blank
    return _e(value)


def _table(page: HtmlReport) -> str:
    head = "".join(f'<th data-key="{_e(key)}" title="sort by {_e(name)}">{_e(name)}</th>' for key, name in page.columns)
    body = []
    for row in page.rows:
        reference = row and row[0][0] == "reference"
        cells = "".join(
            f'<td class="{"text" if i == 0 else "num"}" data-sort="{_sort_attr(sort)}">{_e(text)}</td>'
            for i, (text, sort) in enumerate(row)
        )
        body.append(f"<tr{_REFERENCE if reference else ''}>{cells}</tr>")
    return f'<table class="sortable" id="results"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _images(images: dict[str, Any]) -> str:
    parts = []
    for caption, path in images.items():
        if path is None or not Path(path).is_file():
            continue
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        parts.append(
            f'<figure><img alt="{_e(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_e(caption)} ({_e(Path(path).name)})</figcaption></figure>"
        )
    return "".join(parts) or "<p>No plots: no run has finished with the metrics they draw.</p>"


def _number(value: Any, fmt: str) -> str:
    return "—" if value is None else fmt.format(value)


def _samples(side: SideBySide) -> str:
    if not side.prompts:
        return "<p>No samples: the runs kept none (they need a reward: the synthetic task, or a reward model).</p>"
    parts = [
        f'<p class="note">The first {len(side.prompts)} of the {side.total} held-out prompts; each row\'s sample '
        f"(its first seed) beside the reference policy's, drawn with the same evaluation seed. Reward: "
        f"{_e(side.scorer)}; length in tokens. Every run's samples are in its folder's samples.jsonl.</p>"
    ]
    for number, item in enumerate(side.prompts, start=1):
        rows = []
        for label, sample in [("reference", item["reference"]), *item["rows"]]:
            if sample is None:
                rows.append(f'<tr><td>{_e(label)}</td><td class="num">—</td><td class="num">—</td><td>(none)</td></tr>')
                continue
            rows.append(
                f"<tr{_REFERENCE if label == 'reference' else ''}><td>{_e(label)}</td>"
                f'<td class="num">{_number(sample["reward"], "{:.3f}")}</td>'
                f'<td class="num">{_number(sample["length"], "{:.0f}")}</td>'
                f'<td class="text">{_e(sample["completion"])}</td></tr>'
            )
        parts.append(
            f'<h3>{number}. <span class="text">{_e(item["prompt"])}</span></h3><table class="samples">'
            f"<thead><tr><th>policy</th><th>reward</th><th>length</th><th>completion</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>"
        )
    return "".join(parts)


def _environments(environments: Sequence[tuple[Sequence[str], dict[str, Any]]]) -> str:
    if not environments:
        return "<p>No run recorded its environment.</p>"
    keys = list(dict.fromkeys(k for _, env in environments for k in env))
    head = "".join(f"<th>{_e(', '.join(ids))}</th>" for ids, _ in environments)
    rows = "".join(
        f"<tr><th>{_e(key)}</th>{''.join(f'<td>{_e(_plain(env.get(key)))}</td>' for _, env in environments)}</tr>"
        for key in keys
    )
    return f'<table class="environment"><thead><tr><th></th>{head}</tr></thead><tbody>{rows}</tbody></table>'


def _plain(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) or "none"
    return str(value)


def _json(value: Any) -> str:
    return _e(json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False))


def render_html(page: HtmlReport) -> str:
    """The page's HTML text (see the module docstring)."""
    status = "".join(f'<p class="status">{_e(line)}</p>' for line in page.status)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(page.title)}</title><style>{_STYLE}</style></head><body>"
        f'<h1>{_e(page.title)}</h1><p class="setting">{_e(page.setting)}</p>{status}'
        f'<h2 id="table">Results</h2>{_table(page)}<p class="note">{_e(page.note)}</p>'
        f'<h2 id="plots">Plots</h2>{_images(page.images)}'
        f'<h2 id="samples">Samples side by side</h2>{_samples(page.samples)}'
        f'<h2 id="settings">Settings</h2><details open><summary>the comparison (compare_config.json)</summary>'
        f"<pre>{_json(page.config)}</pre></details><details><summary>each run's exact resolved settings "
        f"({len(page.run_settings)})</summary><pre>{_json(page.run_settings)}</pre></details>"
        f'<h2 id="environment">Software and machine</h2>{_environments(page.environments)}'
        f"<footer>{_e(page.generated)}</footer><script>{_SCRIPT}</script></body></html>\n"
    )


def write_html(page: HtmlReport, path: str | Path) -> Path:
    """Write the page to `path` atomically; returns the path."""
    write_atomic(path, render_html(page))
    return Path(path)
