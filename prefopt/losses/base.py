"""Shared pieces of every loss: the `LossOutput` record and small numerically careful helpers.

Notation used across `prefopt.losses` (per-sequence sums over completion tokens, shape [B]):

    ρ(y)  = log π_θ(y|x) − log π_ref(y|x)          log-ratio
    Δ     = ρ(y_w) − ρ(y_l)                        pairwise margin
    r̂(y)  = β·ρ(y)                                 implicit reward (DPO Eq. 5)

Losses compute in at least float32 (bf16/fp16 inputs are upcast by the registry wrapper) and return
metrics as detached scalar tensors: no `.item()` inside a loss, so no device synchronisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "LossOutput",
    "log1mexp",
    "pairwise_reward_metrics",
    "detached_mean",
    "neg_logsigmoid",
    "class_mean",
    "unpaired_reward_metrics",
    "ranked_reward_metrics",
]


@dataclass(frozen=True)
class LossOutput:
    """What every prefopt loss returns.

    Attributes:
        loss: scalar tensor, the mean of `per_example` unless the loss documents otherwise.
        per_example: `[B]` per-example losses (before reduction), for weighting and global
            normalisation under gradient accumulation.
        metrics: detached scalar tensors keyed by the names the field logs
            (`rewards/chosen`, `rewards/margins`, `logps/chosen`, ...).
    """

    loss: Tensor
    per_example: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)

    def scalars(self) -> dict[str, float]:
        """Metrics plus the loss as Python floats (one device sync; call it when logging)."""
        out = {"loss": float(self.loss.detach())}
        out.update({k: float(v) for k, v in self.metrics.items()})
        return out


def log1mexp(x: Tensor) -> Tensor:
    """log(1 − exp(x)) for x ≤ 0, accurate everywhere (Mächler 2012, "Accurately computing log(1−exp(−|a|))").

    Uses log(−expm1(x)) for x > −log 2 and log1p(−exp(x)) below; x = 0 gives −inf. Inputs are
    clamped to ≤ 0 so rounding that pushes a log-probability above zero cannot produce NaN.
    """
    x = x.clamp(max=0.0)
    tiny = torch.finfo(x.dtype).tiny
    near_zero = x > -math.log(2.0)
    # Evaluate both branches on safe arguments so the unused branch never produces inf/NaN gradients.
    a = torch.log((-torch.expm1(torch.where(near_zero, x, torch.full_like(x, -1.0)))).clamp(min=tiny))
    b = torch.log1p(-torch.exp(torch.where(near_zero, torch.full_like(x, -1.0), x)))
    return torch.where(near_zero, a, b)


def detached_mean(x: Tensor) -> Tensor:
    """Mean as a detached float32 scalar (for metrics)."""
    return x.detach().float().mean()


def pairwise_reward_metrics(
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
) -> dict[str, Tensor]:
    """The standard paired metrics: rewards/{chosen,rejected,margins,accuracies}, logps/{chosen,rejected}.

    `chosen_rewards`/`rejected_rewards` are the implicit rewards [B] the loss reports (β·ρ for
    reference-based losses, β·logπ_θ or β·avg-logπ_θ for reference-free ones).
    """
    chosen_rewards = chosen_rewards.detach()
    rejected_rewards = rejected_rewards.detach()
    return {
        "rewards/chosen": chosen_rewards.float().mean(),
        "rewards/rejected": rejected_rewards.float().mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).float().mean(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
        "logps/chosen": detached_mean(policy_chosen_logps),
        "logps/rejected": detached_mean(policy_rejected_logps),
    }


def neg_logsigmoid(x: Tensor) -> Tensor:
    """−log σ(x), exact and finite for any finite x (no softplus linearisation threshold)."""
    return -F.logsigmoid(x)


def class_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Detached float32 mean of x over rows where mask holds; 0 when none does (never NaN)."""
    x = x.detach().float()
    return x.masked_fill(~mask, 0.0).sum() / mask.sum().clamp(min=1)


def unpaired_reward_metrics(rewards: Tensor, policy_logps: Tensor, labels: Tensor) -> dict[str, Tensor]:
    """The standard unpaired metrics of rewards [B] and labels [B] (True = desirable), detached scalars.

    rewards/{chosen,rejected} and logps/{chosen,rejected} are class means (0 for a class absent from the
    batch), rewards/margins is 0 unless both classes are present, and count/{chosen,rejected} give the
    number of rows behind each mean so a logger can average over steps exactly (Σ mean·count / Σ count).
    """
    chosen = class_mean(rewards, labels)
    rejected = class_mean(rewards, ~labels)
    both = labels.any() & (~labels).any()
    return {
        "rewards/chosen": chosen,
        "rewards/rejected": rejected,
        "rewards/margins": torch.where(both, chosen - rejected, torch.zeros_like(chosen)),
        "logps/chosen": class_mean(policy_logps, labels),
        "logps/rejected": class_mean(policy_logps, ~labels),
        "count/chosen": labels.sum().float(),
        "count/rejected": (~labels).sum().float(),
    }


def ranked_reward_metrics(rewards: Tensor) -> dict[str, Tensor]:
    """Metrics of a ranked batch from its rewards [B, K] (best first), detached scalars.

    `rewards/chosen` and `rewards/rejected` are the mean rewards of the best and the worst completion,
    `rewards/margins` their mean difference, and `rewards/accuracies` the fraction of the K(K−1)/2
    ordered pairs (j < k) with r_j > r_k — at K = 2 these are the paired metrics.
    """
    r = rewards.detach().float()
    k = r.shape[-1]
    upper = torch.triu(torch.ones(k, k, dtype=torch.bool, device=r.device), diagonal=1)  # j < k
    correct = (r.unsqueeze(-1) > r.unsqueeze(-2)) & upper  # (B, K, K)
    return {
        "rewards/chosen": r[:, 0].mean(),
        "rewards/rejected": r[:, -1].mean(),
        "rewards/margins": (r[:, 0] - r[:, -1]).mean(),
        "rewards/accuracies": correct.sum(dim=(-2, -1)).float().mean() / (k * (k - 1) // 2),
    }
