"""The statistics of `prefopt.reproduce.experiments.overoptimization`: percentile bootstraps of the Gao fit over
best-of-N prompts and of proxy accuracy over held-out pairs.

Every proxy is scored on the same pool and the same held-out pairs, so one resample of prompts (or of pairs),
drawn from the same seed, serves every proxy: differences between proxies (largest − smallest) are paired
bootstraps. Shapes: J values of N, P prompts, E held-out pairs, R resamples.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "KL_CAP_FACTOR",
    "fit_samples",
    "bootstrap_fit",
    "accuracy_samples",
    "percentile_interval",
    "difference_interval",
]

KL_CAP_FACTOR = 10.0  # a fitted KL* beyond 10× the largest measured KL_bon counts as that cap (extrapolation)


def fit_samples(d: Tensor, curve: Tensor, base: int, *, resamples: int = 1000, seed: int = 0) -> dict[str, Tensor]:
    """Bootstrap over prompts of the gold fit gain = d(α − βd) → [R] samples of each statistic.

    Args:
        d: [J] √KL_bon; curve: [J, P] per-prompt best-of-N values; base: the index of N = 1 in d.
    Returns:
        alpha, beta; peak_d = α/(2β) and peak_kl = peak_d² (∞ where β ≤ 0: the fit never turns down);
        best_kl: KL_bon at the measured argmax of the resampled mean curve; best_gold: that maximum.
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
    best = means.argmax(1)
    return {
        "alpha": alpha,
        "beta": beta,
        "peak_d": peak,
        "peak_kl": peak**2,
        "best_kl": (d**2)[best],
        "best_gold": means.max(1).values,
    }


def percentile_interval(samples: Tensor, level: float = 0.95) -> tuple[float, float]:
    """(low, high) percentile interval of [R] bootstrap samples (∞ sorts last, so a bound may be ∞)."""
    ordered = samples.double().sort().values
    n, tail = ordered.numel(), (1 - level) / 2
    return float(ordered[int(tail * (n - 1))]), float(ordered[int(round((1 - tail) * (n - 1)))])


def difference_interval(high: Tensor, low: Tensor, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the paired differences high − low; a resample where both are ∞ counts as 0
    (neither fit turns down: no evidence either way), one ∞ as ±∞."""
    diff = torch.where(torch.isinf(high) & torch.isinf(low), torch.zeros_like(high), high - low)
    return percentile_interval(diff, level)


def bootstrap_fit(
    d: Tensor, curve: Tensor, base: int, *, resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap over prompts of the gold fit: (low, high) of α, β and the peak d* = α/(2β).

    A resample with β ≤ 0 has d* = ∞, so the upper end of d*'s interval may be ∞.
    """
    samples = fit_samples(d, curve, base, resamples=resamples, seed=seed)
    return {name: percentile_interval(samples[name], level) for name in ("alpha", "beta", "peak_d")}


def accuracy_samples(correct: Tensor, *, resamples: int = 1000, seed: int = 0) -> Tensor:
    """Bootstrap over held-out pairs of the accuracy: correct [E] (replica means in [0, 1]) → [R] accuracies.

    The same seed and E give the same resamples, so two proxies' samples are paired.
    """
    gen = torch.Generator().manual_seed(seed)
    picks = torch.randint(correct.numel(), (resamples, correct.numel()), generator=gen)  # [R, E]
    return correct.double()[picks].mean(1)
