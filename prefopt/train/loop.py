"""The offline training loop: one explicit engine → loss → backward → step for every offline loss.

Per optimiser step, with G examples in the global batch split into micro-batches over P processes
and A accumulation steps (`prefopt.train.data`):

    for each local micro-batch b:                                     (A of them on each process)
        ℓ_i = loss(engine(b), π_ref(b)).per_example                  [m]
        backward( (P / G) · Σ_{i ∈ b} ℓ_i )                           DDP averages over P processes
    ⇒ ∇ = (1/G) Σ_{i ∈ global batch} ∇ℓ_i                            exactly, whatever P and A are
    clip ‖∇‖, optimizer.step(), scheduler.step()

so gradient accumulation and data parallelism compute the same update as one large batch (the
per-micro-batch mean that double-counts small micro-batches, as transformers' DPO under accumulation
did, cannot happen). Logged metrics are example-weighted means over the global batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from prefopt.data.loading import log_folder_reads, record_folder_reads
from prefopt.errors import TrainingDivergedError
from prefopt.loss_call import engine_call, loss_arguments
from prefopt.loss_call.fused import fused_head_reason, fused_loss
from prefopt.loss_state import LossState
from prefopt.memory import reset_peak_memory
from prefopt.progress import library_progress_bars, progress_scope
from prefopt.train.checkpoint import save_checkpoint, write_json_atomic
from prefopt.train.config import TrainConfig
from prefopt.train.inputs import input_fingerprints
from prefopt.train.logs import MetricsLog, TokenMetrics
from prefopt.train.run_output import (
    TrainResult,
    _check_folder,
    _claim,
    _clear_metrics,
    _finish,
    _resume,
    _saved_state,
)
from prefopt.train.setup import Run, load_user_rows, make_accelerator, setup_run
from prefopt.train.step import PlannedBatch

__all__ = ["TrainResult", "TrainingDivergedError", "train"]

StepCallback = Callable[[int, dict[str, float]], None]


def _hparams(run: Run) -> dict[str, Any]:
    """The loss's hyper-parameters with the paper defaults filled in."""
    return {**run.spec.defaults(), **run.loss.hparams}


def _loss_context(run: Run, step: int, state: LossState | None) -> dict[str, Any]:
    """Values of the inputs the loss declares the loop serves (`prefopt.loss_state`) for this global batch."""
    context: dict[str, Any] = dict(state.inputs()) if state is not None else {}
    if run.spec.batch_inputs:
        plan, acc = run.plan, run.accelerator
        local = plan.accumulation_steps * plan.micro_batch_size
        batch = PlannedBatch(
            rows=plan.rows(plan.global_indices(step)),
            positions=list(range(acc.process_index * local, (acc.process_index + 1) * local)),
            hparams=_hparams(run),
            collate=plan.collate,
            policy_logps=run.policy_logps,  # with its autocast
            reference_logps=run.reference.live if run.reference is not None else None,  # kept live by setup_run
            reduce_sum=lambda t: acc.reduce(t, reduction="sum"),
            device=acc.device,
        )
        context.update({name: provide(batch) for name, provide in run.spec.batch_inputs.items()})
    return context


def _fused_step(run: Run, reference: Any, context: dict[str, Any], scale: float) -> Callable[..., Any]:
    """The micro-batch's forward and head gradients through the loss-fused head, as `ScoringModule(step=...)` runs
    it: (loss output, the objective (P / G)·Σ ℓ_i to backpropagate, the policy's log-probs with their stats)."""

    def step(engine: Any, batch: Any) -> tuple[Any, torch.Tensor, Any]:
        objective = lambda out: out.per_example.sum() * scale  # noqa: E731
        return fused_loss(
            run.loss, engine, batch, ref_out=reference, inputs=context, objective=objective, return_stats=True
        )

    return step


