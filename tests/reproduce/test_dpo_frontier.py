"""DPO's reward–KL frontier (Rafailov et al. 2023, Fig. 2 left): the frontier geometry by hand, and the
reproduction's machinery (DPO, PPO and best-of-N trained and evaluated) in the quick setting."""

from __future__ import annotations

import dataclasses
import math

import pytest

from prefopt.reproduce.experiments import dpo_frontier as df
from prefopt.reproduce.report import figure_png


def test_frontier_is_the_rising_upper_concave_envelope() -> None:
    """Points (1, 1), (2, 1.2), (1.5, 0.5), (4, 1.1) with the reference at (0, 0): (1.5, 0.5) lies under the chord
    from (0, 0) to (1, 1); the hull's upper part runs (0,0)→(1,1)→(2,1.2)→(4,1.1) and is cut at its top (2, 1.2)."""
    vertices = df.frontier([(1, 1), (2, 1.2), (1.5, 0.5), (4, 1.1)], (0.0, 0.0))
    assert vertices == [(0.0, 0.0), (1.0, 1.0), (2.0, 1.2)]
    assert df.frontier_at(vertices, 0.5) == pytest.approx(0.5)
    assert df.frontier_at(vertices, 1.5) == pytest.approx(1.1)
    assert df.frontier_at(vertices, 10.0) == pytest.approx(1.2)  # flat: a larger budget may stay at (2, 1.2)
    # A point on the chord between two vertices is not a vertex, and points below the origin add nothing.
    assert df.frontier([(1, 1), (2, 2), (0.5, -1)], (0.0, 0.0)) == [(0.0, 0.0), (2.0, 2.0)]


def test_dominance_share_and_mean_gap_by_hand() -> None:
    """F_a: (0,0)→(1,1) then flat at 1; F_b: (0,0)→(2,1) then flat. On [0, 2]: F_a − F_b = k/2 on [0, 1] and
    1 − k/2 on [1, 2], whose integral is 1/4 + 1/4 = 1/2, so the mean gap is 1/4."""
    a = df.frontier([(1, 1)], (0.0, 0.0))
    b = df.frontier([(2, 1)], (0.0, 0.0))
    assert df.mean_frontier_gap(a, b, 2.0) == pytest.approx(0.25, abs=1e-5)
    assert df.mean_frontier_gap(b, a, 2.0) == pytest.approx(-0.25, abs=1e-5)
    others = [df.Point("PPO", "x", 2.0, 1.0), df.Point("PPO", "y", 0.5, 0.6)]
    assert df.dominated_share(a, others) == 0.5  # (2, 1) lies on F_a, (0.5, 0.6) above it (F_a = 0.5)
    assert df.dominated_share(a, others, atol=0.1) == 1.0


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="including 1"):
        dataclasses.replace(df.QUICK, bon_ns=(2, 4))
    with pytest.raises(ValueError, match="4·max N"):
        dataclasses.replace(df.QUICK, bon_ns=(1, 8), bon_samples=16)
    with pytest.raises(ValueError, match="eval_prompts_used"):
        dataclasses.replace(df.QUICK, eval_prompts_used=100)
    assert df.make_config(True, 3).seeds == 3 and df.make_config(False, None) == df.CONFIG


def test_quick_run_trains_evaluates_and_reports() -> None:
    config = df.QUICK
    seen: list[str] = []
    result = df.run(config, lambda done, total, stage: seen.append(stage))
    assert len(seen) == 2 + len(config.dpo_betas) + len(config.ppo_kl_coefs)
    points = {(p["algorithm"], p["setting"]): p for p in result.data["points"]}
    assert set(points) == {
        ("DPO", "β=0.1"),
        ("DPO", "β=5"),
        ("PPO", "kl_coef=0.1"),
        ("best-of-N", "N=1"),
        ("best-of-N", "N=2"),
    }
    for key in (("DPO", "β=0.1"), ("PPO", "kl_coef=0.1")):  # trained policies moved away from the reference
        assert points[key]["kl"] > 0 and math.isfinite(points[key]["reward"])
    # Best-of-2 by the gold reward beats the reference's mean reward on every prompt (it is a max).
    assert points[("best-of-N", "N=2")]["reward"] > points[("best-of-N", "N=1")]["reward"]
    assert points[("best-of-N", "N=2")]["kl"] == pytest.approx(math.log(2) - 0.5)
    assert result.data["reference_reward"] == pytest.approx(points[("best-of-N", "N=1")]["reward"])
    assert len(result.checks) == 3 and all(c.paper and c.tolerance for c in result.checks)
    assert [c.value for c in result.checks][1] == result.data["dominated_share"]
    assert figure_png(result)[:8] == b"\x89PNG\r\n\x1a\n"
