"""Best-of-N from a fixed pool of samples: the unbiased order-statistics estimator and Gao et al.'s fit.

Gao, Schulman & Hilton 2022 ("Scaling Laws for Reward Model Overoptimization", arXiv:2210.10760, §2.2
and App. I) measure best-of-N without drawing N fresh samples per N: for each prompt they draw M ≥ N
samples once and average over every N-subset of them. With the M samples sorted by the proxy reward
ascending (proxy_(1) ≤ … ≤ proxy_(M)) and gold_(i) the gold reward of the i-th, a uniformly random
N-subset has its proxy-best at position i exactly when it holds i and N − 1 of the i − 1 below it, so

    E[gold(argmax_proxy over N of M)] = Σ_{i=N}^{M} gold_(i) · C(i−1, N−1) / C(M, N).

A uniformly random N-subset of M i.i.d. draws is N i.i.d. draws, so this is an unbiased estimate of
best-of-N's expected gold reward for every N ≤ M (the estimator is a U-statistic). Proxy ties are
broken uniformly at random: averaging over tie orders replaces each gold in a block of equal proxy
scores by the block's mean, which is what the estimator does.

The policy's divergence from the reference uses the classical best-of-N formula the paper uses,
KL_bon = log N − (N−1)/N (Stiennon et al. 2020; an upper bound for discrete rewards, Beirami et al.
2024 — see `prefopt.eval.bon_math`), and d = √KL_bon. Gao et al. fit the gold reward gained over
the reference (N = 1) as R_bon(d) = d(α − β d) (§3, Eq. 1); `fit_gao_bon` solves that least-squares
problem in closed form.

Shapes: P prompts, M samples per prompt, J values of N.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from prefopt.eval.bon_math import classical_kl_formula

__all__ = ["subset_max_weights", "tie_averaged", "best_of_n_from_pool", "bon_kl", "GaoFit", "fit_gao_bon"]


def _check_ns(ns: Sequence[int], m: int) -> list[int]:
    out = []
    for n in ns:
        if isinstance(n, bool) or int(n) != n or not 1 <= n <= m:
            raise ValueError(f"ns: every N must be an integer in [1, M={m}] (the pool size bounds N), got {n!r}.")
        out.append(int(n))
    if not out:
        raise ValueError("ns: pass at least one N.")
    return out


def subset_max_weights(m: int, ns: Sequence[int]) -> Tensor:
    """w[j, i] = C(i, N_j − 1) / C(M, N_j) for 0-based ascending rank i: P(the max of a random N_j-subset is rank i).

    Computed with log-gamma (C(a, b) = Γ(a+1)/(Γ(b+1) Γ(a−b+1))) so M in the thousands does not
    overflow; every row sums to 1. Returns float64 [J, M].
    """
    if isinstance(m, bool) or int(m) != m or m < 1:
        raise ValueError(f"m (samples per prompt) must be an integer ≥ 1, got {m!r}.")
    ns = _check_ns(ns, m)
    i = torch.arange(m, dtype=torch.float64)  # i = rank − 1 = how many samples lie below
    rows = []
    for n in ns:
        log_num = torch.lgamma(i + 1) - math.lgamma(n) - torch.lgamma((i - n + 2).clamp(min=1))
        log_den = math.lgamma(m + 1) - math.lgamma(n + 1) - math.lgamma(m - n + 1)
        rows.append(torch.where(i >= n - 1, torch.exp(log_num - log_den), torch.zeros_like(i)))
    return torch.stack(rows)


def tie_averaged(proxy: Tensor, gold: Tensor) -> Tensor:
    """gold [P, M] with each block of equal proxy scores (within a prompt) replaced by the block's mean gold.

    This is the expectation over a uniformly random tie-break of which tied sample counts as the best.
    """
    out = gold.clone()
    for p in range(proxy.shape[0]):
        values, inverse, counts = torch.unique(proxy[p], return_inverse=True, return_counts=True)
        if values.numel() == proxy.shape[1]:
            continue  # no ties in this row
        sums = torch.zeros_like(values, dtype=gold.dtype).index_add_(0, inverse, gold[p])
        out[p] = (sums / counts.to(gold.dtype))[inverse]
    return out


def best_of_n_from_pool(proxy: Tensor, gold: Tensor, ns: Sequence[int]) -> Tensor:
    """Per-prompt expected gold reward of best-of-N selected by `proxy`, for every N → float64 [J, P].

    Args:
        proxy: [P, M] the selecting reward of M samples of each prompt (pass `gold` itself for best-of-N
            by the gold reward).
        gold: [P, M] the reward that is reported.
        ns: J sample counts, each in [1, M].
    Returns:
        Σ_i gold_(i) · C(i−1, N−1)/C(M, N) per prompt (module docstring); N = 1 gives the mean gold.
    """
    if proxy.dim() != 2 or proxy.shape != gold.shape:
        raise ValueError(f"proxy {tuple(proxy.shape)} and gold {tuple(gold.shape)} must share one [P, M] shape.")
    if not (torch.isfinite(proxy).all() and torch.isfinite(gold).all()):
        raise ValueError("proxy and gold rewards must be finite; a NaN/inf score would make the argmax meaningless.")
    proxy, gold = proxy.detach().double().cpu(), gold.detach().double().cpu()
    weights = subset_max_weights(proxy.shape[1], ns)  # [J, M]
    order = proxy.argsort(dim=1, stable=True)  # ascending proxy
    ranked_gold = tie_averaged(proxy, gold).gather(1, order)  # [P, M]
    return weights @ ranked_gold.T  # [J, P]


def bon_kl(ns: Sequence[int]) -> Tensor:
    """KL_bon = log N − (N−1)/N for every N (nats, float64 [J]); d = √KL_bon is Gao et al.'s x-axis."""
    return torch.tensor([classical_kl_formula(n) for n in ns], dtype=torch.float64)


