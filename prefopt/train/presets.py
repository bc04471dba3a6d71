"""Optimiser and learning-rate schedule presets: the papers' published settings per loss, by name.

    settings = optimizer_preset("dpo")                       # RMSprop, lr 1e-6, 150 warm-up steps, clip 10
    settings = optimizer_preset("dpo").override(lr=5e-7)     # any field overridable
    optimizer = build_optimizer(model.parameters(), settings)
    scheduler = build_scheduler(optimizer, settings, total_steps=1000)

The per-loss numbers come from the papers (or, where a paper gives none, from the TRL paper index that
/work/shared/LOSS-REFERENCE.md quotes; the `source` field of each preset says which). They are
settings for 7B-parameter models and batches of 64–512 pairs: on the built-in synthetic task (a
1M-parameter model) they barely move the policy, so the trainer's default there is the `synthetic`
preset, measured on that task (docs/synthetic.md: DPO, AdamW lr 1e-4, batch 16, one epoch).

Schedules (multiplier of the peak lr at optimiser step s, warm-up of w steps, T steps in all):
    constant  s < w: (s+1)/w, else 1                      (the DPO paper: linear warm-up, then flat)
    linear    s < w: (s+1)/w, else (T − s)/(T − w)
    cosine    s < w: (s+1)/w, else ½(1 + cos(π (s − w)/(T − w)))
    inverse_sqrt  s < w: (s+1)/w, else √(τ / (s + τ − w)) with τ = w (τ = 10⁴ when w = 0): 1 at the end
              of the warm-up, then ∝ 1/√s (transformers' `inverse_sqrt`, used by Mistral-ORPO-β)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from prefopt.losses.combine import is_combination, parse_combination
from prefopt.registry import list_losses

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "PRESETS",
    "OptimizerSettings",
    "optimizer_preset",
    "build_optimizer",
    "build_scheduler",
    "schedule_factor",
]

OPTIMIZERS = ("adamw", "rmsprop", "sgd")
SCHEDULES = ("constant", "linear", "cosine", "inverse_sqrt")
# inverse_sqrt time scale when there is no warm-up (transformers' default).
INVERSE_SQRT_TIMESCALE = 10_000


@dataclass(frozen=True)
class OptimizerSettings:
    """Optimiser and schedule settings (a preset, possibly with overrides).

    Attributes:
        optimizer: "adamw", "rmsprop" or "sgd".
        lr: peak learning rate.
        weight_decay: decoupled (AdamW) or L2 (RMSprop, SGD) weight decay.
        betas: AdamW (β₁, β₂).
        eps: AdamW/RMSprop ε.
        schedule: "constant", "linear", "cosine" or "inverse_sqrt" after the warm-up (module docstring).
        warmup_steps: linear warm-up length in optimiser steps; `warmup_ratio` is used when this is None.
        warmup_ratio: warm-up as a fraction of all optimiser steps.
        max_grad_norm: clip the global gradient 2-norm to this (None: no clipping).
        batch_size: the paper's global batch in examples (informative; the trainer's batch size is its own).
        source: where the numbers come from.
    """

    optimizer: str = "adamw"
    lr: float = 1e-6
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    schedule: str = "constant"
    warmup_steps: int | None = None
    warmup_ratio: float = 0.0
    max_grad_norm: float | None = 1.0
    batch_size: int | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"OptimizerSettings.optimizer={self.optimizer!r}: use one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"OptimizerSettings.schedule={self.schedule!r}: use one of {SCHEDULES}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"OptimizerSettings.lr={self.lr!r} must be a positive finite number")
        if self.weight_decay < 0:
            raise ValueError(f"OptimizerSettings.weight_decay={self.weight_decay!r} must be ≥ 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"OptimizerSettings.betas={self.betas!r} must be two numbers in [0, 1)")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"OptimizerSettings.warmup_steps={self.warmup_steps!r} must be ≥ 0 or None")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"OptimizerSettings.warmup_ratio={self.warmup_ratio!r} must be in [0, 1)")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"OptimizerSettings.max_grad_norm={self.max_grad_norm!r} must be > 0 or None")

    def override(self, **changes: Any) -> "OptimizerSettings":
        """A copy with `changes` applied (None values are ignored, so CLI defaults pass through)."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"OptimizerSettings: unknown field(s) {unknown}; valid: {sorted(known)}")
        given = {k: (tuple(v) if k == "betas" else v) for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **given)

    def warmup(self, total_steps: int) -> int:
        """Warm-up length in optimiser steps for a run of `total_steps`."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        return int(math.ceil(self.warmup_ratio * total_steps))


_DPO_REPO = "DPO paper App. B (RMSprop, lr 1e-6, batch 64, 150 linear warm-up steps); max_grad_norm 10 from its repo"
PRESETS: dict[str, OptimizerSettings] = {
    "synthetic": OptimizerSettings(
        "adamw",
        1e-4,
        schedule="constant",
        warmup_steps=0,
        max_grad_norm=1.0,
        batch_size=16,
        source="prefopt synthetic task (docs/synthetic.md: DPO sanity check, AdamW lr 1e-4, batch 16)",
    ),
    "dpo": OptimizerSettings("rmsprop", 1e-6, warmup_steps=150, max_grad_norm=10.0, batch_size=64, source=_DPO_REPO),
    "cdpo": OptimizerSettings(
        "rmsprop",
        1e-6,
        warmup_steps=150,
        max_grad_norm=10.0,
        batch_size=64,
        source=_DPO_REPO + " (the cDPO note gives no settings of its own)",
    ),
    "ipo": OptimizerSettings(
        "rmsprop",
        1e-6,
        warmup_steps=150,
        max_grad_norm=10.0,
        batch_size=64,
        source=_DPO_REPO + " (the IPO paper has no LLM experiments)",
    ),
    "robust_dpo": OptimizerSettings(
        "adamw", 1e-3, batch_size=16, source="TRL paper index for Chowdhury 2024: lr 1e-3, batch 16"
    ),
    "kto": OptimizerSettings(
        "adamw",
        1e-6,
        warmup_ratio=0.1,
        schedule="linear",
        batch_size=32,
        source="KTO (Ethayarajh 2024) with TRL's advice: lr ≤ 1e-6 at β = 0.1, effective batch 16–128",
    ),
    "bco": OptimizerSettings("adamw", 5e-7, batch_size=128, source="TRL paper index for Jung 2024: lr 5e-7, batch 128"),
    "apo_zero": OptimizerSettings(
        "adamw", 2e-7, batch_size=64, source="TRL paper index for D'Oosterlinck 2024: lr 2e-7, batch 64"
    ),
    "apo_down": OptimizerSettings(
        "adamw", 2e-7, batch_size=64, source="TRL paper index for D'Oosterlinck 2024: lr 2e-7, batch 64"
    ),
    "nca": OptimizerSettings("adamw", 5e-6, batch_size=32, source="TRL paper index for Chen 2024: lr 5e-6, batch 32"),
    "sppo_hard": OptimizerSettings(
        "adamw", 5e-7, batch_size=64, source="TRL paper index for Wu 2024: lr 5e-7, batch 64"
    ),
    "slic": OptimizerSettings(
        "adamw", 1e-4, batch_size=512, source="TRL paper index for Zhao 2023: lr 1e-4, batch 512"
    ),
    "cpo": OptimizerSettings(
        "adamw",
        1e-4,
        schedule="linear",
        warmup_ratio=0.01,
        batch_size=None,
        source="CPO (Xu 2024) via TRL CPOConfig/index: lr 1e-4, 1 epoch, warm-up ratio 0.01",
    ),
    "simpo": OptimizerSettings(
        "adamw",
        6e-7,
        schedule="cosine",
        warmup_ratio=0.1,
        batch_size=128,
        source="SimPO (Meng 2024): Adam, cosine, warm-up 0.1, batch 128; lr per setting (3e-7 – 1e-6), 6e-7 taken here",
    ),
    "orpo": OptimizerSettings(
        "adamw",
        8e-6,
        schedule="linear",
        warmup_steps=100,
        batch_size=None,
        source="ORPO (Hong 2024): AdamW lr 8e-6 with 100 warm-up steps (Mistral-ORPO)",
    ),
}


def optimizer_preset(name: str) -> OptimizerSettings:
    """The preset `name` (a loss name or "synthetic"); a loss without its own preset gets DPO's, a weighted sum
    of losses ("dpo:0.8+sft:1", `prefopt.combine_losses`) its first part's."""
    if name in PRESETS:
        return PRESETS[name]
    if is_combination(name):
        first = parse_combination(name)[0][0]
        preset = optimizer_preset(first)
        return dataclasses.replace(preset, source=f"{name}: the preset of its first part, {first}: {preset.source}")

    if name in list_losses():
        return dataclasses.replace(PRESETS["dpo"], source=f"no published setting for {name}; " + _DPO_REPO)
    raise ValueError(f"unknown optimiser preset {name!r}; valid: {sorted(PRESETS)} or any offline loss name")


