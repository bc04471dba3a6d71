"""PNG plots for comparing algorithms: reward-versus-KL frontier, training curves, length drift.

Figures are drawn on matplotlib's Agg canvas directly (`matplotlib.figure.Figure`, no pyplot state, no
display needed) and written atomically: to a temporary file in the target folder, then `os.replace`d,
so a reader never sees a half-written PNG.

    plot_reward_kl_frontier([FrontierPoint("dpo", kl=m.kl, reward=m.reward, setting="β=0.1"), ...], "frontier.png",
                            reference_reward=m.reference_reward)
    plot_training_curves({"dpo": "runs/dpo/metrics.jsonl", "ipo": "runs/ipo/metrics.jsonl"}, "curves.png")
    plot_length_drift({"dpo": m.mean_length, ...}, "length.png", reference_length=m.reference_mean_length)

Every plot takes a `footer`: a line of text under the axes (the comparison's setting: task, sizes, seeds,
steps). The frontier's KL axis is logarithmic when the KLs span more than a decade (`kl_axis_scale`).
"""

from __future__ import annotations

import json
import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefopt.atomic import atomic_path
from prefopt.eval.stats import MeanCI

__all__ = [
    "FrontierPoint",
    "read_metrics_jsonl",
    "plot_reward_kl_frontier",
    "plot_training_curves",
    "plot_length_drift",
    "DEFAULT_CURVE_METRICS",
    "kl_axis_scale",
]

DEFAULT_CURVE_METRICS: tuple[str, ...] = ("loss", "rewards/accuracies", "rewards/margins")

Value = float | MeanCI


@dataclass(frozen=True)
class FrontierPoint:
    """One trained policy on the frontier: its algorithm (one colour and line per algorithm), the mean
    KL to the reference and mean reward (floats, or `MeanCI`s drawn as error bars) and an optional setting
    label written next to the point (e.g. "β=0.1")."""

    algorithm: str
    kl: Value
    reward: Value
    setting: str | None = None

    @classmethod
    def from_metrics(cls, algorithm: str, metrics: Any, setting: str | None = None) -> "FrontierPoint":
        """The point of a `GenerationMetrics` (its headline `kl` and its `reward`, with their CIs)."""
        if metrics.kl is None:
            raise ValueError(f"FrontierPoint.from_metrics: the metrics of {algorithm!r} have no KL estimate")
        return cls(algorithm, metrics.kl, metrics.reward, setting)


def _mean(v: Value) -> float:
    return v.mean if isinstance(v, MeanCI) else float(v)


def _err(v: Value) -> tuple[float, float]:
    """(below, above) error-bar lengths; 0 when the value has no interval."""
    if isinstance(v, MeanCI) and math.isfinite(v.low) and math.isfinite(v.high):
        return max(v.mean - v.low, 0.0), max(v.high - v.mean, 0.0)
    return 0.0, 0.0


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
MANY = 10  # more algorithms than this: 20 colours × markers, and the legend beside the axes


