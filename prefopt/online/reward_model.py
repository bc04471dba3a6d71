"""Reward models: train r_φ(x, y) on preferences with a registered reward loss, save it, score with it.

    result = train_reward_model(loss="bradley_terry", data="prefs.jsonl", model="path/to/sft", lr=1e-5)
    reward = LearnedReward(result.model_path)             # a RewardFunction
    reward.score(prompts, completions)                     # float32 [B]

The model is a transformers `*ForSequenceClassification` with num_labels = 1: a causal-LM body and a
linear score head read at each sequence's last non-padding token (InstructGPT's reward model,
Ouyang et al. 2022, arXiv:2203.02155, §3.5). The loss is the registry's `bradley_terry`
(−log σ(r_w − r_l − m), with the data's optional `margin` column as m, Touvron et al. 2023,
arXiv:2307.09288, Eq. 2) on paired data, or `plackett_luce_rm` (Zhu, Jordan & Jiao 2023,
arXiv:2301.11270) on ranked data: `get_loss(config.loss, ...)` is the only loss code here.

With no model and no data (`model=None, data=None`) the RM is trained on the built-in synthetic task:
a `LlamaForSequenceClassification` shaped like the synthetic reference policy (optionally resized,
`hidden_size` / `num_layers`, for proxy reward models of several sizes as in Gao, Schulman & Hilton
2023, "Scaling Laws for Reward Model Overoptimization", arXiv:2210.10760), its body copied from the
policy (`init="policy"`) or randomly initialised (`init="scratch"`), on the task's own preference data.

Saved layout of `<output_dir>`: `final/` (weights, config, tokenizer and `prefopt_reward_model.json`:
loss, data, tokenisation, accuracies), `metrics.jsonl` (one line per logged step), `config.json` and
`result.json`. `final/` is written into a temporary sibling and renamed into place.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from prefopt.atomic import write_json_atomic
from prefopt.online.checkpoint import load_online_checkpoint, save_online_checkpoint
from prefopt.online.learned_reward import LearnedReward, check_reward_model, load_reward_model, point_pooling_at_pad
from prefopt.online.reward_config import (
    METADATA_FILE,
    RewardModelConfig,
    load_rows,
    read_data,
    resolve_config,
    synthetic_task_for,
)
from prefopt.online.reward_data import loss_arguments, pad_token_id, reward_batches, sequence_scores
from prefopt.online.reward_eval import RewardModelResult, _batch_metrics, _save, evaluate_reward_model
from prefopt.preflight import load_pretrained
from prefopt.progress import library_progress_bars
from prefopt.registry import get_loss, loss_spec
from prefopt.threads import torch_threads
from prefopt.train.checkpoint import check_no_earlier_run, check_same_settings, latest_checkpoint
from prefopt.train.logs import open_metrics, truncate_metrics
from prefopt.train.precision import Precision, resolve_precision
from prefopt.train.presets import OptimizerSettings, build_optimizer, build_scheduler
from prefopt.train.run_folder import claim_run_folder

__all__ = [
    "RewardModelConfig",
    "RewardModelResult",
    "train_reward_model",
    "evaluate_reward_model",
    "synthetic_reward_model",
    "LearnedReward",
    "load_reward_model",
    "METADATA_FILE",
]


def synthetic_reward_model(
    policy_model: Any,
    *,
    init: str = "policy",
    hidden_size: int | None = None,
    num_layers: int | None = None,
    seed: int = 0,
) -> Any:
    """A `LlamaForSequenceClassification` (num_labels = 1) shaped like the synthetic reference policy.

    Args:
        policy_model: the synthetic reference policy (a `LlamaForCausalLM`).
        init: "policy" copies the policy's body (embeddings, layers, norm) into the RM; "scratch" keeps
            the random initialisation. The score head is always random (seeded by `seed`).
        hidden_size, num_layers: resize the RM (from-scratch proxy RMs); the MLP width scales with
            hidden_size, the head count is the policy's (hidden_size must divide by it).
    """
    from transformers import LlamaForSequenceClassification  # heavy: loaded on first use

    values = policy_model.config.to_dict()
    for key in ("id2label", "label2id", "architectures", "_name_or_path", "transformers_version", "dtype"):
        values.pop(key, None)
    heads = values["num_attention_heads"]
    if hidden_size is not None:
        if hidden_size % heads or (hidden_size // heads) % 2:
            raise ValueError(
                f"RewardModelConfig.hidden_size={hidden_size}: must be a multiple of 2 × the "
                f"policy's {heads} attention heads (an even head size), e.g. {heads * 16}"
            )
        scale = values["intermediate_size"] / values["hidden_size"]
        values.update(
            hidden_size=hidden_size, head_dim=hidden_size // heads, intermediate_size=max(1, round(scale * hidden_size))
        )
    if num_layers is not None:
        values["num_hidden_layers"] = num_layers
    config = type(policy_model.config).from_dict({**values, "num_labels": 1})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForSequenceClassification(config)
    if init == "policy":
        model.model.load_state_dict(policy_model.model.state_dict())
    return model


def _load_model(config: RewardModelConfig, model: Any, tokenizer: Any, task: Any) -> tuple[Any, Any]:
    """(reward model, tokenizer): given in memory, loaded from `config.model`, or built for the synthetic task."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer  # heavy: loaded on first use

    if model is None and config.model is not None:
        if tokenizer is None and config.tokenizer is not None:
            tokenizer = load_pretrained(AutoTokenizer, config.tokenizer, "RewardModelConfig.tokenizer")
        elif tokenizer is None:
            tokenizer = load_pretrained(
                AutoTokenizer, config.model, "RewardModelConfig.model (its tokenizer)", revision=config.model_revision
            )
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token  # the saved tokenizer then pads the way scoring expects
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)  # the score head's random initialisation
            model = load_pretrained(
                AutoModelForSequenceClassification,
                config.model,
                "RewardModelConfig.model",
                revision=config.model_revision,
                num_labels=1,
            )
        model.config.pad_token_id = pad_token_id(tokenizer)
    elif model is None:
        model = synthetic_reward_model(
            task.policy.model,
            init=config.init,
            hidden_size=config.hidden_size,
            num_layers=config.num_layers,
            seed=config.seed,
        )
        tokenizer = tokenizer or task.policy.tokenizer
    if tokenizer is None:
        raise ValueError("train_reward_model: pass the tokenizer together with an in-memory model")
    check_reward_model(model, "train_reward_model")
    point_pooling_at_pad(model, tokenizer)
    return model, tokenizer


