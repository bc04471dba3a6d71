"""Runs in subprocesses: 2 CPU processes (torchrun, gloo) against 1, and kill -9 + resume against no kill.

These are the expensive tests of the trainer (≈25 s together on the 2-core machine): a 30k-parameter
model and a handful of steps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from prefopt.train import train
from tests.launch import launch_env, torchrun

from .test_loop import settings, trajectory

SCRIPT = Path(__file__).with_name("train_script.py")


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def _run(args: list[str], *, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, env=env or _env(), timeout=timeout)


def _write(path: Path, payload: Any) -> Path:
    path.write_text(json.dumps(payload))
    return path


@pytest.mark.multiprocess
@pytest.mark.slow
def test_two_processes_match_one(tiny_task, tmp_path) -> None:
    """Global batch 8: one process with one micro-batch of 8 against 2 processes × 2 accumulation steps × 2.
    KTO's reference point z₀ (a global-batch mean of mismatched pairs) must agree too."""
    runs = [
        settings(tiny_task, tmp_path / f"two-{loss}", loss=loss, max_steps=4, micro_batch_size=2, cpu=True)
        for loss in ("dpo", "kto")
    ]
    done = _run([*torchrun(2), str(SCRIPT), str(_write(tmp_path / "two.json", runs))], env=launch_env())
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(results) == 2  # printed by rank 0 only
    for loss in ("dpo", "kto"):
        one = train(**settings(tiny_task, tmp_path / f"one-{loss}", loss=loss, max_steps=4))
        two = [json.loads(line) for line in (tmp_path / f"two-{loss}" / "metrics.jsonl").read_text().splitlines()]
        assert [r["loss"] for r in two] == pytest.approx(trajectory(one), abs=1e-5), loss
        assert two[-1]["grad_norm"] == pytest.approx(one.final_metrics["grad_norm"], rel=1e-4)
        if loss == "kto":
            assert two[-1]["kl"] == pytest.approx(one.final_metrics["kl"], abs=1e-5)


@pytest.mark.multiprocess
@pytest.mark.slow
def test_kill_9_then_resume_gives_the_uninterrupted_result(tiny_task, tmp_path) -> None:
    run = settings(tiny_task, tmp_path / "killed", max_steps=6, checkpoint_every=2, lora_r=4, lr=1e-2)
    killed = _run([sys.executable, str(SCRIPT), str(_write(tmp_path / "run.json", run)), "--kill-at", "3"])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (tmp_path / "killed" / "result.json").exists()
    assert len((tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()) == 3
    resumed = _run([sys.executable, str(SCRIPT), str(_write(tmp_path / "resume.json", {**run, "resume": True}))])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    uninterrupted = train(**{**run, "output_dir": str(tmp_path / "full")})
    final = json.loads((tmp_path / "killed" / "result.json").read_text())["final_metrics"]
    for key, value in uninterrupted.final_metrics.items():
        if key != "elapsed_s":
            assert final[key] == pytest.approx(value, abs=1e-6), key
    assert trajectory(uninterrupted) == pytest.approx(
        [json.loads(line)["loss"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()],
        abs=1e-6,
    )
