"""Reward-model overoptimisation under best-of-N (Gao, Schulman & Hilton 2022), on the synthetic task.

Gao et al. ("Scaling Laws for Reward Model Overoptimization", arXiv:2210.10760) label data with a
"gold" reward model, train proxy reward models of several sizes on it, and optimise against each proxy
with best-of-N. The gold reward of the proxy-selected sample first rises with N and then falls (§3,
Fig. 1a): the proxy is being overoptimised. As a function of d = √KL_bon, KL_bon = log N − (N−1)/N, the
gold gain over the reference follows R_bon(d) = d(α_bon − β_bon·d) (§3, Eq. 1), with α_bon growing and
β_bon shrinking as the proxy grows (§3.2, Fig. 3), so the peak d* = α/(2β) moves out.

Here the synthetic gold reward (`prefopt.data.synthetic.gold_reward`) plays the gold RM: it labels
Bradley–Terry preference pairs sampled from the synthetic reference policy, and proxy reward models of
several sizes are trained on those pairs from scratch (`prefopt.online.reward_model`). For held-out
prompts, M samples are drawn once from the reference and scored by the gold reward and every proxy;
the expected gold and proxy reward of best-of-N-by-proxy for every N ≤ M come from the unbiased
order-statistics estimator of `prefopt.reproduce.bon_sampling` (Gao et al. App. I). CIs are over
prompts (Student's t).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import Tensor

from prefopt.reproduce.base import Check, Outcome, Progress, Reproduction, Table, check_at_least, fmt, mean_ci
from prefopt.reproduce.bon_sampling import bon_kl
from prefopt.reproduce.experiments.overoptimization_runs import (
    OveroptimizationConfig,
    ProxyCurves,
    ProxyTrainer,
    measure,
    train_proxy_reward_model,
)
from prefopt.threads import torch_threads

__all__ = ["OveroptimizationConfig", "CONFIG", "QUICK", "PAPER", "ProxyTrainer", "measure", "run"]

PAPER = {
    "source": "Gao, Schulman & Hilton 2022, Scaling Laws for Reward Model Overoptimization, arXiv:2210.10760 "
    "(§3 Eq. 1, Fig. 1a, Fig. 3; App. I estimator)",
    "form": "R_bon(d) = d(α − β d) fits the gold curve (§3, Eq. 1)",
    "overopt": "gold rises then falls: α > 0, β > 0 (Fig. 1a)",
    "peak": "peak d* = α/(2β) moves out as the proxy grows (Fig. 3: α ↑, β ↓)",
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
)


def run(config: OveroptimizationConfig, progress: Progress) -> Outcome:
    """Train the proxies, measure best-of-N against each, fit Gao et al.'s form and check the claims."""
    with torch_threads(1):
        curves, info = measure(config, progress, lambda *args: train_proxy_reward_model(*args, config=config))
    return outcome(config, curves, info)