def _device(config: RewardModelConfig) -> torch.device:
    return torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def train_reward_model(
    config: RewardModelConfig | None = None,
    *,
    model: Any = None,
    tokenizer: Any = None,
    dataset: Any = None,
    eval_dataset: Any = None,
    **settings: Any,
) -> RewardModelResult:
    """Train a reward model with a registered reward loss; save it under `<output_dir>/final`.

    Args:
        config: a `RewardModelConfig`; `settings` (its field names) override it or build one.
        model, tokenizer: an in-memory `*ForSequenceClassification` (num_labels = 1) and its tokenizer,
            instead of `config.model` / the synthetic task; a string `model` is a path (= config.model).
        dataset, eval_dataset: in-memory preference data (`datasets.Dataset`/`DatasetDict` or anything
            `prefopt.data.load_preferences` takes) instead of `config.data` and its eval split.
    Returns:
        `RewardModelResult` (eval accuracy and margin, train accuracy, paths, steps, time).

    Each step: S = K·B sequences of B rows → scores [S] → `get_loss(loss)(**inputs)` → AdamW step with
    linear warm-up and decay (`prefopt.train.presets`), gradient clipping at `max_grad_norm`.
    """
    if isinstance(model, (str, os.PathLike)):
        settings["model"], model = str(model), None
    config = resolve_config(config, settings)
    config.preflight()  # output folder, model folder, device: before anything is built or written
    threads = config.num_threads if config.num_threads is not None else (1 if config.model is None else None)
    with torch_threads(threads), library_progress_bars(config.progress):
        data = None
        if dataset is not None or config.data is not None:  # bad data stops the run before the run folder exists
            data = read_data(config, loss_spec(config.loss).kind, dataset, eval_dataset)
        # one run per folder (`prefopt.train.run_folder`): a second run on output_dir stops at once
        with claim_run_folder(config.output_dir):
            return _train(config, model, tokenizer, dataset, eval_dataset, data)


