"""Generalized advantage estimation over right-padded completions (Schulman et al. 2016, arXiv:1506.02438).

Per valid token t of a row with its last completion token at t = L − 1:

    δ_t = r_t + γ·V_{t+1} − V_t            with V_L = 0 (the episode ends at the last token)
    A_t = Σ_{l ≥ 0} (γλ)^l δ_{t+l} = δ_t + γλ·A_{t+1}
    G_t = A_t + V_t                         the value target ("returns")

This is the estimator of Ziegler et al. 2019 (arXiv:1909.08593) and TRL's PPO, where r_t is the
per-token reward −β·KL_t plus the sequence score at the last token (`prefopt.rl.kl.kl_penalized_rewards`).
TRL's defaults are γ = 1, λ = 0.95.
"""

from __future__ import annotations

import torch
from torch import Tensor

from prefopt.errors import LossInputError
from prefopt.rl.masked import check_right_padded

__all__ = ["gae"]


@torch.no_grad()
def gae(
    rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    *,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[Tensor, Tensor]:
    """GAE(γ, λ) advantages and returns for right-padded rows (formula in the module docstring).

    Args:
        rewards: [B, T] per-token rewards r_t.
        values: [B, T] value estimates V_t of the rollout (detached: they are the critic's old outputs).
        mask: [B, T] bool, True at completion tokens; each row must be right-padded.
        gamma: discount γ ∈ [0, 1].
        lam: GAE λ ∈ [0, 1]; λ = 1 gives Monte-Carlo returns minus V, λ = 0 the one-step TD error.
    Returns:
        (advantages, returns), both [B, T] float, 0 at padding. Not differentiable (targets).
    """
    if rewards.shape != values.shape or rewards.shape != mask.shape:
        raise LossInputError(
            f"gae: rewards {tuple(rewards.shape)}, values {tuple(values.shape)} and mask {tuple(mask.shape)} "
            f"must all be [B, T]."
        )
    for name, x in (("gamma", gamma), ("lam", lam)):
        if not 0.0 <= x <= 1.0:
            raise LossInputError(f"gae: {name}={x} must lie in [0, 1].")
    check_right_padded(mask, "gae mask")
    dtype = torch.promote_types(torch.promote_types(rewards.dtype, values.dtype), torch.float32)
    zero = torch.zeros((), dtype=dtype, device=rewards.device)
    # Zeroing padding makes V_{t+1} = 0 after the last token and keeps A = 0 on padding, since every
    # δ there is 0 and the recursion runs from the right.
    r = torch.where(mask, rewards.to(dtype), zero)
    v = torch.where(mask, values.to(dtype), zero)
    batch, steps = r.shape
    advantages = torch.zeros_like(r)
    running = torch.zeros(batch, dtype=dtype, device=r.device)  # A_{t+1}
    next_value = torch.zeros(batch, dtype=dtype, device=r.device)  # V_{t+1}
    for t in reversed(range(steps)):
        delta = r[:, t] + gamma * next_value - v[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
        next_value = v[:, t]
    advantages = torch.where(mask, advantages, zero)
    returns = torch.where(mask, advantages + v, zero)
    return advantages, returns
