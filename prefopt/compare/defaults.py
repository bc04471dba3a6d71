"""The default comparison on the built-in synthetic task: its data sizes, and each default loss's optimiser
settings, chosen by the sweep `python benchmarks/compare_sweep.py` (docs/compare.md, "Choosing the defaults").

    COMPARE_PREFERENCES            the synthetic task's sizes in `prefopt compare` (`CompareConfig.preference_config`)
    SYNTHETIC_TRAIN["kto"]         {"lr": ..., "epochs": ...}: a run's TrainConfig settings before `CompareConfig.train`
    train_defaults(loss, config)   those of one run (none on your data: there the papers' presets apply)
    all_losses(synthetic, reward)  what `losses="all"` (`--losses all`, the atlas) names
    tiny_task()                    a seconds-scale task for smoke tests

A loss not in `SYNTHETIC_TRAIN` trains with the trainer's `synthetic` preset (AdamW, lr 1e-4, batch 16, one
epoch; `prefopt.train.presets`). Settings given in `CompareConfig.train` (`--lr`, `--epochs`, `--train`) win over
these for every run alike.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from prefopt.data.synthetic import PreferenceConfig, SFTConfig
from prefopt.registry import list_losses, loss_spec
from prefopt.settings import SettingsError, coerce_settings

__all__ = [
    "COMPARE_EVAL_PROMPTS",
    "COMPARE_PREFERENCES",
    "SYNTHETIC_TRAIN",
    "all_losses",
    "check_holdout",
    "compare_preferences",
    "tiny_task",
    "train_defaults",
]

# The task's own sizes for training (512 prompts × 4 completions ≈ 1,000 pairs), but 256 eval prompts (≈ 510
# pairs: an accuracy's 95% CI ±0.04, where 64 prompts gave ±0.09) and 512 held-out prompts to sample.
COMPARE_PREFERENCES = PreferenceConfig(eval_prompts=256, heldout_prompts=512)
COMPARE_EVAL_PROMPTS = 512

# Chosen by benchmarks/compare_sweep.py on COMPARE_PREFERENCES (the table and the rule: docs/compare.md, "Each
# loss's optimiser settings"): the highest gold reward within a mean KL of 3 nats, fewer epochs on a near tie.
SYNTHETIC_TRAIN: dict[str, dict[str, Any]] = {
    "alpha_dpo": {"lr": 1e-5, "epochs": 1.0},  # the atlas: KL 11–127 nats at the preset's 1e-4
    "apo_down": {"lr": 1e-5, "epochs": 1.0},  # the atlas: KL 117–148 nats, samples at the token cap, at 1e-4
    "dpo": {"lr": 3e-4, "epochs": 1.0},
    "ipo": {"lr": 3e-5, "epochs": 2.0},
    "kto": {"lr": 1e-5, "epochs": 1.0},
    "orpo": {"lr": 1e-3, "epochs": 1.0},
    "simpo": {"lr": 1e-5, "epochs": 1.0},
}


def train_defaults(loss: str, config: Any) -> dict[str, Any]:
    """The TrainConfig settings `loss` starts from in `config` (a `CompareConfig`): `SYNTHETIC_TRAIN` on the
    synthetic task, nothing on your data."""
    return dict(SYNTHETIC_TRAIN.get(loss, {})) if config.synthetic else {}


def compare_preferences(value: Any) -> Any:
    """`CompareConfig.preference_config` on the synthetic task: None → `COMPARE_PREFERENCES`; a mapping (YAML)
    → its fields on top of `COMPARE_PREFERENCES`; a `PreferenceConfig` as given."""
    if value is None:
        return COMPARE_PREFERENCES
    if isinstance(value, Mapping):
        fields = coerce_settings(PreferenceConfig, value, owner="CompareConfig.preference_config")
        return dataclasses.replace(COMPARE_PREFERENCES, **fields)
    return value


def check_holdout(value: Any) -> None:
    """`CompareConfig.holdout` is a share of prompts in [0, 1)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not number or not 0 <= value < 1:
        raise SettingsError(
            f"CompareConfig.holdout={value!r} must be a share of prompts in [0, 1), e.g. 0.1 (--holdout); 0 keeps "
            "every prompt for training"
        )


def all_losses(synthetic: bool, reward: str | None) -> tuple[str, ...]:
    """The losses of `losses="all"`: every registered loss that trains a policy (reward-model losses are
    `prefopt train-rm`'s), offline ones first, then online ones, each group by name. On your data (`synthetic`
    False): the paired and unpaired losses (paired data feeds both), and the online ones only with a `reward`;
    ranked losses need ranked data, so name them there."""
    policy = [name for name in list_losses() if loss_spec(name).scores == "logps"]
    offline = [name for name in policy if loss_spec(name).kind != "rollout"]
    online = [name for name in policy if loss_spec(name).kind == "rollout"]
    if not synthetic:
        offline = [name for name in offline if loss_spec(name).kind in ("paired", "unpaired")]
        online = online if reward is not None else []
    return tuple(offline + online)


def tiny_task() -> dict[str, Any]:
    """CompareConfig settings of a seconds-scale synthetic task (a ≈110k-parameter policy, 64 train prompts):
    for smoke tests and CI, not for conclusions."""
    return {
        "sft_config": SFTConfig.tiny(),
        "preference_config": PreferenceConfig(train_prompts=64, eval_prompts=16, heldout_prompts=16),
        "eval_prompts": 16,
        "max_new_tokens": 32,
    }
