"""Paper recipes: every shipped YAML loads through importlib.resources, validates as a TrainConfig, cites its
numbers and the paper's results, and runs end to end as `prefopt train --recipe NAME --smoke` on a tiny model."""

from __future__ import annotations

import argparse
import configparser
import fnmatch
import json
import math
import re
from importlib import resources
from pathlib import Path

import pytest

from prefopt.cli import train as cli
from prefopt.train.config import TrainConfig
from prefopt.train.recipes import (
    SMOKE_BATCH_SIZE,
    SMOKE_MAX_LENGTH,
    SMOKE_STEPS,
    list_recipes,
    load_recipe,
    parse_recipe,
    smoke_config,
)

RECIPES = [
    "dpo-hh-pythia28",
    "kto-zephyr-sft",
    "mistral-orpo-beta",
    "simpo-llama3-base",
    "simpo-mistral-base",
    "zephyr-7b-beta",
]
ROOT = Path(__file__).resolve().parents[2]


def parse(argv: list[str]) -> argparse.Namespace:
    return cli.COMMAND.parser().parse_args(argv)


def test_the_six_recipes_ship_as_package_resources() -> None:
    folder = resources.files("prefopt.train").joinpath("recipes")
    shipped = sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".yaml"))
    assert shipped == [f"{name}.yaml" for name in RECIPES]
    assert list_recipes() == RECIPES


def test_setup_cfg_puts_the_recipes_in_the_wheel() -> None:
    """setuptools ships non-Python files only when [options.package_data] names them for their package."""
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    globs = parser["options.package_data"].get("prefopt.train", "").split()
    assert any(fnmatch.fnmatch(f"recipes/{name}.yaml", g) for name in RECIPES for g in globs), (
        "add `prefopt.train = recipes/*.yaml` to [options.package_data] in setup.cfg"
    )


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_loads_validates_and_records_results(name: str) -> None:
    recipe = load_recipe(name)
    config = recipe.config()
    assert isinstance(config, TrainConfig) and config.loss == recipe.loss
    assert config.model and config.data and config.data_split  # real runs name Hub model and data
    assert config.optimizer and config.lr and config.schedule and config.mixed_precision == "bf16"
    assert recipe.paper and "arXiv:" in recipe.paper and recipe.source
    assert recipe.results or recipe.results_note
    for result in recipe.results:
        assert result.benchmark and result.metric and result.source and math.isfinite(result.value)
    assert recipe.accumulation_steps() >= 1  # the batch splits over the paper's GPUs


@pytest.mark.parametrize("name", RECIPES)
def test_every_setting_of_a_recipe_cites_its_source(name: str) -> None:
    """Each `key: value` line of the `train` block carries a comment naming where the value comes from."""
    text = resources.files("prefopt.train").joinpath("recipes", f"{name}.yaml").read_text(encoding="utf-8")
    block = text.split("\ntrain:\n", 1)[1]
    settings = [line for line in block.splitlines() if re.match(r"^\s+\w+:\s*\S", line)]
    assert settings
    uncited = [line for line in settings if "#" not in line]
    assert not uncited, f"{name}: settings without a source comment: {uncited}"


