"""`TrainConfig`: every setting of an offline training run, one frozen dataclass validated on construction.

The library takes keyword arguments (`prefopt.train.train(loss="dpo", lr=1e-4, ...)` builds one);
YAML and argparse live only in `prefopt.cli.train`. A config is JSON-able (`to_dict`) and is saved
beside each run's results.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from prefopt.data.schema import IDENTICAL_POLICIES
from prefopt.data.templates import resolve_chat_template
from prefopt.data.tokenize import TokenizeConfig
from prefopt.kernels import BACKENDS
from prefopt.preflight import (
    check_engine_backend,
    check_model_source,
    check_output_dir,
    check_tokenizer_source,
    expand_user,
)
from prefopt.registry import list_losses, loss_spec
from prefopt.settings import Settings, SettingsError, check_int, is_finite_number
from prefopt.train.precision import MASTER_WEIGHTS, MIXED_PRECISION, SAVE_DTYPES
from prefopt.train.presets import OptimizerSettings, optimizer_preset

__all__ = ["TrainConfig", "MIXED_PRECISION", "QUANTIZATION", "REPORT_TO", "SHARE_PROMPT"]

QUANTIZATION = ("4bit", "8bit")
SHARE_PROMPT = ("auto", "on", "off")
REPORT_TO = ("tensorboard", "wandb")


@dataclass(frozen=True)
class TrainConfig(Settings):
    """Settings of one offline run (engine → loss → backward → step for any registered offline loss).

    Loss and data:
        loss: registered loss name (`prefopt losses`); its kind picks the data format.
        loss_hparams: hyper-parameters of the loss (paper defaults for the rest).
        data: a preference file/folder/Hub name; None = the built-in synthetic task.
        data_split: split of `data` to train on (default "train"; slices like "train[:1000]" work).
        data_revision: the git revision (commit, tag or branch) of a Hub dataset `data`, to pin its version.
        identical: pairs whose chosen equals rejected: "warn" (kept, counted in a warning), "drop" or "error".
        max_length, max_prompt_length: token caps (`prefopt.data.TokenizeConfig`).
        prompt_truncation: a prompt over max_prompt_length keeps its last tokens ("keep_end"), its first
            ("keep_start"), drops its row ("drop") or stops the run ("error").
        chat_template: the chat template for conversational data: a built-in name ("zephyr", "halos") or Jinja
            text, replacing the tokenizer's (None: the tokenizer's own). `prefopt.data.templates`.
        system_prompt: a system message put first in every conversational prompt without one ("": an empty
            system turn; None: none).
        assistant_header: where the chat template's assistant header goes: "prompt" (not scored) or
            "completion" (scored and counted in the completion's length, as SimPO renders it).
        packed: collate micro-batches as one packed row instead of right-padded rows.
        share_prompt: read each prompt once for its chosen and rejected (or K ranked) completions, behind a
            block mask (`prefopt.data.prompt_sharing`): "auto" (batches where that runs a fifth fewer positions,
            on a model whose attention takes the mask), "on" (every paired or ranked batch; a model that cannot
            take the mask is refused) or "off".
        engine_backend: kernel of the fused output head ("auto": Triton on CUDA, chunked elsewhere;
            "reference": plain torch, faster on CPU for small batches, with the full logits in memory).
        fused_loss: run a separable loss (`LossSpec.separable`; `prefopt losses` shows which) through the
            loss-fused head, which forms the hidden and weight gradients while it computes the log-probs: three
            head matmuls instead of four, the same numbers (docs/engine.md, "The loss-fused head"). False: the
            head's usual forward and backward. Not taken on the logits path or with engine_backend="reference".
    Model and reference:
        model: HF causal LM path or Hub name; None = the synthetic task's reference policy.
        tokenizer: tokenizer path (default: `model`'s).
        reference: separate reference model path; None = the initial policy (a frozen copy, or with
            LoRA the policy with its adapter disabled).
        model_revision, reference_revision: the hub revision (branch, tag or commit) to load `model` (and its
            tokenizer) and `reference` at, when they are hub names; None = the default branch.
        ref_cache: precompute reference log-probs once into a `ReferenceCache` (False: on the fly).
        ref_cache_dir: folder of cache files (default `<output_dir>/ref_cache`); files are keyed by data,
            tokenisation and reference weights, so runs of several losses on the same data can share one.
        lora_r, lora_alpha, lora_dropout, lora_targets: PEFT LoRA (lora_r = 0: full fine-tuning).
        quantization: "4bit" / "8bit" bitsandbytes loading (needs LoRA), None for none.
        gradient_checkpointing: recompute activations in backward.
        mixed_precision: "no" (bf16 autocast only for a bf16 checkpoint), "bf16" (always) or "auto" (also on
            CUDA devices that support bf16); `prefopt.train.precision`.
        master_weights: "fp32" (default: trainable weights, gradients and optimiser state in fp32, the forward
            under bf16 autocast where bf16 applies) or "bf16" (pure bf16: half the memory, but updates smaller
            than half a bf16 step of the weight round away; docs/training.md, "Training precision").
        save_dtype: dtype of final/: "original" (each weight in the dtype it was loaded in) or "fp32".
    Optimisation:
        batch_size: GLOBAL examples per optimiser step (pairs / rows / prompts), over all processes and
            accumulation steps; per-example losses are summed and divided by it.
        micro_batch_size: examples per forward on one process (default: batch_size / processes,
            i.e. no accumulation); accumulation steps = batch_size / (micro_batch_size · processes).
        epochs, max_steps: run length (max_steps wins when set).
        preset: optimiser/schedule preset (`prefopt.train.presets`); None = "synthetic" on the
            synthetic task, else the loss's own.
        optimizer, lr, weight_decay, schedule, warmup_steps, warmup_ratio, max_grad_norm: overrides of
            the preset (None keeps the preset's value).
        seed: weights of LoRA/heads, data order, dropout.
    Output:
        output_dir: run folder (metrics.jsonl, checkpoints/, final/, result.json, config.json).
        checkpoint_every: save a checkpoint every N optimiser steps (0: only the final one).
        keep_checkpoints: how many recent checkpoints to keep.
        resume: continue from the newest checkpoint in `output_dir` (exactly: same final metrics).
        log_every: write metrics every N steps; progress: tqdm bar; report_to: "tensorboard", "wandb".
        cpu: force the CPU (multi-process CPU runs need it, or ACCELERATE_USE_CPU=1).
        fsdp: shard the policy with FSDP2 (`torch.distributed.fsdp.fully_shard`) instead of DDP
            (`prefopt.train.fsdp`); full-parameter runs, resumed without it.
    """

    loss: str = "dpo"
    loss_hparams: Mapping[str, Any] = field(default_factory=dict)
    data: str | None = None
    data_split: str | None = None
    data_revision: str | None = None
    identical: str = "warn"
    max_length: int | None = 512
    max_prompt_length: int | None = 256
    prompt_truncation: str = "keep_end"
    chat_template: str | None = None
    system_prompt: str | None = None
    assistant_header: str = "prompt"
    packed: bool = False
    share_prompt: str = "auto"
    engine_backend: str = "auto"
    fused_loss: bool = True
    model: str | None = None
    tokenizer: str | None = None
    reference: str | None = None
    model_revision: str | None = None
    reference_revision: str | None = None
    ref_cache: bool = True
    ref_cache_dir: str | None = None
    lora_r: int = 0
    lora_alpha: float | None = None
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] | None = None
    quantization: str | None = None
    gradient_checkpointing: bool = False
    mixed_precision: str = "no"
    master_weights: str = "fp32"
    save_dtype: str = "original"
    batch_size: int = 16
    micro_batch_size: int | None = None
    epochs: float = 1.0
    max_steps: int | None = None
    preset: str | None = None
    optimizer: str | None = None
    lr: float | None = None
    weight_decay: float | None = None
    schedule: str | None = None
    warmup_steps: int | None = None
    warmup_ratio: float | None = None
    max_grad_norm: float | None = None
    seed: int = 0
    output_dir: str = "runs/train"
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    resume: bool = False
    log_every: int = 1
    progress: bool = True
    report_to: tuple[str, ...] = ()
    cpu: bool = False
    fsdp: bool = False

    def __post_init__(self) -> None:
        self._check_loss()
        self._check_counts()
        self._check_data_plan()
        self._check_backend()
        self._check_precision()
        self._check_lora()
        self._check_reporting()
        self._check_sources()
        self._check_fsdp()
        self.optimizer_settings()  # validates preset name and overrides now, not at step 0

    def _check_loss(self) -> None:
        """An offline log-prob loss, with its hyper-parameters validated (and copied)."""
        spec = loss_spec(self.loss)  # unknown names raise, listing the valid ones
        if spec.kind == "rollout" or spec.scores != "logps":
            what = "an online (rollout) loss" if spec.kind == "rollout" else "a reward-model loss (reward scores)"
            raise ValueError(
                f"TrainConfig.loss={self.loss!r} is {what}; the offline trainer trains policies on log-probs of "
                f"preference data. Offline losses: {', '.join(_offline_losses())}."
            )
        object.__setattr__(self, "loss_hparams", dict(spec.validate_hparams(dict(self.loss_hparams))))

    def _check_counts(self) -> None:
        for name in ("batch_size", "log_every", "keep_checkpoints"):
            check_int(f"TrainConfig.{name}", getattr(self, name), minimum=1)
        for name in ("micro_batch_size", "max_steps", "max_length", "max_prompt_length"):
            if getattr(self, name) is not None:
                check_int(f"TrainConfig.{name}", getattr(self, name), minimum=1)
        for name in ("lora_r", "checkpoint_every", "seed"):
            check_int(f"TrainConfig.{name}", getattr(self, name), minimum=0)
        if not (self.epochs > 0 and math.isfinite(self.epochs)):
            raise ValueError(f"TrainConfig.epochs={self.epochs!r} must be a positive number")

    def _check_data_plan(self) -> None:
        """Micro-batches that split the batch, the identical-pair policy, and a data revision only with data."""
        if self.micro_batch_size is not None and self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"TrainConfig: batch_size={self.batch_size} is not a multiple of micro_batch_size="
                f"{self.micro_batch_size}; the global batch must split into equal micro-batches"
            )
        if self.share_prompt not in SHARE_PROMPT:
            raise SettingsError(
                f"TrainConfig.share_prompt={self.share_prompt!r}: use one of {SHARE_PROMPT} (--share-prompt)"
            )
        if self.identical not in IDENTICAL_POLICIES:
            raise SettingsError(
                f"TrainConfig.identical={self.identical!r}: use one of {IDENTICAL_POLICIES} (--identical)"
            )
        try:  # the token caps are checked with the other sources (`_check_sources`)
            TokenizeConfig(
                prompt_truncation=self.prompt_truncation,
                system_prompt=self.system_prompt,
                assistant_header=self.assistant_header,
            )
            resolve_chat_template(self.chat_template)
        except ValueError as err:
            raise SettingsError(str(err).replace("TokenizeConfig.", "TrainConfig.")) from None
        if self.data_revision is not None and self.data is None:
            raise SettingsError(
                f"TrainConfig.data_revision={self.data_revision!r} pins a hub revision of data, which "
                "is not set; give data (a hub dataset name, --data) or drop data_revision"
            )

    def _check_backend(self) -> None:
        if self.engine_backend not in BACKENDS:
            raise ValueError(f"TrainConfig.engine_backend={self.engine_backend!r}: use one of {BACKENDS}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"TrainConfig.mixed_precision={self.mixed_precision!r}: use one of {MIXED_PRECISION}")

    def _check_lora(self) -> None:
        """Quantisation (which needs LoRA) and the LoRA dropout."""
        if self.quantization is not None:
            if self.quantization not in QUANTIZATION:
                raise ValueError(f"TrainConfig.quantization={self.quantization!r}: use one of {QUANTIZATION} or None")
            if self.lora_r == 0:
                raise ValueError(
                    "TrainConfig: quantization needs LoRA (set lora_r > 0): quantised weights are not trainable"
                )
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"TrainConfig.lora_dropout={self.lora_dropout!r} must be in [0, 1)")

    def _check_reporting(self) -> None:
        """Known report_to targets; report_to and lora_targets kept as tuples."""
        bad = [r for r in self.report_to if r not in REPORT_TO]
        if bad:
            raise ValueError(f"TrainConfig.report_to has {bad}; valid: {REPORT_TO}")
        object.__setattr__(self, "report_to", tuple(self.report_to))
        if self.lora_targets is not None:
            object.__setattr__(self, "lora_targets", tuple(self.lora_targets))

    def _check_precision(self) -> None:
        if self.master_weights not in MASTER_WEIGHTS:
            raise ValueError(f"TrainConfig.master_weights={self.master_weights!r}: use one of {MASTER_WEIGHTS}")
        if self.save_dtype not in SAVE_DTYPES:
            raise ValueError(f"TrainConfig.save_dtype={self.save_dtype!r}: use one of {SAVE_DTYPES}")
        if self.master_weights == "bf16" and self.quantization is not None:
            raise ValueError(
                f"TrainConfig: master_weights='bf16' with quantization={self.quantization!r}: only the LoRA adapters "
                "train on a quantised base, and keeping them in fp32 costs a few MB; in bf16 their small updates "
                "would round away. Use master_weights='fp32' (the default)"
            )

    def tokenize_config(self) -> TokenizeConfig:
        """The tokenisation settings of this run (token caps, prompt truncation, system turn, assistant header)."""
        return TokenizeConfig(
            max_length=self.max_length,
            max_prompt_length=self.max_prompt_length,
            prompt_truncation=self.prompt_truncation,
            system_prompt=self.system_prompt,
            assistant_header=self.assistant_header,
        )

    @property
    def synthetic(self) -> bool:
        """True when the run uses the built-in synthetic task (no data and no model given)."""
        return self.data is None and self.model is None

    def optimizer_settings(self) -> OptimizerSettings:
        """The preset (default: "synthetic" on the synthetic task, else the loss's) with this config's overrides."""
        preset = self.preset or ("synthetic" if self.synthetic else self.loss)
        return optimizer_preset(preset).override(
            optimizer=self.optimizer,
            lr=self.lr,
            weight_decay=self.weight_decay,
            schedule=self.schedule,
            warmup_steps=self.warmup_steps,
            warmup_ratio=self.warmup_ratio,
            max_grad_norm=self.max_grad_norm,
        )

    def _check_sources(self) -> None:
        """Paths with `~` expanded, revisions only with a model to pin, token caps that leave room for completions,
        finite LoRA α."""
        for name in ("data", "model", "tokenizer", "reference", "ref_cache_dir", "output_dir"):
            object.__setattr__(self, name, expand_user(getattr(self, name)))
        if self.tokenizer is not None and self.model is None:
            raise SettingsError(
                "TrainConfig.tokenizer is set but model is None: the synthetic task brings its own "
                "tokenizer; give model too, or drop tokenizer"
            )
        for revision, source in (("model_revision", "model"), ("reference_revision", "reference")):
            if getattr(self, revision) is not None and getattr(self, source) is None:
                raise SettingsError(
                    f"TrainConfig.{revision}={getattr(self, revision)!r} pins a hub revision of "
                    f"{source}, which is not set; give {source} (a hub name) or drop {revision}"
                )
        if self.lora_alpha is not None and not (is_finite_number(self.lora_alpha) and self.lora_alpha > 0):
            raise SettingsError(f"TrainConfig.lora_alpha={self.lora_alpha!r} must be a positive finite number or None")
        if (
            self.max_length is not None
            and self.max_prompt_length is not None
            and self.max_prompt_length >= self.max_length
        ):
            raise SettingsError(
                f"TrainConfig: max_prompt_length={self.max_prompt_length} leaves no room for "
                f"completions within max_length={self.max_length}; make max_prompt_length smaller "
                "than max_length (--max-prompt-length, --max-length)"
            )
        if not isinstance(self.output_dir, str) or not self.output_dir:
            raise SettingsError(f"TrainConfig.output_dir={self.output_dir!r} must be a folder path")

    def _check_fsdp(self) -> None:
        """What FSDP (`prefopt.train.fsdp`) does not run: LoRA (π_ref, the adapter-disabled base, is scored outside
        the sharded forward) and resuming sharded (a checkpoint holds full weights: resume it without fsdp)."""
        if self.fsdp and self.lora_r:
            raise SettingsError(
                f"TrainConfig.fsdp=True with lora_r={self.lora_r}: FSDP shards full-parameter runs "
                "only; drop fsdp (a LoRA run's trainable weights are small) or set lora_r=0"
            )
        if self.fsdp and self.resume:
            raise SettingsError(
                "TrainConfig.fsdp=True with resume=True: a sharded run is not resumed sharded; its "
                "checkpoints hold full weights, resume it with fsdp=False (same processes)"
            )

    def preflight(self) -> None:
        """What this run needs from this machine, before anything is built: an output folder it can create,
        complete model folders (or reachable hub names) and an engine backend that runs here.

        Raises:
            SettingsError: naming the setting and the fix.
        """
        check_output_dir(self.output_dir, "TrainConfig.output_dir (--out)")
        if self.ref_cache_dir is not None:
            check_output_dir(self.ref_cache_dir, "TrainConfig.ref_cache_dir")
        if self.model is not None:
            check_model_source(
                self.model, "TrainConfig.model", revision=self.model_revision, tokenizer=self.tokenizer is None
            )
        if self.tokenizer is not None:
            check_tokenizer_source(self.tokenizer, "TrainConfig.tokenizer")
        if self.reference is not None:
            check_model_source(
                self.reference, "TrainConfig.reference", revision=self.reference_revision, tokenizer=False
            )
        check_engine_backend(self.engine_backend, "TrainConfig.engine_backend", cpu=self.cpu)


def _offline_losses() -> list[str]:
    return [n for n in list_losses() if loss_spec(n).kind != "rollout" and loss_spec(n).scores == "logps"]