def _train(
    config: RewardModelConfig, model: Any, tokenizer: Any, dataset: Any, eval_dataset: Any, data: Any = None
) -> RewardModelResult:
    started = time.perf_counter()
    kind = loss_spec(config.loss).kind
    loss_fn = get_loss(config.loss, **config.loss_hparams)
    sources = {
        "model": config.model or ("in-memory" if model is not None else "synthetic"),
        "data": config.data or ("in-memory" if dataset is not None else "synthetic"),
    }
    needs_task = "synthetic" in sources.values()
    task = synthetic_task_for(config) if needs_task else None
    model, tokenizer = _load_model(config, model, tokenizer, task)
    tokenize_config = config.tokenize_config(model)
    train_rows, eval_rows = load_rows(config, kind, tokenizer, tokenize_config, dataset, eval_dataset, task, data)
    pad = pad_token_id(tokenizer)
    eval_batches = reward_batches(eval_rows, config.eval_batch_size, pad=pad) if eval_rows else []
    per_epoch = math.ceil(len(train_rows) / config.batch_size)
    total_steps = max(1, math.ceil(config.resolved_epochs * per_epoch))
    device = _device(config)
    precision = resolve_precision(
        model,
        master_weights=config.master_weights,
        mixed_precision=config.mixed_precision,
        save_dtype=config.save_dtype,
        device=device,
    )
    precision.cast(model).to(device).train()  # trainable weights in the master dtype
    settings = OptimizerSettings(
        "adamw",
        lr=config.resolved_lr,
        weight_decay=config.weight_decay,
        schedule="linear",
        warmup_ratio=config.warmup_ratio,
        max_grad_norm=config.max_grad_norm,
        source="prefopt train-rm",
    )
    optimizer = build_optimizer(model.parameters(), settings)
    scheduler = build_scheduler(optimizer, settings, total_steps)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_resumable(config, out)
    write_json_atomic(out / "config.json", config.to_dict())
    if config.progress:
        print(f"prefopt train-rm: {precision.summary(model)}", file=sys.stderr, flush=True)
    history = _loop(
        config, model, loss_fn, kind, train_rows, pad, optimizer, scheduler, total_steps, device, started, precision
    )
    last_pass = history[-per_epoch:]
    train_accuracy = sum(r["accuracy"] * r["examples"] for r in last_pass) / sum(r["examples"] for r in last_pass)
    with precision.autocast_context(device):
        evaluation = evaluate_reward_model(model, eval_batches, loss_fn, kind) if eval_batches else None
    model_path = _save(
        config, sources, model, tokenizer, tokenize_config, evaluation, train_accuracy, total_steps, precision
    )
    result = RewardModelResult(
        model_path=model_path,
        metrics_path=out / "metrics.jsonl",
        eval_accuracy=evaluation["accuracy"] if evaluation else None,
        eval_margin=evaluation["margin"] if evaluation else None,
        eval_loss=evaluation["loss"] if evaluation else None,
        eval_examples=int(evaluation["examples"]) if evaluation else 0,
        train_accuracy=train_accuracy,
        final_metrics=history[-1],
        steps=total_steps,
        wall_time_s=time.perf_counter() - started,
        num_parameters=sum(p.numel() for p in model.parameters()),
        precision=precision.describe(model),
    )
    write_json_atomic(out / "result.json", result.to_dict())
    return result


# Settings that may change between a run and its resumption (they do not change what a step computes).
_RESUMABLE = (
    "resume",
    "progress",
    "checkpoint_every",
    "keep_checkpoints",
    "log_every",
    "num_threads",
    "device",
    "save_dtype",
)


