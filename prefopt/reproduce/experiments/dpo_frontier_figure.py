"""The figure of `prefopt.reproduce.experiments.dpo_frontier`: reward against KL for every curve (left, the
paper's Fig. 2 left) and DPO's frontier at each training-set size against PPO's (right, the data ablation)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prefopt.reproduce.experiments.dpo_frontier_runs import Point

__all__ = ["draw_frontiers"]

COLOURS = {"DPO": "tab:blue", "PPO": "tab:orange", "PPO-GT": "tab:red", "best-of-N": "tab:green"}


def _finite(x: float) -> float:
    return 0.0 if x != x else x


def _curve(ax: Any, points: Sequence[Point], front: Sequence[tuple[float, float]], right: float, **style: Any) -> None:
    """One algorithm's points (CI bars unless bars=False) and its frontier, flat from its top vertex to `right`."""
    group = sorted(points, key=lambda p: p.kl)
    bars = style.pop("bars", True)
    ax.errorbar(
        [p.kl for p in group],
        [p.reward for p in group],
        xerr=[_finite(p.kl_ci) for p in group] if bars else None,
        yerr=[_finite(p.reward_ci) for p in group] if bars else None,
        fmt=style.pop("marker", "o"),
        capsize=3,
        color=style["color"],
        label=style.pop("label"),
        alpha=0.8,
    )
    line = list(front) + [(right, front[-1][1])] * (right > front[-1][0])
    ax.plot([k for k, _ in line], [r for _, r in line], style.pop("line", "-"), alpha=0.6, **style)


def _axes(ax: Any, points: Sequence[Point], origin: tuple[float, float], right: float, title: str) -> None:
    ax.plot([0.0], [origin[1]], "k*", markersize=12, label="reference")
    rewards = [p.reward for p in points] + [origin[1]]  # limits from the means: t-intervals of 3 seeds are wide
    span = max(rewards) - min(rewards) or 1.0
    ax.set_ylim(min(rewards) - 0.2 * span, max(rewards) + 0.2 * span)
    ax.set_xscale("symlog", linthresh=0.01)  # DPO's small KLs and PPO's large ones on one axis
    ax.set_xlim(0.0, 1.5 * right)
    ax.set_xlabel("KL(π ‖ π_ref) per sequence (nats, linear below 0.01, log above)")
    ax.set_ylabel("gold reward")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def draw_frontiers(
    fig: Any,
    points: Sequence[Point],
    fronts: Mapping[str, Sequence[tuple[float, float]]],
    origin: tuple[float, float],
    dpo_sizes: Sequence[tuple[str, int]],
) -> None:
    """Left: every algorithm's points and frontier; right: DPO's frontier per training-set size with PPO's.

    Args:
        points: seed-mean points of every algorithm (`Point.algorithm` keys `fronts`).
        fronts: algorithm → frontier vertices; origin: (0, reference reward).
        dpo_sizes: (DPO algorithm label, training pairs), smallest set first.
    """
    left, right_ax = fig.subplots(1, 2)
    right = max(p.kl for p in points)
    for algorithm, colour in COLOURS.items():
        group = [p for p in points if p.algorithm == algorithm]
        _curve(left, group, fronts[algorithm], right, color=colour, label=algorithm)
        for p in group:
            left.annotate(p.setting, (p.kl, p.reward), textcoords="offset points", xytext=(4, 4), fontsize=6)
    _axes(left, points, origin, right, "Reward vs KL (Rafailov et al. 2023, Fig. 2 left; synthetic task)")
    shown = [p for p in points if p.algorithm.startswith("DPO") or p.algorithm.startswith("PPO")]
    blues = ("lightsteelblue", "cornflowerblue", "tab:blue", "navy")
    for i, (label, pairs) in enumerate(dpo_sizes):
        group = [p for p in points if p.algorithm == label]
        colour = blues[-len(dpo_sizes) + i] if len(dpo_sizes) <= len(blues) else "tab:blue"
        _curve(right_ax, group, fronts[label], right, color=colour, label=f"DPO, {pairs} pairs", marker="s", bars=False)
    for algorithm in ("PPO", "PPO-GT"):
        group = [p for p in points if p.algorithm == algorithm]
        _curve(
            right_ax, group, fronts[algorithm], right, color=COLOURS[algorithm], label=algorithm, line="--", bars=False
        )
    _axes(right_ax, shown, origin, right, "Data ablation: DPO's frontier at three training-set sizes (seed means)")
