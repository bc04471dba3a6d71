"""DPO's reward–KL frontier against PPO's and best-of-N's (Rafailov et al. 2023, Fig. 2 left, scaled down).

Rafailov et al. ("Direct Preference Optimization", arXiv:2305.18290, §6.1, Fig. 2 left) train GPT-2 on
IMDb sentiment with DPO at several β and with PPO at several KL targets, and plot the gold (sentiment
classifier) reward of each policy's samples against its sequence-level KL to the reference: "DPO
provides the highest expected reward for all KL values", i.e. its frontier dominates PPO's.

Here, on the synthetic task: DPO (`prefopt.train`, offline, on the task's Bradley–Terry preference
pairs labelled by the gold reward) at β ∈ {0.05, 0.1, 1, 5}; PPO (`prefopt.online.train_online`, on the
gold reward itself, i.e. the paper's PPO-GT) at several KL coefficients; and best-of-N by the gold
reward from the reference (`prefopt.online.best_of_n_reference`, KL = log N − (N−1)/N, an upper bound). Each
trained policy is evaluated on held-out prompts by `prefopt.eval.evaluate_generations` (gold reward and
the exact sequence KL over the whole vocabulary), for several training seeds (Student-t CIs).

An algorithm's frontier is the most reward reachable within a KL budget k from its policies and the
reference: F(k) = the upper concave envelope of its (KL, reward) points and (0, reference reward),
made non-decreasing in k. Mixing two policies at the sequence level has a reward that is the mixture's
average and a KL at most the average (KL is convex), so every point under the envelope is reachable.
DPO's frontier dominates PPO's when every PPO point lies on or under F_DPO.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from prefopt.reproduce.base import Check, Outcome, Progress, Reproduction, Table, fmt
from prefopt.reproduce.experiments.dpo_frontier_runs import DPOFrontierConfig, Point, measure
from prefopt.threads import torch_threads

__all__ = [
    "DPOFrontierConfig",
    "CONFIG",
    "QUICK",
    "PAPER",
    "Point",
    "frontier",
    "frontier_at",
    "dominated_share",
    "mean_frontier_gap",
    "run",
]

PAPER = {
    "source": "Rafailov et al. 2023, Direct Preference Optimization, arXiv:2305.18290 (§6.1, Fig. 2 left)",
    "beta": "smaller β, larger KL (β weighs the KL penalty, Eq. 3)",
    "dominates": "DPO's frontier dominates PPO's (Fig. 2 left)",
    "area": "DPO has the highest reward at every KL (§6.1)",
}


CONFIG = DPOFrontierConfig()
QUICK = DPOFrontierConfig(
    sft="tiny",
    train_prompts=32,
    eval_prompts=8,
    heldout_prompts=12,
    dpo_betas=(0.1, 5.0),
    ppo_kl_coefs=(0.1,),
    ppo_steps=1,
    ppo_prompts_per_step=8,
    bon_ns=(1, 2),
    bon_samples=8,
    eval_prompts_used=12,
    max_new_tokens=32,
    seeds=1,
)


def frontier(points: Sequence[tuple[float, float]], origin: tuple[float, float]) -> list[tuple[float, float]]:
    """Vertices (KL ascending) of F: the upper concave envelope of `points` ∪ {origin}, cut where it stops rising.

    Args:
        points: (KL ≥ 0, reward) of an algorithm's policies; origin: (0, reference reward).
    Returns:
        the envelope's vertices from the origin up to its highest-reward vertex (beyond it F stays flat).
    """
    pts = sorted({(max(float(k), 0.0), float(r)) for k, r in points} | {(0.0, float(origin[1]))})
    hull: list[tuple[float, float]] = []
    for p in pts:  # monotone-chain upper hull: drop the last vertex while it lies on or under the chord
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], p) >= 0:
            hull.pop()
        hull.append(p)
    best = max(range(len(hull)), key=lambda i: (hull[i][1], -hull[i][0]))
    return hull[: best + 1]


def _cross(a: tuple[float, float], b: tuple[float, float], c: tuple[float, float]) -> float:
    return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])


def frontier_at(vertices: Sequence[tuple[float, float]], kl: float) -> float:
    """F(kl): linear between the envelope's vertices, flat after the last one (a larger budget is not required)."""
    if kl >= vertices[-1][0]:
        return vertices[-1][1]
    for (k0, r0), (k1, r1) in zip(vertices, vertices[1:]):
        if k0 <= kl <= k1:
            return r0 + (r1 - r0) * (kl - k0) / (k1 - k0) if k1 > k0 else max(r0, r1)
    return vertices[0][1]


