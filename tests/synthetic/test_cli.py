"""`prefopt data synth --out DIR` through its parser: files written, loadable, errors reported."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import datasets

from prefopt.cli.data import COMMAND
from prefopt.data.synthetic import load_reference_policy
from prefopt.data.validate import validate_preferences


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="prefopt data")
    COMMAND.add_to(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_synth_writes_a_loadable_task(tmp_path: Path, synth_cache: Path, tiny_policy, capsys) -> None:
    out = tmp_path / "synth"
    small = [
        "--tiny",
        "--cache-dir",
        str(synth_cache),
        "--train-prompts",
        "6",
        "--eval-prompts",
        "2",
        "--heldout-prompts",
        "3",
        "--label-temperature",
        "0.5",
    ]
    args = parse(["synth", "--out", str(out), *small, "--quiet"])
    assert args.func(args) == 0
    for kind in ("paired", "unpaired", "ranked"):
        for split in ("train", "eval"):
            dataset = datasets.Dataset.from_json(str(out / kind / f"{split}.jsonl"))
            assert validate_preferences(dataset, kind).ok
    assert len((out / "heldout_prompts.jsonl").read_text().splitlines()) == 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["label_temperature"] == 0.5
    assert summary["reference_policy"]["acceptance_rate"] == tiny_policy.report["acceptance_rate"]  # from cache
    loaded = load_reference_policy(out / "model")
    assert loaded.tokenizer.chat_template and loaded.model.config.vocab_size == len(loaded.tokenizer)

    again = parse(["synth", "--out", str(out), *small, "--quiet"])
    assert again.func(again) == 2
    assert "already exists" in capsys.readouterr().err
    bad = parse(["synth", "--out", str(tmp_path / "other"), *small, "-k", "1"])
    assert bad.func(bad) == 2
    assert "completions_per_prompt" in capsys.readouterr().err
