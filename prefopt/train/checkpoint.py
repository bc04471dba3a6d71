"""Checkpoints that resume exactly, written atomically.

    <output_dir>/checkpoints/step-000040/
        trainable.safetensors   every parameter with requires_grad (full model, or LoRA adapter only)
        optimizer.pt            optimiser state_dict        scheduler.pt   LR scheduler state_dict
        rng-<rank>.json         python / numpy / torch (CPU, CUDA) RNG states of each process (`rng_state`)
        state.json              step (the data position: the batch plan is a function of it), the loss's
                                running state under the loss's name (`LossSpec.state`), world size

A checkpoint is assembled in `checkpoints/.tmp-step-000040/` and renamed into place with `os.replace`
once complete, so a run killed at any moment leaves either the whole checkpoint or none (a leftover
temporary folder is removed at the next save). Only folders named `step-*` are ever loaded.

Loading runs no code from the folder: weights are safetensors, the RNG states JSON, and the optimiser and
scheduler files are read with `torch.load(weights_only=True)` (tensors, numbers, strings and containers
only). A file that is none of these stops the resume with a one-line `RunFolderError`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from prefopt.atomic import write_json_atomic
from prefopt.train.fsdp import full_parameters, optimizer_state
from prefopt.train.rng_state import load_rng_state, save_rng_state
from prefopt.train.run_folder import RunFolderError

__all__ = [
    "CHECKPOINT_DIR",
    "RunFolderError",
    "check_no_earlier_run",
    "check_same_settings",
    "load_trainable",
    "latest_checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "load_plain",
    "write_json_atomic",
]

CHECKPOINT_DIR = "checkpoints"


def _step_dir(root: Path, step: int) -> Path:
    return root / CHECKPOINT_DIR / f"step-{step:06d}"


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step in `output_dir`, or None."""
    folder = Path(output_dir) / CHECKPOINT_DIR
    done = sorted(p for p in folder.glob("step-*") if (p / "state.json").exists()) if folder.exists() else []
    return done[-1] if done else None


def check_no_earlier_run(output_dir: str | Path) -> None:
    """Refuse to start a fresh run where an earlier one left checkpoints: its work would be overwritten.

    Raises:
        RunFolderError: naming the folder and the two ways on (resume it, or another output_dir).
    """
    found = latest_checkpoint(output_dir)
    if found is not None:
        raise RunFolderError(
            f"{output_dir} holds checkpoints of an earlier run (latest: {found.name}); resume it "
            "(resume=True / --resume) or choose another output_dir (or delete that folder)"
        )


def check_same_settings(
    output_dir: str | Path, settings: dict[str, Any], resumable: Iterable[str], config_type: type | None = None
) -> None:
    """Refuse to resume with settings other than the saved run's (`<output_dir>/config.json`), except those
    in `resumable` (they do not change what a step computes) and `output_dir` itself: the same folder may be
    spelled another way (relative, absolute, `./x`, a trailing slash) or have been moved. A field of
    `config_type` (a dataclass) that the saved run predates counts as its default value there, so a run saved
    by an earlier version resumes unless the setting was changed from its default.

    Raises:
        RunFolderError: naming the changed settings.
    """
    saved_path = Path(output_dir) / "config.json"
    if not saved_path.exists():
        return
    saved = json.loads(saved_path.read_text(encoding="utf-8"))
    allowed = set(resumable) | {"output_dir"}
    defaults = field_defaults(config_type) if config_type is not None else {}
    # a setting the saved run predates (a field added since) counts as its default value
    changed = sorted(
        k for k, v in settings.items() if k not in allowed and saved.get(k, defaults.get(k, _MISSING)) != v
    )
    if changed:
        raise RunFolderError(
            f"resume: {output_dir} was trained with different settings {changed}; resume with the same "
            "settings or use a new output_dir"
        )


_MISSING = object()


def field_defaults(config_type: type) -> dict[str, Any]:
    """What a saved run that predates a field computed with, as its saved config.json holds it (JSON's lists for
    tuples): the field's `metadata["predating"]` where a field's default changed behaviour for new runs (e.g.
    `OnlineConfig.generation_batching`: "auto" now, per-length calls before it existed), else its default."""
    out = {}
    for f in dataclasses.fields(config_type):
        if "predating" in f.metadata:
            out[f.name] = f.metadata["predating"]
        elif f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return json.loads(json.dumps(out, default=str))