def dominated_share(vertices: Sequence[tuple[float, float]], others: Sequence[Point], atol: float = 0.0) -> float:
    """Share of `others` lying on or under the frontier: reward ≤ F(kl) + atol."""
    return sum(p.reward <= frontier_at(vertices, p.kl) + atol for p in others) / len(others)


def mean_frontier_gap(
    a: Sequence[tuple[float, float]], b: Sequence[tuple[float, float]], up_to: float, grid: int = 512
) -> float:
    """(1/K) ∫₀^K (F_a(k) − F_b(k)) dk with K = `up_to`: a's average reward advantage per KL budget (trapezoid rule)."""
    ks = torch.linspace(0.0, up_to, grid, dtype=torch.float64)
    gap = torch.tensor([frontier_at(a, float(k)) - frontier_at(b, float(k)) for k in ks], dtype=torch.float64)
    return float(torch.trapezoid(gap, ks) / up_to) if up_to > 0 else 0.0


def run(config: DPOFrontierConfig, progress: Progress) -> Outcome:
    """Train and evaluate every policy, build the frontiers and check whether DPO's dominates PPO's."""
    with torch_threads(1):
        points, info = measure(config, progress)
    return outcome(config, points, info)


def _by(points: Sequence[Point], algorithm: str) -> list[Point]:
    return [p for p in points if p.algorithm == algorithm]