def test_recipes_hold_the_published_numbers() -> None:
    """Values checked against the sources named in the YAML comments: DPO App. B (β 0.1, RMSprop, lr 1e-6,
    batch 64, 150 warm-up steps); alignment-handbook zephyr config_full.yaml (β 0.01, lr 5e-7, 8 × 8 × 2 = 128,
    cosine, warm-up 0.1); HALOs (β 0.1, RMSprop lr 5e-7, batch 32); xfactlab run_mistral_orpo_beta.sh (λ 0.1,
    lr 5e-6, 5 epochs, 200 warm-up steps); SimPO README table (Mistral-Base β 2, γ/β 0.8, lr 3e-7; Llama3-Base
    β 2, γ/β 0.5, lr 6e-7) and v0.1 scores; Zephyr Table 1 (MT-Bench 7.34)."""
    dpo = load_recipe("dpo-hh-pythia28").config()
    assert (dpo.loss_hparams["beta"], dpo.optimizer, dpo.lr, dpo.batch_size, dpo.warmup_steps) == (
        0.1,
        "rmsprop",
        1e-6,
        64,
        150,
    )
    zephyr = load_recipe("zephyr-7b-beta")
    config = zephyr.config()
    assert (config.loss_hparams["beta"], config.lr, config.batch_size, config.schedule, config.warmup_ratio) == (
        0.01,
        5e-7,
        128,
        "cosine",
        0.1,
    )
    assert zephyr.accumulation_steps() == 2 and zephyr.accumulation_steps(4) == 4
    assert {r.benchmark: r.value for r in zephyr.results}["MT-Bench"] == 7.34
    kto = load_recipe("kto-zephyr-sft").config()
    assert (kto.loss_hparams["beta"], kto.optimizer, kto.lr, kto.batch_size) == (0.1, "rmsprop", 5e-7, 32)
    orpo = load_recipe("mistral-orpo-beta")
    assert (orpo.config().loss_hparams["lambda_"], orpo.config().lr, orpo.config().epochs) == (0.1, 5e-6, 5)
    assert orpo.config().schedule == "inverse_sqrt" and not orpo.deviations
    for name, ratio, lr, lc in (("simpo-mistral-base", 0.8, 3e-7, 21.4), ("simpo-llama3-base", 0.5, 6e-7, 22.0)):
        recipe = load_recipe(name)
        assert (recipe.config().loss_hparams["beta"], recipe.config().loss_hparams["gamma_beta_ratio"]) == (2.0, ratio)
        assert recipe.config().lr == lr and recipe.results[0].value == lc


