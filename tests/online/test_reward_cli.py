"""`--reward module:function` on the command line: `prefopt train-online` with two weighted functions and a
prompt column, a function that raises (one line, exit code 2), and `prefopt compare` on the tiny synthetic
task scored by a function."""

from __future__ import annotations

import json

import pytest

from prefopt.cli import main

from . import reward_callables
from .tiny_online import tiny_model_path, tiny_prompts

CALLABLES = "tests.online.reward_callables"


def _prompts_file(tmp_path, count: int = 8):  # type: ignore[no-untyped-def]
    """A .jsonl prompts file whose `topic` column is each prompt's category ("food", "film", ...)."""
    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": p, "topic": p.split()[0]} for p in tiny_prompts()[0][:count]]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _train_online(tmp_path, *flags: str) -> int:  # type: ignore[no-untyped-def]
    return main(
        [
            "train-online",
            "--model",
            str(tiny_model_path()),
            "--prompts",
            str(_prompts_file(tmp_path)),
            "--loss",
            "grpo",
            "--steps",
            "1",
            "--prompts-per-step",
            "4",
            "--max-new-tokens",
            "16",
            "--num-threads",
            "1",
            "--lr",
            "1e-4",
            "--quiet",
            *flags,
        ]
    )


def test_train_online_with_two_weighted_functions_and_a_column(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """The step's reward is length + 0.5·topic (topic None on film prompts), so objective/scores equals
    mean(length) + 0.5·mean(topic)·(rows topic scored)/(all rows); the topic column reaches every row aligned."""
    reward_callables.SEEN.clear()
    out = tmp_path / "run"
    flags = ["--reward", f"{CALLABLES}:length_reward", "--reward", f"{CALLABLES}:topic_reward"]
    code = _train_online(tmp_path, *flags, "--reward-weights", "1,0.5", "--out", str(out))
    assert code == 0, capsys.readouterr().err
    metrics = json.loads(capsys.readouterr().out)["final_metrics"]
    seen = reward_callables.SEEN
    assert len(seen) == 16 and all(topic == prompt.split()[0] for prompt, topic in seen)  # 4 prompts × K = 4
    scored = sum(topic != "film" for _, topic in seen)
    expected = metrics["rewards/length_reward/mean"] + 0.5 * metrics.get("rewards/topic_reward/mean", 0.0) * scored / 16
    assert metrics["objective/scores"] == pytest.approx(expected, abs=1e-6)
    saved = json.loads((out / "config.json").read_text())
    assert saved["reward"] == f"{CALLABLES}:length_reward,{CALLABLES}:topic_reward"
    assert saved["reward_weights"] == [1.0, 0.5]


def test_a_function_that_raises_stops_the_run_in_one_line(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    code = _train_online(tmp_path, "--reward", f"{CALLABLES}:raising_reward", "--out", str(tmp_path / "run"))
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("prefopt train-online: reward function tests.online.reward_callables:raising_reward")
    assert "raised ZeroDivisionError: division by zero while scoring rows 0–15" in lines[0]


def test_a_missing_column_is_refused_before_the_run(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    rows = tmp_path / "plain.jsonl"
    rows.write_text(json.dumps({"prompt": tiny_prompts()[0][0]}) + "\n")
    code = main(["train-online", "--prompts", str(rows), "--reward", f"{CALLABLES}:topic_reward", "--out", "x"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "needs the column 'topic', which is not a column of" in err and "plain.jsonl" in err


@pytest.mark.slow
def test_compare_scores_online_runs_and_samples_with_a_function(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """On the tiny synthetic task with --reward a function: rloo trains on it, and every reward the report
    holds is that function of the sampled text (words / 10)."""
    monkeypatch.setenv("PREFOPT_CACHE", str(tmp_path.parent / "prefopt-cache"))
    out = tmp_path / "cmp"
    argv = ["compare", "--tiny", "--losses", "rloo", "--reward", f"{CALLABLES}:length_reward", "--out", str(out)]
    argv += ["--online", "steps=1", "--online", "prompts_per_step=4", "--eval-prompts", "8", "--max-new-tokens", "16"]
    assert main([*argv, "--quiet"]) == 0
    record = json.loads((out / "rloo-seed0" / "result.json").read_text())
    generation = record["generation"]
    assert len(generation["completions"]) == 8
    for key, texts in (("rewards", "completions"), ("reference_rewards", "reference_completions")):
        words = [len(text.split()) / 10 for text in generation[texts]]
        assert generation[key] == pytest.approx(words, abs=1e-6), key
    assert record["train"]["final_metrics"]["rewards/length_reward/mean"] >= 0
    table = (out / "table.md").read_text()
    assert "rloo" in table
