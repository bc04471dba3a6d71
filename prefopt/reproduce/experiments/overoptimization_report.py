"""The report of `prefopt.reproduce.experiments.overoptimization`: its tables (proxies, best-of-N curves, the
data-size ablation, the distance from the paper's protocol), notes and figure. Pure functions of the
measured curves and their bootstrap samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from prefopt.reproduce.base import Table, fmt, mean_ci
from prefopt.reproduce.bon_sampling import bon_kl
from prefopt.reproduce.experiments.overoptimization_runs import Measurement, OveroptimizationConfig, ProxyCurves
from prefopt.reproduce.experiments.overoptimization_stats import KL_CAP_FACTOR, percentile_interval

__all__ = ["Stats", "PROTOCOL", "tables", "notes", "draw_figure"]


@dataclass
class Stats:
    """Bootstrap samples per proxy: `fits[i]` of `fit_samples` (over prompts), `accuracy[i]` [R] (over pairs)."""

    fits: list[dict[str, Tensor]]
    accuracy: list[Tensor | None]


# | dimension | paper | ours | why |: the distance of this reproduction from Gao et al.'s protocol.
PROTOCOL = [
    (
        "gold reward",
        "6B RM trained on human comparisons",
        "the synthetic task's exact r*(x, y)",
        "no human data on CPU; an exact gold has no noise of its own",
    ),
    ("policy", "1.2B GPT, supervised fine-tuned", "1.2M-parameter Llama SFT on the review grammar", "CPU budget"),
    (
        "proxy RM sizes",
        "3M–3B parameters (≈ 3 decades), from pretrained models",
        "2.3k–111k (≈ 1.7 decades), from SFT bodies of each shape",
        "a 1.2M proxy costs ≈ 10× the 64×2 one per replica; the span still moves accuracy",
    ),
    ("labels", "gold RM, hard-thresholded (no noise)", "gold r*, noiseless (T = 0)", "same"),
    (
        "RM data",
        "tens of thousands of comparisons; ≳ 2k needed to beat chance (data-size study)",
        "≈ 4k pairs (4× the old run), 2 epochs",
        "CPU budget; the ablation shows accuracy against data size",
    ),
    (
        "replicates",
        "one RM per size",
        "3 RMs per size (score-head seed, data order), paired bootstrap CIs",
        "verdicts need CIs",
    ),
    (
        "optimisation",
        "best-of-N and PPO against the proxy",
        "best-of-N only",
        "the claim is checkable exactly for best-of-N; RL would cost hours here",
    ),
    (
        "best-of-N estimator",
        "unbiased subset estimator over many samples per prompt",
        "the same estimator, M = 256 samples × 32 prompts",
        "CPU budget; d ≤ 2.13",
    ),
    ("fit", "R_bon(d) = d(α − βd), peak α/(2β)", "the same, least squares in closed form", "same"),
]


def _acc_cell(c: ProxyCurves, samples: Tensor | None) -> str:
    if samples is None:
        return fmt(c.accuracy, 3)
    low, high = percentile_interval(samples)
    cell = f"{fmt(c.accuracy, 3)} [{fmt(low, 3)}, {fmt(high, 3)}]"
    if c.correct is not None and c.correct.shape[0] > 1:
        per_replica = c.correct.mean(1)
        _, half = mean_ci(per_replica)
        cell += f" (replicas ± {fmt(float(half), 2)})"
    return cell


def _interval_cell(value: float, samples: Tensor, digits: int = 3) -> str:
    low, high = percentile_interval(samples)
    return f"{fmt(value, digits)} [{fmt(low, digits)}, {fmt(high, digits)}]"


def _proxy_rows(config: OveroptimizationConfig, curves: list[ProxyCurves], stats: Stats) -> list[list[str]]:
    d = bon_kl(config.ns).sqrt()
    rows = []
    for c, fits, acc in zip(curves, stats.fits, stats.accuracy):
        mean = c.gold.mean(1)
        best = int(mean.argmax())
        rows.append(
            [
                f"{c.size[0]}×{c.size[1]}",
                f"{c.params:,}",
                str(c.pairs),
                _acc_cell(c, acc),
                _interval_cell(c.gold_fit.alpha, fits["alpha"]),
                _interval_cell(c.gold_fit.beta, fits["beta"]),
                fmt(c.gold_fit.r2, 3),
                _interval_cell(c.gold_fit.peak_kl, fits["peak_kl"]),
                f"{config.ns[best]} (KL {fmt(float(d[best] ** 2), 3)})",
                _interval_cell(float(mean[best]), fits["best_gold"]),
            ]
        )
    return rows


def _curve_rows(config: OveroptimizationConfig, curves: list[ProxyCurves]) -> list[list[str]]:
    d = bon_kl(config.ns).sqrt()
    rows = []
    for c in curves:
        gold_mean, gold_half = mean_ci(c.gold.T)
        proxy_mean = c.proxy.mean(1)
        for j, n in enumerate(config.ns):
            rows.append(
                [
                    f"{c.size[0]}×{c.size[1]}",
                    str(n),
                    fmt(float(d[j] ** 2), 3),
                    f"{fmt(float(gold_mean[j]))} ± {fmt(float(gold_half[j]), 2)}",
                    fmt(float(proxy_mean[j])),
                ]
            )
    return rows


def _ablation_rows(config: OveroptimizationConfig, measured: Measurement) -> list[list[str]]:
    d = bon_kl(config.ns).sqrt()
    rows = []
    for c in sorted(measured.ablation + measured.curves, key=lambda c: (c.size, c.pairs)):
        mean = c.gold.mean(1)
        best = int(mean.argmax())
        peak = c.gold_fit.peak_kl
        rows.append(
            [
                f"{c.size[0]}×{c.size[1]}",
                str(c.pairs),
                str(1 if c.correct is None else c.correct.shape[0]),
                fmt(c.accuracy, 3),
                "∞" if math.isinf(peak) else fmt(peak, 3),
                f"{config.ns[best]} (KL {fmt(float(d[best] ** 2), 3)})",
                fmt(float(mean[best]), 3),
            ]
        )
    return rows


def tables(config: OveroptimizationConfig, measured: Measurement, stats: Stats) -> list[Table]:
    """Proxies (accuracy, fit, optimum), the data-size ablation, the best-of-N curves and the protocol table."""
    out = [
        Table(
            "Proxies: held-out accuracy [95% CI over pairs] and the gold fit of best-of-N [95% CI over prompts]",
            [
                "proxy hidden×layers",
                "parameters",
                "train pairs",
                "held-out acc.",
                "gold α",
                "gold β",
                "gold R²",
                "gold-optimal KL* = (α/2β)²",
                "best N measured",
                "gold at best N",
            ],
            _proxy_rows(config, measured.curves, stats),
        )
    ]
    if measured.ablation:
        out.append(
            Table(
                "Data-size ablation: accuracy and optimum against training pairs (ablation rows: one replica)",
                [
                    "proxy",
                    "train pairs",
                    "replicas",
                    "held-out acc.",
                    "fitted KL*",
                    "best N measured",
                    "gold at best N",
                ],
                _ablation_rows(config, measured),
            )
        )
    out.append(
        Table(
            "Best-of-N by proxy: mean gold (± 95% CI over prompts) and proxy reward",
            ["proxy", "N", "KL_bon", "gold", "proxy"],
            _curve_rows(config, measured.curves),
        )
    )
    out.append(Table("Distance from the paper's protocol", ["dimension", "paper", "ours", "why"], PROTOCOL))
    return out


def _init_note(config: OveroptimizationConfig) -> str:
    if config.proxy_init == "scratch":
        return "randomly initialised (the reference architecture resized)"
    return (
        f"initialised from synthetic SFT policies of their shape (seed {config.seed}), as Gao et al. initialise "
        "RMs from pretrained models of each size"
    )


def notes(config: OveroptimizationConfig, measured: Measurement) -> list[str]:
    """The setting, the estimator and the conventions of the fit, in words."""
    info = measured.info
    return [
        f"Synthetic task (SFT '{config.sft}', seed {config.seed}); {info['train_pairs']} training pairs "
        f"({config.train_prompts} prompts × {config.completions_per_prompt // 2}) labelled by the gold reward at "
        f"temperature {config.label_temperature} (0 = noiseless); {info['eval_pairs']} held-out pairs for accuracy; "
        f"proxies {_init_note(config)}, trained with Bradley–Terry for {config.rm_epochs} epochs at lr "
        f"{config.rm_lr}, batch {config.rm_batch_size}, {config.seeds} replica(s) per size (score-head seed and "
        "data order); curves and accuracies are replica means.",
        f"Best-of-N: {config.heldout_prompts} held-out prompts × M = {config.pool} reference samples, the unbiased "
        f"subset estimator for every N ≤ M; KL_bon = log N − (N−1)/N (the paper's convention, an upper bound on "
        f"the exact KL for discrete outcomes). Reference gold reward {fmt(info['reference_gold'])}.",
        "Fits are of the gain over N = 1, least squares without intercept, R² against the centred total sum of "
        "squares. A β ≤ 0 fit never turns down (KL* = ∞; in a paired difference, ∞ − ∞ counts as 0). CIs: "
        "percentile bootstrap (1,000 resamples) over held-out pairs (accuracy) and prompts (fits), the same "
        "resamples for every proxy, so differences between proxies are paired.",
    ]


def draw_figure(fig: Any, config: OveroptimizationConfig, measured: Measurement) -> None:
    """One panel per proxy (gold and proxy gain against d, with Gao fits), and accuracy / KL* against size."""
    curves = measured.curves
    axes = fig.subplots(1, len(curves) + 1, squeeze=False)[0]
    d = bon_kl(config.ns).sqrt()
    base = config.ns.index(1)
    dense = torch.linspace(0, float(d.max()), 100, dtype=torch.float64)
    for ax, c in zip(axes, curves):
        gold_mean, gold_half = mean_ci(c.gold.T)
        ax.errorbar(
            d.tolist(),
            (gold_mean - gold_mean[base]).tolist(),
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
        proxy = c.proxy.mean(1)
        ax.plot(d.tolist(), (proxy - proxy[base]).tolist(), "s", color="tab:blue", label="proxy (measured)")
        ax.set_title(f"proxy {c.size[0]}×{c.size[1]} ({c.params:,} params), acc {c.accuracy:.3f}", fontsize=8)
        ax.set_xlabel("d = √KL_bon (nats^½)")
        ax.set_ylabel("reward gain over N = 1")
        ax.legend(fontsize=6)
    ax = axes[-1]
    params = [c.params for c in curves]
    ax.plot(params, [c.accuracy for c in curves], "o-", color="tab:green", label="held-out accuracy")
    ax.set_xscale("log")
    ax.set_xlabel("proxy parameters")
    ax.set_ylabel("held-out pair accuracy")
    twin = ax.twinx()
    peaks = [min(c.gold_fit.peak_kl, KL_CAP_FACTOR * float(d.max() ** 2)) for c in curves]
    twin.axhline(float(d.max() ** 2), color="grey", lw=0.8, ls=":", label="largest measured KL_bon")
    twin.plot(params, peaks, "s--", color="tab:red", label=f"fitted KL* (capped at {KL_CAP_FACTOR:g}× max KL)")
    twin.set_ylabel("gold-optimal KL* (nats)")
    ax.legend(fontsize=6, loc="upper left")
    twin.legend(fontsize=6, loc="lower right")
    fig.suptitle("Best-of-N against proxy reward models of growing size (Gao et al. 2022, Fig. 1a / Fig. 3)")
