"""GAE(γ, λ) against a brute-force per-row Python loop, plus hand-computed cases."""

from __future__ import annotations

import pytest
import torch

from prefopt.registry import LossInputError
from prefopt.rl import gae


def brute_force_gae(
    rewards: list[float], values: list[float], gamma: float, lam: float
) -> tuple[list[float], list[float]]:
    """A_t = Σ_{l=0}^{L−1−t} (γλ)^l δ_{t+l}, δ_t = r_t + γV_{t+1} − V_t, V_L = 0, written as the explicit sum."""
    n = len(rewards)
    deltas = [rewards[t] + gamma * (values[t + 1] if t + 1 < n else 0.0) - values[t] for t in range(n)]
    advantages = [sum((gamma * lam) ** k * deltas[t + k] for k in range(n - t)) for t in range(n)]
    return advantages, [a + v for a, v in zip(advantages, values)]


@pytest.mark.parametrize("seed", range(6))
def test_gae_matches_brute_force_on_ragged_batches(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    batch, steps = 6, 11
    lengths = torch.randint(0, steps + 1, (batch,), generator=g).tolist()
    rewards = torch.randn(batch, steps, generator=g, dtype=torch.float64)
    values = torch.randn(batch, steps, generator=g, dtype=torch.float64)
    mask = torch.arange(steps).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    rewards = torch.where(mask, rewards, torch.full_like(rewards, 1e6))  # padding garbage
    values = torch.where(mask, values, torch.full_like(values, -1e6))
    gamma, lam = [(1.0, 0.95), (0.9, 0.5), (0.99, 1.0), (1.0, 0.0), (0.5, 0.7), (0.0, 0.3)][seed]
    advantages, returns = gae(rewards, values, mask, gamma=gamma, lam=lam)
    assert advantages.dtype == torch.float64
    for b, n in enumerate(lengths):
        exp_a, exp_r = brute_force_gae(rewards[b, :n].tolist(), values[b, :n].tolist(), gamma, lam)
        torch.testing.assert_close(advantages[b, :n], torch.tensor(exp_a, dtype=torch.float64))
        torch.testing.assert_close(returns[b, :n], torch.tensor(exp_r, dtype=torch.float64))
        assert (advantages[b, n:] == 0).all() and (returns[b, n:] == 0).all()


def test_gae_hand_computed() -> None:
    """r = (0, 0, 1), V = (0.5, 0.5, 0.5), γ = 1, λ = 0.5:
    δ = (0 + 0.5 − 0.5, 0 + 0.5 − 0.5, 1 + 0 − 0.5) = (0, 0, 0.5);
    A₂ = 0.5, A₁ = 0 + 0.5·0.5 = 0.25, A₀ = 0 + 0.5·0.25 = 0.125; G = A + V = (0.625, 0.75, 1.0).
    The second row has length 1: A₀ = r₀ − V₀ = 2 − 1 = 1, G₀ = 2."""
    rewards = torch.tensor([[0.0, 0.0, 1.0], [2.0, 9.0, 9.0]])
    values = torch.tensor([[0.5, 0.5, 0.5], [1.0, 9.0, 9.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    torch.testing.assert_close(advantages, torch.tensor([[0.125, 0.25, 0.5], [1.0, 0.0, 0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[0.625, 0.75, 1.0], [2.0, 0.0, 0.0]]))


def test_lambda_one_gives_reward_to_go_minus_value() -> None:
    """γ = λ = 1: A_t = Σ_{t' ≥ t} r_{t'} − V_t (the V terms telescope)."""
    rewards = torch.tensor([[1.0, -2.0, 3.0, 0.5]])
    values = torch.tensor([[0.3, 0.1, -0.4, 2.0]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    to_go = rewards.flip(1).cumsum(1).flip(1)
    torch.testing.assert_close(advantages, to_go - values)
    torch.testing.assert_close(returns, to_go)


def test_gae_is_not_differentiable_and_checks_inputs() -> None:
    values = torch.randn(2, 3, requires_grad=True)
    mask = torch.ones(2, 3, dtype=torch.bool)
    advantages, _ = gae(torch.randn(2, 3), values, mask)
    assert not advantages.requires_grad
    with pytest.raises(LossInputError, match="right-padded"):
        gae(torch.randn(1, 3), torch.randn(1, 3), torch.tensor([[False, True, True]]))
    with pytest.raises(LossInputError, match="lam=1.5"):
        gae(torch.randn(2, 3), torch.randn(2, 3), mask, lam=1.5)
    with pytest.raises(LossInputError, match=r"\[B, T\]"):
        gae(torch.randn(2, 3), torch.randn(2, 4), mask)