def _forward_backward(run: Run, step: int, state: LossState | None) -> tuple[dict[str, float], list[torch.Tensor]]:
    """Accumulate this process's gradients for `step`; returns the global metrics and the loss state's
    statistics of this process's micro-batches."""
    acc, plan, spec = run.accelerator, run.plan, run.spec
    context = _loss_context(run, step, state)
    chunks = plan.local_chunks(step, acc.process_index)
    scale = acc.num_processes / plan.batch_size
    sums: dict[str, torch.Tensor] = {}
    stats: list[torch.Tensor] = []
    token_metrics = TokenMetrics(spec.kind)  # logits/chosen, mean_token_accuracy, …: detached, read off the kernel
    folds = state is not None and spec.state is not None and spec.state.includes_current
    # A separable loss through the loss-fused head (TrainConfig.fused_loss): the head forms dH, dW in its forward.
    fused = run.config.fused_loss and fused_head_reason(spec, run.policy_logps.engine) is None
    for a, chunk in enumerate(chunks):
        batch = plan.collate(plan.rows(chunk)).to(acc.device)
        sync = a == len(chunks) - 1
        with contextlib.nullcontext() if sync else acc.no_sync(run.wrapped_policy_logps):
            if fused:  # no state, no batch statistics: nothing below but the backward
                reference = run.reference.logps(batch) if run.reference is not None else None
                out, objective, policy = run.wrapped_policy_logps(
                    batch, step=_fused_step(run, reference, context, scale)
                )
                local = out.per_example.sum()
                acc.backward(objective)
                token_metrics.add(policy)
                _add_metrics(sums, local, batch, out, len(chunk))
                continue
            live = run.reference.live if run.reference is not None else None
            policy = run.wrapped_policy_logps(batch, **{"return_stats": True, **engine_call(spec, live)})
            reference = run.reference.logps(batch) if run.reference is not None else None
            if folds:  # the state includes this micro-batch (of every process) before its loss reads it
                state.update(acc.gather(state.observe(policy, reference)))  # type: ignore[union-attr]
                context = {**context, **state.inputs()}  # type: ignore[union-attr]
            args, kwargs = loss_arguments(spec, policy, reference, batch, **context)
            out = run.loss(*args, **kwargs)
            local = out.per_example.sum()
            acc.backward(local * scale)
        _add_metrics(sums, local, batch, out, len(chunk))
        token_metrics.add(policy)
        if state is not None and not folds:
            stats.append(state.observe(policy, reference))
    keys = sorted(sums)
    totals = acc.reduce(torch.stack([sums[k] for k in keys]), reduction="sum")
    record = {k: float(v) if k == "tokens" else float(v) / plan.batch_size for k, v in zip(keys, totals)}
    record.update(token_metrics.result(lambda t: acc.reduce(t, reduction="sum")))
    return record, stats


def _add_metrics(sums: dict[str, Any], local: torch.Tensor, batch: Any, out: Any, examples: int) -> None:
    """Add one micro-batch's loss, tokens and metrics to `sums` (metrics are micro-batch means: weighted by the
    micro-batch's examples)."""
    values = {"loss": local.detach().float(), "tokens": batch.sequence_tokens.float()}
    values.update({k: v.detach().float() for k, v in out.metrics.items()})
    for key, value in values.items():
        sums[key] = sums.get(key, 0.0) + (value if key in ("loss", "tokens") else value * examples)


def _rewound(state: LossState | None, before: dict[str, Any] | None) -> LossState | None:
    """The state as it was before the step (a state that includes the current micro-batches has already taken
    in the diverged step's), so that its checkpoint resumes the step exactly."""
    if state is not None and before is not None:
        state.load_state_dict(before)
    return state


def _stop_diverged(run: Run, step: int, record: dict[str, float], state: LossState | None, why: str) -> None:
    run.optimizer.zero_grad(set_to_none=True)
    path = save_checkpoint(
        run.config.output_dir,
        step,
        accelerator=run.accelerator,
        model=run.policy,
        optimizer=run.optimizer,
        scheduler=run.scheduler,
        state=_saved_state(run, state),
        keep=run.config.keep_checkpoints + 1,
    )
    ids = run.plan.example_ids(run.plan.global_indices(step))
    raise TrainingDivergedError(
        f"{why} at step {step + 1} (loss {record.get('loss')}); the batch's examples: {ids}. The weights before "
        f"this step are saved in {path}; inspect those examples, lower the learning rate or change the "
        "loss's hyper-parameters, then resume"
    )


def _optimizer_step(run: Run, step: int, state: LossState | None, started: float) -> dict[str, float]:
    """One optimiser step: forward/backward, divergence check, clipping, update; returns the step's record."""
    before = state.state_dict() if state is not None else None  # a diverged step's checkpoint holds this
    record, stats = _forward_backward(run, step, state)
    if not math.isfinite(record["loss"]):
        _stop_diverged(run, step, record, _rewound(state, before), "non-finite loss")
    max_norm = run.settings.max_grad_norm if run.settings.max_grad_norm is not None else math.inf
    grad_norm = float(run.accelerator.clip_grad_norm_(run.policy.parameters(), max_norm))
    if not math.isfinite(grad_norm):
        _stop_diverged(run, step, record, _rewound(state, before), "non-finite gradient norm")
    lr = run.scheduler.get_last_lr()[0]
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    if state is not None and stats:  # the next step's state includes this global batch, in global order everywhere
        state.update(run.accelerator.gather(torch.cat(stats)))
    record.update(
        step=step + 1,
        epoch=(step + 1) / run.plan.steps_per_epoch,
        lr=lr,
        grad_norm=grad_norm,
        examples=(step + 1) * run.plan.batch_size,
        elapsed_s=time.perf_counter() - started,
    )
    return record


def _initial_state(run: Run) -> LossState | None:
    """A fresh running state of the loss, when it declares one (`LossSpec.state`)."""
    return run.spec.state.init(_hparams(run)) if run.spec.state is not None else None


