"""The run folder of `prefopt.train.loop`: `TrainResult`, claiming the folder, resuming, and the final files.

One run per folder (`prefopt.train.run_folder`); a resumed run restores its newest checkpoint and truncates
metrics.jsonl to it; at the end the final checkpoint, the model (or adapter) with its tokenizer, and
result.json are written atomically.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from prefopt.loss_state import LossState
from prefopt.memory import peak_memory
from prefopt.train.checkpoint import (
    check_no_earlier_run,
    check_same_settings,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    write_json_atomic,
)
from prefopt.train.config import TrainConfig
from prefopt.train.fsdp import full_parameters
from prefopt.train.logs import truncate_metrics
from prefopt.train.run_folder import RunFolderError, RunFolderLock, claim_run_folder
from prefopt.train.setup import Run

__all__ = ["TrainResult"]

# Settings that may change between a run and its resumption (they do not change what a step computes).
_RESUMABLE = {
    "resume",
    "progress",
    "fsdp",  # a sharded run's checkpoints hold full weights (`prefopt.train.fsdp`): resumed unsharded
    "max_steps",
    "epochs",
    "checkpoint_every",
    "keep_checkpoints",
    "log_every",
    "report_to",
    "ref_cache_dir",
    "save_dtype",
}


@dataclass(frozen=True)
class TrainResult:
    """What `train` returns (also written to `<output_dir>/result.json`).

    Attributes:
        final_metrics: the last step's record (loss, the loss's metrics, lr, grad_norm, ...).
        metrics_path: metrics.jsonl; checkpoint_path: the final checkpoint; model_path: the saved model
            (or LoRA adapter) with its tokenizer.
        steps: optimiser steps done in all; wall_time_s: this call's wall time (setup included);
            tokens_per_s: tokens through the policy per second of training steps (all processes; setup
            and the reference cache excluded).
        peak_memory_bytes: this run's CUDA peak allocated memory, or on CPU its peak resident set size
            (`peak_memory_kind` says which: `prefopt.memory`).
        precision: dtypes of the checkpoint, the master weights, the compute and final/
            (`prefopt.train.precision.Precision.describe`).
    """

    final_metrics: dict[str, float]
    metrics_path: Path
    checkpoint_path: Path | None
    model_path: Path | None
    steps: int
    wall_time_s: float
    tokens_per_s: float
    peak_memory_bytes: int
    peak_memory_kind: str
    precision: dict[str, str] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}


def _saved_state(run: Run, state: LossState | None) -> dict[str, Any]:
    """What state.json holds beside the step: the loss's running state under the loss's name."""
    return {} if state is None else {run.spec.name: state.state_dict()}


def _resume(run: Run, state: LossState | None) -> int:
    """Restore the newest checkpoint (if any) and return the step to continue from."""
    config = run.config
    path = latest_checkpoint(config.output_dir)
    if path is None:  # killed before its first checkpoint: start over, with an empty log
        _clear_metrics(run)
        return 0
    saved = load_checkpoint(
        path, accelerator=run.accelerator, model=run.policy, optimizer=run.optimizer, scheduler=run.scheduler
    )
    if state is not None and saved.get(run.spec.name) is not None:
        state.load_state_dict(saved[run.spec.name])
    if run.accelerator.is_main_process:
        truncate_metrics(Path(config.output_dir) / "metrics.jsonl", saved["step"])
    run.accelerator.wait_for_everyone()
    return int(saved["step"])


def _clear_metrics(run: Run) -> None:
    """Empty the metrics log of a run that starts at step 0 (a killed earlier attempt left lines there)."""
    if run.accelerator.is_main_process:
        truncate_metrics(Path(run.config.output_dir) / "metrics.jsonl", 0)
    run.accelerator.wait_for_everyone()


def _claim(out: Path, accelerator: Any) -> contextlib.AbstractContextManager[Any]:
    """Lock the run folder for this run (`prefopt.train.run_folder`): the main process takes the lock, and
    every process learns whether it got it, so that all of them stop together when it did not."""
    lock: Any = contextlib.nullcontext()
    error = None
    if accelerator.is_main_process:
        try:
            lock = claim_run_folder(out)
        except RunFolderError as err:
            error = err
    refused = accelerator.reduce(torch.tensor([float(error is not None)], device=accelerator.device), reduction="sum")
    if float(refused.sum()) > 0:
        if isinstance(lock, RunFolderLock):
            lock.release()
        raise error or RunFolderError(f"{out}: the main process refused this run folder (see its message)")
    return lock


def _check_folder(config: TrainConfig, inputs: dict[str, Any] | None = None) -> None:
    """A fresh run may not overwrite an earlier run's checkpoints; a resumed one must keep its settings and its
    inputs (`prefopt.train.inputs`: the rows, a model given in memory)."""
    if not config.resume:
        check_no_earlier_run(config.output_dir)
    elif latest_checkpoint(config.output_dir) is not None:
        check_same_settings(config.output_dir, {**config.to_dict(), **(inputs or {})}, _resumable(config), type(config))


def _resumable(config: TrainConfig) -> set[str]:
    """`_RESUMABLE`, less the run's length (max_steps, epochs) when the learning-rate schedule reads it (linear or
    cosine decay, a warm-up given as a ratio): a longer run would not continue the same learning rates."""
    settings = config.optimizer_settings()
    fixed_warmup = settings.warmup_steps is not None or settings.warmup_ratio == 0
    if settings.schedule in ("constant", "inverse_sqrt") and fixed_warmup:
        return set(_RESUMABLE)
    return _RESUMABLE - {"max_steps", "epochs"}


def _finish(
    run: Run, record: dict[str, float], tokens_per_s: float, state: LossState | None, started: float
) -> TrainResult:
    """Final checkpoint, the model (or adapter) with its tokenizer, and result.json, all atomic."""
    config, acc = run.config, run.accelerator
    out = Path(config.output_dir)
    if not record:  # resumed a finished run: the last logged record is the final one
        lines = (out / "metrics.jsonl").read_text().splitlines()
        record = json.loads(lines[-1]) if lines else {}
    checkpoint = save_checkpoint(
        config.output_dir,
        run.total_steps,
        accelerator=acc,
        model=run.policy,
        optimizer=run.optimizer,
        scheduler=run.scheduler,
        state=_saved_state(run, state),
        keep=config.keep_checkpoints,
    )
    model_path = out / "final"
    with full_parameters(run.policy):  # FSDP: every process gathers the full weights; else nothing
        if acc.is_main_process:
            tmp = Path(tempfile.mkdtemp(prefix=".final-", dir=out))
            run.precision.save_pretrained(
                acc.unwrap_model(run.wrapped_policy_logps).model, tmp
            )  # in the dtype of `save_dtype`
            run.tokenizer.save_pretrained(tmp)
            if model_path.exists():
                shutil.rmtree(model_path)
            tmp.rename(model_path)
    acc.wait_for_everyone()
    wall = time.perf_counter() - started
    peak, kind = peak_memory(acc.device)
    result = TrainResult(
        record,
        out / "metrics.jsonl",
        checkpoint,
        model_path,
        run.total_steps,
        wall,
        tokens_per_s,
        peak,
        kind,
        run.precision.describe(run.policy),
    )
    if acc.is_main_process:
        write_json_atomic(out / "result.json", result.to_dict())
    return result
