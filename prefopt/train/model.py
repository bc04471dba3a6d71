"""The policy and its reference for training: loading, LoRA, 4/8-bit, gradient checkpointing, the cache.

Reference policy π_ref, in order of precedence:
  1. `reference_model` given (in memory or `TrainConfig.reference` path): a separate frozen model;
  2. LoRA training: the policy with its adapter disabled (W + BA → W: the base model, no copy);
  3. otherwise: a frozen copy of the initial policy (the DPO setting: π_ref = π_SFT).
With `ref_cache` (the default) π_ref's log-probs of every training example are computed once into a
`ReferenceCache` file under the run folder and looked up by example index afterwards; the separate
model is then released unless the loss declares statistics of the global batch (`LossSpec.batch_inputs`),
which may score rows that are not in the dataset (e.g. mismatched prompt/completion pairs).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prefopt.engine import CacheKey, LogProbEngine, ReferenceCache, ReferenceLogProbs
from prefopt.hf_compat import enable_checkpointing
from prefopt.preflight import load_pretrained
from prefopt.train.config import TrainConfig

__all__ = [
    "ScoringModule",
    "Reference",
    "load_model_and_tokenizer",
    "load_causal_lm",
    "apply_lora",
    "prepare_policy",
    "live_reference",
    "frozen_copy",
    "cache_path",
    "build_reference",
]


class ScoringModule(nn.Module):
    """`nn.Module` whose forward is the engine: what Accelerate wraps (DDP/FSDP) so that gradient
    synchronisation hooks see the forward pass. forward(batch) → `SequenceLogProbs`.

    `compute_dtype` (e.g. bfloat16): the forward runs under `torch.autocast` in that dtype, so fp32 master
    weights compute in bf16 (`prefopt.train.precision`); None: in the weights' own dtype.
    """

    def __init__(self, model: nn.Module, *, compute_dtype: torch.dtype | None = None, **engine_kwargs: Any) -> None:
        super().__init__()
        self.model = model
        self.compute_dtype = compute_dtype
        self.engine = LogProbEngine(model, **engine_kwargs)

    def forward(self, batch: Any, step: Callable[[LogProbEngine, Any], Any] | None = None, **engine_call: Any) -> Any:
        """`engine(batch, **engine_call)` (e.g. `return_stats=True`) under the compute dtype's autocast; with `step`,
        `step(engine, batch)` instead (the loss-fused head, `prefopt.loss_call.fused`), inside the same wrapper."""
        run = (lambda: step(self.engine, batch)) if step is not None else (lambda: self.engine(batch, **engine_call))
        if self.compute_dtype is None:
            return run()
        with torch.autocast(device_type=batch.input_ids.device.type, dtype=self.compute_dtype):
            return run()


def _quantization_config(kind: str | None) -> Any:
    if kind is None:
        return None
    from transformers import BitsAndBytesConfig  # heavy: loaded on first use

    if kind == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    return BitsAndBytesConfig(load_in_8bit=True)


def load_causal_lm(
    source: str, what: str, *, revision: str | None = None, quantization: str | None = None
) -> nn.Module:
    """The causal LM at `source` (a path or Hub name), its linear layers loaded in 4/8-bit by bitsandbytes with
    `quantization` ("4bit", "8bit"). `what` names the setting in errors (e.g. "OnlineConfig.model").

    Raises:
        RuntimeError: one line, when bitsandbytes cannot load the model in `quantization` on this device.
    """
    from transformers import AutoModelForCausalLM  # heavy: loaded on first use

    quant = _quantization_config(quantization)
    try:
        return load_pretrained(AutoModelForCausalLM, source, what, revision=revision, quantization_config=quant)
    except (ImportError, RuntimeError) as err:
        if quant is None:
            raise
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise RuntimeError(
            f"{what}: {quantization} loading of {source!r} failed ({reason}); bitsandbytes must support this device; "
            "train without quantization or on a supported GPU"
        ) from err


def load_model_and_tokenizer(config: TrainConfig) -> tuple[nn.Module, Any]:
    """The policy (in train mode) and its tokenizer from `config.model` (a path or Hub name).

    Raises a clear error when 4/8-bit loading is asked for and bitsandbytes cannot run here.
    """
    from transformers import AutoTokenizer  # heavy: loaded on first use

    if config.model is None:
        raise ValueError("load_model_and_tokenizer: config.model is None (the synthetic task supplies its own)")
    model = load_causal_lm(
        config.model, "TrainConfig.model", revision=config.model_revision, quantization=config.quantization
    )
    if config.tokenizer is not None:
        tokenizer = load_pretrained(AutoTokenizer, config.tokenizer, "TrainConfig.tokenizer")
    else:
        tokenizer = load_pretrained(
            AutoTokenizer, config.model, "TrainConfig.model (its tokenizer)", revision=config.model_revision
        )
    return model, tokenizer


def apply_lora(model: nn.Module, config: TrainConfig | Any) -> nn.Module:
    """Wrap `model` in a PEFT LoRA model (rank `lora_r`, α = `lora_alpha` or 2r, all linear layers by default).
    `config`: anything with TrainConfig's LoRA fields (lora_r, lora_alpha, lora_dropout, lora_targets), e.g.
    `OnlineConfig`."""
    from peft import LoraConfig, get_peft_model  # heavy: loaded on first use

    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha or 2 * config.lora_r,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_targets) if config.lora_targets else "all-linear",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def prepare_policy(model: nn.Module, config: TrainConfig) -> nn.Module:
    """Gradient checkpointing and LoRA as configured; returns the model to train (train mode)."""
    if config.gradient_checkpointing:
        enable_checkpointing(model)
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()  # so LoRA on a checkpointed body still gets gradients
    if config.lora_r:
        model = apply_lora(model, config)
    model.train()
    return model


class Reference:
    """The reference log-probs a run uses.

    Attributes:
        logps: `batch → SequenceLogProbs` for dataset batches (cache lookup or live model).
        live: `batch → SequenceLogProbs` computed by a model, for batches not in the dataset; None when
            the run released the model (only cached rows can then be scored).
        source: "cache+model", "cache+disabled_adapter", "model", "disabled_adapter".
    """

    def __init__(self, logps: ReferenceLogProbs, live: ReferenceLogProbs | None, source: str) -> None:
        self.logps, self.live, self.source = logps, live, source


def live_reference(
    policy: nn.Module,
    policy_engine: LogProbEngine,
    reference_model: nn.Module | None,
    device: torch.device,
    backend: str = "auto",
) -> ReferenceLogProbs:
    """π_ref computed by a model: the separate one, or the PEFT policy with its adapter disabled."""
    if reference_model is not None:
        return ReferenceLogProbs.from_model(reference_model.to(device), backend=backend)
    return ReferenceLogProbs.from_disabled_adapter(policy, engine=policy_engine)


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy of `model` with requires_grad False and eval mode (π_ref = the initial policy)."""
    ref = copy.deepcopy(model)
    ref.requires_grad_(False)
    return ref.eval()


