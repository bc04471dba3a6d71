"""LoRA in `prefopt compare`'s online runs: the LoRA settings of `train` (TrainConfig's names, every offline run's)
reach the online runs too, `online` wins over them, and an algorithm whose policy cannot be LoRA keeps full
fine-tuning (`prefopt.compare.online_settings`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from prefopt.cli.compare import COMMAND, config_from_args
from prefopt.compare import CompareConfig, run_settings
from prefopt.online.config import OnlineConfig
from prefopt.settings import SettingsError

LORA = {"lora_r": 4, "lora_alpha": 8.0, "lora_dropout": 0.05, "lora_targets": ["q_proj", "v_proj"]}


def _settings(config: CompareConfig, loss: str) -> dict:
    plan = next(plan for plan in config.runs() if plan.loss == loss)
    return run_settings(plan, config, Path(config.output_dir) / plan.run_id)[1]


def test_train_lora_reaches_online_runs_and_online_wins() -> None:
    config = CompareConfig(losses=("dpo", "grpo", "nlpo"), train=LORA, online={"lora_alpha": 2.0}, progress=False)
    offline, online, masked = (_settings(config, loss) for loss in ("dpo", "grpo", "nlpo"))
    assert {k: offline[k] for k in LORA} == {**LORA, "lora_targets": ("q_proj", "v_proj")}
    built = OnlineConfig(**online)  # what the online run trains with
    assert (built.lora_r, built.lora_alpha, built.lora_dropout, built.lora_targets) == (
        4,
        2.0,
        0.05,
        ("q_proj", "v_proj"),
    )
    assert OnlineConfig(**masked).lora_r == 0  # NLPO's action mask keeps a copy of the policy: full fine-tuning


def test_lora_flags_of_compare_reach_online_runs() -> None:
    args = COMMAND.parser().parse_args(["--losses", "dpo,rloo", "--train", "lora_r=8", "--online", "steps=3"])
    config = config_from_args(args)
    assert _settings(config, "rloo")["lora_r"] == 8 and _settings(config, "dpo")["lora_r"] == 8


def test_lora_asked_online_for_an_algorithm_without_lora_is_one_line() -> None:
    with pytest.raises(SettingsError, match=r"run nlpo seed 0: OnlineConfig.lora_r: .*set lora_r=0"):
        CompareConfig(losses=("nlpo",), online={"lora_r": 4}, progress=False)
