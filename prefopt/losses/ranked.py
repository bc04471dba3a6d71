"""Ranked (K-wise) preference losses: the Plackett–Luce model over K completions ordered best first.

For scores s_1, …, s_K of one prompt's completions, listed best first, the Plackett–Luce probability
of that ranking is (Plackett 1975; Luce 1959; for LM rewards Zhu, Jordan & Jiao 2023, arXiv:2301.11270)

    P(τ) = Π_{j=1..K} exp(s_j) / Σ_{k=j..K} exp(s_k)
    −log P(τ) = Σ_j [ logsumexp_{k≥j} s_k − s_j ]          (a reversed logcumsumexp)

It reduces to Bradley–Terry at K = 2: −log P = log(1 + e^{s_2 − s_1}) = −log σ(s_1 − s_2).

DPO's K-wise analogue (Rafailov et al. 2023, arXiv:2305.18290, App. A.3) substitutes the implicit
reward s_j = β·ρ_j = β·(log π_θ(y_j|x) − log π_ref(y_j|x)); at K = 2 it is exactly DPO.
"""

from __future__ import annotations

import torch
from torch import Tensor

from prefopt.losses.base import ranked_reward_metrics
from prefopt.losses.kinds import RankedTerms, ranked_loss
from prefopt.registry import POSITIVE, HParam

__all__ = ["plackett_luce_nll", "ranked_reward_metrics", "plackett_luce"]


def plackett_luce_nll(scores: Tensor) -> Tensor:
    """−log P(τ) of the ranking "column 0 best, column K−1 worst" under Plackett–Luce, per row.

    Args:
        scores: [B, K] scores (rewards or β·log-ratios), completions ordered best first.
    Returns:
        [B] Σ_j (logsumexp_{k≥j} s_k − s_j); each term is ≥ 0 and the last is 0.
    """
    suffix_lse = torch.logcumsumexp(scores.flip(-1), dim=-1).flip(-1)  # (B, K): logsumexp_{k≥j} s_k
    return (suffix_lse - scores).sum(-1)


@ranked_loss(
    "plackett_luce",
    paper="Rafailov et al. 2023, Direct Preference Optimization, arXiv:2305.18290 (App. A.3, Plackett–Luce "
    "DPO; β = 0.1)",
    formula="Σ_j [log Σ_{k≥j} exp(β·ρ_k) − β·ρ_j], completions best first",
    hparams=[HParam("beta", 0.1, "inverse temperature β of the implicit reward β·log π/π_ref", POSITIVE)],
)
def plackett_luce(t: RankedTerms, *, beta: float) -> Tensor:
    """K-wise DPO: the Plackett–Luce likelihood of a full ranking under the implicit reward β·ρ.

    Args:
        beta: β. Lengths are not used.

    Metrics: `ranked_reward_metrics` of β·ρ plus `logps/chosen`, `logps/rejected` (best and worst).
    """
    return plackett_luce_nll(beta * t.ratio)  # (B, K) rewards → [B]
