"""Exact best-of-n mathematics: hand-computed values, ties, limits, stability and input errors."""

from __future__ import annotations

import math

import pytest
import torch

from prefopt.eval import bon_math


def test_two_outcomes_by_hand() -> None:
    """π_ref = (½, ½) on rewards (0, 1), n = 2.

    q_top = F(1)² − F⁻(1)² = 1 − ¼ = ¾, q_low = F(0)² = ¼, so
    KL = ¾ log(¾ / ½) + ¼ log(¼ / ½) = ¾ log 1.5 − ¼ log 2;
    win rate (ties ½) = q_low·(0 + ¼) + q_top·(½ + ¼) = 1/16 + 9/16 = 0.625;
    strict win = q_top·½ = 0.375; expected reward = ¾.
    """
    probs, rewards = [0.5, 0.5], [0.0, 1.0]
    assert bon_math.best_of_n_kl(probs, rewards, 2) == pytest.approx(
        0.75 * math.log(1.5) - 0.25 * math.log(2), abs=1e-15
    )
    assert bon_math.best_of_n_win_rate(probs, rewards, 2) == pytest.approx(0.625, abs=1e-15)
    assert bon_math.best_of_n_win_rate(probs, rewards, 2, ties="strict") == pytest.approx(0.375, abs=1e-15)
    assert bon_math.best_of_n_win_rate(probs, rewards, 2, ties="win") == pytest.approx(0.875, abs=1e-15)
    assert bon_math.best_of_n_expected_reward(probs, rewards, 2) == pytest.approx(0.75, abs=1e-15)
    assert bon_math.best_of_n_pmf(probs, rewards, 2).tolist() == pytest.approx([0.25, 0.75], abs=1e-15)


def test_ties_split_within_a_level_and_leave_the_kl_unchanged() -> None:
    """Splitting the top outcome of the example above into two tied halves changes the PMF, not the KL."""
    probs, rewards = [0.25, 0.5, 0.25], [1.0, 0.0, 1.0]
    pmf = bon_math.best_of_n_pmf(probs, rewards, 2)
    assert pmf.tolist() == pytest.approx([0.375, 0.25, 0.375], abs=1e-15)
    assert bon_math.best_of_n_kl(probs, rewards, 2) == pytest.approx(bon_math.best_of_n_kl([0.5, 0.5], [0.0, 1.0], 2))


def test_pmf_matches_sampling_with_ties() -> None:
    gen = torch.Generator().manual_seed(0)
    probs = torch.tensor([0.1, 0.2, 0.3, 0.15, 0.25], dtype=torch.float64)
    rewards = torch.tensor([2.0, 0.0, 1.0, 2.0, 0.0], dtype=torch.float64)
    n, samples = 3, 200_000
    draws = torch.multinomial(probs.expand(samples, -1), n, replacement=True, generator=gen)
    key = rewards[draws] + 0.5 * torch.rand(samples, n, generator=gen, dtype=torch.float64)  # random tie-break
    best = draws[torch.arange(samples), key.argmax(1)]
    empirical = torch.bincount(best, minlength=5).double() / samples
    exact = bon_math.best_of_n_pmf(probs, rewards, n)
    assert exact.sum() == pytest.approx(1.0, abs=1e-12)
    assert (empirical - exact).abs().max() < 4e-3


def test_near_continuous_reference_meets_the_classical_formulas() -> None:
    m = 50_000
    probs, rewards = torch.full((m,), 1.0 / m, dtype=torch.float64), torch.arange(m, dtype=torch.float64)
    for n in (1, 2, 16, 256):
        assert bon_math.best_of_n_kl(probs, rewards, n) == pytest.approx(bon_math.classical_kl_formula(n), abs=1e-3)
        assert bon_math.best_of_n_win_rate(probs, rewards, n) == pytest.approx(n / (n + 1), abs=1e-4)


