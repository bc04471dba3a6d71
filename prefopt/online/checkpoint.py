"""Checkpoints of an online run, written atomically, that resume it exactly.

    <output_dir>/checkpoints/step-000010/
        policy.safetensors      the policy's trainable parameters
        critic.safetensors      PPO's value model (when the algorithm has one)
        <name>.safetensors      frozen models the run keeps beside them (NLPO's masking policy: mask_policy)
        optimizers.pt           state_dicts of the policy's (and the critic's) Adam
        state.json              step, the KL controller's β, number of metrics lines

Nothing else needs saving: every random draw of the loop (prompt order, sampling, minibatch order) is
a function of (seed, step), so the step number is the whole data position. The folder is assembled
under `checkpoints/.tmp-step-…` and renamed into place, so a killed run leaves a whole checkpoint or
none; `prefopt.train.checkpoint.latest_checkpoint` finds the newest complete one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from prefopt.train.checkpoint import (
    CHECKPOINT_DIR,
    RunFolderError,
    latest_checkpoint,
    load_plain,
    load_trainable,
    trainable_state,
)

__all__ = ["save_online_checkpoint", "load_online_checkpoint", "latest_checkpoint"]


def save_online_checkpoint(
    output_dir: str | Path,
    step: int,
    *,
    policy: nn.Module,
    critic: nn.Module | None,
    optimizers: dict[str, torch.optim.Optimizer],
    state: dict[str, Any],
    keep: int,
    frozen: dict[str, nn.Module] | None = None,
) -> Path:
    """Save the run after `step` rollouts; keeps the newest `keep` checkpoints. Returns the folder."""
    folder = Path(output_dir) / CHECKPOINT_DIR
    final = folder / f"step-{step:06d}"
    tmp = folder / f".tmp-{final.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file(trainable_state(policy), str(tmp / "policy.safetensors"))
    if critic is not None:
        save_file(trainable_state(critic), str(tmp / "critic.safetensors"))
    for name, module in (frozen or {}).items():  # whole state (not only trainable), tied weights saved once
        save_model(module, str(tmp / f"{name}.safetensors"))
    torch.save({name: opt.state_dict() for name, opt in optimizers.items()}, tmp / "optimizers.pt")
    (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=2))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in sorted(folder.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _load_weights(module: nn.Module, path: Path) -> None:
    load_trainable(module, load_file(str(path)), path)


def load_online_checkpoint(
    path: str | Path,
    *,
    policy: nn.Module,
    critic: nn.Module | None,
    optimizers: dict[str, torch.optim.Optimizer],
    frozen: dict[str, nn.Module] | None = None,
) -> dict[str, Any]:
    """Restore weights and optimiser states from `path`; returns state.json (step, kl_coef, …).

    optimizers.pt is read with `torch.load(weights_only=True)`: a file holding anything but tensors,
    numbers, strings and containers raises a one-line RunFolderError and runs nothing."""
    path = Path(path)
    _load_weights(policy, path / "policy.safetensors")
    if critic is not None:
        _load_weights(critic, path / "critic.safetensors")
    for name, module in (frozen or {}).items():
        load_model(module, str(path / f"{name}.safetensors"))
    states = load_plain(path / "optimizers.pt")
    if set(states) != set(optimizers):
        raise RunFolderError(
            f"checkpoint {path} holds optimisers {sorted(states)}, this run has "
            f"{sorted(optimizers)}; resume with the same algorithm, or start a new output_dir"
        )
    for name, opt in optimizers.items():
        opt.load_state_dict(states[name])
    return json.loads((path / "state.json").read_text())
