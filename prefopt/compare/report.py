"""The report of `prefopt compare`: one row per loss × setting, aggregated over seeds, plus ratings and plots.

Columns (mean; `mean ± half-width` of a 95% CI where the metric has one: with one seed the bootstrap over
held-out prompts, with several a hierarchical bootstrap over seeds and prompts, `prefopt.compare.intervals`):

    train loss     the last optimiser step's loss
    eval acc       implicit-reward accuracy on held-out pairs (log π/π_ref of chosen > of rejected)
    margin         mean implicit-reward margin Δ on held-out pairs, in nats (β = 1 for every loss)
    reward         mean reward of samples on held-out prompts (the gold reward, or --reward: a model or functions)
    KL             KL(π ‖ π_ref) per sequence (exact on the synthetic task)
    win / LC win   win rate of samples against the reference policy's, raw and length-controlled
    length         mean sample length in tokens
    Elo            Bradley–Terry rating from per-prompt comparisons of all algorithms and the reference (=1000)

    KL bound       best-of-N rows only: the analytic log N − (N−1)/N beside the measured KL
    time, peak MB  wall time of the run (training + evaluation) and its own peak memory while training

With `best_of_n` among the losses, rows `best-of-N (N=n)` show the inference-time best-of-N policy
(`prefopt.compare.online`); the row `reference` shows the starting policy's own samples (reward,
length; KL 0, Elo 1000); on the synthetic task a last row, `gold reward (labels)`, shows the label-noise
ceiling: the gold reward's own accuracy on the eval pairs (`prefopt.compare.heldout`, which also writes the
footer's account of what was evaluated).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefopt.atomic import write_atomic
from prefopt.compare.heldout import ceiling_row, heldout_note, read_heldout
from prefopt.compare.intervals import interval_note, seeds_interval
from prefopt.compare.pages import write_pages
from prefopt.compare.provenance import setting_line
from prefopt.eval import (
    FrontierPoint,
    MeanCI,
    bradley_terry_ratings,
    plot_length_drift,
    plot_reward_kl_frontier,
    plot_training_curves,
)

__all__ = [
    "COLUMNS",
    "REFERENCE_LABEL",
    "BEST_OF_N_LOSS",
    "CompareResult",
    "summarize",
    "best_of_n_rows",
    "render_table",
    "table_cells",
    "write_report",
]


@dataclass
class CompareResult:
    """Per-run records, the aggregated rows and the written files of one comparison."""

    records: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    ratings: dict[str, Any] | None
    files: dict[str, str]
    table_text: str


REFERENCE_LABEL = "reference"

# (key, header, format) for the table; keys index the aggregated row.
COLUMNS = (
    ("train_loss", "train loss", "{:.4f}"),
    ("eval_accuracy", "eval acc", "{:.3f}"),
    ("eval_margin", "margin", "{:.2f}"),
    ("reward", "reward", "{:.3f}"),
    ("kl", "KL", "{:.3f}"),
    ("kl_bound", "KL bound", "{:.3f}"),
    ("win_rate", "win", "{:.3f}"),
    ("lc_win_rate", "LC win", "{:.3f}"),
    ("length", "length", "{:.1f}"),
    ("elo", "Elo", "{:.0f}"),
    ("wall_time_s", "time s", "{:.0f}"),
    ("peak_memory_mb", "peak MB", "{:.0f}"),
)


def _get(record: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(record, dict) or record.get(key) is None:
            return None
        record = record[key]
    return record


def _metric(record: dict[str, Any], key: str) -> dict[str, Any] | None:
    """The run's value of column `key` as {mean, low, high} (low/high None when it has no CI)."""
    sources = {
        "eval_accuracy": ("preference", "reward_accuracy"),
        "eval_margin": ("preference", "reward_margin"),
        "reward": ("generation", "reward"),
        "kl": ("generation", "kl"),
        "win_rate": ("generation", "win_rate"),
        "lc_win_rate": ("generation", "lc_win_rate"),
        "length": ("generation", "mean_length"),
    }
    if key in sources:
        value = _get(record, *sources[key])
        return None if value is None or value.get("mean") is None else value
    scalars = {
        "train_loss": _get(record, "train", "final_metrics", "loss"),
        "wall_time_s": record.get("wall_time_s"),
        "peak_memory_mb": (_get(record, "train", "peak_memory_bytes") or 0) / 2**20 or None,
    }
    value = scalars.get(key)
    return None if value is None else {"mean": float(value), "low": None, "high": None}


