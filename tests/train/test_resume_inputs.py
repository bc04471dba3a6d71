"""A resumed run must train from what the interrupted one trained from: the same rows, the same model given in
memory, and (where the learning-rate schedule reads it) the same length; otherwise `train(resume=True)` refuses,
naming what changed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from prefopt.errors import RunFolderError
from prefopt.online import OnlineConfig
from prefopt.train import train
from prefopt.train.checkpoint import check_same_settings
from prefopt.train.config import TrainConfig
from prefopt.train.inputs import input_fingerprints, model_fingerprint, rows_fingerprint


def _settings(task: dict[str, Path], out: Path, **changes: Any) -> dict[str, Any]:
    base = dict(
        loss="dpo",
        data=str(task["paired"]),
        model=str(task["model"]),
        output_dir=str(out),
        batch_size=8,
        max_steps=2,
        checkpoint_every=1,
        preset="synthetic",
        lr=1e-3,
        progress=False,
    )
    return {k: v for k, v in {**base, **changes}.items() if v is not None}


def test_fingerprints_follow_the_content() -> None:
    rows = [{"prompt": "a", "chosen": "b", "rejected": "c"}]
    assert rows_fingerprint(rows) == rows_fingerprint([dict(rows[0])]) != rows_fingerprint([{**rows[0], "chosen": "x"}])
    assert input_fingerprints() == {"data_fingerprint": None, "model_fingerprint": None}
    layer = torch.nn.Linear(3, 2)
    before = model_fingerprint(layer)
    assert model_fingerprint(layer) == before and len(before) == 16
    with torch.no_grad():
        layer.weight[0, 0] += 0.5
    assert model_fingerprint(layer) != before


def test_resume_refuses_a_changed_data_file(tiny_task, tmp_path) -> None:
    data = tmp_path / "paired.jsonl"
    rows = [json.loads(line) for line in Path(tiny_task["paired"]).read_text().splitlines()]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    train(**_settings(tiny_task, out, data=str(data)))
    saved = json.loads((out / "config.json").read_text())
    assert len(saved["data_fingerprint"]) == 16 and saved["model_fingerprint"] is None  # a model by path: its path
    rows[0]["chosen"], rows[0]["rejected"] = rows[0]["rejected"], rows[0]["chosen"]  # one pair relabelled
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(RunFolderError, match=r"different settings \['data_fingerprint'\]"):
        train(**_settings(tiny_task, out, data=str(data), resume=True))


def test_resume_refuses_another_model_given_in_memory(tiny_task, tmp_path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def load() -> Any:
        return AutoModelForCausalLM.from_pretrained(tiny_task["model"])

    tokenizer = AutoTokenizer.from_pretrained(tiny_task["model"])
    out = tmp_path / "run"
    train(model=load(), tokenizer=tokenizer, **_settings(tiny_task, out, model=None))
    other = load()
    with torch.no_grad():
        other.model.norm.weight.mul_(1.5)
    with pytest.raises(RunFolderError, match=r"different settings \['model_fingerprint'\]"):
        train(model=other, tokenizer=tokenizer, **_settings(tiny_task, out, model=None, resume=True))
    done = train(model=load(), tokenizer=tokenizer, **_settings(tiny_task, out, model=None, resume=True))
    assert done.steps == 2  # the same model: the finished run is taken as it is


def test_a_longer_run_resumes_only_where_the_schedule_ignores_the_length(tiny_task, tmp_path) -> None:
    """With a linear decay the learning rates of steps 1-2 depend on max_steps: a resumed run with more steps
    would not be the run it claims to be. A constant schedule may be extended (tested in test_run_folder_safety)."""
    out = tmp_path / "linear"
    train(**_settings(tiny_task, out, schedule="linear"))
    with pytest.raises(RunFolderError, match=r"different settings \['max_steps'\]"):
        train(**_settings(tiny_task, out, schedule="linear", max_steps=4, resume=True))


def test_a_field_whose_default_changed_behaviour_reads_as_what_older_runs_did(tmp_path) -> None:
    """`OnlineConfig.generation_batching` defaults to "auto" (one left-padded call), but a run saved before the field
    existed sampled with one call per prompt length: it resumes as "length", and "auto" is a changed setting."""
    saved = OnlineConfig(algorithm="grpo", output_dir=str(tmp_path)).to_dict()
    del saved["generation_batching"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    as_before = OnlineConfig(algorithm="grpo", output_dir=str(tmp_path), generation_batching="length")
    check_same_settings(tmp_path, as_before.to_dict(), (), OnlineConfig)
    with pytest.raises(RunFolderError, match=r"different settings \['generation_batching'\]"):
        check_same_settings(
            tmp_path, OnlineConfig(algorithm="grpo", output_dir=str(tmp_path)).to_dict(), (), OnlineConfig
        )


def test_a_setting_the_saved_run_predates_counts_as_its_default(tmp_path) -> None:
    """A run saved before a field existed resumes when the field is at its default, and is refused when it is not."""
    config = TrainConfig(loss="dpo", output_dir=str(tmp_path))
    saved = config.to_dict()
    del saved["share_prompt"]  # written by a version without the field
    (tmp_path / "config.json").write_text(json.dumps(saved))
    check_same_settings(tmp_path, config.to_dict(), (), TrainConfig)
    changed = TrainConfig(loss="dpo", output_dir=str(tmp_path), share_prompt="off")
    with pytest.raises(RunFolderError, match=r"different settings \['share_prompt'\]"):
        check_same_settings(tmp_path, changed.to_dict(), (), TrainConfig)
    with pytest.raises(RunFolderError, match="share_prompt"):  # without the type, a missing field is a change
        check_same_settings(tmp_path, config.to_dict(), ())
