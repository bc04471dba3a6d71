"""Critic-free advantages from K sampled completions per prompt, and the group ↔ sequence layout.

Rewards of a rollout are grouped as `rewards[b, k]` ([B, K]: prompt b, sample k). The per-token
tensors of the same rollout are laid out group-major like every prefopt `TokenBatch`: sequence
s = k·B + b holds sample k of prompt b (`SequenceLogProbs.grouped()` is the inverse).

    leave_one_out          A_bk = r_bk − (1/(K−1)) Σ_{j≠k} r_bj = K/(K−1)·(r_bk − r̄_b)
                           RLOO, Ahmadian et al. 2024, arXiv:2402.14740 (after Kool et al. 2019)
    group_normalized       A_bk = (r_bk − r̄_b)/(std_b + eps)       GRPO outcome supervision,
                           Shao et al. 2024, arXiv:2402.03300, §4.1.2; std unbiased, eps = 1e-4 (TRL)
                           scale_by_std=False: A_bk = r_bk − r̄_b   Dr. GRPO, Liu et al. 2025, arXiv:2503.20783
    greedy_baseline        A_bk = r_bk − r(x_b, ȳ_b)                ReMax, Li et al. 2023, arXiv:2310.10505,
                           with ȳ_b the greedy decode of prompt b
"""

from __future__ import annotations

import torch
from torch import Tensor

from prefopt.errors import LossInputError

__all__ = [
    "check_grouped_rewards",
    "leave_one_out_advantages",
    "group_normalized_advantages",
    "greedy_baseline_advantages",
    "grouped_to_sequences",
    "sequences_to_grouped",
]


def _check_grouped(rewards: Tensor, where: str, min_k: int) -> None:
    if not isinstance(rewards, Tensor) or rewards.dim() != 2 or rewards.shape[0] == 0 or rewards.shape[1] < min_k:
        shape = tuple(rewards.shape) if isinstance(rewards, Tensor) else type(rewards).__name__
        raise LossInputError(
            f"{where}: rewards has shape {shape}; expected [B, K] (B prompts, K ≥ {min_k} samples each). "
            f"Reshape flat group-major rewards with sequences_to_grouped(rewards, K)."
        )
    if not torch.isfinite(rewards).all():
        rows = (~torch.isfinite(rewards)).any(1).nonzero().flatten()[:10].tolist()
        raise LossInputError(f"{where}: rewards are not finite at prompts {rows}; fix the reward function.")


def check_grouped_rewards(
    rewards: Tensor | None, num_sequences: int | None = None, *, where: str, min_k: int = 1
) -> Tensor:
    """Validate `rewards` [B, K] (against a rollout of S = K·B sequences when `num_sequences` is given);
    return it detached, at least float32.

    Raises:
        LossInputError: rewards missing, not [B, K] with K ≥ min_k, not finite, or B·K ≠ S.
    """
    if rewards is None:
        raise LossInputError(
            f"{where}: rewards is required: a [B, K] tensor of sequence rewards (B prompts, K samples each), "
            f"column k for the sequences k·B … k·B + B − 1 of the rollout."
        )
    _check_grouped(rewards, where, min_k)
    if num_sequences is not None and rewards.numel() != num_sequences:
        raise LossInputError(
            f"{where}: rewards has shape {tuple(rewards.shape)} = {rewards.numel()} samples but the per-token "
            f"inputs have {num_sequences} rows; expected B·K = S."
        )
    rewards = rewards.detach()
    low_precision = not rewards.dtype.is_floating_point or rewards.element_size() < 4
    return rewards.float() if low_precision else rewards


def leave_one_out_advantages(rewards: Tensor) -> Tensor:
    """RLOO advantages [B, K]: each sample's reward minus the mean reward of the other K − 1 samples.

    Args:
        rewards: [B, K] sequence rewards, K ≥ 2.
    """
    _check_grouped(rewards, "leave_one_out_advantages", 2)
    k = rewards.shape[1]
    others = (rewards.sum(1, keepdim=True) - rewards) / (k - 1)
    return rewards - others


def group_normalized_advantages(rewards: Tensor, *, scale_by_std: bool = True, eps: float = 1e-4) -> Tensor:
    """GRPO advantages [B, K]: (r − group mean) / (group std + eps); without std scaling for Dr. GRPO.

    The std is the unbiased sample std of the K rewards (torch default, as TRL); a group whose
    rewards are all equal gets advantage 0.

    Args:
        rewards: [B, K] sequence rewards, K ≥ 2.
        scale_by_std: divide by std + eps (GRPO) or not (Dr. GRPO).
        eps: added to the std.
    """
    _check_grouped(rewards, "group_normalized_advantages", 2)
    centred = rewards - rewards.mean(1, keepdim=True)
    if not scale_by_std:
        return centred
    return centred / (rewards.std(1, keepdim=True) + eps)


def greedy_baseline_advantages(rewards: Tensor, greedy_rewards: Tensor) -> Tensor:
    """ReMax advantages [B, K]: each sample's reward minus the reward of its prompt's greedy decode.

    Args:
        rewards: [B, K] rewards of sampled completions (K = 1 in the paper).
        greedy_rewards: [B] reward of the greedy completion of each prompt.
    """
    _check_grouped(rewards, "greedy_baseline_advantages", 1)
    if not isinstance(greedy_rewards, Tensor) or greedy_rewards.shape != rewards.shape[:1]:
        shape = tuple(greedy_rewards.shape) if isinstance(greedy_rewards, Tensor) else type(greedy_rewards).__name__
        raise LossInputError(
            f"greedy_baseline_advantages: greedy_rewards has shape {shape}; expected [{rewards.shape[0]}], "
            f"one reward of the greedy decode per prompt."
        )
    return rewards - greedy_rewards.to(rewards.dtype).unsqueeze(1)


def grouped_to_sequences(grouped: Tensor) -> Tensor:
    """[B, K] → [K·B] in group-major sequence order: out[k·B + b] = grouped[b, k]."""
    return grouped.transpose(0, 1).reshape(-1)


def sequences_to_grouped(values: Tensor, group_size: int) -> Tensor:
    """[K·B] group-major → [B, K] (inverse of `grouped_to_sequences`).

    Raises:
        LossInputError: the length is not a multiple of `group_size`.
    """
    if values.dim() != 1 or group_size < 1 or values.shape[0] % group_size:
        raise LossInputError(
            f"sequences_to_grouped: {tuple(values.shape)} values cannot be split into groups of {group_size}; "
            f"expected a flat [K·B] tensor."
        )
    return values.reshape(group_size, -1).transpose(0, 1)
