"""Who samples the online loop's rollouts: one interface, three engines, and the weights they sample with.

    sampler = build_sampler("vllm", policy, tokenizer, model_source="path/to/sft")
    sampler.watch(optimizer)                          # every policy update marks the engine's weights stale
    rollout = sampler.generate(prompts, GenerationConfig(num_samples=4), seed=0)   # pushes them first if stale

A `Sampler` generates K completions per prompt (`Rollout`, group-major, with the engine's per-token log-probs
where it reports them) and holds the weights it samples with in step with the policy (`sync_weights`):

- `hf` (`HFSampler`): the policy itself samples, transformers `generate` with its KV cache, prompts batched as
  `generation_batching` says (`prefopt.online.generation_batching`); nothing to push.
- `vllm` (`VLLMColocateSampler`, `prefopt.online.vllm_samplers`): a vLLM `LLM` in the trainer's process; the
  weights are loaded into the engine's model in memory (`load_weights`), never written to disk.
- `vllm_server` (`VLLMServerSampler`): a `trl vllm-serve` server; the weights go through its weight-update API,
  each tensor announced over HTTP and broadcast over NCCL.

When the weights go: a sampler `watch`es the policy's optimiser (a step post-hook counts updates) and, before it
next generates, pushes the policy's weights once if any update happened since the last push, as TRL's
GRPOTrainer does (`global_step != _last_loaded_step`). PPO's several optimiser steps per rollout, or dynamic
sampling's several generations per step, still give one push per rollout, before its first generation; the
first generation of a run, fresh or resumed, always pushes.

What is pushed (`policy_weights`): each parameter under the name a transformers checkpoint gives it, which is
what vLLM's `load_weights` reads. A LoRA policy (peft) is pushed merged: W + Σ_adapters ΔW for each adapted
layer, computed beside the layer (`get_delta_weight`) rather than by `merge_adapter()` / `unmerge_adapter()` as
TRL does, so the frozen base is never written and cannot drift by the rounding of W + ΔW − ΔW; adapter
matrices are not pushed, `modules_to_save` copies are pushed under the original name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from prefopt.online.generation import GenerationConfig, Rollout, generate
from prefopt.online.generation_batching import BATCHING
from prefopt.online.lean_decoder import DECODERS, lean_unsupported
from prefopt.settings import Settings, SettingsError, check_int, is_finite_number

__all__ = [
    "GENERATION_BACKENDS",
    "Sampler",
    "HFSampler",
    "PushingSampler",
    "policy_weights",
    "weight_checksum",
    "SamplerSettings",
    "check_generation_machine",
    "check_decoder",
]

GENERATION_BACKENDS = ("hf", "vllm", "vllm_server")
_ADAPTER_PARTS = ("lora_", "original_module", "lora_magnitude_vector")


@runtime_checkable
class Sampler(Protocol):
    """What the online loop samples with (module docstring)."""

    backend: str

    def generate(
        self, prompts: Sequence[Any], config: GenerationConfig, *, seed: int, logits_processor: Any = None
    ) -> Rollout:
        """`config.num_samples` completions of every prompt, group-major; reproducible from `seed`."""
        ...

    def sync_weights(self, model: nn.Module, step: int) -> None:
        """Make the engine sample with `model`'s current weights (`step`: optimiser steps taken so far)."""
        ...

    def watch(self, optimizer: torch.optim.Optimizer) -> None:
        """Count `optimizer`'s steps: the weights are stale after each one until the next push."""
        ...


class HFSampler:
    """The transformers path: the policy samples itself (`prefopt.online.generation.generate`), with its KV cache,
    prompts batched by `GenerationConfig.batching`, and nothing to push."""

    backend = "hf"

    def __init__(self, policy: nn.Module, tokenizer: Any) -> None:
        self.policy, self.tokenizer = policy, tokenizer

    def generate(
        self, prompts: Sequence[Any], config: GenerationConfig, *, seed: int, logits_processor: Any = None
    ) -> Rollout:
        config = dataclasses.replace(config, backend="hf")
        return generate(self.policy, self.tokenizer, prompts, config, seed=seed, logits_processor=logits_processor)

    def sync_weights(self, model: nn.Module, step: int) -> None:
        """Nothing to do: the engine is the policy."""

    def watch(self, optimizer: torch.optim.Optimizer) -> None:
        """Nothing to count."""


