"""FSDP2 (`TrainConfig.fsdp`, `prefopt.train.fsdp`) on CPU with gloo: 2 sharded processes train as 2 DDP processes.

One torchrun launch trains DPO twice on the tiny random Llama of tests/train/tiny_task.py (DDP, then FSDP2, 4 steps,
2 accumulation steps of 2 per process): losses and gradient norms to 1e-5, the final weights and a mid-run
checkpoint's (saved gathered, in the unsharded format) to 1e-5; the FSDP checkpoint then resumes without FSDP to the
DDP run's final weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from prefopt.errors import DistributedSetupError, SettingsError
from prefopt.train import TrainConfig
from prefopt.train.fsdp import check_launch_plugin, full_parameters, is_sharded, optimizer_state, shard_scoring_module
from prefopt.train.model import ScoringModule
from tests.launch import launch_env, torchrun

from .test_loop import settings
from .test_multiprocess import SCRIPT, _run, _write

CPU = torch.device("cpu")


def _max_diff(a: Path, b: Path) -> float:
    first, second = load_file(str(a)), load_file(str(b))
    assert first.keys() == second.keys()
    return max(float((first[k] - second[k]).abs().max()) for k in first)


def _records(out: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.multiprocess
@pytest.mark.slow
def test_fsdp_two_processes_equal_ddp(tiny_task, tmp_path) -> None:
    common = dict(loss="dpo", max_steps=4, micro_batch_size=2, checkpoint_every=2, cpu=True)
    ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp"
    runs = [settings(tiny_task, ddp, **common), settings(tiny_task, fsdp, fsdp=True, **common)]
    done = _run([*torchrun(2), str(SCRIPT), str(_write(tmp_path / "runs.json", runs))], env=launch_env())
    assert done.returncode == 0, done.stderr[-3000:]
    for a, b in zip(_records(ddp), _records(fsdp), strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], abs=1e-5)
    assert _max_diff(ddp / "final/model.safetensors", fsdp / "final/model.safetensors") < 1e-5
    step2 = "checkpoints/step-000002/trainable.safetensors"
    assert _max_diff(ddp / step2, fsdp / step2) < 1e-5
    ddp_adam = torch.load(ddp / "checkpoints/step-000002/optimizer.pt", weights_only=True)
    fsdp_adam = torch.load(fsdp / "checkpoints/step-000002/optimizer.pt", weights_only=True)
    assert fsdp_adam["param_groups"] == ddp_adam["param_groups"]
    for number, moments in ddp_adam["state"].items():
        for key, value in moments.items():
            assert torch.allclose(fsdp_adam["state"][number][key], value, atol=1e-5), (number, key)
    # the sharded run's step-2 checkpoint resumes unsharded (same 2 processes) to the DDP run's end
    shutil.rmtree(fsdp / "checkpoints/step-000004")
    shutil.rmtree(fsdp / "final")
    again = settings(tiny_task, fsdp, resume=True, **common)
    done = _run([*torchrun(2), str(SCRIPT), str(_write(tmp_path / "resume.json", [again]))], env=launch_env())
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["loss"] for r in _records(fsdp)] == pytest.approx([r["loss"] for r in _records(ddp)], abs=1e-5)
    assert _max_diff(ddp / "final/model.safetensors", fsdp / "final/model.safetensors") < 1e-5


def test_what_fsdp_does_not_run_is_refused_in_one_line(tmp_path) -> None:
    with pytest.raises(SettingsError, match=r"TrainConfig.fsdp=True with lora_r=4: .* set lora_r=0"):
        TrainConfig(output_dir=str(tmp_path), fsdp=True, lora_r=4)
    with pytest.raises(SettingsError, match=r"TrainConfig.fsdp=True with resume=True: .* fsdp=False"):
        TrainConfig(output_dir=str(tmp_path), fsdp=True, resume=True)


def test_an_fsdp_or_deepspeed_config_that_accelerate_ignores_is_refused(monkeypatch) -> None:
    """On CPU Accelerate runs MULTI_CPU (DDP) whatever the config file says: refused rather than trained silently."""
    cpu = SimpleNamespace(distributed_type=SimpleNamespace(value="MULTI_CPU"))
    check_launch_plugin(cpu)  # no FSDP / DeepSpeed asked for
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(DistributedSetupError, match=r"asks for DEEPSPEED .* runs MULTI_CPU: .*\(--fsdp"):
        check_launch_plugin(cpu)
    check_launch_plugin(SimpleNamespace(distributed_type=SimpleNamespace(value="DEEPSPEED")))  # on GPUs


def test_sharded_parameters_are_gathered_for_saving_and_put_back(tiny_task, tmp_path) -> None:
    """One gloo process: the ScoringModule's parameters become shards (DTensors); inside `full_parameters` they are
    full tensors equal to the unsharded model's, tied once; after it the shards are back. `optimizer_state` is the
    unsharded run's state_dict (numbers and moments) after one identical Adam step."""
    with pytest.raises(DistributedSetupError, match=r"TrainConfig.fsdp=True shards over the processes of a launch"):
        shard_scoring_module(ScoringModule(AutoModelForCausalLM.from_pretrained(tiny_task["model"])), CPU)
    store = torch.distributed.FileStore(str(tmp_path / "store"), 1)
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        plain = AutoModelForCausalLM.from_pretrained(tiny_task["model"])
        sharded = ScoringModule(AutoModelForCausalLM.from_pretrained(tiny_task["model"]))
        shard_scoring_module(sharded, CPU)
        assert is_sharded(sharded.model) and not is_sharded(plain)
        with full_parameters(sharded.model) as model:
            assert not is_sharded(model)
            full = dict(model.named_parameters())
            assert all(full[n].equal(p) for n, p in plain.named_parameters())
        assert is_sharded(sharded.model)
        adams = [torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (plain, sharded.model)]
        for model, adam in zip((plain, sharded.model), adams, strict=True):
            for p in model.parameters():
                p.grad = torch.ones_like(p)
            adam.step()
        ours, theirs = optimizer_state(sharded.model, adams[1]), optimizer_state(plain, adams[0])
        assert ours["param_groups"] == theirs["param_groups"] and ours["state"].keys() == theirs["state"].keys()
        for number, moments in theirs["state"].items():
            for key, value in moments.items():
                assert torch.equal(torch.as_tensor(ours["state"][number][key]), value), (number, key)
    finally:
        torch.distributed.destroy_process_group()
