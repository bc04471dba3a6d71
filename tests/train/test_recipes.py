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
from prefopt.registry import loss_spec
from prefopt.train import setup
from prefopt.train.config import TrainConfig
from prefopt.train.recipes import (
    SMOKE_BATCH_SIZE,
    SMOKE_MAX_LENGTH,
    SMOKE_STEPS,
    list_recipes,
    load_recipe,
    parse_recipe,
    smoke_config,
    write_smoke_task,
)
from prefopt.train.stages import stage_configs

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
    """Each `key: value` line of the `train` block (and of each stage's) carries a comment naming its source."""
    text = resources.files("prefopt.train").joinpath("recipes", f"{name}.yaml").read_text(encoding="utf-8")
    block = text.split("\nstages:\n" if "\nstages:\n" in text else "\ntrain:\n", 1)[1]  # stages' settings too
    settings = [line for line in block.splitlines() if re.match(r"^\s+\w+:\s*\S", line)]
    assert settings
    uncited = [line for line in settings if "#" not in line]
    assert not uncited, f"{name}: settings without a source comment: {uncited}"


def test_recipes_hold_the_published_numbers() -> None:
    """Values checked against the sources named in the YAML comments: DPO App. B (β 0.1, RMSprop, lr 1e-6,
    batch 64, 150 warm-up steps); alignment-handbook zephyr config_full.yaml (β 0.01, lr 5e-7, 8 × 8 × 2 = 128,
    cosine, warm-up 0.1); HALOs (β 0.1, RMSprop lr 5e-7, batch 32); xfactlab run_mistral_orpo_beta.sh (λ 0.1,
    lr 5e-6, 5 epochs, 200 warm-up steps); SimPO README table (Mistral-Base β 2, γ/β 0.8, lr 3e-7; Llama3-Base
    β 2, γ/β 0.5, lr 6e-7), the paper's Table 4 scores and the README's v0.1 where they differ; Zephyr Table 1
    (MT-Bench 7.34)."""
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
    assert orpo.config().schedule == "inverse_sqrt"
    # SimPO: the paper's Table 4 first (arXiv:2405.14734; LC, WR, Arena-Hard), then the README's where it differs.
    for name, ratio, lr, paper in (
        ("simpo-mistral-base", 0.8, 3e-7, [21.5, 20.8, 16.6, 21.4]),
        ("simpo-llama3-base", 0.5, 6e-7, [22.0, 20.3, 23.4]),
    ):
        recipe = load_recipe(name)
        assert (recipe.config().loss_hparams["beta"], recipe.config().loss_hparams["gamma_beta_ratio"]) == (2.0, ratio)
        assert recipe.config().lr == lr and [r.value for r in recipe.results] == paper
        assert "Table 4" in recipe.results[0].source and "arXiv:2405.14734" in recipe.results[0].source
    released = load_recipe("simpo-mistral-base").results[-1]
    assert "released model" in released.metric and "README v0.1" in released.source


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
        "prompt_truncation",
        "chat_template",
        "system_prompt",
        "assistant_header",
    ):
        assert saved[key] == getattr(recipe, key), key
    assert saved["batch_size"] == SMOKE_BATCH_SIZE
    assert saved["max_length"] == SMOKE_MAX_LENGTH and saved["max_prompt_length"] < SMOKE_MAX_LENGTH
    if not load_recipe(name).stages:
        assert saved["model"] == str(out / "smoke-task" / "model")
        return
    # dpo-hh-pythia28: SFT on the chosen completions first, then DPO from the SFT model (also its reference).
    sft = out / "stages" / "sft"
    sft_saved = json.loads((sft / "config.json").read_text())
    assert (sft_saved["loss"], sft_saved["model"], sft_saved["optimizer"]) == (
        "sft",
        str(out / "smoke-task" / "model"),
        "rmsprop",
    )
    assert json.loads((sft / "result.json").read_text())["steps"] == SMOKE_STEPS
    assert saved["model"] == str(sft / "final") and saved["reference"] is None


