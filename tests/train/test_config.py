"""TrainConfig validation, optimiser presets and schedules, and the CLI's settings merge (no training)."""

from __future__ import annotations

import argparse
import math

import pytest

from prefopt.cli.train import COMMAND, config_from_args
from prefopt.registry import LossInputError, UnknownLossError
from prefopt.train import PRESETS, TrainConfig, optimizer_preset
from prefopt.train.presets import build_optimizer, build_scheduler, schedule_factor


def test_defaults_validate_and_round_trip() -> None:
    config = TrainConfig(loss="ipo", loss_hparams={"beta": 0.5})
    assert config.loss_hparams == {"beta": 0.5}
    again = TrainConfig.from_dict(config.to_dict())
    assert again == config


@pytest.mark.parametrize(
    ("settings", "error", "needle"),
    [
        ({"loss": "dpoo"}, UnknownLossError, "Did you mean 'dpo'"),
        ({"loss": "ppo"}, ValueError, r"online \(rollout\) loss"),
        ({"loss": "bradley_terry"}, ValueError, "reward-model loss"),
        ({"loss": "dpo", "loss_hparams": {"beta": -1.0}}, LossInputError, "outside its domain"),
        ({"batch_size": 8, "micro_batch_size": 3}, ValueError, "not a multiple of micro_batch_size=3"),
        ({"quantization": "4bit"}, ValueError, "needs LoRA"),
        ({"mixed_precision": "fp8"}, ValueError, "mixed_precision"),
        ({"engine_backend": "cuda"}, ValueError, "engine_backend='cuda'"),
        ({"batch_size": 0}, ValueError, "batch_size=0"),
        ({"report_to": ("mlflow",)}, ValueError, "report_to"),
        ({"preset": "nope"}, ValueError, "unknown optimiser preset"),
        ({"lr": -1.0}, ValueError, "lr=-1.0"),
    ],
)
def test_bad_settings_raise_clear_errors(settings: dict, error: type, needle: str) -> None:
    with pytest.raises(error, match=needle):
        TrainConfig(**settings)


def test_from_dict_names_unknown_keys() -> None:
    with pytest.raises(ValueError, match=r"unknown setting 'learning_rate'; did you mean lr\?"):
        TrainConfig.from_dict({"learning_rate": 1e-4})


def test_paper_presets_and_overrides() -> None:
    dpo = optimizer_preset("dpo")  # DPO paper App. B: RMSprop, lr 1e-6, 150 warm-up steps; repo clip 10
    assert (dpo.optimizer, dpo.lr, dpo.warmup_steps, dpo.max_grad_norm, dpo.batch_size) == (
        "rmsprop",
        1e-6,
        150,
        10.0,
        64,
    )
    assert optimizer_preset("wpo").source.startswith("no published setting for wpo")  # falls back to DPO's
    simpo = optimizer_preset("simpo")
    assert (simpo.schedule, simpo.warmup_ratio) == ("cosine", 0.1)
    # default preset: "synthetic" on the synthetic task, the loss's own with a model or data given
    assert TrainConfig(loss="simpo").optimizer_settings() == PRESETS["synthetic"]
    settings = TrainConfig(loss="simpo", data="x.jsonl", lr=3e-7).optimizer_settings()
    assert settings.lr == 3e-7 and settings.schedule == "cosine"
    with pytest.raises(ValueError, match="unknown field"):
        dpo.override(learning_rate=1.0)


def test_schedule_factors_by_hand() -> None:
    # warm-up w = 4 of T = 12 steps: (s+1)/w, then linear (T−s)/(T−w) or cosine ½(1+cos(π(s−w)/(T−w)))
    assert [schedule_factor(s, schedule="constant", warmup=4, total_steps=12) for s in (0, 3, 4, 11)] == [0.25, 1, 1, 1]
    assert schedule_factor(8, schedule="linear", warmup=4, total_steps=12) == pytest.approx(0.5)
    assert schedule_factor(8, schedule="cosine", warmup=4, total_steps=12) == pytest.approx(0.5)
    assert schedule_factor(6, schedule="cosine", warmup=4, total_steps=12) == pytest.approx(
        0.5 * (1 + math.cos(math.pi / 4))
    )
    # inverse_sqrt: 1 at the end of the warm-up, then √(w/s); without warm-up the time scale is 10⁴
    assert schedule_factor(3, schedule="inverse_sqrt", warmup=4, total_steps=12) == 1.0
    assert schedule_factor(16, schedule="inverse_sqrt", warmup=4, total_steps=12) == pytest.approx(0.5)
    assert schedule_factor(30_000, schedule="inverse_sqrt", warmup=0, total_steps=10) == pytest.approx(0.5)
    import torch

    param = torch.nn.Parameter(torch.zeros(2))
    settings = optimizer_preset("synthetic").override(lr=0.1, warmup_steps=2, schedule="linear")
    optimizer = build_optimizer([param], settings)
    scheduler = build_scheduler(optimizer, settings, total_steps=4)
    lrs = []
    for _ in range(4):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0.05, 0.1, 0.1, 0.05])


def test_cli_merges_yaml_then_flags(tmp_path) -> None:
    parser = argparse.ArgumentParser()
    COMMAND.add_to(parser.add_subparsers(dest="command"))
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("loss: kto\nbatch_size: 32\nlr: 1.0e-5\nloss_hparams: {beta: 0.2}\n")
    args = parser.parse_args(
        [
            "train",
            "--config",
            str(yaml_file),
            "--lr",
            "3e-4",
            "--set",
            "desirable_weight=1.33",
            "--no-ref-cache",
            "--lora-r",
            "8",
        ]
    )
    config = config_from_args(args)
    assert (config.loss, config.batch_size, config.lr, config.ref_cache, config.lora_r) == ("kto", 32, 3e-4, False, 8)
    assert config.loss_hparams == {"beta": 0.2, "desirable_weight": 1.33}
    bad = parser.parse_args(["train", "--set", "beta"])
    with pytest.raises(ValueError, match="NAME=VALUE"):
        config_from_args(bad)
