"""The token metrics TRL users look for in metrics.jsonl: `logits/chosen`, `logits/rejected` (paired data) and
`mean_token_accuracy` (every kind), read off the fused kernel's tiles without touching losses or gradients."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from prefopt.engine import SequenceLogProbs
from prefopt.train import train
from prefopt.train.logs import TokenMetrics
from prefopt.train.model import ScoringModule

from .test_loop import _load_tiny, settings

TOKEN_METRICS = {"logits/chosen", "logits/rejected", "mean_token_accuracy"}


def _records(result: Any) -> list[dict[str, float]]:
    return [json.loads(line) for line in Path(result.metrics_path).read_text().splitlines()]


def _first_batch_by_hand(task: dict[str, Path], tokenizer: Any, model: torch.nn.Module) -> dict[str, float]:
    """The step-1 global batch of 8 pairs through the plain logits of the initial model: token-weighted means
    over the whole batch (not means of the micro-batches' means)."""
    from prefopt.data import TokenizeConfig, tokenize_preferences
    from prefopt.train.data import BatchPlan, load_train_rows

    rows = load_train_rows(str(task["paired"]), kind="paired", loss="dpo")
    tokens = tokenize_preferences(rows, tokenizer, TokenizeConfig(max_length=512, max_prompt_length=256))
    plan = BatchPlan(tokens, 8, 8, 1, 0, tokenizer.pad_token_id)
    batch = plan.collate(plan.rows(plan.global_indices(0)))
    assert not batch.packed and batch.group_size == 2
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1].double()
    mask = batch.completion_mask[:, 1:]
    chosen = mask.clone()
    chosen[batch.num_groups :] = False  # rows 0..B−1 hold the chosen completions (padded: one per row)
    rejected = mask & ~chosen
    right = logits.argmax(-1) == batch.input_ids[:, 1:]
    return {
        "logits/chosen": float(logits.mean(-1)[chosen].mean()),
        "logits/rejected": float(logits.mean(-1)[rejected].mean()),
        "mean_token_accuracy": float(right[chosen].double().mean()),
    }


def test_paired_metrics_are_token_weighted_over_the_global_batch(tiny_task, tmp_path, monkeypatch) -> None:
    """Step 1 (initial weights) in 4 micro-batches of 2 pairs equals the hand computation on the whole batch;
    a run whose engine computes no statistics trains to bit-identical weights and logs none of them (both runs
    unfused: the loss-fused head computes its statistics itself, tests/train/test_fused_loss_training.py)."""
    runs = {}
    for name in ("with", "without"):
        if name == "without":  # the engine ignores return_stats: no statistics, nothing else changes
            plain = ScoringModule.forward
            monkeypatch.setattr(ScoringModule, "forward", lambda self, batch, **_: plain(self, batch))
        model, tokenizer = _load_tiny(tiny_task)
        if name == "with":
            expected = _first_batch_by_hand(tiny_task, tokenizer, model)
        result = train(
            model=model,
            tokenizer=tokenizer,
            **settings(tiny_task, tmp_path / name, model=None, max_steps=2, micro_batch_size=2, fused_loss=False),
        )
        runs[name] = (model, _records(result))
    (model, records), (model_without, records_without) = runs["with"], runs["without"]
    assert TOKEN_METRICS <= set(records[0]) and TOKEN_METRICS <= set(records[1])
    for key, value in expected.items():
        assert records[0][key] == pytest.approx(value, abs=1e-5), key
    assert records[1]["logits/chosen"] != records[0]["logits/chosen"]  # (a random model's accuracy is 0 here)
    assert not TOKEN_METRICS & set(records_without[0])
    for a, b in zip(model.parameters(), model_without.parameters()):
        assert torch.equal(a, b)
    strip = lambda r: {k: v for k, v in r.items() if k not in TOKEN_METRICS and k != "elapsed_s"}  # noqa: E731
    assert list(map(strip, records)) == list(map(strip, records_without))


def test_unpaired_data_logs_token_accuracy_only(tiny_task, tmp_path) -> None:
    result = train(**settings(tiny_task, tmp_path, loss="bco", data=str(tiny_task["unpaired"]), max_steps=1))
    record = _records(result)[0]
    assert 0.0 <= record["mean_token_accuracy"] <= 1.0 and not {"logits/chosen", "logits/rejected"} & set(record)


def _micro_batch(count: list[int], logit_sum: list[float], correct: list[int]) -> SequenceLogProbs:
    """Two pairs: sequences 0, 1 chosen, 2, 3 rejected."""
    return SequenceLogProbs(
        torch.zeros(4), torch.tensor(count), 2, logit_sum=torch.tensor(logit_sum), correct=torch.tensor(correct)
    )


def test_token_metrics_weight_tokens_across_micro_batches_and_processes() -> None:
    """Two micro-batches, two processes holding the same sums (reduce = ×2, which ratios do not see):
    logits/chosen = (3 + 1 + 1 + 3) / (3 + 1 + 2 + 2) = 1, logits/rejected = (−4 + 8 + 0 + 2) / (2 + 4 + 1 + 1)
    = 0.75, accuracy of the chosen tokens (2 + 0 + 1 + 2) / 8 = 0.625; unpaired: every token, 11 / 16."""
    parts = [
        _micro_batch([3, 1, 2, 4], [3, 1, -4, 8], [2, 0, 1, 4]),
        _micro_batch([2, 2, 1, 1], [1, 3, 0, 2], [1, 2, 0, 1]),
    ]
    paired, unpaired = TokenMetrics("paired"), TokenMetrics("unpaired")
    for policy in parts:
        paired.add(policy)
        unpaired.add(policy)
    paired.add(SequenceLogProbs(torch.zeros(4), torch.ones(4, dtype=torch.long), 2))  # no stats: adds nothing
    got = paired.result(lambda t: 2 * t)
    assert got == {"logits/chosen": 1.0, "logits/rejected": 0.75, "mean_token_accuracy": 0.625}
    assert unpaired.result(lambda t: 2 * t) == {"mean_token_accuracy": 11 / 16}
    assert TokenMetrics("ranked").result(lambda t: t) == {}
