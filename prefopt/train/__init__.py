"""Offline preference training on Hugging Face Accelerate: one loop for every offline loss of the registry.

    from prefopt.train import TrainConfig, train
    result = train(loss="dpo", data="prefs.jsonl", model="path/to/sft", lr=5e-7, output_dir="runs/dpo")
    result.final_metrics["rewards/accuracies"], result.metrics_path, result.model_path

The same code runs on one CPU, one GPU or several processes (`torchrun` / `accelerate launch`); see
docs/training.md. Heavy modules (accelerate, transformers) load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from prefopt.train.config import TrainConfig
from prefopt.train.presets import PRESETS, OptimizerSettings, optimizer_preset

_LAZY = {
    "train": "prefopt.train.loop",
    "TrainResult": "prefopt.train.loop",
    "TrainingDivergedError": "prefopt.train.loop",
    "DistributedSetupError": "prefopt.train.setup",
    "TrainDataError": "prefopt.train.data",
}

__all__ = ["PRESETS", "OptimizerSettings", "TrainConfig", "optimizer_preset", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'prefopt.train' has no attribute {name!r}")