def cache_path(folder: str | Path, key: CacheKey) -> Path:
    """`<folder>/ref_logps-<hash of the key>.safetensors`: a changed key gets a new file."""
    digest = hashlib.sha256(f"{key.dataset}|{key.tokenization}|{key.model}".encode()).hexdigest()[:16]
    return Path(folder) / f"ref_logps-{digest}.safetensors"


def build_reference(
    *,
    accelerator: Any,
    live: ReferenceLogProbs,
    use_cache: bool,
    keep_live: bool,
    identity: str,
    key_parts: tuple[str, str],
    cache_dir: str | Path,
    batches: Any,
    num_examples: int,
) -> Reference:
    """The run's `Reference`: the live model alone, or a cache built once (main process first) plus,
    when `keep_live`, the live model for rows outside the dataset.

    Args:
        identity: `model_identity` of the model whose weights define π_ref (part of the cache key).
        key_parts: (dataset fingerprint, tokenisation fingerprint).
        batches: a callable returning an iterable of `TokenBatch` covering examples 0..N−1 once.
    """
    if not use_cache:
        return Reference(live, live, live.source)
    key = CacheKey(dataset=key_parts[0], tokenization=key_parts[1], model=identity)
    path = cache_path(cache_dir, key)
    with accelerator.main_process_first():
        cache = ReferenceCache.load_or_build(path, key, live, batches, num_examples)
    logps = ReferenceLogProbs.from_cache(cache)
    return Reference(logps, live if keep_live else None, f"cache+{live.source}")
