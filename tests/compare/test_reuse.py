"""Re-running a comparison never reuses stale results: each run's settings fingerprint is recorded and compared.

The two cases a user measured (issue 18, item 5), reproduced without training: the output folders hold the
result.json files a finished comparison leaves (with the fingerprints that comparison records), and the
re-run must stop with one line before it builds or writes anything.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from prefopt.cli import main
from prefopt.compare import CompareConfig, run_settings, tiny_task
from prefopt.compare.reuse import check_reuse, differences, finished_runs, run_fingerprint
from prefopt.errors import RunFolderError
from prefopt.train.config import TrainConfig


def _finished(config: CompareConfig, *, settings: bool = True) -> None:
    """Leave `config`'s runs in its output folder as a finished comparison would (result.json with its settings)."""
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare_config.json").write_text(json.dumps(config.to_dict()))
    for plan in config.runs():
        record = {"label": plan.label, "loss": plan.loss, "hparams": dict(plan.hparams), "seed": plan.seed}
        record |= {"run_id": plan.run_id, "train": {"final_metrics": {"loss": 0.5}, "metrics_path": "/none"}}
        if settings:
            record["settings"] = run_fingerprint(plan, config)
        (out / plan.run_id).mkdir()
        (out / plan.run_id / "result.json").write_text(json.dumps(record))


def test_fingerprint_holds_the_resolved_settings() -> None:
    """Defaults are written out, so that a changed default of the code changes the fingerprint too."""
    config = CompareConfig(losses=("dpo", "kto"))
    dpo = run_fingerprint(config.runs()[0], config)
    assert dpo["loss"] == "dpo" and dpo["seed"] == 0 and dpo["hparams"] == {"beta": 0.1}  # the paper default
    _, settings = run_settings(config.runs()[0], config, Path("x"))
    resolved = dataclasses.asdict(TrainConfig(**settings).optimizer_settings())
    assert dpo["train"]["optimizer"] == json.loads(json.dumps(resolved)) and dpo["train"]["optimizer"]["lr"] > 0
    assert dpo["task"]["sft_config"]["hidden_size"] > 0 and dpo["task"]["eval_prompts"] == config.eval_prompts
    assert "output_dir" not in dpo["train"] and "progress" not in dpo["task"] and "losses" not in dpo["task"]
    assert json.loads(json.dumps(dpo)) == dpo  # what result.json reads back compares equal
    swept = CompareConfig(losses=("dpo",), hparams={"dpo": {"beta": [0.5]}}, seeds=(3,))
    assert run_fingerprint(swept.runs()[0], swept)["hparams"] == {"beta": 0.5}
    moved = CompareConfig(losses=("dpo", "kto"), output_dir="elsewhere", progress=False)
    assert run_fingerprint(moved.runs()[0], moved) == dpo  # where and how loudly it runs is not a setting


def test_online_runs_record_their_resolved_learning_rate() -> None:
    config = CompareConfig(losses=("rloo",), online={"steps": 3})
    (plan,) = config.runs()
    rloo = run_fingerprint(plan, config)
    assert rloo["online"]["steps"] == 3 and rloo["online"]["algorithm"] == "rloo" and "train" not in rloo
    assert rloo["online"]["lr"] is None and rloo["online"]["learning_rate"] > 0  # the default, written out


def test_differences_name_each_changed_setting() -> None:
    saved = {"task": {"eval_prompts": 128}, "train": {"lr": 1e-4, "batch_size": 16}, "seed": 0}
    now = {"task": {"eval_prompts": 16}, "train": {"lr": 5e-5, "batch_size": 16}, "seed": 0, "loss": "dpo"}
    assert differences(saved, now) == [
        ("eval_prompts", 128, 16),
        ("train.lr", 1e-4, 5e-5),
        ("loss", None, "dpo"),
    ]