def build_optimizer(params: Iterable[torch.nn.Parameter], settings: OptimizerSettings) -> torch.optim.Optimizer:
    """A torch optimiser over `params` (those with requires_grad) from `settings`."""
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise ValueError("build_optimizer: the model has no trainable parameters (all requires_grad=False)")
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(
            trainable, lr=settings.lr, betas=settings.betas, eps=settings.eps, weight_decay=settings.weight_decay
        )
    if settings.optimizer == "rmsprop":
        return torch.optim.RMSprop(trainable, lr=settings.lr, eps=settings.eps, weight_decay=settings.weight_decay)
    return torch.optim.SGD(trainable, lr=settings.lr, weight_decay=settings.weight_decay)


def schedule_factor(step: int, *, schedule: str, warmup: int, total_steps: int) -> float:
    """The lr multiplier at optimiser step `step` (0-based); formulas in the module docstring."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "inverse_sqrt":
        timescale = warmup or INVERSE_SQRT_TIMESCALE
        return math.sqrt(timescale / (step + timescale - warmup))
    if schedule == "constant" or total_steps <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / (total_steps - warmup))
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, settings: OptimizerSettings, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A `LambdaLR` applying `schedule_factor` for a run of `total_steps` optimiser steps."""
    warmup = settings.warmup(total_steps)

    def factor(step: int) -> float:
        return schedule_factor(step, schedule=settings.schedule, warmup=warmup, total_steps=total_steps)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
