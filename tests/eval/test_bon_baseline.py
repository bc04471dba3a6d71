"""The best-of-N comparison point: expected reward, plug-in KL against the analytic bound, win rate."""

from __future__ import annotations

import math

import pytest
import torch

from prefopt.eval.bon_baseline import best_of_n_points


def test_distinct_rewards_approach_the_classical_formula() -> None:
    rewards = torch.randn(3, 2000, generator=torch.Generator().manual_seed(0))
    points = best_of_n_points(rewards, (1, 2, 8))
    assert points[0].kl.mean == pytest.approx(0.0, abs=1e-9)
    assert points[0].reward.mean == pytest.approx(float(rewards.double().mean()), abs=1e-9)
    for p in points:
        assert p.kl_bound == pytest.approx(math.log(p.n) - (p.n - 1) / p.n)
        assert p.kl.mean <= p.kl_bound + 1e-12 and p.kl.mean == pytest.approx(p.kl_bound, abs=5e-3)
        assert p.win_rate.mean == pytest.approx(p.n / (p.n + 1), abs=2e-3)
    assert points[0].reward.mean < points[1].reward.mean < points[2].reward.mean


def test_hand_computed_two_level_case() -> None:
    # M = 4 samples, rewards {0, 0, 0, 1}: P(1) = 1/4. Best of 2 hits reward 1 with q = 1 − (3/4)² = 7/16.
    points = best_of_n_points(torch.tensor([[0.0, 1.0, 0.0, 0.0]]), (1,))
    assert points[0].reward.mean == pytest.approx(0.25)
    point = best_of_n_points(torch.tensor([[0.0, 1.0, 0.0, 0.0] * 2]), (2,))[0]  # M = 8, same distribution
    q1, q0 = 7 / 16, 9 / 16
    assert point.reward.mean == pytest.approx(q1)
    assert point.kl.mean == pytest.approx(q1 * math.log(q1 / 0.25) + q0 * math.log(q0 / 0.75))
    assert point.kl.mean < point.kl_bound, "ties put the measured KL below log N − (N−1)/N"


def test_all_equal_rewards_give_zero_kl() -> None:
    point = best_of_n_points(torch.ones(2, 16), (4,))[0]
    assert point.kl.mean == 0.0 and point.reward.mean == 1.0 and point.win_rate.mean == 0.5


@pytest.mark.parametrize(("ns", "match"), [((8,), "M/4"), ((0,), "integers"), ((), "integers")])
def test_bad_n_is_a_clear_error(ns: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        best_of_n_points(torch.zeros(2, 16), ns)
