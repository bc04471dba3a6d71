"""The table's ± over several seeds: a hierarchical bootstrap where the runs kept per-prompt values, Student's t
over the seeds' values where they did not."""

from __future__ import annotations

import math

from prefopt.compare.intervals import interval_note, per_prompt, seeds_interval
from prefopt.compare.report import summarize


def _run(seed: int, rewards: list[float], accuracy: float, values: list[float] | None = None) -> dict:
    preference = {"reward_accuracy": {"mean": accuracy, "low": None, "high": None}}
    if values is not None:
        preference["values"] = {"reward_accuracy": values, "reward_margin": values}
    return {
        "label": "dpo",
        "loss": "dpo",
        "hparams": {},
        "seed": seed,
        "train": {"final_metrics": {"loss": 0.5}, "peak_memory_bytes": 2**20},
        "preference": preference,
        "generation": {
            "reward": {"mean": sum(rewards) / len(rewards), "low": None, "high": None},
            "rewards": rewards,
            "reference_rewards": [0.0] * len(rewards),
        },
    }


def test_seeds_with_per_prompt_values_get_the_hierarchical_interval() -> None:
    """Seed 0 scores 1 on every prompt, seed 1 scores 3: only the seed draw varies, so the 95% interval is
    [1, 3] (resampled means 1, 2, 3 with probabilities ¼, ½, ¼). Win: 1 on every prompt of both seeds."""
    runs = [_run(0, [1.0] * 4, 0.6), _run(1, [3.0] * 4, 0.8)]
    (row,) = summarize(runs)[0][:1]
    assert (row["reward"]["mean"], row["reward"]["low"], row["reward"]["high"]) == (2.0, 1.0, 3.0)
    assert row["reward"]["method"] == "hierarchical"
    # no per-pair values kept: Student's t over the two seeds, 0.7 ± t_{1,0.975}·0.1414/√2 = 0.7 ± 1.2706
    assert math.isclose(row["eval_accuracy"]["low"], 0.7 - 1.2706205, rel_tol=1e-6)
    assert row["eval_accuracy"]["method"] == "t"


def test_per_pair_values_and_win_outcomes() -> None:
    run = _run(0, [1.0, -1.0, 0.0], 0.5, values=[1.0, 0.0])
    assert per_prompt(run, "eval_accuracy") == [1.0, 0.0]
    assert per_prompt(run, "win_rate") == [1.0, 0.0, 0.5]  # against the reference's 0, 0, 0
    assert per_prompt(run, "lc_win_rate") is None
    both = seeds_interval([run, _run(1, [1.0] * 3, 1.0, values=[1.0, 1.0])], "eval_accuracy", [0.5, 1.0])
    assert both["mean"] == 0.75 and both["method"] == "hierarchical"
    assert "hierarchical" in interval_note(3) and "hierarchical" not in interval_note(1)
