"""The label-noise ceiling: the gold reward's own accuracy on the eval pairs, as a row of the table and in
results.json, checked against the gold reward applied to the very pairs the eval accuracy uses."""

from __future__ import annotations

import json

import pytest

from prefopt.compare import CompareConfig
from prefopt.compare.heldout import CEILING_LABEL, write_heldout
from prefopt.compare.report import write_report
from prefopt.compare.task import SharedTask
from prefopt.data import synthetic
from prefopt.data.synthetic import PreferenceConfig, ReferencePolicy, SyntheticTask, build_preferences
from tests.train.tiny_task import tiny_llama


@pytest.fixture
def tiny_synthetic(monkeypatch):
    """A synthetic task in a second: a random-init tiny Llama as the reference, its samples labelled at T = 1."""
    tokenizer = synthetic.build_tokenizer()
    model = tiny_llama(tokenizer).eval()
    config = PreferenceConfig(train_prompts=4, eval_prompts=24, heldout_prompts=2, max_new_tokens=12)
    preferences = build_preferences(model, tokenizer, seed=0, config=config)
    task = SyntheticTask(ReferencePolicy(model, tokenizer, None, {}), preferences, synthetic.GoldReward())
    monkeypatch.setattr(synthetic, "synthetic_task", lambda **_: task)
    return config


def test_the_ceiling_is_the_gold_reward_accuracy_on_the_eval_pairs(tiny_synthetic, tmp_path) -> None:
    task = SharedTask(CompareConfig(losses=("dpo",), output_dir=str(tmp_path), preference_config=tiny_synthetic))
    pairs = task.eval_rows()
    chosen = synthetic.gold_reward(pairs["prompt"], pairs["chosen"])
    rejected = synthetic.gold_reward(pairs["prompt"], pairs["rejected"])
    expected = (chosen > rejected).double().mean().item()  # a tie counts as wrong, as in the eval accuracy
    ceiling = task.heldout(pairs=len(pairs))["ceiling"]
    assert ceiling["n"] == len(pairs) > 20
    assert ceiling["mean"] == pytest.approx(expected) and 0 < expected < 1  # label noise at T = 1
    assert ceiling["low"] < expected < ceiling["high"]


def test_the_ceiling_is_a_row_of_the_table_and_in_results_json(tmp_path) -> None:
    config = CompareConfig(losses=("dpo",), output_dir=str(tmp_path), progress=False)
    record = {
        "label": "dpo",
        "loss": "dpo",
        "hparams": {},
        "seed": 0,
        "run_id": "dpo-seed0",
        "train": {"final_metrics": {"loss": 0.6}, "peak_memory_bytes": 2**20, "metrics_path": "/nonexistent"},
        "preference": {"reward_accuracy": {"mean": 0.6, "low": 0.55, "high": 0.65}},
        "wall_time_s": 1.0,
    }
    ceiling = {"mean": 0.75, "low": 0.7, "high": 0.8, "n": 500}
    write_heldout(tmp_path, {"pairs": 500, "source": "the eval prompts", "ceiling": ceiling, "missing": None})
    result = write_report([record], config)
    assert [r["label"] for r in result.rows] == ["dpo", CEILING_LABEL]
    assert result.rows[-1]["eval_accuracy"] == ceiling and "reward" not in result.rows[-1]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["heldout"]["ceiling"] == ceiling and saved["rows"][-1]["label"] == CEILING_LABEL
    table = (tmp_path / "table.md").read_text()
    assert f"| {CEILING_LABEL} | — | 0.750 ± 0.050 |" in table
    assert "eval acc and margin on 500 held-out pairs (the eval prompts)" in table
