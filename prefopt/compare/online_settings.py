"""The settings of `prefopt compare`'s online runs: which `OnlineConfig` fields the shared `online` mapping may
set, and each run's own.

    check_online_settings(config.online)         # a clear error for per-run or unknown keys
    online_settings(plan, config, run_dir)       # one run's OnlineConfig settings
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefopt.online.config import OnlineConfig

__all__ = ["ONLINE_PER_RUN", "check_online_settings", "online_settings"]

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


def online_settings(plan: Any, config: Any, run_dir: Path) -> dict[str, Any]:
    """The OnlineConfig settings of one compare run (`plan`: a `RunPlan`)."""
    return {
        "checkpoint_every": 10,
        "max_new_tokens": config.max_new_tokens,
        **config.online,
        "algorithm": plan.loss,
        "loss_hparams": dict(plan.hparams),
        "seed": plan.seed,
        "output_dir": str(run_dir / "train"),
        "resume": True,
        "progress": config.progress,
    }
