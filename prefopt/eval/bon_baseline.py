"""The inference-time best-of-N policy as a comparison point: its reward, its measured KL and the bound.

Best-of-N draws N completions from π_ref and returns the one of highest reward. For each held-out
prompt x, M ≥ N reference samples are drawn once and scored; their empirical distribution π̂_ref(·|x)
(mass 1/M per sample, equal rewards forming one level) stands in for π_ref, and the best-of-N
distribution over it is computed exactly (`prefopt.eval.bon_math`, Beirami et al. 2024,
arXiv:2401.01879 §2):

    q_v = F̂(v)^N − F̂⁻(v)^N            probability that the best of N lands on reward level v
    reward(N) = Σ_v q_v · v             expected reward of best-of-N
    KL(N)     = Σ_v q_v log(q_v / P̂_v)  measured KL(π_BoN ‖ π_ref), a plug-in estimate
    win(N)    = Σ_v q_v (F̂⁻(v) + P̂_v/2) win rate against a reference sample (ties ½)

each averaged over prompts with a bootstrap CI, beside the analytic bound log N − (N−1)/N (Stiennon
et al. 2020, arXiv:2009.01325). With ties (short completions repeat on a small model) the measured KL
sits below the bound, as Beirami et al. show it must; the plug-in needs M ≫ N to be accurate, so
N ≤ M/4 is enforced. Drawing and scoring the samples is `prefopt.online.best_of_n_reference.evaluate_best_of_n`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from prefopt.eval.bon_math import best_of_n_expected_reward, best_of_n_kl, best_of_n_win_rate, classical_kl_formula
from prefopt.eval.stats import MeanCI, bootstrap_mean

__all__ = ["BestOfNPoint", "best_of_n_points", "DEFAULT_BON_N"]

DEFAULT_BON_N: tuple[int, ...] = (1, 2, 4, 8, 16)


@dataclass(frozen=True)
class BestOfNPoint:
    """Best-of-N at one N: means over prompts with CIs, and the analytic KL bound."""

    n: int
    reward: MeanCI
    kl: MeanCI
    kl_bound: float
    win_rate: MeanCI
    num_prompts: int
    samples_per_prompt: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "n": self.n,
            "reward": self.reward.to_dict(),
            "kl": self.kl.to_dict(),
            "kl_bound": self.kl_bound,
            "win_rate": self.win_rate.to_dict(),
            "num_prompts": self.num_prompts,
            "samples_per_prompt": self.samples_per_prompt,
        }


def best_of_n_points(rewards: Tensor, ns: Sequence[int] = DEFAULT_BON_N, *, seed: int = 0) -> list[BestOfNPoint]:
    """Best-of-N reward, measured KL and win rate from M scored reference samples per prompt.

    Args:
        rewards: [P, M] rewards of M reference samples of each of P prompts.
        ns: the N values, each an integer in [1, M/4].
        seed: of the bootstrap CIs.
    """
    rewards = torch.as_tensor(rewards, dtype=torch.float64)
    if rewards.dim() != 2 or rewards.shape[1] < 4 or not torch.isfinite(rewards).all():
        raise ValueError(
            f"best_of_n_points: rewards must be finite [prompts, samples] with ≥ 4 samples per prompt, "
            f"got shape {tuple(rewards.shape)}"
        )
    prompts, m = rewards.shape
    bad = [n for n in ns if isinstance(n, bool) or int(n) != n or not 1 <= n <= m // 4]
    if bad or not ns:
        raise ValueError(
            f"best_of_n_points: N values {bad or list(ns)} must be integers in [1, M/4 = {m // 4}] "
            f"(M = {m} samples per prompt; the plug-in KL needs M ≫ N); draw more samples"
        )
    uniform = torch.full((m,), 1.0 / m, dtype=torch.float64)
    points = []
    for n in ns:
        per_prompt = [
            (best_of_n_expected_reward(uniform, r, n), best_of_n_kl(uniform, r, n), best_of_n_win_rate(uniform, r, n))
            for r in rewards
        ]
        reward, kl, win = (bootstrap_mean([row[i] for row in per_prompt], seed=seed) for i in range(3))
        points.append(BestOfNPoint(int(n), reward, kl, classical_kl_formula(int(n)), win, prompts, m))
    return points
