"""The offline loop in one process on the tiny task: exact normalisation, accumulation, references, every
data kind, refusals and clear errors. Each run is a few optimiser steps of a 30k-parameter Llama."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from prefopt.train import TrainConfig, train
from prefopt.train.data import TrainDataError
from prefopt.train.loop import TrainingDivergedError
from prefopt.train.setup import DistributedSetupError


def settings(task: dict[str, Path], out: Path, **changes: Any) -> dict[str, Any]:
    base = dict(
        loss="dpo",
        data=str(task["paired"]),
        model=str(task["model"]),
        output_dir=str(out),
        batch_size=8,
        max_steps=3,
        preset="synthetic",
        lr=1e-3,
        progress=False,
    )
    return {k: v for k, v in {**base, **changes}.items() if v is not None}  # model=None: pass one in memory


def trajectory(result: Any) -> list[float]:
    return [json.loads(line)["loss"] for line in Path(result.metrics_path).read_text().splitlines()]


def _load_tiny(task: dict[str, Path]) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(task["model"]), AutoTokenizer.from_pretrained(task["model"])


def test_first_sgd_step_is_the_full_batch_gradient(tiny_task, tmp_path) -> None:
    """With SGD at lr 1, w₁ = w₀ − ∇ where ∇ = ∇ (1/G) Σ_i ℓ_i over the GLOBAL batch of G = 8 pairs, computed
    here in one forward; the trainer splits it into 4 micro-batches of 2 (gradient accumulation)."""
    from prefopt.data import TokenizeConfig, tokenize_preferences
    from prefopt.engine import LogProbEngine
    from prefopt.losses import dpo
    from prefopt.train.data import BatchPlan, load_train_rows

    model, tokenizer = _load_tiny(tiny_task)
    initial = copy.deepcopy(model)
    result = train(
        model=model,
        tokenizer=tokenizer,
        **settings(
            tiny_task, tmp_path, model=None, max_steps=1, micro_batch_size=2, optimizer="sgd", lr=1.0, max_grad_norm=1e9
        ),
    )
    assert result.steps == 1
    rows = load_train_rows(str(tiny_task["paired"]), kind="paired", loss="dpo")
    tokens = tokenize_preferences(rows, tokenizer, TokenizeConfig(max_length=512, max_prompt_length=256))
    plan = BatchPlan(tokens, 8, 8, 1, 0, tokenizer.pad_token_id)
    batch = plan.collate(plan.rows(plan.global_indices(0)))
    reference = copy.deepcopy(initial).eval()
    with torch.no_grad():
        ref = LogProbEngine(reference)(batch)
    policy = LogProbEngine(initial)(batch)
    out = dpo(policy.chosen(), policy.rejected(), ref.chosen(), ref.rejected(), beta=0.1)
    out.loss.backward()
    assert json.loads(Path(result.metrics_path).read_text())["loss"] == pytest.approx(out.loss.item(), abs=1e-6)
    for (name, p0), p1 in zip(initial.named_parameters(), model.parameters()):
        torch.testing.assert_close(p1.detach(), (p0 - p0.grad).detach(), atol=1e-6, rtol=1e-5, msg=name)


def test_accumulation_equals_the_large_batch(tiny_task, tmp_path) -> None:
    whole = train(**settings(tiny_task, tmp_path / "whole", max_steps=4))
    split = train(**settings(tiny_task, tmp_path / "split", max_steps=4, micro_batch_size=2))
    assert len(trajectory(whole)) == 4
    assert trajectory(split) == pytest.approx(trajectory(whole), abs=1e-5)
    assert trajectory(whole)[0] == pytest.approx(0.693147, abs=1e-6)  # π = π_ref at step 1: −log σ(0) = log 2
    assert whole.final_metrics["rewards/margins"] == pytest.approx(split.final_metrics["rewards/margins"], abs=1e-5)


def test_reference_cache_equals_on_the_fly(tiny_task, tmp_path) -> None:
    cached = train(**settings(tiny_task, tmp_path / "cache"))
    live = train(**settings(tiny_task, tmp_path / "live", ref_cache=False))
    assert trajectory(cached) == pytest.approx(trajectory(live), abs=1e-5)
    files = list((tmp_path / "cache" / "ref_cache").glob("*.safetensors"))
    assert len(files) == 1 and not (tmp_path / "live" / "ref_cache").exists()
    built = files[0].stat().st_mtime_ns
    # another loss on the same data, model and tokenisation reuses the file instead of recomputing it
    train(**settings(tiny_task, tmp_path / "ipo", loss="ipo", ref_cache_dir=str(files[0].parent)))
    assert list(files[0].parent.iterdir()) == files and files[0].stat().st_mtime_ns == built


def test_lora_reference_is_the_disabled_adapter(tiny_task, tmp_path) -> None:
    result = train(**settings(tiny_task, tmp_path, lora_r=4, lr=1e-2))
    losses = trajectory(result)
    assert losses[0] == pytest.approx(0.693147, abs=1e-6)  # LoRA's B starts at 0: policy = base = reference
    assert losses[-1] != pytest.approx(losses[0], abs=1e-4)  # and the adapter trains
    saved = {p.name for p in Path(result.model_path).iterdir()}
    assert "adapter_config.json" in saved and "model.safetensors" not in saved


@pytest.mark.parametrize(
    ("loss", "data", "metric"),
    [
        ("kto", "paired", "kl"),  # paired data split into unpaired rows; z₀ from mismatched pairs
        ("bco", "unpaired", "delta"),  # running reward mean kept by the loop
        ("plackett_luce", "ranked", "rewards/accuracies"),
        ("orpo", "paired", "nll_loss"),  # reference-free: no reference at all
    ],
)
def test_every_data_kind_and_loop_input(tiny_task, tmp_path, loss: str, data: str, metric: str) -> None:
    result = train(**settings(tiny_task, tmp_path, loss=loss, data=str(tiny_task[data])))
    records = [json.loads(line) for line in Path(result.metrics_path).read_text().splitlines()]
    assert all(metric in r and all(map(lambda v: v == v, r.values())) for r in records)
    assert (tmp_path / "ref_cache").exists() == (loss != "orpo")
    if metric == "delta":
        # δ includes the batch it shifts (TRL's order): step 1's rewards are 0 (π = π_ref), step 2's are not and
        # enter step 2's own δ (a δ lagging one step would still be 0 there)
        assert records[0]["delta"] == 0.0 and records[1]["delta"] != 0.0


class _Stop(Exception):
    pass


def test_resume_restores_the_loss_state_exactly(tiny_task, tmp_path) -> None:
    """BCO's running δ (the state the loss declares, `LossSpec.state`) is saved in every checkpoint and restored
    on resume: a run stopped after step 3 and resumed from its step-2 checkpoint logs exactly the records of the
    uninterrupted run. Without the restore, step 3 would read δ = 0 (a fresh state) instead of step 2's mean."""
    run = settings(
        tiny_task, tmp_path / "stopped", loss="bco", data=str(tiny_task["unpaired"]), max_steps=5, checkpoint_every=2
    )

    def stop_after_step_3(step: int, record: dict[str, float]) -> None:
        if step == 3:
            raise _Stop

    with pytest.raises(_Stop):
        train(**run, on_step=stop_after_step_3)
    saved = json.loads((tmp_path / "stopped" / "checkpoints" / "step-000002" / "state.json").read_text())
    assert saved["bco"]["count"] == 2 * 8  # the rewards of two global batches of 8
    resumed = train(**{**run, "resume": True})
    full = train(**{**run, "output_dir": str(tmp_path / "full")})

    def records(result: Any) -> list[dict[str, float]]:
        lines = Path(result.metrics_path).read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "elapsed_s"} for line in lines]

    assert records(full)[2]["delta"] != 0.0
    assert records(resumed) == records(full)


