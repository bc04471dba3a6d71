"""`prefopt train` through the loss-fused head (`TrainConfig.fused_loss`, the default for separable losses) equals
the unfused loop: every logged metric (loss, rewards, token metrics; at step 1, where every margin is 0 up to
rounding, all but the accuracy) and the trained weights, with gradient
accumulation (4 micro-batches of 2 pairs per step), padded and packed. SGD keeps the update linear in the
gradient, so the weights differ only by the gradients' rounding."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from prefopt.train import train

from .test_loop import _load_tiny, settings


def _records(result: Any) -> list[dict[str, float]]:
    lines = Path(result.metrics_path).read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "elapsed_s"} for line in lines]


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_fused_training_equals_unfused(tiny_task, tmp_path, packed: bool) -> None:
    runs = {}
    for fused in (True, False):
        model, tokenizer = _load_tiny(tiny_task)
        result = train(
            model=model,
            tokenizer=tokenizer,
            **settings(
                tiny_task, tmp_path / str(fused), model=None, loss="ipo", max_steps=2, micro_batch_size=2,
                optimizer="sgd", lr=0.5, packed=packed, fused_loss=fused,
            ),
        )  # fmt: skip
        runs[fused] = (model, _records(result))
    (model, records), (model_unfused, records_unfused) = runs[True], runs[False]
    assert [r.keys() for r in records] == [r.keys() for r in records_unfused]
    assert {"logits/chosen", "mean_token_accuracy", "rewards/margins", "grad_norm"} <= set(records[0])
    for step, (fused_record, record) in enumerate(zip(records, records_unfused)):
        for key, value in record.items():
            if step == 0 and key == "rewards/accuracies":
                # The policy is the reference at step 1: every margin is 0 up to the two kernels' rounding
                # (the fused head sums in another order), and the accuracy counts margins > 0.
                assert abs(fused_record["rewards/margins"]) <= 1e-6 and abs(record["rewards/margins"]) <= 1e-6
                continue
            assert fused_record[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    for (name, a), b in zip(model_unfused.named_parameters(), model.parameters()):
        assert (a - b).abs().max().item() <= 1e-5 * max(1.0, a.abs().max().item()), name


def test_no_fused_loss_flag() -> None:
    from prefopt.cli import build_parser
    from prefopt.cli.train import config_from_args

    parser = build_parser()
    assert config_from_args(parser.parse_args(["train"])).fused_loss is True
    assert config_from_args(parser.parse_args(["train", "--no-fused-loss"])).fused_loss is False
