"""The hierarchical bootstrap over seeds and prompts: hand-checkable intervals, the flat bootstrap with one seed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from prefopt.eval import bootstrap_mean, hierarchical_bootstrap_mean


def test_one_seed_is_the_flat_bootstrap() -> None:
    values = np.random.default_rng(0).normal(0.3, 1.0, size=50)
    assert hierarchical_bootstrap_mean([values], seed=7) == bootstrap_mean(values, seed=7)


def test_constant_seeds_give_the_bootstrap_of_the_seed_means() -> None:
    """Seeds whose prompts all score the same: only the seed draw varies. With seeds at 0 and 1 a resample's
    mean is 0, ½ or 1 with probabilities ¼, ½, ¼, so the 95% interval is [0, 1] around the mean ½."""
    ci = hierarchical_bootstrap_mean([[0.0] * 5, [1.0] * 7])
    assert (ci.mean, ci.low, ci.high, ci.n, ci.method) == (0.5, 0.0, 1.0, 12, "hierarchical")


def test_identical_seeds_vary_only_with_prompts() -> None:
    """Two seeds with the same values 0, 1, 0, 1: the seed draw changes nothing, so the spread is that of the
    prompt resamples, the mean of two independent resampled means of 4 coin flips: variance ¼/8 = 1/32, about
    the flat bootstrap of 8 values (half-width ≈ 1.96·√(1/32) = 0.35)."""
    ci = hierarchical_bootstrap_mean([[0.0, 1.0, 0.0, 1.0]] * 2, n_resamples=4000)
    assert ci.mean == 0.5
    assert ci.half_width == pytest.approx(1.96 * math.sqrt(1 / 32), abs=0.07)


def test_seed_spread_widens_the_interval() -> None:
    """The same prompt noise, but seeds whose means differ: wider than pooling every value as one sample."""
    rng = np.random.default_rng(1)
    groups = [rng.normal(shift, 1.0, size=200) for shift in (0.0, 0.6, 1.2)]
    pooled = bootstrap_mean(np.concatenate(groups))
    ci = hierarchical_bootstrap_mean(groups)
    assert ci.mean == pytest.approx(np.mean([g.mean() for g in groups]))
    assert ci.half_width > 2 * pooled.half_width
    assert hierarchical_bootstrap_mean(groups) == ci  # seeded


def test_degenerate_and_bad_inputs() -> None:
    exact = hierarchical_bootstrap_mean([[2.0, 2.0], [2.0]])
    assert (exact.low, exact.high, exact.method) == (2.0, 2.0, "exact")
    with pytest.raises(ValueError, match="no groups"):
        hierarchical_bootstrap_mean([])
    with pytest.raises(ValueError, match="group 1"):
        hierarchical_bootstrap_mean([[1.0], []])
    with pytest.raises(ValueError, match="confidence"):
        hierarchical_bootstrap_mean([[1.0, 2.0], [3.0]], confidence=1.5)
