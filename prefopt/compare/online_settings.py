"""The settings of `prefopt compare`'s online runs: which `OnlineConfig` fields the shared `online` mapping may
set, and each run's own.

LoRA settings given for every offline run (`train`: lora_r, lora_alpha, lora_dropout, lora_targets, quantization,
TrainConfig's names, which `OnlineConfig` shares through `LoraSettings`) reach the online runs too, so one
`--train lora_r=16` makes the whole comparison LoRA; `online` sets them for the online runs alone, winning over
`train`. An algorithm whose policy cannot be LoRA (NLPO's action mask, ILQL's heads) keeps full fine-tuning
unless `online` asks for LoRA, which it then refuses by name.

    check_online_settings(config.online)         # a clear error for per-run or unknown keys
    online_settings(plan, config, run_dir)       # one run's OnlineConfig settings
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefopt.online.config import OnlineConfig
from prefopt.online.lora_policy import LoraSettings
from prefopt.online.rollout_step import recipe_for
from prefopt.registry import loss_spec

__all__ = ["LORA_FIELDS", "ONLINE_PER_RUN", "check_online_settings", "lora_from_train", "online_settings"]

# The LoRA policy's settings: the same fields in TrainConfig and OnlineConfig.
LORA_FIELDS = tuple(f.name for f in dataclasses.fields(LoraSettings))

# OnlineConfig fields that each run sets itself (or that the synthetic task fixes); `online` may not.
ONLINE_PER_RUN = (
    "algorithm",
    "loss_hparams",
    "seed",
    "output_dir",
    "resume",
    "progress",
    "model",
    "model_revision",
    "tokenizer",
    "reward",
    "reward_weights",
    "prompts",
)


def check_online_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """`CompareConfig.online` as a dict, or a clear error for keys that are per-run or not OnlineConfig fields."""
    fields = {f.name for f in dataclasses.fields(OnlineConfig)}
    per_run = sorted(set(settings) & set(ONLINE_PER_RUN))
    unknown = sorted(set(settings) - fields)
    if per_run or unknown:
        raise ValueError(
            f"CompareConfig.online: {per_run + unknown} cannot be set there (set per run: "
            f"{list(ONLINE_PER_RUN)}; valid: OnlineConfig fields {sorted(fields - set(ONLINE_PER_RUN))})"
        )
    return dict(settings)


def lora_from_train(algorithm: str, train: Mapping[str, Any]) -> dict[str, Any]:
    """The LoRA settings of the offline runs (`CompareConfig.train`) that an online run of `algorithm` takes: all of
    them, unless its policy cannot be LoRA (it keeps heads or a frozen copy of the policy: NLPO, ILQL)."""
    recipe = recipe_for(loss_spec(algorithm))
    if recipe.action_mask or recipe.q_learning:
        return {}
    return {name: train[name] for name in LORA_FIELDS if name in train}


def online_settings(plan: Any, config: Any, run_dir: Path) -> dict[str, Any]:
    """The OnlineConfig settings of one compare run (`plan`: a `RunPlan`)."""
    return {
        "checkpoint_every": 10,
        "max_new_tokens": config.max_new_tokens,
        **lora_from_train(plan.loss, config.train),
        **config.online,
        "algorithm": plan.loss,
        "loss_hparams": dict(plan.hparams),
        "seed": plan.seed,
        "output_dir": str(run_dir / "train"),
        "resume": True,
        "progress": config.progress,
    }
