"""A LoRA policy in the online loop: the adapter trains, its base is the reference, nothing is copied.

    policy  = PEFT LoRA over the loaded model (`prefopt.train.model.apply_lora`, TrainConfig's settings and
              names), on a 4/8-bit bitsandbytes base with `quantization` (`prefopt.train.model.load_causal_lm`)
    π_ref   = the same model inside `disable_adapter()`: W + (α/r)·B·A → W, the base (`DisabledAdapterEngine`)
    critic  = PPO: a value head on the policy's adapter-enabled trunk (`prefopt.online.value.critic_on_trunk`),
              its loss training the head and, through the trunk, the adapter; or a separate critic initialised
              from the reward model `value_model` (a small one, as configured)

So the run holds one set of base weights. The adapter's A is drawn from the run's seed (B starts at 0, so the
first policy equals the base); checkpoints hold the adapter (the policy's trainable weights) and the value
head, and final/ is a PEFT adapter folder that `prefopt compare` merges into its base.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prefopt.engine import LogProbEngine, SequenceLogProbs
from prefopt.engine.reference import eval_mode
from prefopt.settings import Settings, SettingsError, check_int, is_finite_number
from prefopt.train.config import QUANTIZATION
from prefopt.train.model import apply_lora

__all__ = ["LoraSettings", "DisabledAdapterEngine", "lora_policy", "reference_engine"]


@dataclass(frozen=True)
class LoraSettings(Settings):
    """LoRA settings of an online run, with `TrainConfig`'s names and meaning; `OnlineConfig` inherits them.

    Attributes:
        lora_r: LoRA rank (0: full fine-tuning, π_ref a frozen copy of the initial policy).
        lora_alpha: α (None: 2r). lora_dropout: dropout on the adapter's input (the online loop scores and
            samples in eval mode, as TRL disables dropout, so it is inactive there).
        lora_targets: module names to adapt (None: every linear layer but the output head).
        quantization: "4bit" (NF4) or "8bit" bitsandbytes loading of the base `model` (needs LoRA and a model
            path; bitsandbytes must support the device).
    """

    lora_r: int = 0
    lora_alpha: float | None = None
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] | None = None
    quantization: str | None = None

    def check_lora_settings(self, *, model: str | None, heads_on_trunk: bool) -> None:
        """Each mistake one line naming the field and the fix. `model`: OnlineConfig.model (None: the synthetic
        policy or one given in memory); `heads_on_trunk`: the algorithm keeps frozen copies or heads of the
        policy (NLPO's masking policy, ILQL's heads), which a LoRA policy does not support."""
        check_int("OnlineConfig.lora_r", self.lora_r, minimum=0)
        if self.lora_alpha is not None and not (is_finite_number(self.lora_alpha) and self.lora_alpha > 0):
            raise SettingsError(f"OnlineConfig.lora_alpha={self.lora_alpha!r} must be a positive finite number or None")
        if not (is_finite_number(self.lora_dropout) and 0 <= self.lora_dropout < 1):
            raise SettingsError(f"OnlineConfig.lora_dropout={self.lora_dropout!r} must be in [0, 1)")
        if self.lora_targets is not None:
            object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        if self.quantization is not None:
            if self.quantization not in QUANTIZATION:
                raise SettingsError(
                    f"OnlineConfig.quantization={self.quantization!r}: use one of {QUANTIZATION} or None"
                )
            if self.lora_r == 0:
                raise SettingsError(
                    "OnlineConfig: quantization needs LoRA (set lora_r > 0): quantised weights are not trainable"
                )
            if model is None:
                raise SettingsError(
                    f"OnlineConfig.quantization={self.quantization!r} loads the base from OnlineConfig.model, which "
                    "is not set; give a model path (--model), or drop quantization"
                )
        if self.lora_r and heads_on_trunk:
            raise SettingsError(
                "OnlineConfig.lora_r: this algorithm keeps heads or a frozen copy of the policy (NLPO's action "
                "mask, ILQL's heads), which a LoRA policy does not support; set lora_r=0"
            )


def lora_policy(model: nn.Module, settings: LoraSettings, seed: int) -> nn.Module:
    """`model` wrapped in a LoRA adapter (`apply_lora`: only the adapter trains), A drawn from `seed` without
    touching the global random state, so a run and its resumption, or two runs, start from the same adapter."""
    with torch.random.fork_rng():  # every device the run may draw on (LoRA init on a CUDA model)
        torch.manual_seed(seed)
        return apply_lora(model, settings)


class DisabledAdapterEngine(LogProbEngine):
    """π_ref of a LoRA policy: the engine over the PEFT policy, each call run inside `disable_adapter()` and
    eval mode without gradient, so it scores the base weights W the policy's adapter sits on (no copy)."""

    def __init__(self, model: nn.Module, **engine_kwargs: Any) -> None:
        if not callable(getattr(model, "disable_adapter", None)):
            raise TypeError(
                f"DisabledAdapterEngine needs a PEFT model with disable_adapter(), got {type(model).__name__}"
            )
        super().__init__(model, **engine_kwargs)

    def __call__(self, batch: Any, **kwargs: Any) -> SequenceLogProbs:
        with self.model.disable_adapter(), eval_mode(self.model), torch.no_grad():
            return super().__call__(batch, **kwargs)


def reference_engine(policy: nn.Module, reference: nn.Module | None, lora: bool, **engine_kwargs: Any) -> LogProbEngine:
    """The reference's engine: a separate frozen `reference` model when one is given, else with LoRA the policy
    with its adapter disabled (`DisabledAdapterEngine`)."""
    if reference is not None:
        return LogProbEngine(reference, **engine_kwargs)
    if not lora:
        raise ValueError("reference_engine: a full fine-tuning run needs a reference model (a frozen copy)")
    return DisabledAdapterEngine(policy, **engine_kwargs)