class PushingSampler(ABC):
    """The bookkeeping of an engine that holds its own copy of the weights (vLLM, in process or a server).

    Subclasses implement `_push(weights)` (an iterator of (name, tensor)), `_generate(...)` and may override
    `_after_push()` (e.g. reset the engine's prefix cache, whose keys and values the old weights computed).
    """

    backend = ""

    def __init__(self, policy: nn.Module, tokenizer: Any) -> None:
        self.policy, self.tokenizer = policy, tokenizer
        self.updates = 0  # optimiser steps of the policy seen so far
        self.synced_at: int | None = None  # `updates` at the last push (None: never pushed)
        self.pushes = 0

    @property
    def stale(self) -> bool:
        """True when the engine's weights may differ from the policy's (an update since the last push)."""
        return self.synced_at != self.updates

    def watch(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.register_step_post_hook(self._updated)

    def _updated(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.updates += 1

    def sync_weights(self, model: nn.Module, step: int) -> None:
        with torch.no_grad():
            self._push(policy_weights(model))
        self._after_push()
        self.synced_at, self.pushes = step, self.pushes + 1

    def generate(
        self, prompts: Sequence[Any], config: GenerationConfig, *, seed: int, logits_processor: Any = None
    ) -> Rollout:
        if logits_processor is not None:
            raise SettingsError(
                f"OnlineConfig.generation_backend={self.backend!r} takes no logits processor (NLPO's action mask); "
                "use generation_backend='hf' (--generation-backend hf)"
            )
        if self.stale:
            self.sync_weights(self.policy, self.updates)
        return self._generate(prompts, config, seed)

    @abstractmethod
    def _push(self, weights: Iterator[tuple[str, Tensor]]) -> None:
        """Send the policy's weights to the engine, without writing them to disk."""

    def _after_push(self) -> None:
        pass

    @abstractmethod
    def _generate(self, prompts: Sequence[Any], config: GenerationConfig, seed: int) -> Rollout:
        """Sample with the engine's copy of the weights."""


def _delta(layer: nn.Module) -> Tensor | None:
    """Σ ΔW of a peft LoRA layer's active adapters (None when merged already or disabled)."""
    if getattr(layer, "merged", False) or getattr(layer, "disable_adapters", False):
        return None
    adapters = [a for a in getattr(layer, "active_adapters", ()) if a in getattr(layer, "lora_A", {})]
    adapters += [a for a in getattr(layer, "active_adapters", ()) if a in getattr(layer, "lora_embedding_A", {})]
    deltas = [layer.get_delta_weight(a) for a in adapters]
    return torch.stack(deltas).sum(0) if deltas else None


def policy_weights(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """(checkpoint name, tensor) of every weight `model` samples with, LoRA merged (module docstring); one at
    a time, so at most one merged copy of a layer exists beside the model."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    for name, param in model.named_parameters():
        if any(part in name for part in _ADAPTER_PARTS):
            continue
        if not param.dtype.is_floating_point:
            raise SettingsError(
                f"OnlineConfig.generation_backend: the policy's {name} is quantised ({param.dtype}); pushing a 4/8-bit "
                "base to vLLM is not supported, use generation_backend='hf' or an unquantised base"
            )
        tensor = param.detach()
        if name.endswith(".base_layer.weight"):
            delta = _delta(model.get_submodule(name.removesuffix(".base_layer.weight")))
            if delta is not None:
                tensor = tensor + delta.to(tensor.dtype)
        name = name.removeprefix("base_model.model.").replace(".base_layer", "")
        yield name.replace("modules_to_save.default.", ""), tensor


def weight_checksum(tensor: Tensor) -> str:
    """SHA-256 of a tensor's bytes (its dtype kept): what the stand-in engines record of each pushed weight."""
    data = tensor.detach().cpu().contiguous()
    return hashlib.sha256(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"").hexdigest()


@dataclass(frozen=True)
class SamplerSettings(Settings):
    """Which engine samples an online run's rollouts (module docstring); `OnlineConfig` inherits these fields.

    Attributes:
        generation_backend: "hf" (the policy's own `generate`), "vllm" (a vLLM engine in this process, the weights
            loaded into it in memory after each update) or "vllm_server" (a `trl vllm-serve` server, the weights
            sent over its weight-update API); `prefopt.online.vllm_samplers`. Both vLLM backends need a CUDA device.
        vllm_gpu_memory_utilization: "vllm": the share of the GPU's memory vLLM may take beside training (TRL's
            colocate default 0.3).
        vllm_server_url: "vllm_server": where the server listens (`trl vllm-serve --host … --port …`).
        vllm_server_timeout: "vllm_server": seconds to wait for the server to answer, at start and per request
            (TRL's `vllm_server_timeout` 240).
        vllm_group_port: "vllm_server": the TCP port of the NCCL group the weights are broadcast in (TRL's 51216).
        generation_batching: "hf": which prompts share a `generate` call (`GenerationConfig.batching`,
            `prefopt.online.generation_batching`): "auto" (left-padded together unless padding is over half the
            prompt block), "padded" or "length" (one unpadded call per prompt token length).
        generation_decoder: "hf": what decodes each call (`GenerationConfig.decoder`, `prefopt.online.lean_decoder`):
            "auto" (the lean decoder where it decodes the policy as `generate` does: Llama, Mistral and Qwen2, no
            LoRA, quantisation, FSDP or NLPO mask; else `generate`), "hf" (`generate`) or "lean" (refused where
            it cannot run).
    """

    generation_backend: str = "hf"
    # a run saved before this field existed sampled with one call per prompt length: it resumes and is reused as that
    generation_batching: str = field(default="auto", metadata={"predating": "length"})
    # resumable (`config.RESUMABLE`): the lean decoder draws what `generate` draws, so a run saved before this field
    # existed, or with another value, resumes with either
    generation_decoder: str = "auto"
    vllm_gpu_memory_utilization: float = 0.3
    vllm_server_url: str = "http://localhost:8000"
    vllm_server_timeout: float = 240.0
    vllm_group_port: int = 51216

    def check_sampler_settings(self, masks_logits: bool = False) -> None:
        """Each mistake one line naming the field and the fix; `masks_logits`: the algorithm samples through a
        logits processor (NLPO's action mask), which only the "hf" backend applies."""
        backend = self.generation_backend
        if backend not in GENERATION_BACKENDS:
            raise SettingsError(f"OnlineConfig.generation_backend={backend!r}: use one of {GENERATION_BACKENDS}")
        if masks_logits and backend != "hf":
            raise SettingsError(
                f"OnlineConfig.generation_backend={backend!r}: this algorithm samples inside an action mask (a "
                "logits processor) that vLLM does not apply; use generation_backend='hf' (--generation-backend hf)"
            )
        if self.generation_batching not in BATCHING:
            raise SettingsError(f"OnlineConfig.generation_batching={self.generation_batching!r}: use one of {BATCHING}")
        if self.generation_decoder not in DECODERS:
            raise SettingsError(f"OnlineConfig.generation_decoder={self.generation_decoder!r}: use one of {DECODERS}")
        if self.generation_decoder == "lean" and (masks_logits or backend != "hf"):
            why = "samples inside an action mask" if masks_logits else f"samples with generation_backend={backend!r}"
            raise SettingsError(
                f"OnlineConfig.generation_decoder='lean': this run {why}, which the lean decoder does not run; use "
                "generation_decoder='auto' (--generation-decoder auto)"
            )
        utilization = self.vllm_gpu_memory_utilization
        if not (is_finite_number(utilization) and 0 < utilization <= 1):
            raise SettingsError(
                f"OnlineConfig.vllm_gpu_memory_utilization={utilization!r} must be in (0, 1]: the share of the GPU's "
                "memory vLLM may take beside training (TRL's colocate default 0.3)"
            )
        if not (isinstance(self.vllm_server_url, str) and self.vllm_server_url.startswith(("http://", "https://"))):
            raise SettingsError(
                f"OnlineConfig.vllm_server_url={self.vllm_server_url!r} must be an http:// or https:// URL, e.g. "
                "http://localhost:8000 (where `trl vllm-serve` listens)"
            )
        if not (is_finite_number(self.vllm_server_timeout) and self.vllm_server_timeout > 0):
            raise SettingsError(
                f"OnlineConfig.vllm_server_timeout={self.vllm_server_timeout!r} must be a positive number of seconds"
            )
        check_int("OnlineConfig.vllm_group_port", self.vllm_group_port, minimum=1)
        if self.vllm_group_port > 65535:
            raise SettingsError(f"OnlineConfig.vllm_group_port={self.vllm_group_port} must be a TCP port (1 to 65535)")


def check_decoder(settings: SamplerSettings, policy: nn.Module, sharded: bool) -> None:
    """Setup: `generation_decoder="lean"` on a policy the lean decoder cannot decode, refused in one line naming why
    (`sharded`: the run shards the policy with FSDP)."""
    if settings.generation_decoder != "lean":
        return
    why = "the policy is FSDP-sharded (fsdp=True)" if sharded else lean_unsupported(policy)
    if why is not None:
        raise SettingsError(
            f"OnlineConfig.generation_decoder='lean': {why}; use generation_decoder='auto' (--generation-decoder auto)"
        )


def check_generation_machine(backend: str) -> None:
    """Preflight: a vLLM backend needs vLLM installed and a CUDA device (one line naming the fix otherwise)."""
    if backend == "hf":
        return
    if importlib.util.find_spec("vllm") is None:
        raise SettingsError(
            f"OnlineConfig.generation_backend={backend!r} needs vLLM: `pip install vllm` (on a CUDA machine), or "
            "use --generation-backend hf"
        )
    if not torch.cuda.is_available():
        needs = "runs vLLM on this process's GPU" if backend == "vllm" else "broadcasts the weights over NCCL"
        raise SettingsError(
            f"OnlineConfig.generation_backend={backend!r} {needs} and no CUDA device is visible; use "
            "--generation-backend hf on this machine"
        )
