"""Inputs from beyond one micro-batch, served by the offline loop from the loss's declaration alone
(`LossSpec.state`, `LossSpec.batch_inputs`, prefopt/loss_state.py): the documented example of a loss with a
running state (docs/architecture.md) trains through the loop, its state lags one global batch and is saved
in checkpoints; a batch input sees the whole global batch however it is split into micro-batches.
The built-in users (BCO's δ, KTO's z₀) are checked in test_loop.py and test_multiprocess.py."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import Tensor

import prefopt
import prefopt.registry as registry
from prefopt.loss_state import GlobalBatch
from prefopt.losses.kinds import Reported, UnpairedTerms, unpaired_loss
from prefopt.registry import POSITIVE, HParam
from prefopt.train import train

from .test_loop import settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def scratch_registry() -> Iterator[None]:
    """Losses registered inside a test are removed afterwards (the registry is process-wide)."""
    prefopt.list_losses()
    before = set(registry._REGISTRY)
    yield
    for name in set(registry._REGISTRY) - before:
        del registry._REGISTRY[name]


def _documented_example() -> str:
    section = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8").split("### State and batch statistics")[1]
    return re.findall(r"```python\n(.*?)```", section, re.S)[0]


def _records(result) -> list[dict[str, float]]:
    return [json.loads(line) for line in Path(result.metrics_path).read_text().splitlines()]


def test_the_documented_state_trains_through_the_loop(tiny_task, tmp_path, scratch_registry) -> None:
    """Step 1 and 2 read shift = 0 (no history, then step 1's rewards, which are 0 as π = π_ref); step 3 reads
    the mean of the 16 rewards of steps 1–2; checkpoints hold the state under the loss's name."""
    namespace: dict = {}
    exec(compile(_documented_example(), "architecture.md", "exec"), namespace)  # noqa: S102 - our own docs
    spec = prefopt.loss_spec("shifted_bco")
    assert spec.loop_inputs == ("shift",) and spec.extra_inputs == ("shift",)
    result = train(
        **settings(
            tiny_task,
            tmp_path,
            loss="shifted_bco",
            data=str(tiny_task["unpaired"]),
            micro_batch_size=4,
            checkpoint_every=2,
        )
    )
    shifts = [r["shift"] for r in _records(result)]
    assert shifts[0] == shifts[1] == 0.0 and shifts[2] != 0.0
    saved = json.loads((tmp_path / "checkpoints" / "step-000002" / "state.json").read_text())
    assert saved["shifted_bco"]["count"] == 16
    assert saved["shifted_bco"]["total"] / 16 == pytest.approx(shifts[2], abs=1e-7)


def test_a_batch_input_sees_the_global_batch(tiny_task, tmp_path, scratch_registry) -> None:
    """Global batch 8 in micro-batches of 4: the provider runs once per step, sees all 8 rows, scores this
    process's positions and all-reduces; π = π_ref at step 1, so its log-ratio there is exactly 0."""
    calls: list[int] = []

    def rows_and_ratio(batch: GlobalBatch) -> Tensor:
        calls.append(len(batch.rows))
        policy, reference = batch.score([batch.rows[i] for i in batch.positions])
        local = torch.stack([(policy.sum - reference.sum).sum(), policy.sum.new_tensor(float(len(batch.positions)))])
        return batch.all_reduce_sum(local)  # [Σ ratio, rows]

    @unpaired_loss(
        "probe_batch_input",
        paper="test",
        formula="−log σ(±βρ)",
        hparams=[HParam("beta", 0.1, "β", POSITIVE)],
        batch_inputs={"probe": rows_and_ratio},
    )
    def probe(t: UnpairedTerms, *, probe: Tensor | None, beta: float) -> Reported:
        logits = beta * t.ratio
        assert probe is not None
        return Reported(
            torch.nn.functional.softplus(torch.where(t.labels, -logits, logits)),
            metrics={"probe/rows": probe[1], "probe/ratio": probe[0]},
        )

    result = train(
        **settings(
            tiny_task,
            tmp_path,
            loss="probe_batch_input",
            data=str(tiny_task["unpaired"]),
            micro_batch_size=4,
            max_steps=2,
        )
    )
    records = _records(result)
    assert calls == [8, 8]
    assert [r["probe/rows"] for r in records] == [8.0, 8.0]
    assert records[0]["probe/ratio"] == 0.0
