"""Training precision (`prefopt.train.precision`): a bf16 checkpoint trains fp32 master weights under bf16
autocast, learns as its fp32 twin does, resumes exactly, and saves final/ in its own dtype (or fp32).

Why the small learning rate: bf16 keeps 8 significant bits, so a weight |w| ≈ 0.02 moves in steps of
ulp = 2⁻¹³ ≈ 1.2e-4 and an update below ulp/2 ≈ 6e-5 rounds away. AdamW's first steps move each weight by
≈ lr, so at lr 1e-5 pure bf16 keeps almost no update (only weights near 0 move), while fp32 master
weights keep all of them. Each run is 3 optimiser steps of the 30k-parameter tiny Llama.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from prefopt.train import TrainConfig, train
from prefopt.train.precision import checkpoint_dtype, resolve_precision


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny task's model saved in bf16 and, with the same (bf16-representable) weights, in fp32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .tiny_task import write_tiny_task

    root = tmp_path_factory.mktemp("precision-task")
    task = write_tiny_task(root)
    model = AutoModelForCausalLM.from_pretrained(task["model"])
    tokenizer = AutoTokenizer.from_pretrained(task["model"])
    out = dict(task)
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        folder = root / f"model-{name}"
        model.to(torch.bfloat16).to(dtype).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        out[name] = folder
    return out


def settings(task: dict[str, Path], out: Path, model: str | None = "bf16", **changes: Any) -> dict[str, Any]:
    base = dict(
        loss="dpo",
        data=str(task["paired"]),
        output_dir=str(out),
        batch_size=8,
        max_steps=3,
        preset="synthetic",
        lr=1e-5,
        progress=False,
        engine_backend="reference",
    )
    if model is not None:  # None: the model is passed in memory
        base["model"] = str(task[model])
    return {**base, **changes}


def trained_weights(result: Any) -> dict[str, torch.Tensor]:
    """The weights as trained (the last checkpoint holds the master weights)."""
    return load_file(str(Path(str(result.checkpoint_path)) / "trainable.safetensors"))


def changed_share(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> float:
    moved = sum(int((after[n].float() != before[n].float()).sum()) for n in after)
    return moved / sum(t.numel() for t in after.values())


def test_bf16_checkpoint_learns_like_its_fp32_twin(twins, tmp_path) -> None:
    """Default (fp32 master weights, bf16 autocast): nearly every weight moves, as in the fp32 run, and the
    master weights match the fp32 run's to a small share of the total update; pure bf16 loses most updates."""
    initial = load_file(str(twins["bf16"] / "model.safetensors"))
    fp32 = train(**settings(twins, tmp_path / "fp32", model="fp32"))
    default = train(**settings(twins, tmp_path / "default"))
    pure = train(**settings(twins, tmp_path / "pure", master_weights="bf16"))
    w32, wdef, wpure = trained_weights(fp32), trained_weights(default), trained_weights(pure)
    assert {t.dtype for t in wdef.values()} == {torch.float32} and {t.dtype for t in wpure.values()} == {torch.bfloat16}
    share32, share_default, share_pure = (changed_share(initial, w) for w in (w32, wdef, wpure))
    assert share32 > 0.9 and share_default > 0.9
    assert abs(share_default - share32) < 0.02
    assert share_pure < 0.25 * share_default  # rounding to nearest in bf16 drops most of the updates
    for name, w in w32.items():  # measured: 0.1–0.7 % of the mean update (bf16 compute), 88–100 % (pure bf16)
        update = float((w - initial[name].float()).abs().mean())  # ≈ 3 steps × lr = 3e-5
        assert float((wdef[name] - w).abs().mean()) < 0.05 * update, name
        assert float((wpure[name].float() - w).abs().mean()) > 0.5 * update, name
    assert default.final_metrics["loss"] == pytest.approx(fp32.final_metrics["loss"], abs=2e-3)
    assert default.precision == {
        "checkpoint_dtype": "bfloat16",
        "master_weights_dtype": "float32",
        "compute_dtype": "bfloat16",
        "saved_dtype": "bfloat16",
    }
    assert pure.precision["master_weights_dtype"] == "bfloat16"
    assert fp32.precision == {
        "checkpoint_dtype": "float32",
        "master_weights_dtype": "float32",
        "compute_dtype": "float32",
        "saved_dtype": "float32",
    }


def test_final_is_saved_in_the_original_dtype_or_fp32(twins, tmp_path) -> None:
    """final/ holds the checkpoint's dtype by default (config.json says so and it reloads as bf16, equal to
    the master weights rounded); save_dtype="fp32" keeps the master weights; result.json states the dtypes."""
    from transformers import AutoModelForCausalLM

    original = train(**settings(twins, tmp_path / "original", max_steps=1))
    master = trained_weights(original)
    saved = load_file(str(tmp_path / "original" / "final" / "model.safetensors"))
    assert {t.dtype for t in saved.values()} == {torch.bfloat16}
    assert json.loads((tmp_path / "original" / "final" / "config.json").read_text())["dtype"] == "bfloat16"
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "original" / "final")
    assert reloaded.dtype == torch.bfloat16 and reloaded.lm_head.weight is reloaded.model.embed_tokens.weight
    for name, value in reloaded.named_parameters():
        torch.testing.assert_close(value, master[name].to(torch.bfloat16), rtol=0, atol=0, msg=name)
    result = json.loads((tmp_path / "original" / "result.json").read_text())
    assert result["precision"]["saved_dtype"] == "bfloat16" and result["precision"]["master_weights_dtype"] == "float32"

    fp32 = train(**settings(twins, tmp_path / "fp32", max_steps=1, save_dtype="fp32"))
    saved = load_file(str(tmp_path / "fp32" / "final" / "model.safetensors"))
    assert {t.dtype for t in saved.values()} == {torch.float32}
    assert json.loads((tmp_path / "fp32" / "final" / "config.json").read_text())["dtype"] == "float32"
    for name, value in trained_weights(fp32).items():
        assert torch.equal(saved[name], value), name
    assert fp32.precision["saved_dtype"] == "float32"
    assert json.loads((tmp_path / "fp32" / "config.json").read_text())["save_dtype"] == "fp32"


