"""Reward shaping by length and the filter of uninformative groups (DAPO, Yu et al. 2025, arXiv:2503.14476).

    overlong_penalty(lengths, max_length, buffer)   the soft overlong punishment, Eq. 13: [S] ≤ 0
    groups_with_spread(rewards)                     [B] bool: a prompt whose K rewards are not all equal

Soft overlong punishment: with L_max the generation limit and L_cache the punishment buffer before it,

    R_length(y) = 0                                  |y| ≤ L_max − L_cache
                = ((L_max − L_cache) − |y|)/L_cache  L_max − L_cache < |y| ≤ L_max
                = −1                                 |y| > L_max

added to the reward, times a factor (1 in the paper; verl's `overlong_buffer.penalty_factor`). The paper
generates up to L_max = 20,480 tokens with L_cache = 4,096 (an expected maximum of 16,384), a buffer of one
fifth of the limit. A length here counts every completion token, EOS included (the rollout's mask).

Dynamic sampling (§3.2, Eq. 11's constraint 0 < |{o_i correct}| < G): a group whose K rewards are all equal
has a group-normalised advantage of 0 for every sample, so it trains nothing and, in a token-level mean,
only dilutes the others. `groups_with_spread` is the filter; the online loop drops the other groups and
samples more prompts to refill the batch (`prefopt.online.group_sampling`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from prefopt.errors import LossInputError

__all__ = ["overlong_penalty", "groups_with_spread"]


def overlong_penalty(lengths: Tensor, max_length: int, buffer: int, *, factor: float = 1.0) -> Tensor:
    """DAPO's soft overlong punishment R_length (module docstring), times `factor`, as float32 [S] ≤ 0.

    Args:
        lengths: [S] completion lengths |y| in tokens.
        max_length: L_max, the generation limit (max_new_tokens).
        buffer: L_cache, 1 ≤ L_cache ≤ L_max: the last L_cache tokens before the limit are penalised linearly.
        factor: scale of the penalty (≥ 0).
    """
    if not 1 <= buffer <= max_length:
        raise LossInputError(f"overlong_penalty: buffer={buffer} must lie in [1, max_length={max_length}]")
    expected = max_length - buffer  # L_max − L_cache
    lengths = lengths.to(torch.float32)
    ramp = ((expected - lengths) / buffer).clamp(max=0.0)  # 0 up to the expected maximum, −1 at L_max
    penalty = torch.where(lengths > max_length, torch.full_like(ramp, -1.0), ramp)
    return factor * penalty


def groups_with_spread(rewards: Tensor) -> Tensor:
    """[B] bool: True for a prompt whose K rewards are not all equal (its group carries a learning signal).

    Args:
        rewards: [B, K] sequence rewards.
    """
    if rewards.dim() != 2:
        raise LossInputError(f"groups_with_spread: rewards has shape {tuple(rewards.shape)}; expected [B, K]")
    return (rewards != rewards[:, :1]).any(1)