def train(
    config: TrainConfig | None = None,
    *,
    model: Any = None,
    tokenizer: Any = None,
    dataset: Any = None,
    reference_model: Any = None,
    on_step: StepCallback | None = None,
    **settings: Any,
) -> TrainResult:
    """Train a policy with any offline loss of the registry (see the module docstring for the step).

    Args:
        config: a `TrainConfig`; or leave it out and pass its fields as keyword `settings`
            (`train(loss="ipo", lr=1e-4, output_dir="runs/ipo")`); with both, settings override it.
        model, tokenizer: an in-memory causal LM and its tokenizer (instead of `config.model`); a path
            here means `config.model`.
        dataset: in-memory preference data (`datasets.Dataset`) instead of `config.data` (a path: `data`).
        reference_model: an in-memory reference model instead of `config.reference` (a path: `reference`).
        on_step: called on every process after each optimiser step as `on_step(step, record)`.
    Returns:
        `TrainResult`; the run folder holds config.json, metrics.jsonl, checkpoints/, final/, result.json.
    Raises:
        DistributedSetupError, TrainDataError, TrainingDivergedError, ValueError (bad settings),
        RunFolderError (another run holds output_dir, a checkpoint that does not fit or is not prefopt's).
    """
    # Paths given where objects go are settings: train(model="path", dataset="prefs.jsonl") works too.
    for name, field in (("model", "model"), ("dataset", "data"), ("reference_model", "reference")):
        value = {"model": model, "dataset": dataset, "reference_model": reference_model}[name]
        if isinstance(value, (str, os.PathLike)):
            settings[field] = str(value)
    model = None if isinstance(model, (str, os.PathLike)) else model
    dataset = None if isinstance(dataset, (str, os.PathLike)) else dataset
    reference_model = None if isinstance(reference_model, (str, os.PathLike)) else reference_model
    if config is None:
        config = TrainConfig(**settings)
    elif settings:
        config = dataclasses.replace(config, **settings)
    config.preflight()  # output folder, model folders, backend: before anything is built or written
    started = time.perf_counter()
    reset_peak_memory()  # the result's peak is this run's (`prefopt.memory`)
    from accelerate.utils import set_seed  # heavy: loaded on first use

    with library_progress_bars(config.progress), record_folder_reads() as reads:
        rows = load_user_rows(config, dataset)  # bad data stops the run before the run folder exists
    log_folder_reads(reads)  # which files of a --data folder (`prefopt train` prints it)
    inputs = input_fingerprints(model=model, rows=rows)  # a resumed run must read the same rows and model
    accelerator = make_accelerator(config)
    # one run per folder, until this one ends; tokenisation's bars follow config.progress
    with _claim(Path(config.output_dir), accelerator), progress_scope(config.progress):
        _check_folder(config, inputs)  # before the model loads: these refusals come at once
        set_seed(config.seed)
        run = setup_run(
            config,
            accelerator,
            model=model,
            tokenizer=tokenizer,
            dataset=dataset,
            reference_model=reference_model,
            rows=rows,
        )
        return _train(run, on_step, started, inputs)


def _train(run: Run, on_step: StepCallback | None, started: float, inputs: dict[str, Any]) -> TrainResult:
    config, accelerator = run.config, run.accelerator
    out = Path(config.output_dir)
    state = _initial_state(run)
    if not config.resume:
        _clear_metrics(run)
    start = _resume(run, state) if config.resume else 0  # before the log opens: it may truncate the file
    precision = run.precision.describe(run.policy)
    log = MetricsLog(
        out,
        enabled=accelerator.is_main_process,
        report_to=config.report_to,
        run_config={**config.to_dict(), "precision": precision},
    )
    if accelerator.is_main_process and config.progress:
        print(f"prefopt train: {run.precision.summary(run.policy)}", file=sys.stderr, flush=True)
    if accelerator.is_main_process:
        write_json_atomic(out / "config.json", {**config.to_dict(), **inputs})
    loop_started = time.perf_counter()
    try:
        record, tokens = _loop(run, start, state, log, on_step, started)
    finally:
        log.close()
    loop_time = time.perf_counter() - loop_started
    return _finish(run, record, tokens / loop_time if loop_time > 0 else 0.0, state, started)


def _loop(
    run: Run, start: int, state: LossState | None, log: MetricsLog, on_step: StepCallback | None, started: float
) -> tuple[dict[str, float], float]:
    config, acc = run.config, run.accelerator
    bar = tqdm(
        total=run.total_steps,
        initial=start,
        desc=f"train {config.loss}",
        dynamic_ncols=True,
        disable=not (config.progress and acc.is_main_process),
    )
    record: dict[str, float] = {}
    tokens = 0.0
    for step in range(start, run.total_steps):
        record = _optimizer_step(run, step, state, started)
        tokens += record["tokens"]
        if (step + 1) % config.log_every == 0 or step + 1 == run.total_steps:
            log.log(record)
        shown = {
            k.split("/")[-1]: f"{record[k]:.4g}"
            for k in ("loss", "rewards/accuracies", "rewards/margins")
            if k in record
        }
        bar.set_postfix(shown, refresh=False)
        bar.update(1)
        if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0 and step + 1 < run.total_steps:
            save_checkpoint(
                config.output_dir,
                step + 1,
                accelerator=acc,
                model=run.policy,
                optimizer=run.optimizer,
                scheduler=run.scheduler,
                state=_saved_state(run, state),
                keep=config.keep_checkpoints,
            )
        if on_step is not None:
            on_step(step + 1, record)
    bar.close()
    return record, tokens