def _styles(names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """A distinct (colour, marker) per name: matplotlib's 10-colour cycle for a few, 20 colours × markers for
    many (the atlas draws every registered algorithm)."""
    from matplotlib import colormaps  # heavy: loaded on first use

    if len(names) <= MANY:
        return {name: {"color": f"C{i}", "marker": "o"} for i, name in enumerate(names)}
    colours = colormaps["tab20"].colors
    return {
        name: {"color": colours[i % len(colours)], "marker": _MARKERS[(i // len(colours)) % len(_MARKERS)]}
        for i, name in enumerate(names)
    }


def _legend(ax: Any, count: int) -> None:
    """Inside the axes for a few entries; beside them, in columns of 25, for many."""
    if count <= MANY:
        ax.legend(fontsize=8)
    else:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=math.ceil(count / 25), frameon=False)


def _new_figure(ncols: int = 1, width: float = 6.0, height: float = 4.5) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # heavy: loaded on first use
    from matplotlib.figure import Figure  # heavy: loaded on first use

    fig = Figure(figsize=(width * ncols, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _save(fig: Any, path: str | os.PathLike[str], footer: str | None = None) -> Path:
    """Write `fig` as PNG to `path` atomically (temporary file in the same folder + os.replace), with
    `footer` under the axes, wrapped to the figure's width."""
    if footer:
        width = max(40, int(fig.get_figwidth() * 17))  # characters of 7-point text per line
        fig.supxlabel(textwrap.fill(footer, width), fontsize=7, color="dimgray")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


def plot_reward_kl_frontier(
    points: Sequence[FrontierPoint],
    path: str | os.PathLike[str],
    *,
    reference_reward: Value | None = None,
    title: str = "Reward vs. KL to the reference",
    reward_label: str = "reward",
    kl_scale: str = "auto",
    footer: str | None = None,
) -> Path:
    """Reward (y) against KL(π ‖ π_ref) (x), one colour per algorithm, in the style of the DPO paper's Fig. 2
    (Rafailov et al. 2023, arXiv:2305.18290): the points of an algorithm's settings (β, steps, …) are joined
    in order of KL into its frontier; CIs are error bars on both axes; the reference policy sits at KL 0.

    `kl_scale`: "linear", "log", "symlog" or "auto" (`kl_axis_scale`: logarithmic when the KLs span more than
    a decade, symmetric-log when a KL of 0 or below, such as the reference's, is drawn too). `footer`: a line
    under the axes. Returns the written path.
    """
    if not points:
        raise ValueError("plot_reward_kl_frontier: no points; pass one FrontierPoint per trained policy")
    kls = [_mean(p.kl) for p in points] + ([0.0] if reference_reward is not None else [])
    scale, linthresh = kl_axis_scale(kls) if kl_scale == "auto" else (kl_scale, _linthresh(kls))
    if scale not in ("linear", "log", "symlog"):
        raise ValueError(f"plot_reward_kl_frontier: kl_scale={kl_scale!r}; use 'auto', 'linear', 'log' or 'symlog'")
    by_algorithm: dict[str, list[FrontierPoint]] = {}
    for point in points:
        by_algorithm.setdefault(point.algorithm, []).append(point)
    many = len(by_algorithm) > MANY
    fig, (ax,) = _new_figure(
        width=6.0 + 2.2 * math.ceil(len(by_algorithm) / 25) if many else 6.0, height=6.5 if many else 4.5
    )
    styles = _styles(list(by_algorithm))
    for algorithm, group in by_algorithm.items():
        group = sorted(group, key=lambda p: _mean(p.kl))
        xs, ys = [_mean(p.kl) for p in group], [_mean(p.reward) for p in group]
        xerr = [[_err(p.kl)[0] for p in group], [_err(p.kl)[1] for p in group]]
        yerr = [[_err(p.reward)[0] for p in group], [_err(p.reward)[1] for p in group]]
        ax.errorbar(
            xs,
            ys,
            xerr=xerr,
            yerr=yerr,
            capsize=2 if many else 3,
            label=algorithm,
            linestyle="-" if len(group) > 1 else "none",
            markersize=5 if many else 6,
            elinewidth=0.8 if many else 1.5,
            **styles[algorithm],
        )
        for p, x, y in zip(group, xs, ys):
            if p.setting:
                ax.annotate(p.setting, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if reference_reward is not None:
        low, high = _err(reference_reward)
        ax.errorbar(
            [0.0],
            [_mean(reference_reward)],
            yerr=[[low], [high]],
            marker="*",
            markersize=12,
            color="black",
            capsize=3,
            linestyle="none",
            label="reference",
        )
    xlabel = "KL(π ‖ π_ref) per sequence (nats)"
    if scale == "log":
        ax.set_xscale("log")
        xlabel += ", log scale"
    elif scale == "symlog":
        ax.set_xscale("symlog", linthresh=linthresh)
        xlabel += f", log scale (linear below {linthresh:g})"
    ax.set_xlabel(xlabel)
    ax.set_ylabel(reward_label)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    _legend(ax, len(by_algorithm) + (reference_reward is not None))
    return _save(fig, path, footer)


def _linthresh(kls: Sequence[float]) -> float:
    """The power of ten at or below the smallest positive KL (1 when none is positive)."""
    positive = [k for k in kls if math.isfinite(k) and k > 0]
    return 10.0 ** math.floor(math.log10(min(positive))) if positive else 1.0


def kl_axis_scale(kls: Sequence[float]) -> tuple[str, float]:
    """(scale, linthresh) of a KL axis for these KL values: "linear" unless the positive ones span more than a
    decade (largest / smallest > 10); then "log", or "symlog" (linear within ±linthresh, the power of ten at
    or below the smallest positive KL) when a value is 0 or negative (the reference at KL 0, a sampled k1
    estimate below 0), which a log axis cannot show."""
    finite = [k for k in kls if math.isfinite(k)]
    positive = [k for k in finite if k > 0]
    linthresh = _linthresh(finite)
    if len(positive) < 2 or max(positive) <= 10 * min(positive):
        return "linear", linthresh
    return ("log" if len(positive) == len(finite) else "symlog"), linthresh


def read_metrics_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a metrics JSONL file (one JSON object per line; blank lines skipped).

    A line that is not a JSON object raises a ValueError naming the file and line number.
    """
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"{path}:{number}: not valid JSON ({err.msg}); each line must be one JSON object"
                ) from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object per line, got {type(record).__name__}")
            records.append(record)
    return records


def _series(records: Sequence[Mapping[str, Any]], metric: str, step_key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of `metric` (or `train/metric`) over the records that have it as a finite number."""
    steps, values = [], []
    for i, record in enumerate(records):
        value = record.get(metric, record.get(f"train/{metric}"))
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        step = record.get(step_key, i)
        steps.append(float(step))
        values.append(float(value))
    return steps, values


def plot_training_curves(
    runs: Mapping[str, str | os.PathLike[str] | Sequence[Mapping[str, Any]]],
    path: str | os.PathLike[str],
    *,
    metrics: Sequence[str] = DEFAULT_CURVE_METRICS,
    step_key: str = "step",
    footer: str | None = None,
) -> Path:
    """One panel per metric (loss, reward accuracy, margins by default), one line per run, against step.

    Args:
        runs: run name → a metrics JSONL file (one record per logging step: `{"step": 10, "loss": 0.69,
            "rewards/accuracies": 0.5, ...}`) or the records themselves. A metric is looked up as `name`,
            then `train/name`; records without it (e.g. eval-only lines) are skipped for that panel.
        metrics: the metric names to draw; metrics no run logs are left out.
        step_key: the x-axis key (records without it use their line index).
        footer: a line under the panels.
    """
    if not runs:
        raise ValueError("plot_training_curves: no runs; pass {name: metrics.jsonl path}")
    loaded = {
        name: read_metrics_jsonl(src) if isinstance(src, (str, os.PathLike)) else list(src)
        for name, src in runs.items()
    }
    present = [m for m in metrics if any(_series(recs, m, step_key)[1] for recs in loaded.values())]
    if not present:
        keys = sorted({k for recs in loaded.values() for r in recs for k in r})
        raise ValueError(
            f"plot_training_curves: none of the metrics {list(metrics)} appears in the runs; logged keys: {keys[:30]}"
        )
    many = len(loaded) > MANY
    fig, axes = _new_figure(ncols=len(present), width=4.5, height=5.5 if many else 3.5)
    styles = _styles(list(loaded))
    for ax, metric in zip(axes, present):
        for name, records in loaded.items():
            steps, values = _series(records, metric, step_key)
            if values:
                ax.plot(steps, values, label=name, linewidth=0.9 if many else 1.2, color=styles[name]["color"])
        ax.set_xlabel(step_key)
        ax.set_title(metric)
        ax.grid(alpha=0.3)
    _legend(axes[-1] if many else axes[0], len(loaded))
    return _save(fig, path, footer)


def plot_length_drift(
    lengths: Mapping[str, Value],
    path: str | os.PathLike[str],
    *,
    reference_length: Value | None = None,
    unit: str = "tokens",
    footer: str | None = None,
) -> Path:
    """Mean sample length per algorithm (bars with CI error bars) against the reference's (dashed line);
    `footer`: a line under the axes."""
    if not lengths:
        raise ValueError("plot_length_drift: no lengths; pass {algorithm: mean length}")
    names = list(lengths)
    per_bar = 0.8 if len(names) <= MANY else 0.3
    fig, (ax,) = _new_figure(width=max(4.0, 1.0 + per_bar * len(names)))
    errs = [_err(lengths[n]) for n in names]
    ax.bar(
        range(len(names)),
        [_mean(lengths[n]) for n in names],
        yerr=[[e[0] for e in errs], [e[1] for e in errs]],
        capsize=4,
        color="tab:blue",
        alpha=0.8,
    )
    if reference_length is not None:
        ref = _mean(reference_length)
        ax.axhline(ref, color="black", linestyle="--", label=f"reference ({ref:.3g})")
        low, high = _err(reference_length)
        if low or high:
            ax.axhspan(ref - low, ref + high, color="grey", alpha=0.2)
        ax.legend(fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel(f"mean completion length ({unit})")
    ax.set_title("Length drift")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path, footer)
