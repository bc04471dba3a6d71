"""`prefopt train-online`: flags and YAML merge into an OnlineConfig, bad settings exit 2, a run prints its result."""

from __future__ import annotations

import argparse
import json

import pytest

from prefopt.cli.train_online import COMMAND, main
from prefopt.cli.train_online import config_from_args as online_config_from_args
from prefopt.online.config import OnlineConfig

from .tiny_online import tiny_model_path, tiny_prompts


def _parse(argv):
    parser = argparse.ArgumentParser()
    COMMAND.add_to(parser.add_subparsers(dest="command"))
    return parser.parse_args(["train-online", *argv])


def test_yaml_then_flags_override(tmp_path):
    path = tmp_path / "online.yaml"
    path.write_text("algorithm: grpo\nsteps: 7\nloss_hparams: {beta: 0.1}\nkl_coef: 0.2\n")
    args = _parse(["--config", str(path), "--steps", "9", "--set", "clip_range=0.3", "--no-whiten-advantages"])
    config = online_config_from_args(args)
    assert config == OnlineConfig(
        algorithm="grpo", steps=9, loss_hparams={"beta": 0.1, "clip_range": 0.3}, kl_coef=0.2, whiten_advantages=False
    )
    assert args.func == COMMAND.run


def test_pair_loss_flags():
    config = online_config_from_args(
        _parse(["--loss", "online_dpo", "--pair-loss", "ipo", "--set", "ipo.beta=0.5", "--set", "beta=0.2"])
    )
    assert config.pair_loss == "ipo" and config.pair_loss_hparams == {"beta": 0.5}
    assert config.algorithm == "online_dpo" and config.loss_hparams == {"beta": 0.2}


def test_bad_settings_exit_2(capsys):
    assert main(["--loss", "rloo", "--num-samples", "1"]) == 2
    assert "needs at least 2" in capsys.readouterr().err
    assert main(["--set", "beta"]) == 2
    assert "NAME=VALUE" in capsys.readouterr().err


def test_command_line_run(tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in tiny_prompts()[0][:8]))
    out = tmp_path / "run"
    code = main(
        [
            "--model",
            str(tiny_model_path()),
            "--prompts",
            str(prompts),
            "--loss",
            "remax",
            "--steps",
            "1",
            "--prompts-per-step",
            "4",
            "--max-new-tokens",
            "16",
            "--out",
            str(out),
            "--num-threads",
            "1",
            "--quiet",
            "--lr",
            "1e-4",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["steps"] == 1 and "objective/greedy_scores" in result["final_metrics"]
    assert json.loads((out / "config.json").read_text())["algorithm"] == "remax"
    again = main(
        [
            "--model",
            str(tiny_model_path()),
            "--prompts",
            str(prompts),
            "--loss",
            "remax",
            "--steps",
            "1",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert again == 2, "a second fresh run into the same folder is refused, not a traceback"
    assert "earlier run" in capsys.readouterr().err


def test_prompt_files(tmp_path):
    from prefopt.online.setup import load_prompts

    text = tmp_path / "p.txt"
    text.write_text("first prompt\n\nsecond prompt\n")
    assert load_prompts(text) == ["first prompt", "second prompt"]
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    with pytest.raises(ValueError, match=r"p.jsonl:2: each row needs a string `prompt`"):
        load_prompts(bad)
