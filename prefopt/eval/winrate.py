"""Win rates of a policy's samples against a baseline's, raw and length-controlled.

Per prompt i the outcome of the policy's completion against the baseline's under a reward r is

    o_i = 1[r_i > r_base,i] + ½·1[r_i = r_base,i]          (ties half, as in the DPO paper's win rates)

and the win rate is mean(o). A judge or reward that likes length rewards a policy that just writes more.
The length-controlled win rate (AlpacaEval 2, Dubois et al. 2024, arXiv:2404.04475, Sec. 3) fits a
logistic regression of the outcome on the length difference and reports the win rate it predicts when
the lengths are equal:

    z_i   = tanh((ℓ_i − ℓ_base,i) / sd(ℓ − ℓ_base))        the paper's normalised length feature
    P(o_i = 1) = σ(a + b·z_i)                              fitted by (ridge-on-b) maximum likelihood
    LC    = σ(a)                                           the predicted win rate at z = 0

AlpacaEval's GLM also has per-instruction difficulty terms, which need many models per instruction; with
one policy against one baseline they drop out and the fit is the two-parameter model above. Fractional
outcomes (ties) enter the Bernoulli log-likelihood as soft targets. With equal lengths z ≡ 0 and LC is
exactly the raw win rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from prefopt.eval.stats import BootstrapMethod, MeanCI, bootstrap_mean, bootstrap_statistic, finite_or_none

__all__ = [
    "pairwise_outcomes",
    "win_rate",
    "LengthControlledFit",
    "fit_length_controlled",
    "LengthControlledWinRate",
    "length_controlled_win_rate",
]


def _vector(values: Any, name: str) -> np.ndarray:
    array = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values, dtype=np.float64).reshape(-1)
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise ValueError(f"{name} is not finite at rows {bad[:10].tolist()}")
    return array


def pairwise_outcomes(scores: Any, baseline_scores: Any) -> np.ndarray:
    """Per-prompt outcomes [n] of `scores` [n] against `baseline_scores` [n]: 1 win, ½ tie, 0 loss."""
    mine = _vector(scores, "pairwise_outcomes: scores")
    theirs = _vector(baseline_scores, "pairwise_outcomes: baseline_scores")
    if mine.shape != theirs.shape or mine.size == 0:
        raise ValueError(
            f"pairwise_outcomes: scores has {mine.size} rows and baseline_scores {theirs.size}; "
            "pass one score per prompt for each, the same prompts in the same order (n ≥ 1)"
        )
    return (mine > theirs).astype(np.float64) + 0.5 * (mine == theirs)


def win_rate(
    scores: Any,
    baseline_scores: Any,
    *,
    confidence: float = 0.95,
    method: BootstrapMethod = "percentile",
    n_resamples: int = 2000,
    seed: int = 0,
) -> MeanCI:
    """Win rate mean(o) of `scores` [n] over `baseline_scores` [n] (ties ½), with a bootstrap CI over prompts."""
    return bootstrap_mean(
        pairwise_outcomes(scores, baseline_scores),
        confidence=confidence,
        method=method,
        n_resamples=n_resamples,
        seed=seed,
    )


@dataclass(frozen=True)
class LengthControlledFit:
    """The fitted model P(win) = σ(intercept + length_coef · tanh(Δℓ / length_scale)).

    `lc_win_rate` = σ(intercept); `length_scale` = sd(Δℓ) (0 when all differences are equal, then z ≡ 0).
    """

    intercept: float
    length_coef: float
    length_scale: float

    @property
    def lc_win_rate(self) -> float:
        return 1.0 / (1.0 + math.exp(-self.intercept))


def _length_feature(length_diff: np.ndarray) -> tuple[np.ndarray, float]:
    scale = float(length_diff.std())
    if scale == 0.0:
        return np.zeros_like(length_diff), 0.0
    return np.tanh(length_diff / scale), scale


def fit_length_controlled(
    outcomes: Any, length_diff: Any, *, ridge: float = 1e-3, max_iter: int = 100
) -> LengthControlledFit:
    """Fit P(o = 1) = σ(a + b·tanh(Δℓ/sd(Δℓ))) to outcomes [n] ∈ [0, 1] by penalised Newton-Raphson.

    Minimises Σ_i −[o_i log p_i + (1 − o_i) log(1 − p_i)] + (ridge/2)·b², a convex problem: the ridge on
    b keeps the fit finite when the outcome is perfectly separated by length, and leaves a unpenalised,
    so with z ≡ 0 the intercept is exactly logit(mean o). All wins (or all losses) have no finite a; the
    fit then returns a = ±∞, i.e. LC = 1 (or 0), the limit of the likelihood.

    Args:
        outcomes: [n] values in [0, 1] (1 win, ½ tie, 0 loss), e.g. `pairwise_outcomes`.
        length_diff: [n] policy length − baseline length per prompt (tokens or words).
        ridge: penalty on b (≥ 0).
        max_iter: Newton steps (each halves its step until the objective does not increase).
    """
    o = _vector(outcomes, "fit_length_controlled: outcomes")
    d = _vector(length_diff, "fit_length_controlled: length_diff")
    if o.shape != d.shape or o.size == 0:
        raise ValueError(
            f"fit_length_controlled: {o.size} outcomes and {d.size} length differences; pass one of "
            "each per prompt (n ≥ 1)"
        )
    if np.any((o < 0) | (o > 1)):
        raise ValueError("fit_length_controlled: outcomes must lie in [0, 1] (1 win, 0.5 tie, 0 loss)")
    if ridge < 0:
        raise ValueError(f"fit_length_controlled: ridge={ridge} must be ≥ 0")
    z, scale = _length_feature(d)
    mean = float(o.mean())
    if mean in (0.0, 1.0):
        return LengthControlledFit(math.copysign(math.inf, mean - 0.5), 0.0, scale)
    x = np.stack([np.ones_like(z), z], axis=1)  # (n, 2)
    penalty = np.array([0.0, ridge])

    def objective(w: np.ndarray) -> float:
        logits = x @ w
        # −[o log σ(t) + (1−o) log σ(−t)] = log(1 + e^t) − o·t, computed without overflow
        return float(np.sum(np.logaddexp(0.0, logits) - o * logits) + 0.5 * np.dot(penalty * w, w))

    w = np.array([math.log(mean / (1 - mean)), 0.0])
    current = objective(w)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        grad = x.T @ (p - o) + penalty * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + np.diag(penalty) + 1e-12 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-8 and objective(w - t * step) > current + 1e-12:
            t /= 2
        w_new = w - t * step
        new = objective(w_new)
        converged = abs(current - new) < 1e-12 * max(1.0, abs(current)) or np.max(np.abs(t * step)) < 1e-10
        w, current = w_new, new
        if converged:
            break
    return LengthControlledFit(float(w[0]), float(w[1]), scale)


@dataclass(frozen=True)
class LengthControlledWinRate:
    """Raw and length-controlled win rate with bootstrap CIs over prompts, plus the point fit."""

    win_rate: MeanCI
    lc_win_rate: MeanCI
    fit: LengthControlledFit

    def to_dict(self) -> dict[str, Any]:
        return {
            "win_rate": self.win_rate.to_dict(),
            "lc_win_rate": self.lc_win_rate.to_dict(),
            "intercept": finite_or_none(self.fit.intercept),
            "length_coef": self.fit.length_coef,
            "length_scale": self.fit.length_scale,
        }


def length_controlled_win_rate(
    outcomes: Any,
    length_diff: Any,
    *,
    confidence: float = 0.95,
    method: BootstrapMethod = "percentile",
    n_resamples: int = 1000,
    seed: int = 0,
    ridge: float = 1e-3,
) -> LengthControlledWinRate:
    """Raw win rate mean(o) and the length-controlled σ(a) of `fit_length_controlled`, each with a CI.

    The LC interval resamples prompts (outcome and length difference together) and refits the whole
    model, sd(Δℓ) included, in every resample (`scipy.stats.bootstrap`, paired).

    Args:
        outcomes: [n] per-prompt outcomes in [0, 1] (`pairwise_outcomes(scores, baseline_scores)`).
        length_diff: [n] policy − baseline completion length per prompt.
    """
    o = _vector(outcomes, "length_controlled_win_rate: outcomes")
    d = _vector(length_diff, "length_controlled_win_rate: length_diff")
    fit = fit_length_controlled(o, d, ridge=ridge)
    raw = bootstrap_mean(o, confidence=confidence, method=method, n_resamples=n_resamples, seed=seed)
    lc = fit.lc_win_rate
    if o.size < 2:
        lc_ci = MeanCI(lc, math.nan, math.nan, int(o.size), confidence, method)
    elif np.all(o == o[0]) and o[0] in (0.0, 1.0):
        lc_ci = MeanCI(lc, lc, lc, int(o.size), confidence, "exact")
    else:

        def statistic(o_: np.ndarray, d_: np.ndarray) -> float:
            return fit_length_controlled(o_, d_, ridge=ridge).lc_win_rate

        low, high = bootstrap_statistic(
            (o, d), statistic, confidence=confidence, method=method, n_resamples=n_resamples, seed=seed
        )
        lc_ci = MeanCI(lc, float(low), float(high), int(o.size), confidence, method)
    return LengthControlledWinRate(raw, lc_ci, fit)
