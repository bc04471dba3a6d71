"""Reward-model overoptimisation under best-of-N (Gao, Schulman & Hilton 2022), on the synthetic task.

Gao et al. ("Scaling Laws for Reward Model Overoptimization", arXiv:2210.10760) label data with a
"gold" reward model, train proxy reward models of several sizes on it, and optimise against each proxy
with best-of-N. The gold reward of the proxy-selected sample first rises with N and then falls (§3,
Fig. 1a): the proxy is being overoptimised. As a function of d = √KL_bon, KL_bon = log N − (N−1)/N, the
gold gain over the reference follows R_bon(d) = d(α_bon − β_bon·d) (§3, Eq. 1), with α_bon growing and
β_bon shrinking as the proxy grows (§3.2, Fig. 3), so the gold-optimal KL, KL* = (α/2β)², grows with
the proxy's size, and so does the gold reward at it.

Here the synthetic gold reward (`prefopt.data.synthetic.gold_reward`) plays the gold RM: it labels
Bradley–Terry preference pairs sampled from the synthetic reference policy (noiseless, as the paper's
hard-thresholded labels), and proxy reward models of sizes spanning ≈ 1.7 decades of parameters are
trained on those pairs (`prefopt.online.reward_model`), several replicas per size. Each proxy's held-out
pair accuracy is measured (the precondition: size must buy accuracy, or "size" is not what varies). For
held-out prompts, M samples are drawn once from the reference and scored by the gold reward and every
proxy; the expected gold and proxy reward of best-of-N-by-proxy for every N ≤ M come from the unbiased
order-statistics estimator of `prefopt.reproduce.bon_sampling` (Gao et al. App. I). CIs are paired
percentile bootstraps over prompts and held-out pairs (`overoptimization_stats`); a data-size ablation
trains every size on a share of the pairs. Tables, figure and the protocol's distance from the paper are
in `overoptimization_report`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import Tensor

from prefopt.reproduce.base import Check, Outcome, Progress, Reproduction, check_at_least, fmt
from prefopt.reproduce.bon_sampling import bon_kl
from prefopt.reproduce.experiments.overoptimization_report import Stats, draw_figure, notes, tables
from prefopt.reproduce.experiments.overoptimization_runs import (
    Measurement,
    OveroptimizationConfig,
    ProxyCurves,
    ProxyTrainer,
    measure,
    train_proxy_reward_model,
)
from prefopt.reproduce.experiments.overoptimization_stats import (
    KL_CAP_FACTOR,
    accuracy_samples,
    bootstrap_fit,
    fit_samples,
    percentile_interval,
)
from prefopt.threads import torch_threads

__all__ = [
    "OveroptimizationConfig",
    "CONFIG",
    "QUICK",
    "PAPER",
    "ProxyCurves",
    "ProxyTrainer",
    "Measurement",
    "bootstrap_fit",
    "measure",
    "outcome",
    "run",
    "size_checks",
    "size_slope",
]

PAPER = {
    "source": "Gao, Schulman & Hilton 2022, Scaling Laws for Reward Model Overoptimization, arXiv:2210.10760 "
    "(§3 Eq. 1, Fig. 1a, Fig. 3; App. I estimator)",
    "form": "R_bon(d) = d(α − β d) fits the gold curve (§3, Eq. 1)",
    "overopt": "gold rises then falls: α > 0, β > 0 (Fig. 1a)",
    "accuracy": "proxy size is what varies: larger proxies are better RMs (sizes 3M–3B)",
    "peak": "gold-optimal KL* = (α/2β)² grows with proxy size (Fig. 3: α ↑, β ↓)",
    "gold_peak": "gold reward at the optimum grows with proxy size (Fig. 1a, Fig. 3)",
}

CONFIG = OveroptimizationConfig()
QUICK = OveroptimizationConfig(
    sft="tiny",
    train_prompts=96,
    eval_prompts=16,
    proxy_sizes=((8, 1), (32, 1)),
    proxy_init="scratch",
    rm_epochs=2.0,
    heldout_prompts=12,
    pool=32,
    ns=(1, 2, 4, 8, 16, 32),
    r2_min=0.5,
    seeds=1,
    ablation_fractions=(0.5,),
)


def run(config: OveroptimizationConfig, progress: Progress) -> Outcome:
    """Train the proxies, measure best-of-N against each, fit Gao et al.'s form and check the claims."""
    with torch_threads(1):
        measured = measure(config, progress, lambda *args: train_proxy_reward_model(*args, config=config))
    return outcome(config, measured)