@pytest.mark.parametrize("n", [1, 2, 3, 10, 100, 1000])
def test_bounds_hold_on_random_discrete_references(n: int) -> None:
    gen = torch.Generator().manual_seed(n)
    for _ in range(20):
        m = int(torch.randint(2, 12, (1,), generator=gen))
        probs = torch.rand(m, generator=gen, dtype=torch.float64) + 1e-3
        probs /= probs.sum()
        rewards = torch.randint(0, 4, (m,), generator=gen).double()  # many ties
        kl = bon_math.best_of_n_kl(probs, rewards, n)
        assert 0.0 <= kl <= bon_math.classical_kl_formula(n) + 1e-12
        top = float(probs[rewards == rewards.max()].sum())
        assert kl <= math.log(1 / top) + 1e-12  # best-of-n never leaves the reward levels π_ref supports
        assert bon_math.best_of_n_win_rate(probs, rewards, n) <= n / (n + 1) + 1e-12


def test_beirami_estimate_limits_and_exactness() -> None:
    """ε → 0 gives the classical formula; n → ∞ gives log 1/ε; an atom on a fine grid is matched."""
    for n in (1, 4, 64):
        assert bon_math.beirami_kl_estimate(n, 1e-12) == pytest.approx(bon_math.classical_kl_formula(n), abs=1e-9)
    assert bon_math.beirami_kl_estimate(10_000, 0.1) == pytest.approx(math.log(10), abs=1e-9)
    assert bon_math.beirami_kl_estimate(5, 1.0) == 0.0
    eps, m = 0.2, 200_000  # mass ε on the best outcome, the rest spread over m equal outcomes below it
    probs = torch.cat([torch.full((m,), (1 - eps) / m, dtype=torch.float64), torch.tensor([eps], dtype=torch.float64)])
    rewards = torch.arange(m + 1, dtype=torch.float64)
    for n in (2, 8, 32):
        assert bon_math.beirami_kl_estimate(n, eps) == pytest.approx(bon_math.best_of_n_kl(probs, rewards, n), abs=1e-4)


def test_large_n_and_tiny_masses_stay_finite() -> None:
    probs = torch.tensor([1 - 2e-12, 1e-12, 1e-12], dtype=torch.float64)
    rewards = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    q = bon_math.best_of_n_pmf(probs, rewards, 10**6)
    assert torch.isfinite(q).all() and q.sum() == pytest.approx(1.0, abs=1e-12)
    # 1 − (1 − 1e-12)^n = 9.999995000006667e-07 (mpmath, 40 digits); naive float64 gives 9.99977e-07.
    assert float(q[2]) == pytest.approx(-math.expm1(10**6 * math.log1p(-1e-12)), rel=1e-12)
    assert float(q[2]) == pytest.approx(9.999995000006667e-07, rel=1e-12)
    assert bon_math.best_of_n_kl([0.5, 0.0, 0.5], [0.0, 1.0, 2.0], 3) == pytest.approx(
        bon_math.best_of_n_kl([0.5, 0.5], [0.0, 2.0], 3)
    )  # a zero-mass level is harmless


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: bon_math.best_of_n_kl([0.5, 0.4], [0.0, 1.0], 2), "sum to 1"),
        (lambda: bon_math.best_of_n_kl([0.5, 0.5], [0.0], 2), "same shape"),
        (lambda: bon_math.best_of_n_kl([1.5, -0.5], [0.0, 1.0], 2), "≥ 0"),
        (lambda: bon_math.best_of_n_kl([0.5, 0.5], [0.0, math.inf], 2), "finite"),
        (lambda: bon_math.best_of_n_kl([0.5, 0.5], [0.0, 1.0], 0), "integer ≥ 1"),
        (lambda: bon_math.best_of_n_win_rate([0.5, 0.5], [0.0, 1.0], 2, ties="draw"), "ties must be"),
        (lambda: bon_math.beirami_kl_estimate(4, 0.0), "top_mass"),
        (lambda: bon_math.classical_kl_formula(2.5), "integer"),
    ],
)
def test_bad_input_names_the_problem(call, match: str) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=match):
        call()