def test_recipes_match_their_sources_point_by_point() -> None:
    """Issue 20's audit, one assertion per item (docs/recipes.md gives each with its source file and line).

    Templates: zephyr and simpo-mistral insert an empty system turn (alignment-handbook data.py, SimPO
    run_simpo.py maybe_insert_system_message); both SimPO recipes and the handbook's zephyr DPO render the prompt
    without the generation prompt, so the assistant header is scored; ORPO names the zephyr template that
    xfactlab/orpo main.py sets when the tokenizer has none; KTO writes HALOs' "\n<|user|>\n…\n<|assistant|>\n".
    Data: ORPO drops prompts ≥ 1,792 tokens (main.py filter_dataset), HALOs keeps the start of long prompts
    (get_ultrabin truncation_mode). ORPO sets gradient checkpointing (main.py) and takes its NLL over the whole
    chosen sequence (orpo_trainer.py: `orpo_seq`). SimPO: 2 × 16 × 4 GPUs = 128.
    Numbers: KTO Tables 2-3, ORPO LC 14.7, SimPO paper Table 4 (and README v0.1 where it differs)."""
    settings = {name: load_recipe(name).config() for name in RECIPES}
    for name in ("zephyr-7b-beta", "simpo-mistral-base"):
        assert (settings[name].system_prompt, settings[name].assistant_header) == ("", "completion"), name
    assert (settings["simpo-llama3-base"].system_prompt, settings["simpo-llama3-base"].assistant_header) == (
        None,
        "completion",
    )
    orpo, kto = settings["mistral-orpo-beta"], settings["kto-zephyr-sft"]
    assert (orpo.chat_template, orpo.prompt_truncation, orpo.max_prompt_length) == ("zephyr", "drop", 1792)
    assert orpo.gradient_checkpointing and any("NLL" in d for d in load_recipe("mistral-orpo-beta").deviations)
    # ORPO's NLL over the whole chosen sequence, prompt included (src/orpo_trainer.py), the loop told by the spec.
    assert orpo.loss == "orpo_seq" and {"chosen_prompt_sum", "chosen_prompt_count"} <= set(
        loss_spec("orpo_seq").extra_inputs
    )
    assert (kto.chat_template, kto.prompt_truncation, kto.assistant_header) == ("halos", "keep_start", "prompt")
    for name in ("simpo-mistral-base", "simpo-llama3-base"):
        recipe = load_recipe(name)
        assert (recipe.num_processes, recipe.accumulation_steps(), recipe.config().micro_batch_size) == (4, 16, 2)
    kto_results = {(r.benchmark, "DPO" in r.metric): r.value for r in load_recipe("kto-zephyr-sft").results}
    assert [kto_results[b, False] for b in ("MMLU", "GSM8K", "HumanEval", "BBH", "TydiQA", "AlpacaEval 2")] == [
        58.6,
        53.5,
        30.9,
        52.6,
        31.2,
        12.48,
    ]
    assert [kto_results[b, True] for b in ("MMLU", "GSM8K", "HumanEval", "BBH", "TydiQA", "AlpacaEval 2")] == [
        58.2,
        40.0,
        30.1,
        44.1,
        36.5,
        7.79,
    ]
    orpo_results = {
        r.metric: r.value for r in load_recipe("mistral-orpo-beta").results if r.benchmark == "AlpacaEval 2.0"
    }
    assert orpo_results["length-controlled win rate (%)"] == 14.7
    dpo = load_recipe("dpo-hh-pythia28")
    assert [s.name for s in dpo.stages] == ["sft"] and dpo.stages[0].train["loss"] == "sft"
    assert dpo.stages[0].train["model"] == dpo.train["model"] == "EleutherAI/pythia-2.8b"


# Each recipe's settings as docs/recipes.md's point-by-point tables give them (ours = official, or the deviation the
# table names). Data and text: loss, chat template, system turn, assistant header, long prompts, gradient
# checkpointing. Optimisation: optimiser, schedule, warm-up (steps or ratio), global batch, micro-batch, lengths,
# clipping, seed.
TEXT = {
    "dpo-hh-pythia28": ("dpo", None, None, "prompt", "keep_end", False),
    "zephyr-7b-beta": ("dpo", None, "", "completion", "keep_end", True),
    "kto-zephyr-sft": ("kto", "halos", None, "prompt", "keep_start", True),
    "mistral-orpo-beta": ("orpo_seq", "zephyr", None, "prompt", "drop", True),
    "simpo-mistral-base": ("simpo", None, "", "completion", "keep_end", True),
    "simpo-llama3-base": ("simpo", None, None, "completion", "keep_end", True),
}
OPTIMISATION = {
    "dpo-hh-pythia28": ("rmsprop", "constant", 150, 64, 4, 512, 256, 10.0, 0),
    "zephyr-7b-beta": ("adamw", "cosine", 0.1, 128, 8, 1024, 512, 1.0, 42),
    "kto-zephyr-sft": ("rmsprop", "constant", 150, 32, 4, 2048, 1024, 10.0, 1),
    "mistral-orpo-beta": ("adamw", "inverse_sqrt", 200, 32, 8, 2048, 1792, 1.0, 42),
    "simpo-mistral-base": ("adamw", "cosine", 0.1, 128, 2, 1024, 512, 1.0, 42),
    "simpo-llama3-base": ("adamw", "cosine", 0.1, 128, 2, 2048, 1800, 1.0, 42),
}


