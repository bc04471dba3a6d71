"""A weighted sum of losses (`prefopt.combine_losses`, MPO) where a loss name goes: `prefopt train --loss
dpo:0.8+sft:1` with shared and per-part `--set`, a running state kept per part across a resume, and the runs of
`prefopt compare --losses dpo,dpo:0.8+sft:1`. A few optimiser steps of the 30k-parameter tiny Llama each."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from prefopt.train import train

from .test_loop import settings


def _records(path: Path | str) -> list[dict[str, Any]]:
    lines = Path(path).read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "elapsed_s"} for line in lines]


def test_cli_trains_a_combination_with_shared_and_per_part_settings(tiny_task, tmp_path, capsys) -> None:
    """`--set beta=0.3` reaches every part that takes β (dpo, bco_pair), `--set dpo.beta=0.2` only dpo. At step 1
    π = π_ref, so dpo's loss is log 2 and bco_pair's 2·log 2 whatever β, and the logged loss is their weighted
    sum with sft's."""
    from prefopt.cli.train import main

    argv = ["--loss", "dpo:0.8+bco_pair:0.2+sft:1", "--set", "beta=0.3", "--set", "dpo.beta=0.2"]
    argv += ["--data", str(tiny_task["paired"]), "--model", str(tiny_task["model"]), "--out", str(tmp_path)]
    argv += ["--batch-size", "8", "--max-steps", "2", "--quiet", "--preset", "synthetic", "--lr", "1e-3"]
    assert main(argv) == 0, capsys.readouterr().err
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["loss"] == "dpo:0.8+bco_pair:0.2+sft:1"
    assert config["loss_hparams"] == {"dpo.beta": 0.2, "bco_pair.beta": 0.3}
    first = _records(tmp_path / "metrics.jsonl")[0]
    assert first["dpo/loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["bco_pair/loss"] == pytest.approx(2 * math.log(2), abs=1e-6)
    assert first["sft/loss"] > 0
    assert first["loss"] == pytest.approx(0.8 * first["dpo/loss"] + 0.2 * first["bco_pair/loss"] + first["sft/loss"])


def test_resume_restores_a_parts_state_exactly(tiny_task, tmp_path) -> None:
    """kto:1+bco:1 on unpaired rows: kto's z₀ is a batch input, bco's running δ a state the combination keeps
    under the part's name. A run stopped after step 3 and resumed from its step-2 checkpoint logs exactly the
    records of the uninterrupted run (without the restore, step 3 would read a fresh δ = 0)."""
    loss = "kto:1+bco:1"
    run = settings(tiny_task, tmp_path / "stopped", loss=loss, data=str(tiny_task["unpaired"]))
    run.update(max_steps=4, checkpoint_every=2)

    class Stop(Exception):
        pass

    def stop_after_step_3(step: int, record: dict[str, float]) -> None:
        if step == 3:
            raise Stop

    with pytest.raises(Stop):
        train(**run, on_step=stop_after_step_3)
    saved = json.loads((tmp_path / "stopped" / "checkpoints" / "step-000002" / "state.json").read_text())
    assert saved[loss]["bco"]["count"] == 2 * 8  # bco's rewards of two global batches of 8
    resumed = train(**{**run, "resume": True})
    full = train(**{**run, "output_dir": str(tmp_path / "full")})
    assert _records(full.metrics_path)[2]["bco/delta"] != 0.0 and "kto/kl" in _records(full.metrics_path)[0]
    assert _records(resumed.metrics_path) == _records(full.metrics_path)


def test_compare_takes_a_combination_and_its_sweeps() -> None:
    """`--losses dpo,dpo:0.8+sft:1` splits at commas only; `--set SPELLING.PART.NAME=V,V` sweeps one part's
    value; every run folder name is filesystem-safe."""
    from prefopt.cli.compare import COMMAND
    from prefopt.cli.settings import parse_sweeps

    args = ["--losses", "dpo,dpo:0.8+sft:1", "--set", "dpo:0.8+sft:1.dpo.beta=0.05,0.2", "--set", "dpo.beta=0.3"]
    config = COMMAND.settings(COMMAND.parser().parse_args(args))
    assert config.losses == ("dpo", "dpo:0.8+sft:1")
    labels = [plan.label for plan in config.runs()]
    assert labels == ["dpo(beta=0.3)", "dpo:0.8+sft:1(dpo.beta=0.05)", "dpo:0.8+sft:1(dpo.beta=0.2)"]
    assert all(re.fullmatch(r"[A-Za-z0-9_.=-]+", plan.run_id) for plan in config.runs())
    assert len({plan.run_id for plan in config.runs()}) == 3
    # a weight may hold a dot; the hyper-parameter after the spelling starts with a letter
    assert parse_sweeps(["dpo:0.8+sft:1.5.beta=0.1", "dpo+sft.dpo.beta=0.2,0.3", "ipo.beta=1"]) == {
        "dpo:0.8+sft:1.5": {"beta": 0.1},
        "dpo+sft": {"dpo.beta": [0.2, 0.3]},
        "ipo": {"beta": 1},
    }
