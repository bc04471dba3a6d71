"""Everything a run needs before its first step: accelerator, data plan, policy, reference, optimiser.

The loop reads only the loss's declaration (`LossSpec`: kind, needs_reference, extra inputs,
batch_dependent); nothing here or in the loop tests a loss name.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from prefopt.data import synthetic, tokenize_preferences
from prefopt.data.templates import resolve_chat_template
from prefopt.data.tokenize import tokenization_fingerprint
from prefopt.engine import model_identity
from prefopt.engine.head import unwrap_peft
from prefopt.engine.prompt_sharing import PromptSharing
from prefopt.errors import DistributedSetupError, SettingsError
from prefopt.preflight import load_pretrained
from prefopt.registry import BoundLoss, LossSpec, get_loss, loss_spec
from prefopt.train.config import TrainConfig
from prefopt.train.data import BatchPlan, load_train_rows
from prefopt.train.fsdp import check_launch_plugin, shard_scoring_module
from prefopt.train.model import (
    Reference,
    ScoringModule,
    build_reference,
    frozen_copy,
    live_reference,
    load_model_and_tokenizer,
    prepare_policy,
)
from prefopt.train.precision import Precision, resolve_precision
from prefopt.train.presets import OptimizerSettings, build_optimizer, build_scheduler
from prefopt.train.step import check_loop_can_feed, needs_reference_head

__all__ = ["DistributedSetupError", "Run", "load_user_rows", "make_accelerator", "setup_run"]


def _mixed_precision(setting: str) -> str:
    if setting != "auto":
        return setting
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def make_accelerator(config: TrainConfig) -> Any:
    """An `Accelerator` for `config`, refusing a launch whose processes would train unsynchronised.

    `torchrun --nproc_per_node=2` on a CPU machine without `ACCELERATE_USE_CPU=1` (or `cpu=True`) makes
    Accelerate see one process in each of two copies that never communicate: WORLD_SIZE (from the
    launcher) ≠ `accelerator.num_processes` is that case, and it raises here.
    """
    from accelerate import Accelerator  # heavy: loaded on first use
    from accelerate.state import AcceleratorState  # heavy: loaded on first use

    launched = int(os.environ.get("WORLD_SIZE", "1"))
    precision = _mixed_precision(config.mixed_precision)
    state = AcceleratorState._shared_state
    if launched <= 1 and state and (state.get("_mixed_precision") != precision or state.get("_cpu") != config.cpu):
        # Accelerate keeps one global state per process and refuses a second Accelerator with other settings;
        # a single process running several trainings (e.g. `prefopt compare`) may change them between runs.
        AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(cpu=config.cpu, mixed_precision=precision)
    check_launch_plugin(accelerator)  # an FSDP / DeepSpeed config that Accelerate ignored (on CPU)
    if launched != accelerator.num_processes:
        raise DistributedSetupError(
            f"the launcher started {launched} processes (WORLD_SIZE={launched}) but Accelerate runs "
            f"{accelerator.num_processes}: they would train unsynchronised copies. On CPU set ACCELERATE_USE_CPU=1 "
            "(or TrainConfig(cpu=True) / `prefopt train --cpu`) under torchrun, or pass prefopt's --cpu under "
            "`accelerate launch --multi_gpu --num_processes N -m prefopt.train --cpu ...` (`accelerate launch --cpu` "
            "and MULTI_CPU configs start one process)"
        )
    return accelerator


@dataclass(kw_only=True)
class Run:
    """The pieces of a run the loop uses (built by `setup_run`).

    The policy has three handles, one set of parameters:
        policy: the model being trained (LoRA-wrapped, in its master-weight dtype): what the optimiser
            steps, gradients are clipped on and checkpoints save.
        policy_logps: `ScoringModule(policy)`, forward(batch) → `SequenceLogProbs` under the compute dtype's
            autocast, outside Accelerate's wrapper (passes that need no gradient synchronisation).
        wrapped_policy_logps: `accelerator.prepare(policy_logps)`, the same forward inside DDP/FSDP: the
            training forward, so that gradient synchronisation hooks see it.
    """

    config: TrainConfig
    spec: LossSpec
    loss: BoundLoss
    accelerator: Any
    policy: nn.Module
    policy_logps: ScoringModule
    wrapped_policy_logps: nn.Module
    tokenizer: Any
    plan: BatchPlan
    reference: Reference | None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    settings: OptimizerSettings
    total_steps: int
    precision: Precision


def load_user_rows(config: TrainConfig, dataset: Any = None) -> Any:
    """The user's training rows (`dataset`, else `config.data`) loaded and validated for the loss's data kind;
    None when the run uses the synthetic task's data. `train` calls it before it creates or locks the run
    folder, so bad data stops the run with nothing written."""
    source = dataset if dataset is not None else config.data
    if source is None:
        return None
    spec = loss_spec(config.loss)
    return load_train_rows(
        source,
        kind=spec.kind,
        loss=spec.name,
        split=config.data_split,
        revision=config.data_revision,
        identical=config.identical,
    )


def _training_rows(
    config: TrainConfig, spec: LossSpec, model: Any, tokenizer: Any, dataset: Any, rows: Any
) -> tuple[Any, Any, Any]:
    """(model, tokenizer, rows): given objects, the configured paths, or the synthetic task. The data is
    loaded (and checked) first: a bad file should stop the run before any model is loaded."""
    if rows is None:
        rows = load_user_rows(config, dataset)
    if model is None and config.model is not None:
        model, tokenizer = load_model_and_tokenizer(config)
    if model is None or rows is None:
        task = synthetic.synthetic_task(seed=config.seed, progress=config.progress)
        model, tokenizer = (task.policy.model, task.policy.tokenizer) if model is None else (model, tokenizer)
        if rows is None:
            rows = load_train_rows(
                task.preferences.dataset(spec.kind),
                kind=spec.kind,
                loss=spec.name,
                split=config.data_split,
                identical=config.identical,
            )
    if tokenizer is None:
        raise ValueError("train: pass the tokenizer together with an in-memory model")
    if config.chat_template is not None:  # the run's template replaces the tokenizer's (saved with final/ too)
        tokenizer = copy.deepcopy(tokenizer)  # a copy: the caller's (or the synthetic task's) stays as it was
        tokenizer.chat_template = resolve_chat_template(config.chat_template)
    return model, tokenizer, rows


def share_prompt_setting(config: TrainConfig, model: nn.Module) -> bool | Literal["auto"]:
    """`TrainConfig.share_prompt` for the collator: "off" → False; "auto" → "auto" (per batch) when the model's
    attention takes the block mask, else False; "on" → True, or SettingsError naming why the model cannot."""
    if config.share_prompt == "off":
        return False
    unsupported = PromptSharing.of(unwrap_peft(model)).unsupported
    if unsupported is None:
        return True if config.share_prompt == "on" else "auto"
    if config.share_prompt == "on":
        raise SettingsError(f"TrainConfig.share_prompt='on': {unsupported}; use --share-prompt auto or off")
    return False


def _plan(
    config: TrainConfig, tokenizer: Any, rows: Any, num_processes: int, share: bool | Literal["auto"]
) -> BatchPlan:
    if config.batch_size % num_processes:
        raise DistributedSetupError(f"batch_size={config.batch_size} is not divisible by the {num_processes} processes")
    tokens = tokenize_preferences(rows, tokenizer, config.tokenize_config())
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    micro = config.micro_batch_size or config.batch_size // num_processes
    return BatchPlan(tokens, config.batch_size, micro, num_processes, config.seed, int(pad), config.packed, share)


def _check_splittable(spec: LossSpec, plan: BatchPlan) -> None:
    if spec.batch_dependent and (plan.num_processes > 1 or plan.accumulation_steps > 1):
        raise DistributedSetupError(
            f"loss {spec.name!r} depends on the whole batch (LossSpec.batch_dependent: one example's loss uses the "
            f"others), so splitting a global batch of {plan.batch_size} over {plan.num_processes} process(es) × "
            f"{plan.accumulation_steps} accumulation step(s) would change it; run it on one process with "
            "micro_batch_size = batch_size"
        )


def setup_run(
    config: TrainConfig,
    accelerator: Any,
    *,
    model: Any = None,
    tokenizer: Any = None,
    dataset: Any = None,
    reference_model: nn.Module | None = None,
    rows: Any = None,
) -> Run:
    """Build the run: data plan, policy (+LoRA) with its master weights (`prefopt.train.precision`),
    reference (+cache, in the checkpoint's dtype), optimiser and scheduler. `rows`: the training rows
    already loaded by `load_user_rows` (else they are loaded here)."""
    spec = loss_spec(config.loss)
    check_loop_can_feed(spec)
    model, tokenizer, rows = _training_rows(config, spec, model, tokenizer, dataset, rows)
    plan = _plan(config, tokenizer, rows, accelerator.num_processes, share_prompt_setting(config, model))
    _check_splittable(spec, plan)
    if reference_model is None and config.reference is not None and spec.needs_reference:
        from transformers import AutoModelForCausalLM  # heavy: loaded on first use

        reference_model = load_pretrained(
            AutoModelForCausalLM, config.reference, "TrainConfig.reference", revision=config.reference_revision
        )
    if reference_model is None and not config.lora_r and spec.needs_reference:
        reference_model = frozen_copy(model)  # π_ref = the initial policy
    identity = model_identity(reference_model if reference_model is not None else model) if spec.needs_reference else ""
    precision = resolve_precision(
        model,
        master_weights=config.master_weights,
        mixed_precision=config.mixed_precision,
        save_dtype=config.save_dtype,
        device=accelerator.device,
    )
    policy = precision.cast(prepare_policy(model, config))  # after the reference copy: π_ref keeps the loaded dtype
    policy_logps = ScoringModule(
        policy,
        compute_dtype=precision.autocast,
        backend=config.engine_backend,
        share_prompt=True if config.share_prompt == "on" else "auto",
    )
    # FSDP2 shards in place (`prefopt.train.fsdp`; Accelerate's plugin does not run on CPU); else DDP via Accelerate
    wrapped_policy_logps = (
        shard_scoring_module(policy_logps, accelerator.device) if config.fsdp else accelerator.prepare(policy_logps)
    )
    reference = None
    if spec.needs_reference:
        live = live_reference(policy, policy_logps.engine, reference_model, accelerator.device, config.engine_backend)
        reference = build_reference(
            accelerator=accelerator,
            live=live,
            use_cache=config.ref_cache,
            keep_live=bool(spec.batch_inputs) or needs_reference_head(spec),
            identity=identity,
            key_parts=(plan.tokens._fingerprint, _tokenization_key(config, tokenizer)),
            cache_dir=config.ref_cache_dir or os.path.join(config.output_dir, "ref_cache"),
            num_examples=len(plan.tokens),
            batches=lambda: _all_batches(plan, accelerator.device),
        )
    settings = config.optimizer_settings()
    optimizer = build_optimizer(policy.parameters(), settings)
    total = config.max_steps or max(1, int(config.epochs * plan.steps_per_epoch))
    scheduler = build_scheduler(optimizer, settings, total)
    return Run(
        config=config,
        spec=spec,
        loss=get_loss(spec.name, **config.loss_hparams),
        accelerator=accelerator,
        policy=policy,
        policy_logps=policy_logps,
        wrapped_policy_logps=wrapped_policy_logps,
        tokenizer=tokenizer,
        plan=plan,
        reference=reference,
        optimizer=optimizer,
        scheduler=scheduler,
        settings=settings,
        total_steps=total,
        precision=precision,
    )


def _tokenization_key(config: TrainConfig, tokenizer: Any) -> str:
    return tokenization_fingerprint(tokenizer, config.tokenize_config())


def _all_batches(plan: BatchPlan, device: torch.device) -> Any:
    """Every example once, in index order, in micro-batches (for building the reference cache)."""
    n, m = len(plan.tokens), plan.micro_batch_size
    for start in range(0, n, m):
        yield plan.collate(plan.rows(list(range(start, min(n, start + m))))).to(device)
