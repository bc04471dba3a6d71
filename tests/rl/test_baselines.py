"""Leave-one-out, group-normalised and greedy baselines, and the group ↔ sequence layout."""

from __future__ import annotations

import math

import pytest
import torch

from prefopt.registry import LossInputError
from prefopt.rl import (
    check_grouped_rewards,
    greedy_baseline_advantages,
    group_normalized_advantages,
    grouped_to_sequences,
    leave_one_out_advantages,
    sequences_to_grouped,
)


def test_leave_one_out_hand_computed() -> None:
    """r = (1, 2, 6): baselines (2+6)/2 = 4, (1+6)/2 = 3.5, (1+2)/2 = 1.5 → A = (−3, −1.5, 4.5)."""
    torch.testing.assert_close(
        leave_one_out_advantages(torch.tensor([[1.0, 2.0, 6.0]])), torch.tensor([[-3.0, -1.5, 4.5]])
    )


def test_leave_one_out_is_a_scaled_centring() -> None:
    """A_k = r_k − (Σr − r_k)/(K−1) = K/(K−1)·(r_k − r̄), so advantages sum to 0 per prompt."""
    rewards = torch.randn(5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    advantages = leave_one_out_advantages(rewards)
    torch.testing.assert_close(advantages, 4 / 3 * (rewards - rewards.mean(1, keepdim=True)))
    torch.testing.assert_close(advantages.sum(1), torch.zeros(5, dtype=torch.float64))


def test_group_normalized_hand_computed() -> None:
    """r = (1, 0): mean 0.5, unbiased std √((0.25 + 0.25)/1) = √0.5 → A = ±0.5/(√0.5 + 1e-4);
    equal rewards (3, 3) give 0; without std scaling (Dr. GRPO) A = ±0.5."""
    rewards = torch.tensor([[1.0, 0.0], [3.0, 3.0]], dtype=torch.float64)
    a = 0.5 / (math.sqrt(0.5) + 1e-4)
    torch.testing.assert_close(
        group_normalized_advantages(rewards), torch.tensor([[a, -a], [0.0, 0.0]], dtype=torch.float64)
    )
    torch.testing.assert_close(
        group_normalized_advantages(rewards, scale_by_std=False),
        torch.tensor([[0.5, -0.5], [0.0, 0.0]], dtype=torch.float64),
    )


def test_greedy_baseline_hand_computed() -> None:
    rewards = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    torch.testing.assert_close(
        greedy_baseline_advantages(rewards, torch.tensor([0.5, -2.0])), torch.tensor([[0.5, 1.5], [2.0, 1.0]])
    )
    with pytest.raises(LossInputError, match=r"greedy_rewards has shape \(3,\); expected \[2\]"):
        greedy_baseline_advantages(rewards, torch.zeros(3))


def test_group_major_layout_round_trip() -> None:
    """Sequence s = k·B + b is sample k of prompt b: for B = 2, K = 3, [[a, b, c], [d, e, f]] → a d b e c f."""
    grouped = torch.tensor([[0.0, 1.0, 2.0], [10.0, 11.0, 12.0]])
    flat = grouped_to_sequences(grouped)
    assert flat.tolist() == [0.0, 10.0, 1.0, 11.0, 2.0, 12.0]
    assert torch.equal(sequences_to_grouped(flat, 3), grouped)
    with pytest.raises(LossInputError, match="groups of 4"):
        sequences_to_grouped(flat, 4)


def test_group_estimators_reject_bad_rewards() -> None:
    with pytest.raises(LossInputError, match="K ≥ 2"):
        leave_one_out_advantages(torch.zeros(3, 1))
    with pytest.raises(LossInputError, match=r"expected \[B, K\]"):
        group_normalized_advantages(torch.zeros(6))
    with pytest.raises(LossInputError, match=r"not finite at prompts \[1\]"):
        leave_one_out_advantages(torch.tensor([[0.0, 1.0], [math.nan, 1.0]]))
    with pytest.raises(LossInputError, match="B·K = S"):
        check_grouped_rewards(torch.zeros(2, 2), 6, where="test")
    with pytest.raises(LossInputError, match="rewards is required"):
        check_grouped_rewards(None, 4, where="test")
    assert check_grouped_rewards(torch.ones(2, 2, dtype=torch.long), 4, where="test").dtype == torch.float32
