"""What the offline loop serves the frontier losses beyond log-prob sums: WPO's Σ_t log Σ_v p² and TDPO's sequential
KL from the engine, ODPO's score difference from a `margin` column, and BCO's δ including each micro-batch.

Each run is the tiny task's 2-layer Llama for 2–3 steps; π starts equal to π_ref (a frozen copy), which fixes
what step 1 must log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from prefopt.train import train

from .test_loop import settings


def records(result: Any) -> list[dict[str, float]]:
    return [json.loads(line) for line in Path(result.metrics_path).read_text().splitlines()]


def test_wpo_gets_the_aligned_weight_and_tdpo_the_sequential_kl(tiny_task, tmp_path) -> None:
    """Step 1 (π = π_ref): TDPO's sequential KL is 0 and grows once π moves; WPO's aligned weight differs from the
    unaligned exp(mean log p) of the same pairs (the alignment divides by Σ_v p² < 1, so it is larger)."""
    tdpo = records(train(**settings(tiny_task, tmp_path / "tdpo", loss="tdpo", lr=1e-2)))
    assert tdpo[0]["seq_kl/chosen"] == pytest.approx(0.0, abs=1e-5) and tdpo[-1]["seq_kl/chosen"] > 1e-4
    aligned = records(train(**settings(tiny_task, tmp_path / "wpo", loss="wpo", max_steps=1)))[0]["wpo_weight"]
    plain = records(train(**settings(tiny_task, tmp_path / "un", loss="wpo_unaligned", max_steps=1)))[0]["wpo_weight"]
    assert 0 < plain < aligned <= 1.0


def test_odpo_reads_the_margin_column(tiny_task, tmp_path) -> None:
    """Paired rows with `margin` = s_w − s_l: the logged offset is the batch mean of α·log(margin)."""
    rows = [json.loads(line) for line in Path(tiny_task["paired"]).read_text().splitlines()]
    data = tmp_path / "scored.jsonl"
    data.write_text("".join(json.dumps({**r, "margin": 0.5 + (i % 4)}) + "\n" for i, r in enumerate(rows)))
    logged = records(train(**settings(tiny_task, tmp_path / "odpo", loss="odpo", data=str(data), max_steps=2)))
    assert all(r["offset"] != 0.0 for r in logged)  # log(0.5 … 3.5): not all 0 in any batch of 8


def test_bco_delta_includes_each_micro_batch_and_resumes_exactly(tiny_task, tmp_path) -> None:
    """Two micro-batches of 4 per step: the second's δ includes the first's rewards, so step 2's logged δ (the
    mean over its micro-batches) is neither 0 nor step 1's; a run resumed from its step-2 checkpoint logs step 3
    exactly as the uninterrupted run."""
    run = settings(
        tiny_task,
        tmp_path / "full",
        loss="bco",
        data=str(tiny_task["unpaired"]),
        micro_batch_size=4,
        max_steps=3,
        checkpoint_every=2,
    )
    full = records(train(**run))
    assert full[0]["delta"] == 0.0 and full[1]["delta"] != 0.0
    saved = json.loads((tmp_path / "full" / "checkpoints" / "step-000002" / "state.json").read_text())
    assert saved["bco"]["count"] == 2 * 8
    stopped = {**run, "output_dir": str(tmp_path / "stopped"), "max_steps": 2}
    train(**stopped)
    resumed = records(train(**{**stopped, "max_steps": 3, "resume": True}))
    drop = lambda r: {k: v for k, v in r.items() if k != "elapsed_s"}  # noqa: E731
    assert [drop(r) for r in resumed] == [drop(r) for r in full]