def bootstrap_fit(
    d: Tensor, curve: Tensor, base: int, *, resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap over prompts of the gold fit: (low, high) of α, β and the peak d* = α/(2β).

    Args:
        d: [J] √KL_bon; curve: [J, P] per-prompt best-of-N values; base: the index of N = 1 in d.
    A resample with β ≤ 0 has d* = ∞, so the upper end of d*'s interval may be ∞.
    """
    gen = torch.Generator().manual_seed(seed)
    prompts = curve.shape[1]
    picks = torch.randint(prompts, (resamples, prompts), generator=gen)  # [R, P]
    means = curve.T[picks].mean(1)  # (R, J)
    gains = means - means[:, base : base + 1]
    # The normal equations of `fit_gao_bon` (columns d and −d²), solved for all resamples at once.
    s11, s12, s22 = float((d**2).sum()), float(-(d**3).sum()), float((d**4).sum())
    b1, b2 = gains @ d, -(gains @ d**2)
    det = s11 * s22 - s12 * s12
    alpha, beta = (s22 * b1 - s12 * b2) / det, (s11 * b2 - s12 * b1) / det
    peak = torch.where(beta > 0, alpha / (2 * beta), torch.full_like(alpha, math.inf))
    values = {"alpha": alpha, "beta": beta, "peak_d": peak}
    tail = (1 - level) / 2
    out = {}
    for name, v in values.items():
        ordered = v.sort().values
        low, high = ordered[int(tail * (resamples - 1))], ordered[int(round((1 - tail) * (resamples - 1)))]
        out[name] = (float(low), float(high))
    return out


def _interval(bounds: tuple[float, float]) -> str:
    return "[" + ", ".join("∞" if math.isinf(b) else fmt(b, 3) for b in bounds) + "]"


def _init_note(config: OveroptimizationConfig) -> str:
    if config.proxy_init == "scratch":
        return "randomly initialised (the reference architecture resized)"
    return (
        "initialised from synthetic SFT policies of their shape (seed "
        f"{config.seed}; the (160, 4) body is the reference policy itself, as Gao et al. initialise RMs from the "
        "pretrained models of the policy's family)"
    )


def _json_number(x: float) -> float | None:
    """x, or None where it is infinite (a fit that never turns down): strict JSON has no ∞."""
    return None if math.isinf(x) else x


def _peak_check(curves: list[ProxyCurves]) -> Check:
    peaks = [c.gold_fit.peak_d for c in curves]
    increasing = all(b > a for a, b in zip(peaks, peaks[1:]))
    ours = " < ".join("∞" if math.isinf(p) else fmt(p, 3) for p in peaks)
    return Check(
        "fitted gold peak d* = α/(2β), smallest → largest proxy",
        PAPER["peak"],
        ours,
        "strictly increasing",
        increasing,
        float(increasing),
    )


def outcome(config: OveroptimizationConfig, curves: list[ProxyCurves], info: dict[str, Any]) -> Outcome:
    """The checks, tables, figure and data of measured curves (pure; `run` = `measure` + this)."""
    d = bon_kl(config.ns).sqrt()
    checks: list[Check] = []
    for c in curves:
        label = f"proxy h={c.size[0]} L={c.size[1]}"
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
    checks.append(_peak_check(curves))
    rows = []
    for c in curves:
        gold_mean, gold_half = mean_ci(c.gold.T)
        proxy_mean, _ = mean_ci(c.proxy.T)
        for j, n in enumerate(config.ns):
            rows.append(
                [
                    f"{c.size[0]}×{c.size[1]}",
                    str(n),
                    fmt(float(d[j] ** 2), 3),
                    fmt(float(d[j]), 3),
                    f"{fmt(float(gold_mean[j]))} ± {fmt(float(gold_half[j]), 2)}",
                    fmt(float(proxy_mean[j])),
                ]
            )
    base = config.ns.index(1)
    intervals = [bootstrap_fit(d, c.gold, base, seed=config.seed) for c in curves]
    fits = [
        [
            f"{c.size[0]}×{c.size[1]}",
            fmt(c.accuracy, 3),
            f"{fmt(c.gold_fit.alpha, 3)} {_interval(ci['alpha'])}",
            f"{fmt(c.gold_fit.beta, 3)} {_interval(ci['beta'])}",
            fmt(c.gold_fit.r2, 3),
            f"{'∞' if math.isinf(c.gold_fit.peak_d) else fmt(c.gold_fit.peak_d, 3)} {_interval(ci['peak_d'])}",
            str(config.ns[int(c.gold.mean(1).argmax())]),
            fmt(c.proxy_fit.alpha, 3),
            fmt(c.proxy_fit.beta, 3),
            fmt(c.proxy_fit.r2, 3),
        ]
        for c, ci in zip(curves, intervals)
    ]
    tables = [
        Table(
            "Gao fits per proxy (gain over N = 1 against d = √KL_bon; gold: [95% bootstrap CI over prompts])",
            [
                "proxy hidden×layers",
                "eval acc.",
                "gold α",
                "gold β",
                "gold R²",
                "gold peak d*",
                "best N (measured)",
                "proxy α",
                "proxy β",
                "proxy R²",
            ],
            fits,
        ),
        Table(
            "Best-of-N by proxy: mean gold (± 95% CI over prompts) and proxy reward",
            ["proxy", "N", "KL_bon", "d", "gold", "proxy"],
            rows,
        ),
    ]
    notes = [
        f"Synthetic task (SFT '{config.sft}', seed {config.seed}); {config.train_prompts} training prompts × "
        f"{config.completions_per_prompt // 2} Bradley–Terry pairs labelled by the gold reward at temperature "
        f"{config.label_temperature} (0 = noiseless); proxies {_init_note(config)}, trained with Bradley–Terry for "
        f"{config.rm_epochs} epochs at lr {config.rm_lr}, {config.seeds} replica(s) per size.",
        f"Best-of-N: {config.heldout_prompts} held-out prompts × M = {config.pool} reference samples, the unbiased "
        f"subset estimator for every N ≤ M; KL_bon = log N − (N−1)/N (the paper's convention, an upper bound on "
        f"the exact KL for discrete outcomes). Reference gold reward {fmt(info['reference_gold'])}.",
        "Fits are of the gain over N = 1, least squares without intercept, R² against the centred total sum of "
        "squares. A β ≤ 0 fit never turns down (peak d* = ∞).",
    ]

    def draw(fig: Any) -> None:
        axes = fig.subplots(1, len(curves), sharey=False, squeeze=False)[0]
        dense = torch.linspace(0, float(d.max()), 100, dtype=torch.float64)
        for ax, c in zip(axes, curves):
            base_gold, base_proxy = float(c.gold.mean(1)[base]), float(c.proxy.mean(1)[base])
            gold_mean, gold_half = mean_ci(c.gold.T)
            ax.errorbar(
                d.tolist(),
                (gold_mean - base_gold).tolist(),
                yerr=gold_half.tolist(),
                fmt="o",
                color="tab:orange",
                label="gold (measured)",
                capsize=2,
            )
            ax.plot(
                dense.tolist(),
                c.gold_fit.predict(dense).tolist(),
                "-",
                color="tab:orange",
                label=f"gold fit α={c.gold_fit.alpha:.2f} β={c.gold_fit.beta:.2f}",
            )
            ax.plot(
                d.tolist(), (c.proxy.mean(1) - base_proxy).tolist(), "s", color="tab:blue", label="proxy (measured)"
            )
            ax.plot(dense.tolist(), c.proxy_fit.predict(dense).tolist(), "--", color="tab:blue", label="proxy fit")
            ax.set_title(f"proxy hidden {c.size[0]}, {c.size[1]} layer(s)", fontsize=9)
            ax.set_xlabel("d = √KL_bon (nats^½)")
            ax.set_ylabel("reward gain over N = 1")
            ax.legend(fontsize=7)
        fig.suptitle("Best-of-N against proxy reward models of growing size (Gao et al. 2022, Fig. 1a form)")

    data = {
        "config": dataclasses.asdict(config),
        "d": d.tolist(),
        "info": info,
        "proxies": [
            {
                "size": list(c.size),
                "eval_accuracy": c.accuracy,
                "gold": c.gold.mean(1).tolist(),
                "proxy": c.proxy.mean(1).tolist(),
                "gold_fit": dataclasses.asdict(c.gold_fit),
                "proxy_fit": dataclasses.asdict(c.proxy_fit),
                "gold_peak_d": _json_number(c.gold_fit.peak_d),
                "gold_fit_ci95": {k: [_json_number(v) for v in b] for k, b in ci.items()},
            }
            for c, ci in zip(curves, intervals)
        ],
    }
    return Outcome(checks, tables, draw, (5.0 * len(curves), 4.5), notes, data)


def make_config(quick: bool, seeds: int | None) -> OveroptimizationConfig:
    """The full or quick setting; `seeds` sets the proxy replicas per size."""
    config = QUICK if quick else CONFIG
    return dataclasses.replace(config, seeds=seeds) if seeds is not None else config


REPRODUCTION = Reproduction(
    name="rm-overoptimization",
    title="Reward-model overoptimisation: best-of-N against proxy RMs of growing size, gold = d(α − βd)",
    paper=PAPER["source"],
    checks="the gold curve fits d(α − βd) with α, β > 0 per proxy; the fitted peak moves out as the proxy grows",
    runtime="≈ 5.6 min (shared 2-core CPU under load; first run also trains a 32×1 SFT body, ≈ 1 min)",
    make_config=make_config,
    run=run,
    seeded=True,
)
