"""Split a causal LM into its body (tokens → last hidden states) and its output head.

The engine never calls `model(...).logits`: it runs the body once, keeps the hidden states of the
positions it scores, and hands the head's weight to the fused kernel. That is only correct when it
knows every step the model takes between the last hidden state and the logits, so the split is driven
by a table of model types whose head is known (plain `lm_head`, Cohere's `logit_scale`, Granite's
`logits_scaling`, Falcon-H1's `lm_head_multiplier`, Gemma-2/3's `final_logit_softcapping`). Anything
else falls back to the logits path (see `engine.py`) unless the caller vouches for it.

Post-processing of the head output x (per row, [V]) and how it maps onto the kernel's arguments:

    model:   z = c·tanh(s·x / c)            (softcap c optional; scale s = 1 when absent)
    sampled: z / T                          (T the engine's temperature)
    kernel:  c'·tanh((x / T') / c')  with  T' = T / s,  c' = c / T   ⇒  identical to z / T

LoRA on the head (PEFT `lora.Linear`, plain LoRA only) is folded in exactly, dropout included, by
concatenating along the hidden axis:

    x·Wᵀ + b + s_a·(A·drop(x))ᵀ·Bᵀ  =  [x, s_a·drop(x)·Aᵀ] · [W, B]ᵀ + b        (Hu et al. 2021, LoRA)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["LogitTransform", "ModelSplit", "HeadInputs", "split_model", "SplitError", "unwrap_peft"]


class SplitError(RuntimeError):
    """The model cannot be split into body + known head; the engine uses the logits path instead."""


@dataclass(frozen=True)
class LogitTransform:
    """What the model does to `lm_head(h)` before log-softmax: `logits = softcap·tanh(scale·x / softcap)`."""

    scale: float = 1.0
    softcap: float | None = None

    def kernel_args(self, temperature: float) -> tuple[float, float | None]:
        """(temperature, softcap) for `linear_logprobs` so that it computes log_softmax(model_logits / T)."""
        softcap = None if self.softcap is None else self.softcap / temperature
        return temperature / self.scale, softcap


def _softcap(config: Any) -> float | None:
    cap = getattr(config, "final_logit_softcapping", None)
    return None if cap is None else float(cap)


_PLAIN: Callable[[Any], LogitTransform] = lambda config: LogitTransform()  # noqa: E731

# model_type → how its *ForCausalLM turns lm_head(h) into logits (checked against transformers 5.23).
KNOWN_HEADS: dict[str, Callable[[Any], LogitTransform]] = {
    **dict.fromkeys(
        [
            "llama",
            "mistral",
            "mixtral",
            "qwen2",
            "qwen2_moe",
            "qwen3",
            "qwen3_moe",
            "gpt2",
            "gpt_neox",
            "gptj",
            "gpt_bigcode",
            "phi",
            "phi3",
            "gemma",
            "olmo",
            "olmo2",
            "starcoder2",
            "stablelm",
            "opt",
            "smollm3",
        ],
        _PLAIN,
    ),
    **dict.fromkeys(["gemma2", "gemma3_text"], lambda c: LogitTransform(softcap=_softcap(c))),
    **dict.fromkeys(["cohere", "cohere2"], lambda c: LogitTransform(scale=float(c.logit_scale))),
    **dict.fromkeys(
        ["granite", "granitemoe", "granitemoeshared"], lambda c: LogitTransform(scale=1.0 / float(c.logits_scaling))
    ),
    "falcon_h1": lambda c: LogitTransform(scale=float(c.lm_head_multiplier)),
}


@dataclass(frozen=True)
class HeadInputs:
    """The kernel's view of the head for one call: `hidden` [N, D'] and `weight` [V, D'] (D' ≥ D with LoRA)."""

    hidden: Tensor
    weight: Tensor
    bias: Tensor | None


@dataclass
class ModelSplit:
    """A causal LM seen as `body(input_ids, …) → hidden [R, T, D]` plus a linear `head` with a `transform`."""

    body: nn.Module
    head: nn.Module
    transform: LogitTransform

    def head_inputs(self, hidden: Tensor) -> HeadInputs:
        """Hidden states [N, D] of the scored positions → kernel inputs, folding in LoRA on the head."""
        head = self.head
        if isinstance(head, nn.Linear):
            return HeadInputs(hidden, head.weight, head.bias)
        return _lora_head_inputs(head, hidden)


def _is_lora_linear(module: nn.Module) -> bool:
    return hasattr(module, "base_layer") and hasattr(module, "lora_A") and hasattr(module, "lora_B")


def _lora_head_inputs(layer: Any, hidden: Tensor) -> HeadInputs:
    """Fold the active plain-LoRA adapters of a PEFT `lora.Linear` head into (hidden, weight, bias)."""
    base: nn.Linear = layer.base_layer
    if layer.disable_adapters and layer.merged:
        layer.unmerge()  # what PEFT's own forward does when adapters are disabled on a merged layer
    if layer.disable_adapters or layer.merged:
        return HeadInputs(hidden, base.weight, base.bias)
    hiddens, weights, bias = [hidden], [base.weight], base.bias
    for name in layer.active_adapters:
        if name not in layer.lora_A.keys():
            continue
        lora_a, lora_b = layer.lora_A[name], layer.lora_B[name]
        x = hidden.to(lora_a.weight.dtype)
        z = lora_a(layer.lora_dropout[name](x)) * layer.scaling[name]  # (N, r)
        hiddens.append(z.to(hidden.dtype))
        weights.append(lora_b.weight.to(base.weight.dtype))  # (V, r)
        if lora_b.bias is not None:  # PEFT's lora_bias: B(z) adds its bias once, scaled by s
            extra = lora_b.bias.to(base.weight.dtype) * layer.scaling[name]
            bias = extra if bias is None else bias + extra
    return HeadInputs(torch.cat(hiddens, dim=-1), torch.cat(weights, dim=-1), bias)


def unwrap_peft(model: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT `PeftModel` (LoRA layers stay injected in it), else `model`."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _check_head(head: nn.Module) -> None:
    if type(head) is nn.Linear:  # subclasses (bitsandbytes Linear4bit/8bitLt, …) compute something else
        return
    if _is_lora_linear(head):
        if type(head.base_layer) is not nn.Linear:
            raise SplitError(f"LoRA on a non-Linear head base layer {type(head.base_layer).__name__}")
        variants = getattr(head, "lora_variant", {}) or {}
        if any(name in variants for name in head.active_adapters):
            raise SplitError("the head carries a LoRA variant (DoRA, …) that is not a plain low-rank update")
        return
    raise SplitError(f"the output head is a {type(head).__name__}, not an nn.Linear (or LoRA on one)")


def split_model(model: nn.Module, *, trust_unknown: bool = False) -> ModelSplit:
    """Find body, head and logit transform of a (possibly PEFT-wrapped) transformers causal LM.

    Args:
        model: a `*ForCausalLM` or a PEFT model wrapping one.
        trust_unknown: split a model type missing from `KNOWN_HEADS` as if its head were plain
            (`logits = lm_head(h)`); the caller vouches that the model adds nothing after the head.
    Raises:
        SplitError: with the reason, when the model cannot be split safely.
    """
    inner = unwrap_peft(model)
    config = getattr(inner, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type is None:
        raise SplitError(f"{type(inner).__name__} has no transformers config.model_type")
    recipe = KNOWN_HEADS.get(model_type)
    if recipe is None:
        if not trust_unknown:
            raise SplitError(
                f"model_type {model_type!r} is not in prefopt.engine.head.KNOWN_HEADS (pass split='always' if "
                "its logits are exactly lm_head(last_hidden_state))"
            )
        recipe = _PLAIN
    get_head = getattr(inner, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    body = getattr(inner, "base_model", None)
    if head is None or body is None or body is inner:
        raise SplitError(f"{type(inner).__name__} exposes no separate body and output embeddings")
    _check_head(head)
    return ModelSplit(body=body, head=head, transform=recipe(config))