def outcome(config: DPOFrontierConfig, points: list[Point], info: dict[str, Any]) -> Outcome:
    """The checks, tables and figure of measured points (pure; `run` = `measure` + this)."""
    origin = (0.0, float(info["reference_reward"]))
    fronts = {a: frontier([(p.kl, p.reward) for p in _by(points, a)], origin) for a in ("DPO", "PPO", "best-of-N")}
    dpo = sorted(_by(points, "DPO"), key=lambda p: float(p.setting.split("=")[1]))
    kls = [p.kl for p in dpo]
    monotone = all(b < a for a, b in zip(kls, kls[1:]))
    budget = max(p.kl for p in points if p.algorithm in ("DPO", "PPO"))
    share = dominated_share(fronts["DPO"], _by(points, "PPO"))
    gap = mean_frontier_gap(fronts["DPO"], fronts["PPO"], budget)
    checks = [
        Check(
            "DPO: KL falls as β grows (β ascending)",
            PAPER["beta"],
            " > ".join(fmt(k, 3) for k in kls),
            "strictly decreasing",
            monotone,
            float(monotone),
        ),
        Check(
            "share of PPO points on or under DPO's frontier",
            PAPER["dominates"],
            fmt(share, 3),
            "= 1",
            share >= 1.0,
            share,
        ),
        Check(
            f"mean reward gap F_DPO − F_PPO over KL budgets [0, {fmt(budget, 3)}]",
            PAPER["area"],
            fmt(gap, 3),
            "≥ 0",
            gap >= 0,
            gap,
        ),
    ]
    bon_gap = mean_frontier_gap(fronts["DPO"], fronts["best-of-N"], budget)
    rows = [
        [
            p.algorithm,
            p.setting,
            f"{fmt(p.kl, 3)} ± {fmt(p.kl_ci, 2)}",
            f"{fmt(p.reward)} ± {fmt(p.reward_ci, 2)}",
            fmt(frontier_at(fronts["DPO"], p.kl)),
        ]
        for p in points
    ]
    table = Table(
        f"Policies (mean ± 95% CI over {config.seeds} seed(s); best-of-N: over prompts); reference "
        f"reward {fmt(origin[1])}",
        ["algorithm", "setting", "KL (nats)", "gold reward", "F_DPO at this KL"],
        rows,
    )
    notes = [
        f"Synthetic task (SFT '{config.sft}', task seed {config.task_seed}): "
        f"{config.train_prompts} training prompts × 2 pairs; DPO {config.dpo_epochs} epoch(s), "
        f"batch {config.dpo_batch_size}; PPO on the gold reward "
        f"(the paper's PPO-GT) for {config.ppo_steps} rollouts of {config.ppo_prompts_per_step} prompts × "
        f"{config.ppo_samples} samples; evaluation on {config.eval_prompts_used} held-out prompts, exact KL.",
        "Best-of-N by the gold reward is placed at KL = log N − (N−1)/N (an upper bound on its KL; Beirami et al. "
        f"2024). Mean gap F_DPO − F_best-of-N over the same budgets: {fmt(bon_gap, 3)}.",
        "Frontiers are upper concave envelopes with the reference at (0, reference reward), flat beyond the "
        "highest point (module docstring); the checks use the seed means.",
    ]

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        right = max(p.kl for p in points)  # the flat part of each frontier is drawn up to the largest KL
        colours = {"DPO": "tab:blue", "PPO": "tab:orange", "best-of-N": "tab:green"}
        for algorithm, colour in colours.items():
            group = sorted(_by(points, algorithm), key=lambda p: p.kl)
            ax.errorbar(
                [p.kl for p in group],
                [p.reward for p in group],
                xerr=[0 if p.kl_ci != p.kl_ci else p.kl_ci for p in group],
                yerr=[0 if p.reward_ci != p.reward_ci else p.reward_ci for p in group],
                fmt="o",
                color=colour,
                capsize=3,
                label=algorithm,
            )
            for p in group:
                ax.annotate(p.setting, (p.kl, p.reward), textcoords="offset points", xytext=(4, 4), fontsize=7)
            front = fronts[algorithm] + [(right, fronts[algorithm][-1][1])] * (right > fronts[algorithm][-1][0])
            ax.plot([k for k, _ in front], [r for _, r in front], "-", color=colour, alpha=0.6)
        ax.plot([0.0], [origin[1]], "k*", markersize=12, label="reference")
        # Limits from the means: with two seeds a t-interval is ±12.7 standard errors and would hide the points.
        rewards = [p.reward for p in points] + [origin[1]]
        span = max(rewards) - min(rewards) or 1.0
        ax.set_ylim(min(rewards) - 0.2 * span, max(rewards) + 0.2 * span)
        ax.set_xscale("symlog", linthresh=0.1)  # DPO's small KLs and PPO's large ones on one axis
        ax.set_xlim(0.0, 1.5 * right)
        ax.set_xlabel("KL(π ‖ π_ref) per sequence (nats, linear below 0.1, log above)")
        ax.set_ylabel("gold reward")
        ax.set_title("Reward vs KL frontier (Rafailov et al. 2023, Fig. 2 left, synthetic task)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)

    data = {
        "config": dataclasses.asdict(config),
        "points": [dataclasses.asdict(p) for p in points],
        "frontiers": fronts,
        "dominated_share": share,
        "gap_dpo_ppo": gap,
        "gap_dpo_bon": bon_gap,
        **info,
    }
    return Outcome(checks, [table], draw, (8.0, 6.0), notes, data)


def make_config(quick: bool, seeds: int | None) -> DPOFrontierConfig:
    """The full or quick setting; `seeds` sets the training seeds per setting."""
    config = QUICK if quick else CONFIG
    return dataclasses.replace(config, seeds=seeds) if seeds is not None else config


REPRODUCTION = Reproduction(
    name="dpo-frontier",
    title="DPO's reward–KL frontier against PPO (gold reward) and best-of-N on the synthetic task",
    paper=PAPER["source"],
    checks="β orders DPO's KL; every PPO point lies under DPO's frontier; DPO's frontier is higher on average",
    runtime="≈ 4.8 min (shared 2-core CPU, load ≈ 3)",
    make_config=make_config,
    run=run,
    seeded=True,
)