@dataclass(frozen=True)
class GaoFit:
    """R(d) = d(α − β d) fitted by least squares; r2 = 1 − SS_res/SS_tot (SS_tot about the mean of R).

    `peak_d` = α/(2β) is where the fitted curve is highest (∞ when β ≤ 0: no peak), `peak_kl` = peak_d².
    """

    alpha: float
    beta: float
    r2: float

    @property
    def peak_d(self) -> float:
        """argmax_d d(α − β d) = α/(2β) for β > 0, else ∞ (the curve never turns down)."""
        return self.alpha / (2 * self.beta) if self.beta > 0 else math.inf

    @property
    def peak_kl(self) -> float:
        """The KL (nats) at the fitted peak, peak_d²."""
        return self.peak_d**2

    def predict(self, d: Tensor) -> Tensor:
        """The fitted curve d(α − β d) at the given d ≥ 0 (any shape)."""
        return d * (self.alpha - self.beta * d)


def fit_gao_bon(d: Tensor | Sequence[float], gain: Tensor | Sequence[float]) -> GaoFit:
    """Least-squares fit of gain = d(α − β d) = α d − β d² (no intercept: the gain is 0 at d = 0).

    Closed form: with columns x₁ = d and x₂ = −d², solve the 2×2 normal equations
    [Σx₁² Σx₁x₂; Σx₁x₂ Σx₂²] [α; β] = [Σx₁y; Σx₂y] (Gao et al. 2022, §3, Eq. 1 form).

    Args:
        d: [J] √KL values; gain: [J] reward minus the reference's (N = 1) reward.
    Raises:
        ValueError: shapes differ, fewer than two distinct d > 0 (the system is singular), or non-finite values.
    """
    x = torch.as_tensor(d, dtype=torch.float64).reshape(-1)
    y = torch.as_tensor(gain, dtype=torch.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"fit_gao_bon: d has {x.numel()} values and gain {y.numel()}; pass one gain per d.")
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()) or (x < 0).any():
        raise ValueError("fit_gao_bon: d must be finite and ≥ 0, gain finite.")
    if torch.unique(x[x > 0]).numel() < 2:
        raise ValueError("fit_gao_bon: need at least two distinct d > 0 to fit two parameters (α, β).")
    x1, x2 = x, -x * x
    gram = torch.tensor([[float(x1 @ x1), float(x1 @ x2)], [float(x1 @ x2), float(x2 @ x2)]], dtype=torch.float64)
    alpha, beta = torch.linalg.solve(gram, torch.stack([x1 @ y, x2 @ y])).tolist()
    residual = y - (alpha * x1 + beta * x2)
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((residual**2).sum()) / total if total > 0 else (1.0 if float((residual**2).sum()) == 0 else 0.0)
    return GaoFit(float(alpha), float(beta), r2)
