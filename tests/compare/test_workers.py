"""`CompareConfig.jobs`: runs trained in worker processes get the results they get alone; `losses="all"` names
every registered policy loss; each run's peak memory is its own, online runs included."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from prefopt.compare import CompareConfig, compare, tiny_task
from prefopt.compare.defaults import all_losses
from prefopt.compare.task import SCORE_MARGIN_FLOOR, synthetic_margins
from prefopt.data import synthetic
from prefopt.memory import peak_memory, reset_peak_memory
from prefopt.registry import list_losses, loss_spec
from prefopt.settings import SettingsError


def _records(out: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(out.glob("*/result.json"))}


def _computed(record: dict) -> dict:
    """What a run computed (not how long it took or where it wrote)."""
    return {
        "final": {
            k: v
            for k, v in record["train"]["final_metrics"].items()
            if not k.startswith("time") and k not in ("elapsed_s", "tokens_per_s")
        },
        "preference": record["preference"],
        "generation": record["generation"],
    }


def test_two_workers_equal_one_process(tmp_path: Path) -> None:
    settings = {
        **tiny_task(),
        "losses": ("dpo", "grpo"),
        "train": {"max_steps": 3},
        "online": {"steps": 2},
        "progress": False,
    }
    compare(CompareConfig(**settings, output_dir=str(tmp_path / "one")))
    result = compare(CompareConfig(**settings, output_dir=str(tmp_path / "two"), jobs=2))
    one, two = _records(tmp_path / "one"), _records(tmp_path / "two")
    assert sorted(one) == sorted(two) == ["dpo-seed0", "grpo-seed0"]
    for run in one:
        assert _computed(two[run]) == _computed(one[run]), run
        assert two[run]["train"]["peak_memory_bytes"] > 0  # online runs too (was "—")
    assert [row["label"] for row in result.rows][:2] == ["dpo", "grpo"]  # the order of `losses`


def test_all_names_every_policy_loss() -> None:
    synthetic = all_losses(synthetic=True, reward=None)
    policy = {name for name in list_losses() if loss_spec(name).scores == "logps"}
    assert set(synthetic) == policy and len(synthetic) == len(policy)
    assert "bradley_terry" not in synthetic and "dpo" in synthetic and "grpo" in synthetic
    kinds = [loss_spec(name).kind == "rollout" for name in synthetic]
    assert kinds == sorted(kinds)  # offline first, then online
    assert CompareConfig(losses=("all",)).losses == synthetic
    yours = all_losses(synthetic=False, reward=None)
    assert {loss_spec(name).kind for name in yours} == {"paired", "unpaired"}
    assert {loss_spec(name).kind for name in all_losses(synthetic=False, reward="m:f")} == {
        "paired",
        "unpaired",
        "rollout",
    }
    with pytest.raises(SettingsError, match='give "all" alone'):
        CompareConfig(losses=("all", "dpo"))
    with pytest.raises(ValueError, match="jobs must be ≥ 1"):
        CompareConfig(jobs=0)


def test_synthetic_margins_are_gold_differences_floored() -> None:
    task = synthetic.synthetic_task(seed=0, **{k: v for k, v in tiny_task().items() if k.endswith("_config")})
    gold = task.preferences.dataset("paired", with_gold=True)
    rows = synthetic_margins(task.preferences)
    assert rows["chosen"] == gold["chosen"] and "chosen_gold" not in rows.column_names
    expected = [max(c - r, SCORE_MARGIN_FLOOR) for c, r in zip(gold["chosen_gold"], gold["rejected_gold"])]
    assert rows["margin"] == pytest.approx(expected)
    assert min(rows["margin"]) == pytest.approx(SCORE_MARGIN_FLOOR)  # noisy labels: some gold differences ≤ 0


def test_peak_memory_is_the_runs_own() -> None:
    big = np.ones(40_000_000)  # 320 MB resident
    big[::4096] = 2.0
    before, kind = peak_memory()
    del big
    reset_peak_memory()
    after, kind_after = peak_memory()
    if kind_after != "cpu_peak_rss":
        pytest.skip("this kernel does not let a process reset its peak resident set size")
    assert before - after > 200 * 2**20 and kind_after == "cpu_peak_rss"
