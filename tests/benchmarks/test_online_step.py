"""benchmarks/online_step.py cannot rot: its --quick mode runs the prefopt side end to end (driver, subprocess, the
online loop's timing hooks) and writes the JSON the docs' table comes from. The TRL side needs TRL, which is no
prefopt dependency; it is skipped and recorded as such when this interpreter has none."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "online_step.py"


@pytest.mark.slow
def test_quick_mode_runs_the_prefopt_side(tmp_path: Path) -> None:
    out = tmp_path / "online_step.json"
    cases = ["prefopt", "prefopt-before"]  # prefopt, and its code path before generation batching and π_old reuse
    command = [sys.executable, str(SCRIPT), "--quick", "--cases", *cases, "--threads", "1", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    payload = json.loads(out.read_text())
    assert payload["failures"] == [] and payload["settings"]["quick"] and payload["commit"]
    assert set(payload["best"]) == set(cases)
    row = payload["best"]["prefopt"]
    assert row["steps_timed"] == 1 and row["parameters"] > 0 and row["peak_extra_mb"] > 0
    # tokens per step: B·K rows of a prompt and at most max_new_tokens completion tokens each
    assert 0 < row["completion_tokens_per_step"] <= 2 * 2 * 4 < row["tokens_per_step"]
    for name in ("end_to_end_tokens_per_s", "rollout_tokens_per_s", "learner_tokens_per_s"):
        assert row[name] > 0, name
    split = row["split_s"]
    assert split["generate"] > 0 and split["score"] > 0 and split["learn"] > 0
    assert sum(split.values()) == pytest.approx(row["seconds_per_step"], rel=1e-6)
    assert len(row["load_average_1min"]) == 2 and "prefopt" in done.stdout  # the table was printed