def test_tiny_compare_into_a_full_default_run_is_refused(tmp_path, capsys) -> None:
    """Measured: `prefopt compare --tiny --max-steps 5` into a folder holding a full default run printed the full
    run's table unchanged while compare_config.json said tiny. Now it stops, naming what differs, and the folder
    is left as it was."""
    out = tmp_path / "cmp"
    _finished(CompareConfig(output_dir=str(out)))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(["compare", "--tiny", "--max-steps", "5", "--out", str(out), "--quiet"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"prefopt compare: {out} holds 5 run(s) made with other settings (dpo-seed0, ipo-seed0")
    default = CompareConfig()
    for words in (f"eval_prompts {default.eval_prompts} → 16", f"max_new_tokens {default.max_new_tokens} → 32"):
        assert words in line, (words, line)
    assert "--out" in line and "--overwrite" in line
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before  # compare_config.json still says what the results are


def test_yaml_run_with_another_lr_and_batch_size_is_refused(tmp_path, capsys) -> None:
    """Measured: a YAML run that changed lr and batch_size into the same --out reused the earlier dpo and ipo runs.
    Now both are named with the changed settings; simpo, new in the file, is no reason to refuse."""
    out = tmp_path / "cmp"
    _finished(CompareConfig(losses=("dpo", "ipo"), output_dir=str(out), train={"lr": 1e-4, "batch_size": 16}))
    yaml = tmp_path / "sweep.yaml"
    yaml.write_text(f"losses: [dpo, ipo, simpo]\ntrain: {{lr: 5.0e-5, batch_size: 8}}\noutput_dir: {out}\n")
    assert main(["compare", "--config", str(yaml), "--quiet"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "holds 2 run(s) made with other settings (dpo-seed0, ipo-seed0:" in line, line
    assert "train.lr 0.0001 → 5e-05" in line and "train.batch_size 16 → 8" in line, line
    assert "simpo" not in line and "optimizer" not in line  # the resolved lr is the same change, said once


def test_runs_without_recorded_settings_are_refused(tmp_path) -> None:
    config = CompareConfig(losses=("dpo",), output_dir=str(tmp_path / "cmp"))
    _finished(config, settings=False)
    with pytest.raises(RunFolderError, match=r"dpo-seed0: settings not recorded \(an earlier prefopt\)"):
        check_reuse(config)
    assert finished_runs(config) == ([], [], ["dpo-seed0"])


def test_overwrite_removes_only_the_stale_runs(tmp_path) -> None:
    out = tmp_path / "cmp"
    old = CompareConfig(losses=("dpo", "ipo"), output_dir=str(out), **tiny_task())
    _finished(old)
    (out / "ipo-seed0" / "samples.jsonl").write_text("{}\n")
    new = CompareConfig(
        losses=("dpo", "ipo"), hparams={"ipo": {"beta": 0.1}}, output_dir=str(out), overwrite=True, **tiny_task()
    )
    assert check_reuse(new) == []  # ipo at beta=0.1 is a new run folder (ipo_beta=0.1-seed0): nothing is stale
    changed = CompareConfig(losses=("dpo", "ipo"), output_dir=str(out), eval_seed=7, overwrite=True, **tiny_task())
    assert check_reuse(changed) == ["dpo-seed0", "ipo-seed0"]
    assert not (out / "dpo-seed0").exists() and not (out / "ipo-seed0").exists()
    assert (out / "compare_config.json").exists()  # the comparison's own files are the run's to rewrite
    records, missing, stale = finished_runs(old)
    assert (records, missing, stale) == ([], ["dpo-seed0", "ipo-seed0"], [])


def test_same_settings_are_reused(tmp_path) -> None:
    config = CompareConfig(losses=("dpo", "orpo"), output_dir=str(tmp_path / "cmp"), **tiny_task())
    _finished(config)
    assert check_reuse(config) == []
    records, missing, stale = finished_runs(config)
    assert [r["run_id"] for r in records] == ["dpo-seed0", "orpo-seed0"] and missing == stale == []


def test_a_setting_the_saved_run_predates_counts_as_its_default(tmp_path: Path) -> None:
    """A run finished by a version without a newer field (here `share_prompt`) is reused while that field is at its
    default, and refused once it is not."""
    config = CompareConfig(losses=("dpo",), output_dir=str(tmp_path / "c"), progress=False)
    _finished(config)
    (plan,) = config.runs()
    result = Path(config.output_dir) / plan.run_id / "result.json"
    record = json.loads(result.read_text())
    del record["settings"]["train"]["share_prompt"]
    result.write_text(json.dumps(record))
    assert check_reuse(config) == [] and len(finished_runs(config)[0]) == 1
    changed = dataclasses.replace(config, train={"share_prompt": "off"})
    with pytest.raises(RunFolderError, match="share_prompt"):
        check_reuse(changed)
