"""DPO's reward–KL frontier (Rafailov et al. 2023, Fig. 2 left): the frontier geometry, the all-pairs data, the
per-seed gaps and the checks by hand, and the reproduction's machinery (DPO to convergence, a reward model, PPO,
PPO-GT, best-of-N, the data ablation) in the quick setting."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from prefopt.data.synthetic.preferences import PromptGroup
from prefopt.reproduce.experiments import dpo_frontier as df
from prefopt.reproduce.experiments.dpo_frontier_training import EarlyStopping, all_pair_rows
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
    with pytest.raises(ValueError, match="ablation_prompts"):
        dataclasses.replace(df.QUICK, ablation_prompts=(16,))
    with pytest.raises(ValueError, match="ablation_seeds"):
        dataclasses.replace(df.QUICK, ablation_seeds=2)
    assert df.make_config(True, 3).seeds == 3 and df.make_config(False, None) == df.CONFIG
    assert df.make_config(False, 2).ablation_seeds == 2


def test_all_pairs_are_labelled_by_the_gold_reward() -> None:
    """K = 4 completions with rewards (0.5, 2, 0.5, 1) and texts a, b, c, a: of the 6 pairs, (0, 3) has equal texts
    and (0, 2) equal rewards, so 4 remain, each with the higher reward chosen; the eval group is not read."""
    train = PromptGroup("p", "train", ["a", "b", "c", "a"], [0.5, 2.0, 0.5, 1.0], [1] * 4, [True] * 4)
    held = PromptGroup("q", "eval", ["x", "y"], [0.0, 1.0], [1, 1], [True, True])
    rows = all_pair_rows([train, held], "train")
    assert [(r["chosen"], r["rejected"]) for r in rows] == [("b", "a"), ("b", "c"), ("b", "a"), ("a", "c")]
    assert all_pair_rows([held], "eval") == [{"prompt": "q", "chosen": "y", "rejected": "x"}]


def test_early_stopping_keeps_the_best_weights_and_waits_for_patience() -> None:
    """Held-out losses 0.5, 0.4, 0.45, 0.41 with patience 2: the best is step 2's; after two evaluations without
    improvement (steps 3 and 4) it says stop, and the kept weights are those of step 2."""
    policy = torch.nn.Linear(1, 1, bias=False)
    losses = iter([0.5, 0.4, 0.45, 0.41])
    stopper = EarlyStopping(policy, 0.1, [], torch.zeros(0, 2), patience=2)
    stopper.held_out_loss = lambda: next(losses)  # type: ignore[method-assign]
    stops = []
    for step in range(1, 5):
        with torch.no_grad():
            policy.weight.fill_(float(step))
        stops.append(stopper(step))
    assert stops == [False, False, False, True]
    assert stopper.best_step == 2 and stopper.best_loss == 0.4
    assert stopper.best_state is not None and float(stopper.best_state["weight"]) == 2.0


def _raw(points: dict[str, list[tuple[float, float]]]) -> dict[str, list[dict[str, float]]]:
    return {key: [{"kl": k, "reward": r, "best_step": 1.0} for k, r in runs] for key, runs in points.items()}


def test_seed_gaps_use_each_seeds_own_frontiers() -> None:
    """Seed 0: DPO (1, 1), PPO (2, 1) → mean gap over [0, 2] = 1/4 (the hand case above); seed 1: DPO (2, 1), PPO
    (1, 1) → −1/4."""
    raw = _raw({"DPO|β=1": [(1.0, 1.0), (2.0, 1.0)], "PPO|kl_coef=0.1": [(2.0, 1.0), (1.0, 1.0)]})
    gaps = df.seed_gaps(raw, "DPO", "PPO", (0.0, 0.0), 2.0, seeds=2)
    assert gaps.tolist() == pytest.approx([0.25, -0.25], abs=1e-5)


def test_outcome_checks_by_hand() -> None:
    """Two seeds, reference reward 0. DPO at β = 0.1, 1 reaches KL 2 and 0.1 (a 20× span, falling with β) with
    reward 1 and 0.5; PPO and PPO-GT lie at (2, 0.5): under DPO's frontier, so every gap is positive on both seeds
    and every check passes. The ablation size (2 prompts) has only a point at KL 0.1, reward 0.2: below PPO."""
    config = dataclasses.replace(
        df.QUICK, train_prompts=4, ablation_prompts=(2,), dpo_betas=(0.1, 1.0), seeds=2, ablation_seeds=2
    )
    raw = _raw(
        {
            "DPO|β=0.1": [(2.0, 1.0), (2.0, 1.0)],
            "DPO|β=1": [(0.1, 0.5), (0.1, 0.5)],
            "PPO|kl_coef=0.1": [(2.0, 0.5), (2.0, 0.5)],
            "PPO-GT|kl_coef=0.1": [(2.0, 0.5), (2.0, 0.5)],
            "DPO (2 prompts)|β=0.1": [(0.1, 0.2), (0.1, 0.2)],
            "DPO (2 prompts)|β=1": [(0.1, 0.2), (0.1, 0.2)],
        }
    )
    points = [df.Point(*key.split("|"), runs[0]["kl"], runs[0]["reward"]) for key, runs in raw.items()]
    points += [df.Point("best-of-N", "N=1", 0.0, 0.0)]
    info = {"reference_reward": 0.0, "raw": raw, "pairs": {"2": 12, "4": 24}, "eval_pairs": 6, "rm_eval_accuracy": 0.7}
    result = df.outcome(config, points, info)
    assert [c.passed for c in result.checks] == [True, True, True, True, True]
    assert result.checks[1].value == pytest.approx(20.0)
    ablation = result.tables[1].rows
    assert [row[:2] for row in ablation] == [["2", "12"], ["4", "24"]]
    assert result.data["ablation"]["DPO (2 prompts)"]["PPO"][0] < 0 < result.data["ablation"]["DPO"]["PPO"][0]


def test_quick_run_trains_evaluates_and_reports() -> None:
    config = df.QUICK
    seen: list[str] = []
    result = df.run(config, lambda done, total, stage: seen.append(stage))
    n_dpo = len(config.dpo_betas) * (1 + len(config.ablation_prompts))
    assert len(seen) == 3 + n_dpo + 2 * len(config.ppo_kl_coefs)
    points = {(p["algorithm"], p["setting"]): p for p in result.data["points"]}
    assert set(points) == {
        ("DPO", "β=0.1"),
        ("DPO", "β=3"),
        ("DPO (8 prompts)", "β=0.1"),
        ("DPO (8 prompts)", "β=3"),
        ("PPO", "kl_coef=0.1"),
        ("PPO-GT", "kl_coef=0.1"),
        ("best-of-N", "N=1"),
        ("best-of-N", "N=2"),
    }
    for key in (("DPO", "β=3"), ("PPO", "kl_coef=0.1"), ("PPO-GT", "kl_coef=0.1")):  # they left the reference
        assert points[key]["kl"] > 0 and math.isfinite(points[key]["reward"])
    # All pairs of K = 4 samples: at most 6 per prompt, and the ablation's set is the first half's.
    pairs = result.data["pairs"]
    assert 0 < pairs["8"] < pairs["16"] <= 6 * 16
    assert 0 <= result.data["rm_eval_accuracy"] <= 1
    run = result.data["raw"]["DPO|β=3"][0]  # early stopping kept the best held-out DPO loss, below log 2
    assert run["best_eval_loss"] <= run["initial_eval_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert points[("best-of-N", "N=2")]["reward"] > points[("best-of-N", "N=1")]["reward"]
    assert points[("best-of-N", "N=2")]["kl"] == pytest.approx(math.log(2) - 0.5)
    assert result.data["reference_reward"] == pytest.approx(points[("best-of-N", "N=1")]["reward"])
    assert len(result.checks) == 5 and all(c.paper and c.tolerance for c in result.checks)
    assert result.checks[4].value == result.data["dominated_share"]
    assert figure_png(result)[:8] == b"\x89PNG\r\n\x1a\n"
