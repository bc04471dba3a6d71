"""Evaluation and results of `prefopt.online.reward_model`: held-out accuracy and margin, `RewardModelResult`,
and the saved `final/` folder (weights, tokenizer and `prefopt_reward_model.json`).
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from prefopt.atomic import write_json_atomic
from prefopt.online.reward_config import METADATA_FILE, RewardModelConfig
from prefopt.online.reward_data import loss_arguments, sequence_scores
from prefopt.train.precision import Precision

__all__ = ["RewardModelResult", "evaluate_reward_model"]


@dataclass(frozen=True)
class RewardModelResult:
    """What `train_reward_model` returns (also written to `<output_dir>/result.json`).

    Attributes:
        model_path: `<output_dir>/final` (load with `LearnedReward(path)`); metrics_path: metrics.jsonl.
        eval_accuracy: held-out share of pairs ordered right, r(x, y_w) > r(x, y_l) (ranked data: of all
            pairs j < k within a ranking); None without an eval split. eval_margin: mean r_w − r_l
            (ranked: best − worst); eval_loss: the loss on the eval split; eval_examples: its rows.
        train_accuracy: the same accuracy over the last pass of training batches (as trained).
        final_metrics: the last logged step's record. steps: optimiser steps; wall_time_s: this call's
            wall time; num_parameters: the reward model's parameter count.
        precision: dtypes of the checkpoint, the master weights, the compute and final/
            (`prefopt.train.precision`).
    """

    model_path: Path
    metrics_path: Path
    eval_accuracy: float | None
    eval_margin: float | None
    eval_loss: float | None
    eval_examples: int
    train_accuracy: float
    final_metrics: dict[str, float]
    steps: int
    wall_time_s: float
    num_parameters: int
    precision: dict[str, str] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}


def _batch_metrics(output: Any, groups: int) -> dict[str, float]:
    return {"loss": float(output.loss.detach()), **{k: float(v) for k, v in output.metrics.items()}, "examples": groups}


def evaluate_reward_model(model: Any, batches: Sequence[Any], loss_fn: Any, kind: str) -> dict[str, float]:
    """Mean loss, accuracy and margin of `model` over collated batches (weighted by rows), without gradients.

    Returns `{"loss", "accuracy", "margin", "examples"}`: accuracy is the loss's `accuracy` metric (paired:
    1[r_w > r_l]; ranked: the share of correctly ordered pairs), margin its `rewards/margins`.
    """
    if not batches:
        raise ValueError("evaluate_reward_model: no batches to evaluate")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    totals = {"loss": 0.0, "accuracy": 0.0, "margin": 0.0}
    rows = 0
    with torch.no_grad():
        for batch in batches:
            batch = batch.to(device)
            output = loss_fn(**loss_arguments(kind, sequence_scores(model, batch), batch))
            n = batch.num_groups
            totals["loss"] += float(output.loss) * n
            totals["accuracy"] += float(output.metrics["accuracy"]) * n
            totals["margin"] += float(output.metrics["rewards/margins"]) * n
            rows += n
    model.train(was_training)
    return {**{k: v / rows for k, v in totals.items()}, "examples": rows}


def _save(
    config: RewardModelConfig,
    sources: dict[str, str],
    model: Any,
    tokenizer: Any,
    tokenize_config: Any,
    evaluation: dict | None,
    train_accuracy: float,
    steps: int,
    precision: Precision,
) -> Path:
    """Write the model, tokenizer and metadata to a temporary sibling of `final/`, then rename it into place."""
    out = Path(config.output_dir)
    final = out / "final"
    tmp = Path(tempfile.mkdtemp(prefix=".final-", dir=out))
    try:
        precision.save_pretrained(model, tmp)  # in the dtype of `save_dtype`
        tokenizer.save_pretrained(tmp)
        metadata = {
            "format": 1,
            "loss": config.loss,
            "loss_hparams": dict(config.loss_hparams),
            **sources,
            "precision": precision.describe(model),
            "tokenize": dataclasses.asdict(tokenize_config),
            "steps": steps,
            "train_accuracy": train_accuracy,
            "eval": evaluation,
        }
        write_json_atomic(tmp / METADATA_FILE, metadata)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return final