def _check_resumable(config: RewardModelConfig, out: Path) -> None:
    """On resume, refuse settings that differ from the saved run's (the checkpoint would not fit them)."""
    if config.resume:
        check_same_settings(out, config.to_dict(), _RESUMABLE, type(config))


def _loop(
    config: RewardModelConfig,
    model: Any,
    loss_fn: Any,
    kind: str,
    rows: list[dict[str, Any]],
    pad: int,
    optimizer: Any,
    scheduler: Any,
    total_steps: int,
    device: torch.device,
    started: float,
    precision: Precision,
) -> list[dict[str, Any]]:
    """The training loop: scores → loss → backward → clip → step; returns every step's record.

    Resumable: a checkpoint holds the weights, the optimiser and schedule, and the records so far; the data
    position is replayed (each epoch's batch order comes from one seeded generator, drawn in step order)."""
    out = Path(config.output_dir)
    states = {"optimizer": optimizer, "scheduler": scheduler}  # both have state_dict / load_state_dict
    history: list[dict[str, Any]] = []
    start = 0
    found = latest_checkpoint(out) if config.resume else None
    if found is not None:
        state = load_online_checkpoint(found, policy=model, critic=None, optimizers=states)
        start, history = int(state["step"]), list(state["history"])
        truncate_metrics(out / "metrics.jsonl", start)
    else:  # from step 0: a fresh run, or a resumed one killed before its first checkpoint
        if not config.resume:
            check_no_earlier_run(out)
        truncate_metrics(out / "metrics.jsonl", 0)
    generator = torch.Generator().manual_seed(config.seed)
    epoch, batches = 0, []
    for _ in range(start):  # replay the data order up to the checkpoint's step
        if not batches:
            batches, epoch = reward_batches(rows, config.batch_size, pad=pad, generator=generator), epoch + 1
        batches.pop(0)
    bar = tqdm(
        total=total_steps,
        initial=start,
        desc=f"train-rm {config.loss}",
        disable=not config.progress,
        dynamic_ncols=True,
    )
    with open_metrics(out / "metrics.jsonl") as log:
        for step in range(start, total_steps):
            if not batches:
                batches, epoch = reward_batches(rows, config.batch_size, pad=pad, generator=generator), epoch + 1
            record = _step(
                config, model, loss_fn, kind, batches.pop(0).to(device), optimizer, scheduler, step, precision
            )
            record.update(epoch=epoch, elapsed_s=time.perf_counter() - started)
            history.append(record)
            if (step + 1) % config.log_every == 0 or step + 1 == total_steps:
                log.write(json.dumps(record) + "\n")
                log.flush()
            if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0 and step + 1 < total_steps:
                save_online_checkpoint(
                    out,
                    step + 1,
                    policy=model,
                    critic=None,
                    optimizers=states,
                    state={"history": history},
                    keep=config.keep_checkpoints,
                )
            bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['accuracy']:.2f}")
            bar.update(1)
    bar.close()
    return history


def _step(
    config: RewardModelConfig,
    model: Any,
    loss_fn: Any,
    kind: str,
    batch: Any,
    optimizer: Any,
    scheduler: Any,
    step: int,
    precision: Precision,
) -> dict[str, Any]:
    """One optimiser step on `batch` (the forward under `precision`'s autocast); returns its record (loss,
    accuracy, lr, grad_norm, ...)."""
    with precision.autocast_context(batch.input_ids.device):
        scores = sequence_scores(model, batch)  # [S] float32
    output = loss_fn(**loss_arguments(kind, scores, batch))
    if not torch.isfinite(output.loss):
        raise FloatingPointError(
            f"train-rm: non-finite loss {float(output.loss)} at step {step + 1}; "
            f"lower the learning rate (lr={config.resolved_lr:g})"
        )
    optimizer.zero_grad(set_to_none=True)
    output.loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm or math.inf)
    optimizer.step()
    record = {
        "step": step + 1,
        **_batch_metrics(output, batch.num_groups),
        "lr": scheduler.get_last_lr()[0],
        "grad_norm": float(norm),
    }
    scheduler.step()
    return record
