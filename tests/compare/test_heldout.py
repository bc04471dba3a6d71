"""Your own data without an eval split: a share of its prompts is held out (by prompt, deterministic by seed),
no run trains on it, and the table's footer says what was evaluated."""

from __future__ import annotations

import json
import math

import pytest

from prefopt.compare import CompareConfig, compare
from prefopt.compare.heldout import holdout_prompts, prompt_key, split_by_prompt
from prefopt.compare.task import SharedTask
from tests.train.tiny_task import write_tiny_task


def test_holdout_prompts_is_a_seeded_share_of_the_distinct_prompts() -> None:
    prompts = [f"p{i}" for i in range(20)] * 2  # each prompt twice: 20 distinct
    held = holdout_prompts(prompts, 0.1, seed=0)
    assert len(held) == 2 and held <= set(prompts)
    assert holdout_prompts(list(reversed(prompts)), 0.1, seed=0) == held  # row order does not matter
    assert any(holdout_prompts(prompts, 0.1, seed=s) != held for s in range(1, 5))
    assert len(holdout_prompts(prompts, 0.01, seed=0)) == 1  # at least one
    assert len(holdout_prompts(["a", "b"], 0.9, seed=0)) == 1  # and one left to train on
    assert holdout_prompts(prompts, 0.0, seed=0) == set() and holdout_prompts(["a", "a"], 0.5, seed=0) == set()


def test_conversations_are_keyed_by_their_messages() -> None:
    chat = [{"role": "user", "content": "hi"}]
    assert prompt_key(chat) == prompt_key([{"content": "hi", "role": "user"}]) != prompt_key("hi")


def test_split_by_prompt_puts_every_row_of_a_prompt_on_one_side() -> None:
    import datasets

    rows = datasets.Dataset.from_list([{"prompt": p, "n": i} for i, p in enumerate("aabbcd")])
    train, held = split_by_prompt(rows, {"b", "d"})
    assert train["n"] == [0, 1, 4] and held["n"] == [2, 3, 5]


@pytest.fixture
def single_file(tmp_path):
    return write_tiny_task(tmp_path / "task", pairs=32)  # one paired.jsonl, no eval split


def _config(paths, tmp_path, **settings) -> CompareConfig:
    base = {
        "losses": ("dpo",),
        "data": str(paths["paired"]),
        "model": str(paths["model"]),
        "output_dir": str(tmp_path / "cmp"),
        "progress": False,
        "train": {"batch_size": 8},
        **settings,
    }
    return CompareConfig(**base)


def test_the_held_out_prompts_never_reach_training(single_file, tmp_path) -> None:
    config = _config(single_file, tmp_path, holdout=0.25)
    task = SharedTask(config)
    train, held = task.train_dataset("paired", "dpo"), task.eval_rows()
    prompts = {json.loads(line)["prompt"] for line in single_file["paired"].read_text().splitlines()}
    assert len(train) + len(held) == 32 and len(held) > 0
    assert not set(train["prompt"]) & set(held["prompt"])
    assert len(set(held["prompt"])) == round(0.25 * len(prompts))
    again = SharedTask(config).eval_rows()
    assert again["prompt"] == held["prompt"]  # the same file and seed: the same split
    assert SharedTask(_config(single_file, tmp_path, holdout=0.25, task_seed=3)).eval_rows()["prompt"] != held["prompt"]


@pytest.mark.slow
def test_compare_on_a_single_file_holds_out_prompts_and_says_so(single_file, tmp_path) -> None:
    result = compare(_config(single_file, tmp_path, holdout=0.25))
    (row,) = result.rows
    assert math.isfinite(row["eval_accuracy"]["mean"])
    heldout = json.loads((tmp_path / "cmp" / "heldout.json").read_text())
    held_pairs = heldout["pairs"]
    assert held_pairs > 0 and "not trained on" in heldout["source"]
    assert result.records[0]["train"]["steps"] == (32 - held_pairs) // 8  # one epoch of the other rows
    footer = (tmp_path / "cmp" / "table.md").read_text().strip().splitlines()[-1]
    assert f"eval acc and margin on {held_pairs} held-out pairs" in footer
    assert "--reward" in footer  # no reward: it says why the generation columns are missing


@pytest.mark.slow
def test_no_holdout_says_what_is_missing(single_file, tmp_path) -> None:
    result = compare(_config(single_file, tmp_path, holdout=0.0, train={"batch_size": 8, "max_steps": 1}))
    assert "eval_accuracy" not in result.rows[0]
    footer = (tmp_path / "cmp" / "table.md").read_text()
    assert "No held-out pairs" in footer and "--holdout 0.1" in footer