def load_trainable(model: nn.Module, saved: dict[str, torch.Tensor], source: str | Path) -> None:
    """Copy `saved` (name → tensor, as `trainable_state` wrote it) into the model's trainable parameters.

    Raises:
        RunFolderError (a ValueError): the names differ from the model's trainable parameters (another model
            or LoRA setting).
    """
    params = dict(model.named_parameters())
    expected = {n for n, p in params.items() if p.requires_grad}
    if set(saved) != expected:
        diff = sorted(set(saved) ^ expected)[:5]
        raise RunFolderError(
            f"checkpoint {source} does not fit this model (parameters differ, e.g. {diff}); resume "
            "with the same model, LoRA and quantisation settings, or start a new output_dir"
        )
    with torch.no_grad():
        for name, tensor in saved.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))


def _not_ours(path: Path, err: BaseException) -> RunFolderError:
    text = str(err)
    # torch's refusal is a page of advice; its substance is the global the pickle asks for
    refused = re.search(r"GLOBAL ([\w.]+)", text)
    why = f"it asks to run {refused.group(1)}" if refused else (text.strip().splitlines() or [type(err).__name__])[0]
    why = why[:200]
    return RunFolderError(
        f"checkpoint file {path} is not one prefopt wrote ({why}); it was not loaded. Delete "
        f"that checkpoint folder to resume from an earlier one, or start a new output_dir"
    )


def load_plain(path: str | Path) -> Any:
    """`torch.load(path, weights_only=True)`: tensors, numbers, strings and containers, never code.

    Raises:
        RunFolderError: the file holds anything else (a crafted pickle) or is damaged; one line.
    """
    path = Path(path)
    try:
        return torch.load(path, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise _not_ours(path, err) from None


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
    root = Path(output_dir)
    final = _step_dir(root, step)
    tmp = final.with_name(f".tmp-{final.name}")
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    save_rng_state(tmp / f"rng-{accelerator.process_index}.json")
    accelerator.wait_for_everyone()
    optimizer_saved = optimizer_state(model, optimizer)  # FSDP: gathered from every process's shards
    with full_parameters(model):  # FSDP: every process gathers the full weights; else nothing
        weights = trainable_state(model) if accelerator.is_main_process else {}
    if accelerator.is_main_process:
        save_file(weights, str(tmp / "trainable.safetensors"))
        torch.save(optimizer_saved, tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / "state.json").write_text(
            json.dumps({**state, "step": step, "world_size": accelerator.num_processes}, indent=2)
        )
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

    Raises RunFolderError (a ValueError) when the checkpoint's trainable parameters do not match the model's,
    it was written by another number of processes, or a file of it is not one prefopt wrote (nothing in it
    is executed).
    """
    path = Path(path)
    load_trainable(model, load_file(str(path / "trainable.safetensors")), path)
    optimizer.load_state_dict(load_plain(path / "optimizer.pt"))
    scheduler.load_state_dict(load_plain(path / "scheduler.pt"))
    try:
        state = json.loads((path / "state.json").read_text())
    except ValueError as err:
        raise _not_ours(path / "state.json", err) from None
    rng = path / f"rng-{accelerator.process_index}.json"
    if not rng.exists() and rng.with_suffix(".pt").exists():
        raise RunFolderError(
            f"checkpoint {path} holds {rng.with_suffix('.pt').name}, the pickled RNG file of "
            "earlier prefopt versions, which is never loaded (a pickle can run code); resume it "
            "with the version that wrote it, or start a new output_dir"
        )
    if state.get("world_size") != accelerator.num_processes or not rng.exists():
        raise RunFolderError(
            f"checkpoint {path} was written by {state.get('world_size')} process(es), this run "
            f"has {accelerator.num_processes}; resume with the same number of processes"
        )
    try:
        load_rng_state(rng)
    except (ValueError, TypeError, KeyError, OverflowError, RuntimeError) as err:
        raise _not_ours(rng, err) from None
    return state