def test_batch_dependent_loss_refuses_accumulation(tiny_task, tmp_path) -> None:
    with pytest.raises(DistributedSetupError, match="depends on the whole batch"):
        train(**settings(tiny_task, tmp_path, loss="aot", micro_batch_size=4))
    train(**settings(tiny_task, tmp_path / "ok", loss="aot", max_steps=1))  # one micro-batch is fine


def test_data_kind_mismatch_is_a_clear_error(tiny_task, tmp_path) -> None:
    with pytest.raises(TrainDataError, match="consumes paired data, but the training data holds ranked data"):
        train(**settings(tiny_task, tmp_path, data=str(tiny_task["ranked"])))


def test_nan_loss_stops_saves_and_names_the_examples(tiny_task, tmp_path) -> None:
    model, tokenizer = _load_tiny(tiny_task)
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")
    with pytest.raises(TrainingDivergedError, match=r"non-finite loss at step 1.*examples: \['p\d+'") as err:
        train(model=model, tokenizer=tokenizer, **settings(tiny_task, tmp_path, model=None, ref_cache=False))
    assert "checkpoints/step-000000" in str(err.value)
    assert (tmp_path / "checkpoints" / "step-000000" / "state.json").exists()


def test_resume_refuses_changed_settings_and_skips_partial_checkpoints(tiny_task, tmp_path) -> None:
    train(**settings(tiny_task, tmp_path, checkpoint_every=1, keep_checkpoints=2))
    folders = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert folders == ["step-000002", "step-000003"]  # older ones pruned
    (tmp_path / "checkpoints" / ".tmp-step-000009").mkdir()  # a save cut by a kill: never loaded
    from prefopt.train.checkpoint import latest_checkpoint

    assert latest_checkpoint(tmp_path).name == "step-000003"
    with pytest.raises(ValueError, match=r"different settings \['lr'\]"):
        train(**settings(tiny_task, tmp_path, lr=5e-4, resume=True))
    done = train(**settings(tiny_task, tmp_path, resume=True))  # already finished: nothing to redo
    assert done.final_metrics["step"] == 3
    with pytest.raises(ValueError, match="earlier run.*resume"):  # a fresh run would overwrite its checkpoints
        train(**settings(tiny_task, tmp_path))