@pytest.mark.parametrize("name", RECIPES)
def test_each_recipe_holds_the_settings_of_its_docs_table(name: str) -> None:
    c = load_recipe(name).config()
    text = (c.loss, c.chat_template, c.system_prompt, c.assistant_header, c.prompt_truncation, c.gradient_checkpointing)
    warmup = c.warmup_steps if c.warmup_steps else c.warmup_ratio
    optimisation = (c.optimizer, c.schedule, warmup, c.batch_size, c.micro_batch_size)
    optimisation += (c.max_length, c.max_prompt_length, c.max_grad_norm, c.seed)
    assert (text, optimisation) == (TEXT[name], OPTIMISATION[name])


def test_stage_configs_chain_the_models(tmp_path: Path) -> None:
    """Each stage starts from the previous stage's final/ model; the last stage takes the machine settings."""
    recipe = load_recipe("dpo-hh-pythia28")
    final = recipe.config(output_dir=str(tmp_path / "run"), progress=False, cpu=True)
    sft, dpo = stage_configs(recipe, final)
    assert (sft.loss, sft.model, sft.output_dir, sft.lr) == (
        "sft",
        "EleutherAI/pythia-2.8b",
        str(tmp_path / "run" / "stages" / "sft"),
        5e-7,
    )
    assert (sft.progress, sft.cpu) == (False, True)
    assert (dpo.loss, dpo.model, dpo.reference, dpo.lr) == (
        "dpo",
        str(tmp_path / "run" / "stages" / "sft" / "final"),
        None,
        1e-6,
    )
    assert stage_configs(load_recipe("zephyr-7b-beta"), final) == [final]


def test_conversation_settings_reach_the_training_tokens(tmp_path: Path) -> None:
    """A run's chat_template, system_prompt and assistant_header shape the tokens it trains on: with the zephyr
    template the prompt opens with the empty system turn, and with assistant_header="completion" each completion
    opens with the "<|assistant|>" header (one more scored token than with the header in the prompt)."""
    model = write_smoke_task(tmp_path / "task", kind="paired")["model"]
    data = tmp_path / "chat.jsonl"
    turn = [{"role": "user", "content": "the food was good"}]
    row = {
        "prompt": turn,
        "chosen": [{"role": "assistant", "content": "good"}],
        "rejected": [{"role": "assistant", "content": "bad"}],
    }
    data.write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    tokens = {}
    for header in ("prompt", "completion"):
        config = TrainConfig(
            model=str(model),
            data=str(data),
            chat_template="zephyr",
            system_prompt="",
            assistant_header=header,
            batch_size=2,
        )
        _, tokenizer, rows = setup._training_rows(config, loss_spec("dpo"), None, None, None, None)
        tokens[header] = setup._plan(config, tokenizer, rows, 1, False).tokens[0]
    assert tokenizer.decode(tokens["completion"]["prompt_ids"][:3]) == "<s> <unk> </s>"  # BOS, "<|system|>", EOS
    chosen = {h: tokens[h]["completion_ids"][0] for h in tokens}
    assert len(chosen["completion"]) == len(chosen["prompt"]) + 1 and chosen["completion"][1:] == chosen["prompt"]


def test_model_flag_skips_the_earlier_stages(tmp_path: Path) -> None:
    """`--model path/to/sft`: the user brings the SFT model, so only the DPO stage runs, from it."""
    sft_model = write_smoke_task(tmp_path / "own", kind="paired")["model"]
    out = tmp_path / "run"
    assert (
        cli.main(["--recipe", "dpo-hh-pythia28", "--smoke", "--model", str(sft_model), "--out", str(out), "--quiet"])
        == 0
    )
    assert not (out / "stages").exists()
    assert json.loads((out / "config.json").read_text())["model"] == str(sft_model)


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
    with pytest.raises(ValueError, match=r"stages\[0\] must have exactly the keys name and train"):
        parse_recipe("x", base + "results_note: none\nstages:\n  - {name: sft}\n")
    with pytest.raises(ValueError, match="stage names must differ"):
        stage = "  - {name: s, train: {loss: sft}}\n"
        parse_recipe("x", base + "results_note: none\nstages:\n" + stage + stage)
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
