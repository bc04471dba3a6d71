"""Ratings of several algorithms from pairwise comparisons of their samples on shared prompts.

Each of M algorithms (the reference policy may be one of them) has one sample per prompt p, scored by a
reward: s[m, p]. Every pair of algorithms meets on every prompt, the better-scored sample winning (ties
½ each):

    w[i, j] = Σ_p 1[s_ip > s_jp] + ½·1[s_ip = s_jp]          wins of i over j       [M, M]

Bradley-Terry (Bradley & Terry 1952): P(i beats j) = σ(θ_i − θ_j). The strengths θ maximise

    Σ_{i≠j} w_ij · log σ(θ_i − θ_j) − (λ/2)·Σ_i θ_i²

by Newton-Raphson. The small ridge λ keeps θ finite when an algorithm wins or loses every comparison and
pins the free shift (the likelihood's gradient sums to zero, so the optimum has Σθ = 0). Strengths are
shown on the Elo scale of Chatbot Arena (Chiang et al. 2024, arXiv:2403.04132, Sec. 4 and App.):

    elo_i = 1000 + 400·(θ_i − θ_anchor) / ln 10         a 400-point gap = 10:1 odds

with the anchor a named participant (e.g. the reference policy) or the mean. Confidence intervals come from
a bootstrap over prompts (resample prompts, recount w, refit), percentile method.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "Rating",
    "Ratings",
    "prompt_outcomes",
    "fit_bradley_terry",
    "bradley_terry_ratings",
    "rate_generations",
    "ELO_SCALE",
    "ELO_BASE",
]

ELO_SCALE = 400.0 / math.log(10.0)  # Elo points per unit of θ
ELO_BASE = 1000.0


@dataclass(frozen=True)
class Rating:
    """One algorithm's rating: BT strength θ (anchored) with its CI, the same on the Elo scale, and its
    mean score against all others (wins + ½ ties over comparisons)."""

    name: str
    strength: float
    low: float
    high: float
    elo: float
    elo_low: float
    elo_high: float
    win_rate: float

    def to_dict(self) -> dict[str, Any]:
        keys = ("name", "strength", "low", "high", "elo", "elo_low", "elo_high", "win_rate")
        return {k: getattr(self, k) for k in keys}


@dataclass(frozen=True)
class Ratings:
    """Ratings of all compared algorithms, best first."""

    entries: tuple[Rating, ...]
    anchor: str | None
    num_prompts: int
    confidence: float

    def __getitem__(self, name: str) -> Rating:
        for entry in self.entries:
            if entry.name == name:
                return entry
        raise KeyError(f"no rating for {name!r}; rated: {[e.name for e in self.entries]}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "anchor": self.anchor,
            "num_prompts": self.num_prompts,
            "confidence": self.confidence,
            "ratings": [e.to_dict() for e in self.entries],
        }


def prompt_outcomes(scores: np.ndarray) -> np.ndarray:
    """Per-prompt pairwise outcomes [P, M, M] from scores [M, P]: o[p, i, j] = 1[s_ip > s_jp] + ½·1[s_ip = s_jp]
    for i ≠ j, 0 on the diagonal."""
    s = np.asarray(scores, dtype=np.float64).T  # (P, M)
    out = (s[:, :, None] > s[:, None, :]) + 0.5 * (s[:, :, None] == s[:, None, :])
    idx = np.arange(s.shape[1])
    out[:, idx, idx] = 0.0
    return out


def fit_bradley_terry(wins: np.ndarray, *, ridge: float = 1e-3, max_iter: int = 100, tol: float = 1e-10) -> np.ndarray:
    """Bradley-Terry strengths θ [M] (Σθ = 0) from a win matrix [M, M] (w[i, j] = wins of i over j, ≥ 0).

    Newton-Raphson on the ridge-penalised negative log-likelihood (see the module docstring), with step
    halving; the Hessian is Σ_j n_ij·p_ij(1 − p_ij) on the diagonal, −n_ij·p_ij(1 − p_ij) off it, plus λI.
    """
    w = np.asarray(wins, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] != w.shape[1] or w.shape[0] < 2:
        raise ValueError(f"fit_bradley_terry: wins has shape {w.shape}; expected [M, M] with M ≥ 2")
    if np.any(w < 0) or not np.all(np.isfinite(w)):
        raise ValueError("fit_bradley_terry: wins must be finite and ≥ 0")
    if ridge <= 0:
        raise ValueError(f"fit_bradley_terry: ridge={ridge} must be > 0 (it fixes the free shift of θ)")
    n = w + w.T

    def objective(theta: np.ndarray) -> float:
        d = theta[:, None] - theta[None, :]
        return float(np.sum(w * np.logaddexp(0.0, -d)) + 0.5 * ridge * theta @ theta)  # −log σ(d) = log(1+e^{−d})

    theta = np.zeros(w.shape[0])
    current = objective(theta)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(theta[:, None] - theta[None, :])))  # (M, M) P(i beats j)
        grad = -(w - n * p).sum(1) + ridge * theta
        curvature = n * p * (1 - p)
        hess = np.diag(curvature.sum(1)) - curvature + ridge * np.eye(len(theta))
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-8 and objective(theta - t * step) > current + 1e-12:
            t /= 2
        theta = theta - t * step
        new = objective(theta)
        done = abs(current - new) <= tol * max(1.0, abs(current))
        current = new
        if done:
            break
    return theta - theta.mean()


def bradley_terry_ratings(
    scores: Mapping[str, Sequence[float]] | Mapping[str, Any],
    *,
    anchor: str | None = None,
    confidence: float = 0.95,
    n_resamples: int = 500,
    seed: int = 0,
    ridge: float = 1e-3,
) -> Ratings:
    """Bradley-Terry ratings with bootstrap CIs from each algorithm's per-prompt sample scores.

    Args:
        scores: name → [P] reward of that algorithm's sample on prompt p (the same P prompts, same order,
            for every name), e.g. `GenerationMetrics.rewards`; add the reference's
            `reference_rewards` under a name of its own to rate it too. M ≥ 2 names.
        anchor: a name whose strength is set to 0 (Elo 1000); None: the mean strength is 0.
        confidence, n_resamples, seed: of the bootstrap over prompts.
        ridge: λ of `fit_bradley_terry`.
    Returns:
        `Ratings`, entries sorted by strength, best first.
    """
    names = list(scores)
    if len(names) < 2:
        raise ValueError(f"bradley_terry_ratings: need at least 2 algorithms to compare, got {names}")
    matrix = [np.asarray(scores[n], dtype=np.float64).reshape(-1) for n in names]
    num_prompts = matrix[0].size
    for name, row in zip(names, matrix):
        if row.size != num_prompts or row.size == 0:
            raise ValueError(
                f"bradley_terry_ratings: {name!r} has {row.size} scores, {names[0]!r} has {num_prompts}; "
                "every algorithm needs one score per shared prompt (P ≥ 1)"
            )
        if not np.all(np.isfinite(row)):
            raise ValueError(
                f"bradley_terry_ratings: {name!r} has non-finite scores at prompts "
                f"{np.flatnonzero(~np.isfinite(row))[:10].tolist()}"
            )
    if anchor is not None and anchor not in names:
        raise ValueError(f"bradley_terry_ratings: anchor={anchor!r} is not among the rated names {names}")
    outcomes = prompt_outcomes(np.stack(matrix))  # (P, M, M)
    shift_index = names.index(anchor) if anchor is not None else None

    def strengths(prompt_index: np.ndarray) -> np.ndarray:
        theta = fit_bradley_terry(outcomes[prompt_index.astype(np.int64)].sum(0), ridge=ridge)
        return theta - (theta[shift_index] if shift_index is not None else 0.0)

    everything = np.arange(num_prompts)
    theta = strengths(everything)
    if num_prompts >= 2:
        # Percentile bootstrap over prompts, by hand: the statistic is a vector, which older scipy's
        # `bootstrap` does not take.
        if not 0 < confidence < 1 or n_resamples < 1:
            raise ValueError(
                f"bradley_terry_ratings: confidence={confidence} must lie in (0, 1) and "
                f"n_resamples={n_resamples} be ≥ 1"
            )
        rng = np.random.default_rng(seed)
        draws = np.stack([strengths(rng.integers(0, num_prompts, num_prompts)) for _ in range(n_resamples)])
        low, high = np.percentile(draws, [50 * (1 - confidence), 50 * (1 + confidence)], axis=0)
    else:
        low = high = np.full(len(names), math.nan)
    total = outcomes.sum(0)
    win_rate = total.sum(1) / (total + total.T).sum(1)
    entries = [
        Rating(
            name,
            float(theta[i]),
            float(low[i]),
            float(high[i]),
            ELO_BASE + ELO_SCALE * float(theta[i]),
            ELO_BASE + ELO_SCALE * float(low[i]),
            ELO_BASE + ELO_SCALE * float(high[i]),
            float(win_rate[i]),
        )
        for i, name in enumerate(names)
    ]
    entries.sort(key=lambda e: -e.strength)
    return Ratings(tuple(entries), anchor, num_prompts, confidence)


def rate_generations(
    results: Mapping[str, Any],
    *,
    reference_name: str | None = "reference",
    confidence: float = 0.95,
    n_resamples: int = 500,
    seed: int = 0,
) -> Ratings:
    """Bradley-Terry ratings of several evaluated policies from their `GenerationMetrics` on the same prompts.

    Args:
        results: name → `GenerationMetrics` (its per-prompt `rewards`), all over the same prompts in the same
            order (`evaluate_generations` with the same prompts).
        reference_name: also rate the reference policy's samples under this name and anchor the scale on it
            (Elo 1000 = the reference); this needs every result to hold the same reference samples (pass
            one `reference_samples=` to `evaluate_generations` for all policies). None: policies only,
            mean-anchored.
    """
    if reference_name is not None and reference_name in results:
        raise ValueError(f"rate_generations: {reference_name!r} is both a policy name and reference_name; rename one")
    scores: dict[str, Any] = {name: list(r.rewards) for name, r in results.items()}
    if reference_name is not None and results:
        references = [list(r.reference_rewards) for r in results.values()]
        if any(ref != references[0] for ref in references[1:]):
            raise ValueError(
                "rate_generations: the results were compared with different reference samples; pass "
                "the same reference_samples= to evaluate_generations for every policy, or "
                "reference_name=None to rate the policies only"
            )
        scores[reference_name] = references[0]
    return bradley_terry_ratings(
        scores, anchor=reference_name, confidence=confidence, n_resamples=n_resamples, seed=seed
    )