def test_world_size_mismatch_is_refused(monkeypatch) -> None:
    from prefopt.train.setup import make_accelerator

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(DistributedSetupError, match="ACCELERATE_USE_CPU=1"):
        make_accelerator(TrainConfig())


def test_cli_trains_and_prints_the_result(tiny_task, tmp_path, capsys) -> None:
    from prefopt.cli.train import main

    code = main(
        [
            "--loss",
            "ipo",
            "--data",
            str(tiny_task["paired"]),
            "--model",
            str(tiny_task["model"]),
            "--out",
            str(tmp_path),
            "--batch-size",
            "8",
            "--max-steps",
            "2",
            "--quiet",
            "--preset",
            "synthetic",
        ]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["steps"] == 2 and Path(printed["model_path"]).is_dir()
    assert json.loads((tmp_path / "config.json").read_text())["loss"] == "ipo"


def test_gradient_checkpointing_is_exact_and_bf16_runs(tiny_task, tmp_path) -> None:
    plain = train(**settings(tiny_task, tmp_path / "plain"))
    checkpointed = train(**settings(tiny_task, tmp_path / "ckpt", gradient_checkpointing=True))
    assert trajectory(checkpointed) == pytest.approx(trajectory(plain), abs=1e-5)
    bf16 = trajectory(train(**settings(tiny_task, tmp_path / "bf16", mixed_precision="bf16")))
    assert all(math.isfinite(v) for v in bf16)
    assert bf16[0] == pytest.approx(math.log(2), abs=0.05)  # bf16 policy against the fp32 reference cache
    again = train(**settings(tiny_task, tmp_path / "again"))  # the process's Accelerate state is reset back
    assert trajectory(again) == pytest.approx(trajectory(plain), abs=1e-6)


def test_synthetic_task_is_the_default(tiny_task, tmp_path, monkeypatch) -> None:
    """No model and no data: the trainer asks the synthetic task (here a stand-in holding the tiny task) for
    its policy and its data of the loss's kind, and uses the `synthetic` optimiser preset."""
    import datasets

    import prefopt.data.synthetic as synthetic

    model, tokenizer = _load_tiny(tiny_task)
    rows = [json.loads(line) for line in tiny_task["unpaired"].read_text().splitlines()]
    calls: dict[str, Any] = {}

    class Preferences:
        def dataset(self, kind: str) -> datasets.Dataset:
            calls["kind"] = kind
            return datasets.Dataset.from_list(rows)

    def fake_task(seed: int, progress: bool) -> SimpleNamespace:
        calls["seed"] = seed
        return SimpleNamespace(policy=SimpleNamespace(model=model, tokenizer=tokenizer), preferences=Preferences())

    monkeypatch.setattr(synthetic, "synthetic_task", fake_task)
    result = train(loss="kto", output_dir=str(tmp_path), batch_size=8, max_steps=2, progress=False, seed=3)
    assert calls == {"seed": 3, "kind": "unpaired"}
    assert result.final_metrics["lr"] == pytest.approx(1e-4)  # PRESETS["synthetic"]


def test_8bit_base_with_lora(tiny_task, tmp_path) -> None:
    """QLoRA-style: an 8-bit bitsandbytes base (CPU build here) with a LoRA adapter; π_ref = the 8-bit base.
    (4-bit NF4 on CPU needs layers at least one quantisation block (64) wide; the tiny model's are 32.)"""
    pytest.importorskip("bitsandbytes")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        losses = trajectory(train(**settings(tiny_task, tmp_path, lora_r=4, lr=1e-2, quantization="8bit")))
    assert losses[0] == pytest.approx(math.log(2), abs=1e-3)  # int8 matmuls in fp16: not bit-exact
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


def test_trackers_are_optional(tiny_task, tmp_path) -> None:
    import importlib.util

    run = settings(tiny_task, tmp_path, max_steps=1, report_to=("tensorboard",))
    if importlib.util.find_spec("tensorboard") is not None:
        train(**run)
        assert any((tmp_path / "tensorboard").iterdir())
    else:
        with pytest.warns(UserWarning, match="tensorboard package is not installed"):
            train(**run)
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


def _offline_losses() -> list[str]:
    from prefopt.registry import list_losses, loss_spec

    return [n for n in list_losses() if loss_spec(n).kind != "rollout" and loss_spec(n).scores == "logps"]


@pytest.mark.parametrize("loss", _offline_losses())
def test_every_offline_loss_trains_through_the_one_loop(tiny_task, tmp_path, loss: str) -> None:
    """Two steps of every offline loss in the registry on data of its kind: finite loss, metrics and gradients."""
    from prefopt.registry import loss_spec

    kind = loss_spec(loss).kind
    data = Path(tiny_task[kind])
    if "margin" in loss_spec(loss).extra_inputs:  # ODPO's score difference s_w − s_l > 0, a `margin` column
        rows = [json.loads(line) for line in data.read_text().splitlines()]
        data = tmp_path / "scored.jsonl"
        data.write_text("".join(json.dumps({**r, "margin": 1.0 + i % 3}) + "\n" for i, r in enumerate(rows)))
    result = train(**settings(tiny_task, tmp_path, loss=loss, data=str(data), max_steps=2))
    records = [json.loads(line) for line in Path(result.metrics_path).read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert all(math.isfinite(v) for r in records for v in r.values())
    assert records[0]["grad_norm"] > 0