def _label_row(label: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One label's row: its metrics, a seed's value as is or several seeds' mean with a CI."""
    row: dict[str, Any] = {
        "label": label,
        "loss": runs[0]["loss"],
        "hparams": runs[0]["hparams"],
        "seeds": [r["seed"] for r in runs],
    }
    for key, _, _ in COLUMNS:
        values = [_metric(r, key) for r in runs]
        if any(v is None for v in values):
            continue
        if len(values) == 1:
            row[key] = values[0]
        else:
            row[key] = seeds_interval(runs, key, [v["mean"] for v in values])
    return row


def _label_scores(records: list[dict[str, Any]], labels: list[str]) -> dict[str, list[float]]:
    """Per-prompt rewards of each label whose every run has them, averaged over seeds."""
    scores = {}
    for label in labels:
        per_seed = [_get(r, "generation", "rewards") for r in records if r["label"] == label]
        if per_seed and all(per_seed):
            scores[label] = [sum(v) / len(v) for v in zip(*per_seed)]  # per-prompt mean over seeds
    return scores


def _reference_row(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The starting policy's own samples, for scale: every generation column is relative to it."""
    first = next((r for r in records if _get(r, "generation", "reference_reward")), None)
    if first is None:
        return None
    return {
        "label": REFERENCE_LABEL,
        "loss": None,
        "hparams": {},
        "seeds": [],
        "reward": first["generation"]["reference_reward"],
        "kl": {"mean": 0.0, "low": None, "high": None},
        "length": first["generation"]["reference_mean_length"],
    }


def _rate(rows: list[dict[str, Any]], scores: dict[str, list[float]], reference: Any) -> dict[str, Any]:
    """Bradley–Terry ratings of the labels against the reference; each rated row gets its `elo`."""
    scores[REFERENCE_LABEL] = list(reference)
    ratings = bradley_terry_ratings(scores, anchor=REFERENCE_LABEL).to_dict()
    elo = {e["name"]: e for e in ratings["ratings"]}
    for row in rows:
        if row["label"] in elo:
            e = elo[row["label"]]
            row["elo"] = {"mean": e["elo"], "low": e["elo_low"], "high": e["elo_high"]}
    return ratings


def summarize(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Aggregate runs into one row per label (over seeds) and rate the labels against each other."""
    labels = list(dict.fromkeys(r["label"] for r in records))
    rows = [_label_row(label, [r for r in records if r["label"] == label]) for label in labels]
    ratings = None
    scores = _label_scores(records, labels)
    reference = next((_get(r, "generation", "reference_rewards") for r in records), None)
    reference_row = _reference_row(records)
    if reference_row is not None:
        rows.append(reference_row)
    if scores and reference:
        ratings = _rate(rows, scores, reference)
    return rows, ratings


BEST_OF_N_LOSS = "best-of-N (inference)"


def best_of_n_rows(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Table rows of the inference-time best-of-N points (`prefopt.compare.online.best_of_n_reference`)."""
    return [
        {
            "label": f"best-of-N (N={p['n']})",
            "loss": BEST_OF_N_LOSS,
            "hparams": {"n": p["n"]},
            "seeds": [],
            "reward": p["reward"],
            "kl": p["kl"],
            "win_rate": p["win_rate"],
            "kl_bound": {"mean": p["kl_bound"], "low": None, "high": None},
        }
        for p in points
    ]


def _cell(value: dict[str, Any] | None, fmt: str) -> str:
    if value is None:
        return "—"
    mean, low, high = value["mean"], value.get("low"), value.get("high")
    text = fmt.format(mean)
    if low is not None and high is not None and math.isfinite(low) and math.isfinite(high) and high > low:
        text += " ± " + fmt.format((high - low) / 2).strip()
    return text


def render_table(rows: list[dict[str, Any]], *, markdown: bool = False) -> str:
    """The comparison table as fixed-width text or Markdown."""
    columns = [c for c in COLUMNS if any(c[0] in r for r in rows)]
    header = ["algorithm"] + [h for _, h, _ in columns]
    body = [[r["label"]] + [_cell(r.get(k), f) for k, _, f in columns] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(b) + " |" for b in body])
    widths = [max(len(x[i]) for x in [header, *body]) for i in range(len(header))]
    fmt = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([fmt(header), fmt(["─" * w for w in widths]), *map(fmt, body)])


def _csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    keys = [k for k, _, _ in COLUMNS]
    writer = csv.writer(buffer)
    writer.writerow(["label", "loss", "hparams", "seeds"] + [f"{k}{s}" for k in keys for s in ("", "_low", "_high")])
    for r in rows:
        cells = [r["label"], r["loss"], json.dumps(r["hparams"]), " ".join(map(str, r["seeds"]))]
        for k in keys:
            v = r.get(k) or {}
            cells += [v.get("mean", ""), v.get("low", ""), v.get("high", "")]
        writer.writerow(["" if c is None else c for c in cells])
    return buffer.getvalue()


def _plots(
    records: list[dict[str, Any]], rows: list[dict[str, Any]], out: Path, reward_label: str, footer: str
) -> dict[str, str]:
    def mean_ci(v: dict[str, Any]) -> MeanCI:
        low, high = v.get("low"), v.get("high")
        return MeanCI(v["mean"], math.nan if low is None else low, math.nan if high is None else high, 1)

    files = {}
    curves = {
        r["label"]: r["train"]["metrics_path"]
        for r in records
        if r["seed"] == records[0]["seed"] and Path(r["train"]["metrics_path"]).exists()
    }
    if curves:
        files["training_curves"] = str(plot_training_curves(curves, out / "training_curves.png", footer=footer))
    points = [
        FrontierPoint(
            r["loss"],
            mean_ci(r["kl"]),
            mean_ci(r["reward"]),
            (f"N={r['hparams']['n']}" if r["loss"] == BEST_OF_N_LOSS else r["label"]) if r["hparams"] else None,
        )
        for r in rows
        if "kl" in r and "reward" in r and r["loss"] is not None
    ]
    points += [
        FrontierPoint("best-of-N at its KL bound log N − (N−1)/N", r["kl_bound"]["mean"], mean_ci(r["reward"]))
        for r in rows
        if "kl_bound" in r
    ]
    if points:
        ref = next((_get(x, "generation", "reference_reward") for x in records), None)
        files["frontier"] = str(
            plot_reward_kl_frontier(
                points,
                out / "frontier.png",
                reward_label=reward_label,
                reference_reward=mean_ci(ref) if ref else None,
                footer=footer,
            )
        )
    lengths = {r["label"]: mean_ci(r["length"]) for r in rows if "length" in r and r["loss"] is not None}
    if lengths:
        ref_len = next((_get(x, "generation", "reference_mean_length") for x in records), None)
        files["length_drift"] = str(
            plot_length_drift(
                lengths,
                out / "length_drift.png",
                reference_length=mean_ci(ref_len) if ref_len else None,
                footer=footer,
            )
        )
    return files


def table_cells(rows: list[dict[str, Any]]) -> tuple[list[tuple[str, str]], list[list[tuple[str, Any]]]]:
    """The table's (key, header) columns and, per row, (text, sort value) cells: report.html's table."""
    columns = [c for c in COLUMNS if any(c[0] in r for r in rows)]
    cells = [
        [(r["label"], r["label"])] + [(_cell(r.get(k), f), (r.get(k) or {}).get("mean")) for k, _, f in columns]
        for r in rows
    ]
    return [("label", "algorithm")] + [(k, h) for k, h, _ in columns], cells


def write_report(
    records: list[dict[str, Any]],
    config: Any,
    *,
    best_of_n: list[dict[str, Any]] | None = None,
    status: tuple[str, ...] = (),
) -> Any:
    """Aggregate, print and write table.md / table.csv / results.json, the plots, samples.md and report.html
    into config.output_dir.

    `best_of_n`: the inference-time best-of-N points, added as rows before the reference row. `status`: lines
    on what the folder lacks (unfinished runs), shown at the top of report.html.
    """
    out = Path(config.output_dir)
    rows, ratings = summarize(records)
    if best_of_n:
        at = next((i for i, r in enumerate(rows) if r["label"] == REFERENCE_LABEL), len(rows))
        rows[at:at] = best_of_n_rows(best_of_n)
    heldout = read_heldout(out)  # what was evaluated, and the label-noise ceiling (`prefopt.compare.heldout`)
    rows += [row for row in [ceiling_row(heldout)] if row]
    text = render_table(rows)
    setting = setting_line(config, records)
    files = _plots(records, rows, out, config.reward_label, setting)
    seeds = len(config.seeds)
    settings = sum(1 for r in rows if r["loss"] not in (None, BEST_OF_N_LOSS))
    note = f"{settings} settings × {seeds} seed(s); ± is the half-width of a 95% CI {interval_note(seeds)}"
    note += f" {heldout_note(heldout)}" if heldout else ""
    write_atomic(out / "table.md", "# prefopt compare\n\n" + render_table(rows, markdown=True) + f"\n\n{note}\n")
    write_atomic(out / "table.csv", _csv(rows))
    payload = {
        "config": config.to_dict(),
        "rows": rows,
        "ratings": ratings,
        "heldout": heldout,
        "runs": [{k: v for k, v in r.items() if k != "generation"} for r in records],
    }
    write_atomic(out / "results.json", json.dumps(payload, indent=2, default=str))
    files.update(table_md=str(out / "table.md"), table_csv=str(out / "table.csv"), results=str(out / "results.json"))
    columns, cells = table_cells(rows)
    files.update(write_pages(records, config, columns, cells, note=note, setting=setting, files=files, status=status))
    print("\n" + text + "\n\n" + note)
    for name, path in files.items():
        print(f"  {name:<16} {path}")
    return CompareResult(records, rows, ratings, files, text)