@pytest.mark.parametrize("name", RECIPES)
def test_smoke_runs_end_to_end_from_the_cli(name: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert cli.main(["--recipe", name, "--smoke", "--out", str(out), "--quiet"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["steps"] == SMOKE_STEPS and math.isfinite(result["final_metrics"]["loss"])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, SMOKE_STEPS + 1))
    saved, recipe = json.loads((out / "config.json").read_text()), load_recipe(name).config()
    for key in (
        "loss",
        "loss_hparams",
        "optimizer",
        "lr",
        "schedule",
        "weight_decay",
        "max_grad_norm",
        "gradient_checkpointing",
    ):
        assert saved[key] == getattr(recipe, key), key
    assert saved["model"] == str(out / "smoke-task" / "model") and saved["batch_size"] == SMOKE_BATCH_SIZE
    assert saved["max_length"] == SMOKE_MAX_LENGTH and saved["max_prompt_length"] < SMOKE_MAX_LENGTH


def test_smoke_keeps_the_recipe_ratios(tmp_path: Path) -> None:
    """zephyr: micro 8 of a global 128 on 8 processes = half a process-step → micro 4 of 8 on one process
    (2 accumulation steps, as in the recipe); prompt cap 512/1024 → 32/64; 0.1 warm-up ratio kept.
    dpo-hh: 150 warm-up steps become 1 (the schedule still warms up), prompt 256/512 → 32/64."""
    zephyr = smoke_config("zephyr-7b-beta", tmp_path / "z")
    assert (zephyr.micro_batch_size, zephyr.max_prompt_length, zephyr.warmup_ratio) == (4, 32, 0.1)
    assert zephyr.mixed_precision == "auto" and zephyr.output_dir == str(tmp_path / "z")
    dpo = smoke_config("dpo-hh-pythia28", tmp_path / "d", seed=3)
    assert (dpo.warmup_steps, dpo.max_prompt_length, dpo.micro_batch_size, dpo.seed) == (1, 32, 4, 3)
    kto = smoke_config("kto-zephyr-sft", tmp_path / "k")
    rows = [json.loads(line) for line in Path(kto.data).read_text().splitlines()]
    assert kto.data.endswith("unpaired.jsonl") and {r["label"] for r in rows} == {True, False}


def test_explicit_flags_override_the_recipe() -> None:
    config = cli.config_from_args(
        parse(["--recipe", "zephyr-7b-beta", "--lr", "1e-6", "--epochs", "3", "--set", "beta=0.1", "--out", "runs/z"])
    )
    assert (config.lr, config.epochs, config.loss_hparams["beta"], config.output_dir) == (1e-6, 3.0, 0.1, "runs/z")
    assert (config.batch_size, config.schedule, config.model) == (
        128,
        "cosine",
        "alignment-handbook/zephyr-7b-sft-full",
    )
    default_out = cli.config_from_args(parse(["--recipe", "simpo-llama3-base"]))
    assert default_out.output_dir == "runs/simpo-llama3-base"
    other_loss = cli.config_from_args(parse(["--recipe", "simpo-llama3-base", "--loss", "dpo"]))
    assert other_loss.loss == "dpo" and other_loss.loss_hparams == {}  # SimPO's β, γ/β dropped: DPO defaults


def test_explicit_flags_override_the_smoke_settings(tmp_path: Path) -> None:
    config = cli.config_from_args(
        parse(
            [
                "--recipe",
                "mistral-orpo-beta",
                "--smoke",
                "--out",
                str(tmp_path),
                "--max-steps",
                "2",
                "--set",
                "lambda_=0.5",
            ]
        )
    )
    assert (config.max_steps, config.loss_hparams["lambda_"], config.lr) == (2, 0.5, 5e-6)
    assert config.data == str(tmp_path / "smoke-task" / "paired.jsonl")


def test_unknown_recipe_names_the_valid_ones(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="unknown recipe 'zephyr'.*zephyr-7b-beta"):
        load_recipe("zephyr")
    assert cli.main(["--recipe", "zephyr"]) == 2
    err = capsys.readouterr().err
    assert all(name in err for name in RECIPES)
    assert cli.main(["--smoke"]) == 2
    assert "--recipe NAME" in capsys.readouterr().err


def test_list_recipes_prints_each_with_its_launch_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--list-recipes"]) == 0
    text = capsys.readouterr().out
    for name in RECIPES:
        assert load_recipe(name).launch_command() in text
    assert "accelerate launch --multi_gpu --num_processes 4 -m prefopt.train --recipe mistral-orpo-beta" in text


def test_parse_recipe_rejects_incomplete_files() -> None:
    base = "title: t\npaper: p arXiv:1\nsource: s\ntrain:\n  loss: dpo\n"
    with pytest.raises(ValueError, match="results_note"):
        parse_recipe("x", base)
    with pytest.raises(ValueError, match=r"unknown keys \['epochs'\]"):
        parse_recipe("x", base + "results_note: none\nepochs: 3\n")
    with pytest.raises(ValueError, match=r"results\[0\]"):
        parse_recipe("x", base + "results:\n  - {benchmark: b, value: 1}\n")
    with pytest.raises(ValueError, match="declares name"):
        parse_recipe("x", "name: y\n" + base + "results_note: none\n")
    assert parse_recipe("x", base + "results_note: none\n").config().loss == "dpo"


def test_docs_table_matches_the_recorded_results() -> None:
    """docs/recipes.md lists every recipe and, on a line naming it, every headline number it records."""
    lines = (ROOT / "docs" / "recipes.md").read_text(encoding="utf-8").splitlines()
    for name in RECIPES:
        rows = [line for line in lines if f"`{name}`" in line]
        assert rows, f"docs/recipes.md does not mention {name}"
        documented = {float(cell) for line in rows for cell in re.findall(r"\|\s*(\d+(?:\.\d+)?)\s*(?=\|)", line)}
        for result in load_recipe(name).results:
            assert result.value in documented, (name, result)