def statistics(config: OveroptimizationConfig, curves: list[ProxyCurves]) -> Stats:
    """Paired bootstrap samples of every proxy's fit (over prompts) and accuracy (over held-out pairs)."""
    d, base = bon_kl(config.ns).sqrt(), config.ns.index(1)
    fits = [fit_samples(d, c.gold, base, seed=config.seed) for c in curves]
    accuracy = [
        accuracy_samples(c.correct.mean(0), seed=config.seed) if c.correct is not None else None for c in curves
    ]
    return Stats(fits, accuracy)


def _log_size(c: ProxyCurves) -> float:
    """log10 of the proxy's parameter count (hidden² × layers where the count is unknown)."""
    return math.log10(c.params if c.params > 0 else c.size[0] ** 2 * c.size[1])


def size_slope(x: list[float], values: Tensor) -> Tensor:
    """Least-squares slope of values [S, ...] against x [S] (per decade of parameters), over the first axis."""
    xs = torch.tensor(x, dtype=torch.float64)
    centred = (xs - xs.mean()).reshape(-1, *([1] * (values.dim() - 1)))
    return (centred * (values - values.mean(0))).sum(0) / (centred**2).sum()


def _trend_check(
    claim: str, paper: str, curves: list[ProxyCurves], values: list[float], samples: list[Tensor], digits: int
) -> Check:
    """Gao et al.'s claims are trends in log size (Fig. 3): the slope against log10 parameters, with its paired
    bootstrap CI, must lie above 0. The chain of point estimates, smallest → largest, is printed beside it."""
    x = [_log_size(c) for c in curves]
    slope = float(size_slope(x, torch.tensor(values, dtype=torch.float64)))
    low, high = percentile_interval(size_slope(x, torch.stack([v.double() for v in samples])))
    chain = " → ".join(fmt(v, digits) for v in values)
    ours = f"{chain}; slope/decade {fmt(slope, 3)} [{fmt(low, 3)}, {fmt(high, 3)}]"
    return Check(claim, paper, ours, "slope per decade of parameters: 95% CI > 0", low > 0, slope)


def size_checks(config: OveroptimizationConfig, curves: list[ProxyCurves], stats: Stats) -> list[Check]:
    """The three claims across sizes: accuracy, gold-optimal KL and gold at the optimum all grow with log size.

    KL* is capped at `KL_CAP_FACTOR` × the largest KL the pool measures (a β ≤ 0 fit has KL* = ∞, and a peak
    that far out is extrapolation, not measurement).
    """
    checks = []
    if all(a is not None for a in stats.accuracy):
        checks.append(
            _trend_check(
                "held-out pair accuracy against proxy size (CI over pairs)",
                PAPER["accuracy"],
                curves,
                [c.accuracy for c in curves],
                [a for a in stats.accuracy if a is not None],
                3,
            )
        )
    cap = KL_CAP_FACTOR * float(bon_kl([max(config.ns)])[0])
    checks.append(
        _trend_check(
            f"gold-optimal KL* = (α/2β)² of the fit against proxy size (capped at {fmt(cap, 3)}; CI over prompts)",
            PAPER["peak"],
            curves,
            [min(c.gold_fit.peak_kl, cap) for c in curves],
            [f["peak_kl"].clamp(max=cap) for f in stats.fits],
            3,
        )
    )
    checks.append(
        _trend_check(
            "gold at the optimum (max over N of mean gold) against proxy size (CI over prompts)",
            PAPER["gold_peak"],
            curves,
            [float(c.gold.mean(1).max()) for c in curves],
            [f["best_gold"] for f in stats.fits],
            3,
        )
    )
    return checks