def test_resume_of_a_bf16_checkpoint_is_exact(twins, tmp_path) -> None:
    """Checkpoints keep the fp32 master weights: 2 steps + resume to 4 = 4 uninterrupted steps, bit for bit."""
    whole = train(**settings(twins, tmp_path / "whole", max_steps=4))
    train(**settings(twins, tmp_path / "cut", max_steps=2))
    resumed = train(**settings(twins, tmp_path / "cut", max_steps=4, resume=True))
    lines = [json.loads(line)["loss"] for line in Path(resumed.metrics_path).read_text().splitlines()]
    assert lines == [json.loads(line)["loss"] for line in Path(whole.metrics_path).read_text().splitlines()]
    a, b = trained_weights(whole), trained_weights(resumed)
    assert all(torch.equal(a[n], b[n]) for n in a) and {t.dtype for t in b.values()} == {torch.float32}


def test_frozen_weights_keep_the_checkpoint_dtype(twins, tmp_path, monkeypatch) -> None:
    """The reference copy and a LoRA base stay bf16; the trained weights (the whole policy, or the LoRA
    adapters) are fp32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import prefopt.train.setup as setup

    copies: list[torch.nn.Module] = []
    original_copy = setup.frozen_copy
    monkeypatch.setattr(setup, "frozen_copy", lambda m: copies.append(original_copy(m)) or copies[-1])
    tokenizer = AutoTokenizer.from_pretrained(twins["bf16"])
    model = AutoModelForCausalLM.from_pretrained(twins["bf16"])
    train(model=model, tokenizer=tokenizer, **settings(twins, tmp_path / "full", max_steps=1, model=None))
    assert checkpoint_dtype(copies[0]) == torch.bfloat16
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # trained in place, as master weights

    model = AutoModelForCausalLM.from_pretrained(twins["bf16"])
    lora = train(
        model=model,
        tokenizer=tokenizer,
        **settings(twins, tmp_path / "lora", max_steps=1, model=None, lora_r=4, lr=1e-3),
    )
    dtypes = {("lora_" in n, p.dtype) for n, p in model.named_parameters()}
    assert dtypes == {(True, torch.float32), (False, torch.bfloat16)}
    assert lora.precision["master_weights_dtype"] == "float32" and lora.precision["checkpoint_dtype"] == "bfloat16"
    assert lora.precision["saved_dtype"] == "float32"  # the adapter is saved as trained
    adapter = load_file(str(tmp_path / "lora" / "final" / "adapter_model.safetensors"))
    assert {t.dtype for t in adapter.values()} == {torch.float32}


def test_resolve_precision_rules() -> None:
    """bf16 autocast iff bf16 is asked for, or the checkpoint or the master weights are bf16."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=16,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    fp32, bf16 = LlamaForCausalLM(config), LlamaForCausalLM(config).to(torch.bfloat16)
    cases = [
        (fp32, "fp32", "no", None),
        (fp32, "fp32", "bf16", torch.bfloat16),
        (bf16, "fp32", "no", torch.bfloat16),
        (fp32, "bf16", "no", torch.bfloat16),
        (fp32, "fp32", "auto", None),
    ]
    for model, master, mixed, autocast in cases:
        precision = resolve_precision(model, master_weights=master, mixed_precision=mixed, device="cpu")
        assert precision.autocast == autocast, (master, mixed)
    precision = resolve_precision(bf16, device="cpu")
    assert precision.checkpoint == torch.bfloat16 and precision.master == torch.float32
    precision.cast(bf16)
    assert checkpoint_dtype(bf16) == torch.float32 and set(precision.originals.values()) == {torch.bfloat16}


def test_precision_settings_are_validated() -> None:
    with pytest.raises(ValueError, match=r"master_weights='bf16' with quantization='8bit'.*fp32"):
        TrainConfig(master_weights="bf16", quantization="8bit", lora_r=4)
    with pytest.raises(ValueError, match=r"master_weights='fp16'"):
        TrainConfig(master_weights="fp16")
    with pytest.raises(ValueError, match=r"save_dtype='bf16'.*original"):
        TrainConfig(save_dtype="bf16")


def test_cli_flags_reach_the_config(twins, tmp_path, capsys) -> None:
    from prefopt.cli.train import main

    code = main(
        [
            "--data",
            str(twins["paired"]),
            "--model",
            str(twins["fp32"]),
            "--out",
            str(tmp_path),
            "--batch-size",
            "8",
            "--max-steps",
            "1",
            "--quiet",
            "--preset",
            "synthetic",
            "--master-weights",
            "bf16",
            "--save-dtype",
            "fp32",
            "--engine-backend",
            "reference",
        ]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["precision"] == {
        "checkpoint_dtype": "float32",
        "master_weights_dtype": "bfloat16",
        "compute_dtype": "bfloat16",
        "saved_dtype": "float32",
    }
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["master_weights"], saved["save_dtype"]) == ("bf16", "fp32")
