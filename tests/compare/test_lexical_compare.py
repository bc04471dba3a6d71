"""RL4LMs' lexical rewards in `prefopt compare` on your data: the `references` column beside each prompt reaches the
reward function (TRL's convention, keyword arguments) in the online runs, in the generation evaluation and in
best-of-N; data without the column is refused before anything is written. A tiny random-init Llama on the synthetic
tokenizer (tests/train/tiny_task.py); skipped without the optional `rouge-score` package."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from prefopt.cli import main
from prefopt.compare import CompareConfig
from prefopt.compare.online import PromptColumnsReward, data_prompt_rows
from prefopt.errors import SettingsError
from prefopt.online import lexical_rewards as lexical
from prefopt.online.rewards import as_reward_function

from ..train.tiny_task import write_tiny_task

pytest.importorskip("rouge_score")

ROUGE_L = "prefopt.online.lexical_rewards:rouge_l"


def _data(root: Path, *, references: bool = True) -> tuple[Path, Path]:
    """(paired.jsonl with one distinct prompt per row and, with `references`, the chosen text as the reference;
    the tiny model's folder)."""
    task = write_tiny_task(root, pairs=24)
    rows, seen = [], set()
    for line in task["paired"].read_text().splitlines():
        row = json.loads(line)
        if row["prompt"] in seen:
            continue
        seen.add(row["prompt"])
        rows.append({**row, "references": [row["chosen"]]} if references else row)
    path = root / ("refs.jsonl" if references else "plain.jsonl")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, task["model"]


def test_prompt_rows_carry_their_columns_to_the_reward(tmp_path) -> None:
    data, model = _data(tmp_path)
    rows = data_prompt_rows(str(data), "train", AutoTokenizer.from_pretrained(model))
    assert rows and all(set(r) == {"prompt", "id", "chosen", "rejected", "references"} for r in rows)
    table = {r["prompt"]: {k: v for k, v in r.items() if k != "prompt"} for r in rows}
    reward = PromptColumnsReward(as_reward_function(ROUGE_L), table)
    prompts = [r["prompt"] for r in rows[:3]]
    completions = ["the food was great", rows[1]["references"][0], "x"]
    expected = lexical.rouge_l(completions, references=[r["references"] for r in rows[:3]])
    assert reward.score(prompts, completions).tolist() == pytest.approx(expected)
    assert expected[1] == pytest.approx(1.0)  # its own reference


def test_compare_trains_and_evaluates_with_a_lexical_reward(tmp_path) -> None:
    """`prefopt compare --data D --model M --reward ...lexical_rewards:rouge_l --losses grpo,best_of_n`: the online
    run trains on ROUGE-L against each prompt's references, and its samples, the reference's and best-of-N's
    are scored the same way (finite rewards in [0, 1])."""
    data, model = _data(tmp_path)
    out = tmp_path / "cmp"
    argv = ["compare", "--data", str(data), "--model", str(model), "--reward", ROUGE_L, "--losses", "grpo,best_of_n"]
    argv += ["--out", str(out), "--holdout", "0.25", "--eval-prompts", "4", "--max-new-tokens", "6", "--quiet"]
    argv += ["--online", "steps=1", "--online", "prompts_per_step=4", "--bon-n", "1,2", "--bon-samples", "8"]
    assert main(argv) == 0
    by_label = {r["label"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    for label in ("grpo", "reference"):
        assert 0.0 <= by_label[label]["reward"]["mean"] <= 1.0, label
    metrics = [json.loads(line) for line in (out / "grpo-seed0" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert math.isfinite(metrics[0]["rewards/rouge_l/mean"])  # the online loop scored it per function
    points = json.loads((out / "best_of_n.json").read_text())["points"]
    assert [p["n"] for p in points] == [1, 2] and all(0.0 <= p["reward"]["mean"] <= 1.0 for p in points)


def test_data_without_the_column_is_refused_before_anything_is_written(tmp_path, capsys) -> None:
    data, model = _data(tmp_path, references=False)
    out = tmp_path / "cmp"
    argv = ["compare", "--data", str(data), "--model", str(model), "--reward", ROUGE_L, "--losses", "grpo"]
    assert main([*argv, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "needs the column 'references'" in err and "'train' split" in err and str(data) in err
    assert not out.exists()
    with pytest.raises(SettingsError, match="synthetic task's prompts"):  # the synthetic task has no such column
        CompareConfig(losses=("grpo",), reward=ROUGE_L)
