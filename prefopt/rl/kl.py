"""Per-token KL estimators, KL-shaped rewards, the missing-EOS penalty and KL-coefficient controllers.

Tokens y_t are sampled from the behaviour policy π (the policy at rollout time). With
u_t = log π_ref(y_t|·) − log π(y_t|·), two unbiased-in-expectation estimators of KL(π‖π_ref) per
token (Schulman 2020, "Approximating KL divergence", joschu.net/blog/kl-approx.html):

    k1 = −u = log π − log π_ref                 unbiased, high variance, can be negative
    k3 = (e^u − 1) − u                          unbiased, ≥ 0, lower variance (GRPO's D_KL, Eq. 4)

RLHF reward shaping (Ziegler et al. 2019, arXiv:1909.08593; Stiennon et al. 2020; TRL PPO):

    r_t = −β·k_t + 1[t = last completion token]·R(x, y)

Adaptive β (Ziegler et al. 2019, §2.2; old TRL `AdaptiveKLController`, defaults β₀ = 0.2, target 6,
horizon 10000):

    e = clip(KL/KL_target − 1, −0.2, 0.2),     β ← β·(1 + e·n_steps/horizon)

Every exp of a per-token log-ratio in prefopt (k3 here, the importance ratio ρ = e^{log π_θ − log π_old}
of the policy-gradient losses) sees the log-ratio clamped to ±LOG_RATIO_CLAMP = ±20 first, the
convention of verl (`kl_penalty(..., "low_var_kl")` and `compute_policy_loss` clamp to [−20, 20]).
Without it e^u overflows float32 at u ≈ 88, and a loss that multiplies the overflow by 0 (β = 0, a
masked token, a clipped branch) turns finite loss into a NaN gradient. e^20 ≈ 4.9e8 is far past any
ratio PPO's clip keeps and k3(±20) is still finite in float32, so the clamp changes nothing a healthy
run sees; beyond ±20 the estimate stays at its value there and passes no gradient (verl additionally
clips k3 to [−10, 10]; prefopt does not). k1 has no exp and is not clamped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from prefopt.errors import LossInputError
from prefopt.rl.masked import check_right_padded

__all__ = [
    "LOG_RATIO_CLAMP",
    "KLEstimator",
    "KL_ESTIMATORS",
    "clamp_log_ratio",
    "kl_k1",
    "kl_k3",
    "token_kl",
    "kl_penalized_rewards",
    "contains_eos",
    "apply_eos_penalty",
    "adaptive_kl_coef",
    "AdaptiveKLController",
    "FixedKLController",
]

KLEstimator = Literal["k1", "k3"]
KL_ESTIMATORS: tuple[KLEstimator, ...] = get_args(KLEstimator)  # what `token_kl` accepts

# The largest |log-ratio| any exp sees (module docstring; verl's value).
LOG_RATIO_CLAMP = 20.0


def clamp_log_ratio(log_ratio: Tensor) -> Tensor:
    """Clamp a log-ratio to [−20, 20] before it is exponentiated, so e^x stays finite in float32 and its
    gradient is never inf·0 (module docstring). Elementwise; the gradient is 0 outside the range."""
    return log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


def kl_k1(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """k1 = log π(y_t) − log π_ref(y_t), elementwise ([B, T] → [B, T])."""
    return logps - ref_logps


def kl_k3(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """k3 = (e^u − 1) − u with u = log π_ref(y_t) − log π(y_t), elementwise; ≥ 0, = 0 iff u = 0.

    `expm1` keeps it accurate for |u| ≪ 1, where k3 ≈ u²/2. u is clamped to ±20 first (`clamp_log_ratio`),
    so k3 stays finite (≤ e^20) and beyond ±20 it is constant, with no gradient.
    """
    u = clamp_log_ratio(ref_logps - logps)
    return torch.expm1(u) - u


def token_kl(logps: Tensor, ref_logps: Tensor, mask: Tensor, estimator: KLEstimator = "k1") -> Tensor:
    """Per-token KL estimate [B, T] of the chosen estimator, 0 at padding.

    Args:
        logps, ref_logps: [B, T] per-token log-probs of the sampled tokens under π and π_ref.
        mask: [B, T] bool, True at completion tokens.
        estimator: "k1" or "k3" (module docstring).
    """
    if logps.shape != ref_logps.shape or logps.shape != mask.shape:
        raise LossInputError(
            f"token_kl: logps {tuple(logps.shape)}, ref_logps {tuple(ref_logps.shape)} and mask "
            f"{tuple(mask.shape)} must all be [B, T]."
        )
    if estimator == "k1":
        kl = kl_k1(logps, ref_logps)
    elif estimator == "k3":
        kl = kl_k3(logps, ref_logps)
    else:
        raise LossInputError(f"token_kl: estimator={estimator!r} is not one of {list(KL_ESTIMATORS)}.")
    return torch.where(mask, kl, torch.zeros((), dtype=kl.dtype, device=kl.device))


@torch.no_grad()
def kl_penalized_rewards(
    scores: Tensor,
    logps: Tensor,
    ref_logps: Tensor,
    mask: Tensor,
    *,
    beta: float,
    estimator: KLEstimator = "k1",
) -> tuple[Tensor, Tensor]:
    """Per-token rewards r_t = −β·k_t + 1[t = last token]·score, for GAE (module docstring).

    Args:
        scores: [B] sequence rewards R(x, y) (after any EOS penalty).
        logps: [B, T] per-token log-probs of the rollout policy (detached).
        ref_logps: [B, T] the same under the reference.
        mask: [B, T] bool, right-padded, every row with ≥ 1 completion token.
        beta: KL coefficient β ≥ 0 (TRL PPO: 0.05 with k1).
        estimator: "k1" (TRL PPO default) or "k3".
    Returns:
        (rewards, kl): [B, T] per-token rewards and per-token KL estimates k_t, both 0 at padding.
        `kl.sum(1)` is the per-sequence KL that TRL logs as objective/kl; −β·kl.sum(1) is
        objective/non_score_reward.
    """
    if not math.isfinite(beta) or beta < 0:
        raise LossInputError(f"kl_penalized_rewards: beta={beta} must be a finite number ≥ 0.")
    lengths = check_right_padded(mask, "kl_penalized_rewards mask")
    if scores.shape != lengths.shape:
        raise LossInputError(
            f"kl_penalized_rewards: scores has shape {tuple(scores.shape)}; expected [{mask.shape[0]}]."
        )
    empty = (lengths == 0).nonzero().flatten()
    if empty.numel():
        raise LossInputError(
            f"kl_penalized_rewards: rows {empty[:10].tolist()} have no completion tokens, so there is no token "
            f"to carry the score; drop empty completions before scoring."
        )
    kl = token_kl(logps, ref_logps, mask, estimator)
    # β = 0 leaves the KL out of the rewards entirely: 0·k would be NaN where k is infinite (k1 with a
    # reference log-prob of −inf).
    rewards = -beta * kl if beta > 0 else torch.zeros_like(kl)
    last = (lengths - 1).unsqueeze(1)  # [B, 1] index of the last completion token
    rewards = rewards.scatter_add(1, last, scores.to(rewards.dtype).unsqueeze(1))
    return rewards, kl


def contains_eos(completion_ids: Tensor, mask: Tensor, eos_token_id: int | Tensor) -> Tensor:
    """[B] bool: whether each completion contains an EOS token among its valid tokens.

    Args:
        completion_ids: [B, T] sampled token ids.
        mask: [B, T] bool, True at completion tokens.
        eos_token_id: one id, or a 1-D tensor of ids that all count as end of sequence.
    """
    if completion_ids.shape != mask.shape:
        raise LossInputError(
            f"contains_eos: completion_ids {tuple(completion_ids.shape)} and mask {tuple(mask.shape)} differ."
        )
    eos = torch.as_tensor(eos_token_id, device=completion_ids.device).reshape(-1)
    return (torch.isin(completion_ids, eos) & mask).any(1)


def apply_eos_penalty(scores: Tensor, has_eos: Tensor, penalty: float) -> Tensor:
    """Subtract `penalty` from the score of every completion that did not finish with EOS (TRL
    `missing_eos_penalty`): score − penalty·1[no EOS]. scores, has_eos: [B]; returns [B]."""
    if has_eos.shape != scores.shape or has_eos.dtype != torch.bool:
        raise LossInputError(
            f"apply_eos_penalty: has_eos must be a bool tensor of shape {tuple(scores.shape)}, got "
            f"{has_eos.dtype} {tuple(has_eos.shape)} (use contains_eos)."
        )
    return scores - penalty * (~has_eos).to(scores.dtype)


def adaptive_kl_coef(beta: float, kl: float, n_steps: int, *, target: float, horizon: float) -> float:
    """One update of the adaptive KL coefficient (Ziegler et al. 2019, §2.2):
    β·(1 + clip(kl/target − 1, −0.2, 0.2)·n_steps/horizon)."""
    if target <= 0 or horizon <= 0:
        raise LossInputError(f"adaptive_kl_coef: target={target} and horizon={horizon} must be > 0.")
    error = min(max(kl / target - 1.0, -0.2), 0.2)
    return beta * (1.0 + error * n_steps / horizon)


@dataclass
class AdaptiveKLController:
    """The β of KL-shaped rewards, moved towards a KL target after each rollout batch.

    Defaults are those of old TRL (β₀ = 0.2, target 6 nats, horizon 10000 samples).
    """

    value: float = 0.2
    target: float = 6.0
    horizon: float = 10000.0

    def update(self, current_kl: float, n_steps: int) -> float:
        """Fold in the mean sequence KL of the last batch of `n_steps` samples; return the new β."""
        self.value = adaptive_kl_coef(self.value, current_kl, n_steps, target=self.target, horizon=self.horizon)
        return self.value


@dataclass
class FixedKLController:
    """A constant β with the same interface as `AdaptiveKLController` (TRL PPO default β = 0.05)."""

    value: float = 0.05

    def update(self, current_kl: float, n_steps: int) -> float:
        """β does not change; returns it."""
        return self.value
