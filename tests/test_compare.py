"""`prefopt compare`: configuration, sweeps, aggregation over seeds, resume, and a tiny end-to-end run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from prefopt.cli import main
from prefopt.cli.settings import parse_sweeps
from prefopt.compare import CompareConfig, RunPlan, compare, tiny_task
from prefopt.compare.report import render_table, summarize


def test_runs_expand_sweeps_and_seeds_in_order() -> None:
    config = CompareConfig(losses=("dpo", "kto"), hparams={"dpo": {"beta": [0.05, 0.5]}}, seeds=(0, 1))
    plans = config.runs()
    assert [(p.label, p.seed) for p in plans] == [
        ("dpo(beta=0.05)", 0),
        ("dpo(beta=0.05)", 1),
        ("dpo(beta=0.5)", 0),
        ("dpo(beta=0.5)", 1),
        ("kto", 0),
        ("kto", 1),
    ]
    assert plans[0].run_id == "dpo_beta=0.05-seed0"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"losses": ("dpoo",)}, "Did you mean"),
        ({"losses": ("ppo",), "data": "x.jsonl", "model": "m"}, "online algorithm and needs a reward"),
        ({"losses": ("bradley_terry",)}, "reward-model loss"),
        ({"losses": ("rloo",), "online": {"seed": 1}}, "cannot be set there"),
        ({"losses": ("rloo",), "online": {"stepz": 1}}, "cannot be set there"),
        ({"losses": ("best_of_n",), "bon_n": (1, 32)}, "bon_samples/4"),
        ({"losses": ("dpo", "dpo")}, "repeats"),
        ({"losses": ("dpo",), "hparams": {"ipo": {"beta": 0.1}}}, "not in losses"),
        ({"losses": ("dpo",), "hparams": {"dpo": {"beta": []}}}, "empty sweep"),
        ({"losses": ("dpo",), "hparams": {"dpo": {"beta": [0.1, -1.0]}}}, "outside its domain"),
        ({"losses": ("dpo",), "hparams": {"dpo": {"gamma": 1.0}}}, "Valid: beta"),
        ({"losses": ("dpo",), "train": {"seed": 3}}, "cannot be set there"),
        ({"losses": ("dpo",), "train": {"learning_rate": 3}}, "cannot be set there"),
        ({"losses": ("dpo",), "data": "x.jsonl"}, "both data and model"),
        ({"losses": ("dpo",), "seeds": ()}, "distinct and non-empty"),
    ],
)
def test_bad_settings_are_clear_errors(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CompareConfig(**settings)


def test_parse_sweeps() -> None:
    assert parse_sweeps(["dpo.beta=0.05,0.1", "kto.desirable_weight=2", "dpo.label=x"]) == {
        "dpo": {"beta": [0.05, 0.1], "label": "x"},
        "kto": {"desirable_weight": 2},
    }
    with pytest.raises(ValueError, match="LOSS.HPARAM=VALUE"):
        parse_sweeps(["beta=0.1"])


def _record(label: str, seed: int, accuracy: float, rewards: list[float]) -> dict:
    return {
        "label": label,
        "loss": label,
        "hparams": {},
        "seed": seed,
        "train": {"final_metrics": {"loss": 0.5 + seed}, "peak_memory_bytes": 2**20, "metrics_path": "/nonexistent"},
        "preference": {"reward_accuracy": {"mean": accuracy, "low": accuracy - 0.1, "high": accuracy + 0.1}},
        "generation": {
            "reward": {"mean": sum(rewards) / len(rewards), "low": None, "high": None},
            "rewards": rewards,
            "reference_rewards": [0.0] * len(rewards),
        },
        "wall_time_s": 10.0,
    }


def test_summarize_aggregates_seeds_with_a_t_interval_and_rates_against_the_reference() -> None:
    """Two seeds with accuracies 0.6 and 0.8: mean 0.7; the 95% t-interval half-width is
    t_{1,0.975}·s/√2 = 12.706·0.1414/1.414 = 1.2706 (s = 0.1414), so low = 0.7 − 1.2706."""
    records = [
        _record("dpo", 0, 0.6, [1.0, 1.0, 1.0, 0.0]),
        _record("dpo", 1, 0.8, [1.0, 1.0, 1.0, 0.0]),
        _record("ipo", 0, 0.5, [-1.0, -1.0, -1.0, 0.0]),
    ]
    rows, ratings = summarize(records)
    dpo, ipo = rows
    assert dpo["seeds"] == [0, 1]
    assert math.isclose(dpo["eval_accuracy"]["mean"], 0.7)
    assert math.isclose(dpo["eval_accuracy"]["low"], 0.7 - 12.7062047 * 0.1 / 1.0, rel_tol=1e-5)
    assert ipo["eval_accuracy"] == {"mean": 0.5, "low": 0.4, "high": 0.6}  # one seed: the run's own CI
    assert math.isclose(dpo["train_loss"]["mean"], 1.0)  # losses 0.5 and 1.5
    names = [r["name"] for r in ratings["ratings"]]
    assert names[0] == "dpo" and names[-1] == "ipo" and ratings["anchor"] == "reference"
    assert dpo["elo"]["mean"] > 1000 > ipo["elo"]["mean"]
    text = render_table(rows)
    assert "dpo" in text and "0.700 ± 1.27" in text and "—" not in text.splitlines()[2].split("dpo")[0]
    assert render_table(rows, markdown=True).startswith("| algorithm |")


@pytest.fixture
def tiny_cache(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.getbasetemp() / "prefopt-cache"
    monkeypatch.setenv("PREFOPT_CACHE", str(cache))
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield cache
    torch.set_num_threads(previous)


@pytest.mark.slow
def test_tiny_compare_end_to_end_writes_report_and_resumes(tmp_path, tiny_cache, capsys) -> None:
    settings = {**tiny_task(), "eval_prompts": 8, "max_new_tokens": 16}
    config = CompareConfig(
        losses=("dpo", "orpo"),
        seeds=(0,),
        output_dir=str(tmp_path / "cmp"),
        progress=False,
        train={"max_steps": 2, "batch_size": 8},
        **settings,
    )
    result = compare(config)
    assert [r["label"] for r in result.rows] == ["dpo", "orpo", "reference", "gold reward (labels)"]
    reference, ceiling = result.rows[-2:]
    assert 0 < ceiling["eval_accuracy"]["mean"] < 1 and "reward" not in ceiling  # the label-noise ceiling
    assert reference["kl"]["mean"] == 0.0 and reference["elo"]["mean"] == 1000.0
    for row in result.rows[:-2]:
        for key in ("train_loss", "eval_accuracy", "reward", "kl", "win_rate", "lc_win_rate", "length", "elo"):
            assert key in row and math.isfinite(row[key]["mean"]), (row["label"], key)
    out = tmp_path / "cmp"
    for name in ("table.md", "table.csv", "results.json", "frontier.png", "training_curves.png", "length_drift.png"):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "dpo-seed0" / "config.json").read_text())
    assert saved["train"]["loss"] == "dpo" and saved["train"]["max_steps"] == 2
    assert "dpo" in capsys.readouterr().out
    # Re-running with the same folder loads finished runs instead of training again.
    stamp = (out / "dpo-seed0" / "result.json").stat().st_mtime_ns
    again = compare(config)
    assert (out / "dpo-seed0" / "result.json").stat().st_mtime_ns == stamp
    assert again.rows[0]["eval_accuracy"] == result.rows[0]["eval_accuracy"]


@pytest.mark.slow
def test_tiny_compare_with_online_algorithms_and_best_of_n(tmp_path, tiny_cache) -> None:
    """Online runs land in the same table and frontier as offline ones; best-of-N adds its rows with the bound."""
    settings = {**tiny_task(), "eval_prompts": 8, "max_new_tokens": 16}
    config = CompareConfig(
        losses=("dpo", "rloo", "best_of_n"),
        output_dir=str(tmp_path / "cmp"),
        progress=False,
        train={"max_steps": 1, "batch_size": 8},
        online={"steps": 2, "prompts_per_step": 4},
        bon_n=(1, 4),
        bon_samples=16,
        **settings,
    )
    result = compare(config)
    labels = [r["label"] for r in result.rows]
    assert labels[:-1] == ["dpo", "rloo", "best_of_n", "best-of-N (N=1)", "best-of-N (N=4)", "reference"]
    for row in result.rows[:3]:
        for key in ("eval_accuracy", "reward", "kl", "win_rate", "length", "elo"):
            assert math.isfinite(row[key]["mean"]), (row["label"], key)
    saved = json.loads((tmp_path / "cmp" / "rloo-seed0" / "config.json").read_text())
    assert saved["online"]["algorithm"] == "rloo" and saved["online"]["steps"] == 2
    one, four = result.rows[3], result.rows[4]
    assert one["kl"]["mean"] == 0.0 and one["kl_bound"]["mean"] == 0.0
    assert 0 < four["kl"]["mean"] <= four["kl_bound"]["mean"] + 1e-9
    assert four["reward"]["mean"] > one["reward"]["mean"]
    assert (tmp_path / "cmp" / "best_of_n.json").exists() and (tmp_path / "cmp" / "frontier.png").exists()
    assert "KL bound" in (tmp_path / "cmp" / "table.md").read_text()


def test_cli_rejects_bad_settings_with_exit_code_2(capsys) -> None:
    assert main(["compare", "--losses", "dpo,nope", "--out", "/nonexistent/x"]) == 2
    assert "unknown loss" in capsys.readouterr().err


def test_run_plan_label_formats_numbers() -> None:
    assert (
        RunPlan("simpo", (("beta", 2.0), ("gamma_beta_ratio", 0.5)), 3).label == "simpo(beta=2, gamma_beta_ratio=0.5)"
    )


@pytest.mark.slow
def test_compare_on_user_data_and_model_folders(tmp_path, tiny_cache) -> None:
    """--data/--model: trains from the saved model on the files' train split and scores their eval split;
    with no reward function there are no generation columns."""
    from prefopt.data.synthetic import PreferenceConfig, SFTConfig, write_synthetic_task

    write_synthetic_task(
        tmp_path / "task",
        sft_config=SFTConfig.tiny(),
        progress=False,
        preference_config=PreferenceConfig(train_prompts=32, eval_prompts=8, heldout_prompts=8),
    )
    config = CompareConfig(
        losses=("dpo",),
        data=str(tmp_path / "task" / "paired"),
        model=str(tmp_path / "task" / "model"),
        output_dir=str(tmp_path / "cmp"),
        progress=False,
        train={"max_steps": 1, "batch_size": 8},
    )
    (row,) = compare(config).rows
    assert row["label"] == "dpo" and math.isfinite(row["eval_accuracy"]["mean"])
    assert "reward" not in row and "kl" not in row


@pytest.mark.slow
def test_compare_on_user_data_with_a_reward_model_runs_online_algorithms(tmp_path, tiny_cache) -> None:
    """--data/--model/--reward: the reward model scores samples, so online runs and generation columns work
    on your own files (a tiny RM saved the way `prefopt train-rm` saves one)."""
    from prefopt.data.synthetic import PreferenceConfig, SFTConfig, write_synthetic_task
    from prefopt.online.reward_model import synthetic_reward_model

    task = tmp_path / "task"
    write_synthetic_task(
        task,
        sft_config=SFTConfig.tiny(),
        progress=False,
        preference_config=PreferenceConfig(train_prompts=32, eval_prompts=8, heldout_prompts=8),
    )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    policy = AutoModelForCausalLM.from_pretrained(task / "model")
    rm = synthetic_reward_model(policy, init="policy", seed=0)
    rm.save_pretrained(tmp_path / "rm")
    AutoTokenizer.from_pretrained(task / "model").save_pretrained(tmp_path / "rm")
    config = CompareConfig(
        losses=("dpo", "rloo", "best_of_n"),
        data=str(task / "paired"),
        model=str(task / "model"),
        reward=str(tmp_path / "rm"),
        output_dir=str(tmp_path / "cmp"),
        progress=False,
        train={"max_steps": 1, "batch_size": 8},
        online={"steps": 1, "prompts_per_step": 4},
        eval_prompts=4,
        max_new_tokens=8,
        bon_n=(1, 2),
        bon_samples=8,
    )
    result = compare(config)
    labels = [r["label"] for r in result.rows]
    assert labels == ["dpo", "rloo", "best_of_n", "best-of-N (N=1)", "best-of-N (N=2)", "reference"]
    for row in result.rows[:3]:
        assert math.isfinite(row["reward"]["mean"]) and math.isfinite(row["kl"]["mean"]), row["label"]
    saved = json.loads((tmp_path / "cmp" / "rloo-seed0" / "train" / "config.json").read_text())
    assert saved["model"] == str(task / "model") and saved["lr"] is None  # a real model: the 1e-6 default


def test_reward_is_a_folder_or_a_function(tmp_path) -> None:
    """--reward replaces the gold reward on the synthetic task too (tests/online/test_reward_cli.py runs one)."""
    assert CompareConfig(losses=("dpo",), reward=str(tmp_path)).reward_label == "reward (reward model)"
    assert CompareConfig(losses=("dpo",)).reward_label == "gold reward"
    with pytest.raises(ValueError, match="no such folder"):
        CompareConfig(losses=("dpo",), data="x.jsonl", model="m", reward=str(tmp_path / "missing"))
