"""The precision settings of an online run, `TrainConfig`'s names, values and meaning; `OnlineConfig` inherits them.

    master_weights   "fp32" (default): the policy's and the critic's weights, gradients and Adam state in fp32;
                     "bf16": pure bf16 (updates below half a bf16 step of a weight round away)
    mixed_precision  "no" (bf16 autocast of generation and scoring only for a bf16 checkpoint), "bf16" (always),
                     "auto" (also on CUDA devices that support bf16)
    save_dtype       final/'s dtype: "original" (the policy's loaded dtype) or "fp32"

`prefopt.train.precision` applies them, and explains why fp32 master weights are the default (docs/training.md,
"Training precision"). As `TrainConfig` does, a quantised base refuses bf16 master weights: only the LoRA adapters
train on it, fp32 adapters cost a few MB, and in bf16 their small updates would round away.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefopt.settings import Settings, SettingsError
from prefopt.train.precision import MASTER_WEIGHTS, MIXED_PRECISION, SAVE_DTYPES

__all__ = ["PrecisionSettings"]


@dataclass(frozen=True)
class PrecisionSettings(Settings):
    """Precision of an online run (`prefopt.train.precision`; the same settings as `TrainConfig`).

    Attributes:
        master_weights: "fp32" (default: the policy's and the critic's weights, gradients and Adam state in
            fp32) or "bf16" (pure bf16: updates below half a bf16 step of a weight round away).
        mixed_precision: "no" (bf16 autocast of generation and scoring only for a bf16 checkpoint), "bf16"
            (always) or "auto" (also on CUDA devices that support bf16).
        save_dtype: final/'s dtype: "original" (the policy's loaded dtype) or "fp32".
    """

    master_weights: str = "fp32"
    mixed_precision: str = "no"
    save_dtype: str = "original"

    def check_precision_settings(self, *, quantization: str | None) -> None:
        """Each mistake one line naming the field and the fix. `quantization`: OnlineConfig.quantization (the
        LoRA policy's 4/8-bit base, `prefopt.online.lora_policy.LoraSettings`)."""
        for name, valid in (
            ("master_weights", MASTER_WEIGHTS),
            ("mixed_precision", MIXED_PRECISION),
            ("save_dtype", SAVE_DTYPES),
        ):
            if getattr(self, name) not in valid:
                raise SettingsError(f"OnlineConfig.{name}={getattr(self, name)!r}: use one of {valid}")
        if self.master_weights == "bf16" and quantization is not None:
            raise SettingsError(
                f"OnlineConfig: master_weights='bf16' with quantization={quantization!r}: only the LoRA adapters "
                "train on a quantised base, and keeping them in fp32 costs a few MB; in bf16 their small updates "
                "would round away. Use master_weights='fp32' (the default)"
            )
