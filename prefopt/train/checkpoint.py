"""Checkpoints that resume exactly, written atomically.

    <output_dir>/checkpoints/step-000040/
        trainable.safetensors   every parameter with requires_grad (full model, or LoRA adapter only)
        optimizer.pt            optimiser state_dict        scheduler.pt   LR scheduler state_dict
        rng-<rank>.pt           python / numpy / torch (CPU, CUDA) RNG states of each process
        state.json              step (the data position: the batch plan is a function of it), BCO state,
                                number of metrics lines, world size

A checkpoint is assembled in `checkpoints/.tmp-step-000040/` and renamed into place with `os.replace`
once complete, so a run killed at any moment leaves either the whole checkpoint or none (a leftover
temporary folder is removed at the next save). Only folders named `step-*` are ever loaded.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from prefopt.atomic import write_json_atomic

__all__ = ["CHECKPOINT_DIR", "RunFolderError", "check_no_earlier_run", "check_same_settings", "load_trainable", "latest_checkpoint", "save_checkpoint", "load_checkpoint", "write_json_atomic"]

CHECKPOINT_DIR = "checkpoints"



def _step_dir(root: Path, step: int) -> Path:
    return root / CHECKPOINT_DIR / f"step-{step:06d}"


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step in `output_dir`, or None."""
    folder = Path(output_dir) / CHECKPOINT_DIR
    done = sorted(p for p in folder.glob("step-*") if (p / "state.json").exists()) if folder.exists() else []
    return done[-1] if done else None


class RunFolderError(ValueError):
    """The run folder does not fit the run: an earlier run's checkpoints would be overwritten, or a resumed
    run's settings differ from the saved ones. The message says which and the ways on."""


def check_no_earlier_run(output_dir: str | Path) -> None:
    """Refuse to start a fresh run where an earlier one left checkpoints: its work would be overwritten.

    Raises:
        RunFolderError: naming the folder and the two ways on (resume it, or another output_dir).
    """
    found = latest_checkpoint(output_dir)
    if found is not None:
        raise RunFolderError(f"{output_dir} holds checkpoints of an earlier run (latest: {found.name}); resume it "
                         "(resume=True / --resume) or choose another output_dir (or delete that folder)")


def check_same_settings(output_dir: str | Path, settings: dict[str, Any], resumable: Iterable[str]) -> None:
    """Refuse to resume with settings other than the saved run's (`<output_dir>/config.json`), except those
    in `resumable` (they do not change what a step computes).

    Raises:
        RunFolderError: naming the changed settings.
    """
    saved_path = Path(output_dir) / "config.json"
    if not saved_path.exists():
        return
    saved = json.loads(saved_path.read_text(encoding="utf-8"))
    allowed = set(resumable)
    changed = sorted(k for k, v in settings.items() if k not in allowed and saved.get(k) != v)
    if changed:
        raise RunFolderError(f"resume: {output_dir} was trained with different settings {changed}; resume with the same "
                         "settings or use a new output_dir")


def load_trainable(model: nn.Module, saved: dict[str, torch.Tensor], source: str | Path) -> None:
    """Copy `saved` (name → tensor, as `trainable_state` wrote it) into the model's trainable parameters.

    Raises:
        ValueError: the names differ from the model's trainable parameters (another model or LoRA setting).
    """
    params = dict(model.named_parameters())
    expected = {n for n, p in params.items() if p.requires_grad}
    if set(saved) != expected:
        diff = sorted(set(saved) ^ expected)[:5]
        raise ValueError(f"checkpoint {source} does not fit this model (parameters differ, e.g. {diff}); resume with "
                         "the same model, LoRA and quantisation settings, or start a new output_dir")
    with torch.no_grad():
        for name, tensor in saved.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the parameters with requires_grad, by name (tied weights once)."""
    return {n: p.detach().cpu().clone().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    *,
    accelerator: Any,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    keep: int,
) -> Path:
    """Save the run at optimiser step `step` (collective: every process calls it). Returns the folder."""
    from safetensors.torch import save_file

    root = Path(output_dir)
    final = _step_dir(root, step)
    tmp = final.with_name(f".tmp-{final.name}")
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(_rng_state(), tmp / f"rng-{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / "state.json").write_text(json.dumps({**state, "step": step,
                                                    "world_size": accelerator.num_processes}, indent=2))
        if final.exists():  # the same step saved before (a NaN stop after a scheduled save)
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in sorted((root / CHECKPOINT_DIR).glob("step-*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(
    path: str | Path,
    *,
    accelerator: Any,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> dict[str, Any]:
    """Restore weights, optimiser, scheduler and this process's RNG from `path`; returns state.json.

    Raises ValueError when the checkpoint's trainable parameters do not match the model's.
    """
    from safetensors.torch import load_file

    path = Path(path)
    load_trainable(model, load_file(str(path / "trainable.safetensors")), path)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    state = json.loads((path / "state.json").read_text())
    rng = path / f"rng-{accelerator.process_index}.pt"
    if state.get("world_size") != accelerator.num_processes or not rng.exists():
        raise ValueError(f"checkpoint {path} was written by {state.get('world_size')} process(es), this run has "
                         f"{accelerator.num_processes}; resume with the same number of processes")
    _set_rng_state(torch.load(rng, weights_only=False))  # our own file: numpy's state is a tuple of objects
    return state