def outcome(config: OveroptimizationConfig, measured: Measurement) -> Outcome:
    """The checks, tables, figure and data of measured curves (pure; `run` = `measure` + this)."""
    curves = measured.curves
    stats = statistics(config, curves)
    checks: list[Check] = []
    for c in curves:
        label = f"proxy {c.size[0]}×{c.size[1]}"
        checks.append(check_at_least(f"{label}: R² of the gold fit", PAPER["form"], c.gold_fit.r2, config.r2_min, 3))
        both = min(c.gold_fit.alpha, c.gold_fit.beta)
        checks.append(
            Check(
                f"{label}: gold fit α, β",
                PAPER["overopt"],
                f"α = {fmt(c.gold_fit.alpha, 3)}, β = {fmt(c.gold_fit.beta, 3)}",
                "both > 0",
                both > 0,
                both,
            )
        )
    checks.extend(size_checks(config, curves, stats))
    data = {
        "config": dataclasses.asdict(config),
        "d": bon_kl(config.ns).sqrt().tolist(),
        "info": measured.info,
        "proxies": [_proxy_data(c, fits, acc) for c, fits, acc in zip(curves, stats.fits, stats.accuracy)],
        "ablation": [_proxy_data(c, None, None) for c in measured.ablation],
    }
    return Outcome(
        checks,
        tables(config, measured, stats),
        lambda fig: draw_figure(fig, config, measured),
        (4.2 * (len(curves) + 1), 4.5),
        notes(config, measured),
        data,
    )


def _json_number(x: float) -> float | None:
    """x, or None where it is infinite (a fit that never turns down): strict JSON has no ∞."""
    return None if math.isinf(x) else x


def _proxy_data(c: ProxyCurves, fits: dict[str, Any] | None, accuracy: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "size": list(c.size),
        "parameters": c.params,
        "train_pairs": c.pairs,
        "eval_accuracy": c.accuracy,
        "gold": c.gold.mean(1).tolist(),
        "proxy": c.proxy.mean(1).tolist(),
        "gold_fit": dataclasses.asdict(c.gold_fit),
        "proxy_fit": dataclasses.asdict(c.proxy_fit),
        "gold_peak_d": _json_number(c.gold_fit.peak_d),
        "gold_peak_kl": _json_number(c.gold_fit.peak_kl),
    }
    if c.correct is not None:
        out["eval_accuracy_per_replica"] = c.correct.mean(1).tolist()
    if fits is not None:
        out["gold_fit_ci95"] = {
            k: [_json_number(v) for v in interval]
            for k, interval in (
                (k, percentile_interval(fits[k])) for k in ("alpha", "beta", "peak_d", "peak_kl", "best_gold")
            )
        }
    if accuracy is not None:
        out["eval_accuracy_ci95"] = list(percentile_interval(accuracy))
    return out


def make_config(quick: bool, seeds: int | None) -> OveroptimizationConfig:
    """The full or quick setting; `seeds` sets the proxy replicas per size."""
    config = QUICK if quick else CONFIG
    return dataclasses.replace(config, seeds=seeds) if seeds is not None else config


REPRODUCTION = Reproduction(
    name="rm-overoptimization",
    title="Reward-model overoptimisation: best-of-N against proxy RMs of growing size, gold = d(α − βd)",
    paper=PAPER["source"],
    checks="per proxy the gold curve fits d(α − βd) with α, β > 0; with proxy size, held-out accuracy, the "
    "gold-optimal KL and the gold at it all grow (paired bootstrap CIs)",
    runtime="≈ 20 min wall, 5.4 min CPU on one thread (shared 2-core CPU, load 8–15; first run also trains "
    "three small SFT bodies, ≈ 35 s CPU)",
    make_config=make_config,
    run=run,
    seeded=True,
)
