"""Exact best-of-n mathematics for a discrete reference distribution with (possibly tied) rewards.

Best-of-n draws n i.i.d. outcomes from π_ref and returns one with the highest reward, breaking ties
uniformly at random. Group outcomes into reward levels v_1 < … < v_L with reference masses P_v, and
let F(v) = P(r ≤ v) and F⁻(v) = P(r < v) under π_ref. The best of n lands on level v with probability

    q_v = F(v)^n − F⁻(v)^n                                  (Beirami et al. 2024, arXiv:2401.01879, §2)

and, because the tie-break ignores identities, within its level it is distributed like π_ref
restricted to that level: π_n(y) = q_{v(y)} · π_ref(y) / P_{v(y)}. Hence the within-level ratios
cancel in the divergence and

    KL(π_n ‖ π_ref) = Σ_v q_v log(q_v / P_v).

For a continuous reward distribution the same computation gives log n − (n−1)/n, the formula used
since Stiennon et al. 2020 (arXiv:2009.01325); Beirami et al. prove it is an upper bound on the
discrete KL above. The win rate of π_n against π_ref (ties count ½) is Σ_v q_v (F⁻(v) + P_v/2) ≤
n/(n+1) (their §5). All functions work in float64 and evaluate q_v from log F and the survival
function so that n up to 10⁶ and masses down to 1e-300 stay accurate.

Shapes: M outcomes, L ≤ M distinct reward levels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "RewardLevels",
    "reward_levels",
    "best_of_n_level_probs",
    "best_of_n_pmf",
    "best_of_n_kl",
    "best_of_n_win_rate",
    "best_of_n_expected_reward",
    "classical_kl_formula",
    "beirami_kl_estimate",
    "win_rate_bound",
]


class RewardLevels:
    """π_ref grouped by reward: ascending distinct rewards [L], their masses P_v [L], F⁻ and the survival 1 − F."""

    def __init__(self, values: Tensor, masses: Tensor, outcome_level: Tensor) -> None:
        self.values = values  # [L] ascending
        self.masses = masses  # [L] P_v
        self.outcome_level = outcome_level  # [M] level index of each outcome
        # Each tail is summed from its own end, so a tiny tail keeps full relative accuracy; log F and
        # log F⁻ take log1p of the small upper tail near the top and the log of the small lower tail below.
        zero = masses.new_zeros(1)
        cdf = torch.cumsum(masses, 0)  # F(v), accurate where small
        upper = torch.flip(torch.cumsum(torch.flip(masses, [0]), 0), [0])  # 1 − F⁻(v), accurate where small
        self.below = torch.cat([zero, cdf[:-1]])  # F⁻(v): shifted, never cdf − mass (that cancels)
        self.survival = torch.cat([upper[1:], zero])  # 1 − F(v)
        self.log_cdf = torch.where(self.survival < 0.5, torch.log1p(-self.survival.clamp(max=0.5)), cdf.log())
        self.log_cdf_below = torch.where(upper < 0.5, torch.log1p(-upper.clamp(max=0.5)), self.below.log())


def _as_float64(x: Tensor | Sequence[float], name: str) -> Tensor:
    t = torch.as_tensor(x, dtype=torch.float64).detach().cpu()
    if t.dim() != 1 or t.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence [M], got shape {tuple(t.shape)}.")
    return t


def reward_levels(probs: Tensor | Sequence[float], rewards: Tensor | Sequence[float]) -> RewardLevels:
    """Group a reference distribution by reward (exact equality defines a tie).

    Args:
        probs: [M] π_ref(y) ≥ 0, summing to 1 (within 1e-6, which float32 inputs need; renormalised).
        rewards: [M] r(y), finite.
    """
    p = _as_float64(probs, "probs")
    r = _as_float64(rewards, "rewards")
    if p.shape != r.shape:
        raise ValueError(f"probs {tuple(p.shape)} and rewards {tuple(r.shape)} must have the same shape [M].")
    if (p < 0).any() or not torch.isfinite(p).all():
        raise ValueError(f"probs must be finite and ≥ 0; bad entries at {(~(p >= 0)).nonzero()[:5, 0].tolist()}.")
    total = float(p.sum())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"probs must sum to 1, they sum to {total!r}; normalise them first.")
    if not torch.isfinite(r).all():
        raise ValueError(f"rewards must be finite; bad entries at {(~torch.isfinite(r)).nonzero()[:5, 0].tolist()}.")
    values, outcome_level = torch.unique(r, sorted=True, return_inverse=True)
    masses = torch.zeros_like(values).index_add_(0, outcome_level, p / total)
    return RewardLevels(values, masses, outcome_level)


def _check_n(n: int) -> int:
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"n (the number of samples) must be an integer ≥ 1, got {n!r}.")
    return int(n)


def best_of_n_level_probs(levels: RewardLevels, n: int) -> Tensor:
    """q_v = F(v)^n − F⁻(v)^n for every reward level, [L] (sums to 1).

    Evaluated as F^n · (1 − (F⁻/F)^n) = exp(n log F) · (−expm1(n (log F⁻ − log F))), which keeps
    full relative accuracy when F⁻ and F are both close to 1.
    """
    n = _check_n(n)
    gap = levels.log_cdf_below - levels.log_cdf  # log(F⁻/F) ≤ 0
    q = torch.exp(n * levels.log_cdf) * -torch.expm1(n * gap)
    return torch.where(levels.masses > 0, q, torch.zeros_like(q))  # a zero-mass level is never drawn


def best_of_n_pmf(probs: Tensor | Sequence[float], rewards: Tensor | Sequence[float], n: int) -> Tensor:
    """π_n(y) for every outcome, [M] float64: q_{v(y)} · π_ref(y) / P_{v(y)} (random tie-break)."""
    levels = reward_levels(probs, rewards)
    q = best_of_n_level_probs(levels, n)
    p = _as_float64(probs, "probs")
    share = torch.where(levels.masses > 0, q / levels.masses, torch.zeros_like(q))
    return p * share[levels.outcome_level]


def best_of_n_kl(probs: Tensor | Sequence[float], rewards: Tensor | Sequence[float], n: int) -> float:
    """Exact KL(π_n ‖ π_ref) = Σ_v q_v log(q_v / P_v) in nats (module docstring)."""
    levels = reward_levels(probs, rewards)
    q = best_of_n_level_probs(levels, n)
    keep = q > 0
    # KL ≥ 0; at n = 1 the terms cancel to rounding error, which must not print as a negative KL.
    return max(float((q[keep] * (q[keep].log() - levels.masses[keep].log())).sum()), 0.0)


def best_of_n_win_rate(
    probs: Tensor | Sequence[float], rewards: Tensor | Sequence[float], n: int, ties: str = "half"
) -> float:
    """P(r(Y_n) > r(Y)) + c·P(r(Y_n) = r(Y)) with Y_n ~ π_n, Y ~ π_ref independent.

    Args:
        ties: "half" (c = ½, the usual convention), "strict" (c = 0) or "win" (c = 1).
    Returns:
        Σ_v q_v (F⁻(v) + c·P_v). With c ≤ ½ this is at most n/(n+1) (Beirami et al. 2024, §5).
    """
    weights = {"half": 0.5, "strict": 0.0, "win": 1.0}
    if ties not in weights:
        raise ValueError(f"ties must be one of {sorted(weights)}, got {ties!r}.")
    levels = reward_levels(probs, rewards)
    q = best_of_n_level_probs(levels, n)
    return float((q * (levels.below + weights[ties] * levels.masses)).sum())


def best_of_n_expected_reward(probs: Tensor | Sequence[float], rewards: Tensor | Sequence[float], n: int) -> float:
    """E_{π_n}[r] = Σ_v q_v v."""
    levels = reward_levels(probs, rewards)
    return float((best_of_n_level_probs(levels, n) * levels.values).sum())


def classical_kl_formula(n: int) -> float:
    """log n − (n−1)/n: the KL of best-of-n for continuous rewards (Stiennon et al. 2020), an upper bound otherwise."""
    n = _check_n(n)
    return math.log(n) - (n - 1) / n


def beirami_kl_estimate(n: int, top_mass: float) -> float:
    """Beirami et al.'s KL estimate from the reference mass ε of the highest-reward outcome (§4).

    It is the exact KL when π_ref puts mass ε on its best outcome and spreads the rest continuously
    (integrate n F^{n−1} log(n F^{n−1}) over F ∈ [0, 1−ε], plus the atom's term):

        (1−ε)^n [log n + (n−1) log(1−ε) − (n−1)/n] + (1 − (1−ε)^n) log((1 − (1−ε)^n)/ε)

    ε → 0 recovers log n − (n−1)/n; as n → ∞ it tends to log(1/ε), where the exact KL saturates.
    """
    n = _check_n(n)
    if not 0.0 < top_mass <= 1.0:
        raise ValueError(f"top_mass (reference mass of the best outcome) must lie in (0, 1], got {top_mass!r}.")
    if top_mass == 1.0:
        return 0.0
    log_rest = n * math.log1p(-top_mass)  # log (1−ε)^n
    rest = math.exp(log_rest)
    atom = -math.expm1(log_rest)  # 1 − (1−ε)^n
    continuous = rest * (math.log(n) + (n - 1) * math.log1p(-top_mass) - (n - 1) / n)
    return continuous + atom * (math.log(atom) - math.log(top_mass))


def win_rate_bound(n: int) -> float:
    """n/(n+1): the win rate of best-of-n against π_ref for continuous rewards, an upper bound otherwise."""
    n = _check_n(n)
    return n / (n + 1)
