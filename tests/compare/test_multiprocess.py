"""`prefopt compare` under torchrun (CPU, gloo): every run trains on all processes with its data sharded, the main
process evaluates and writes, and 2 processes give the per-run results of 1 process; a second comparison on the
same folder loads them, and one cut back to its step-1 checkpoint resumes to the same result; `jobs` > 1 is refused
under a launcher (`prefopt.compare.launched`).

Both sides are launched (`torchrun --nproc_per_node 1` and `2`): a launched online run samples each prompt from its
own seed (`prefopt.online.distributed`), so the union of what 2 processes sample is what 1 process samples, whereas
a plain one-process run samples step-seeded batches. GRPO on the tiny synthetic task.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

import prefopt.compare.launched as launched
from prefopt.compare import CompareConfig
from prefopt.online.distributed import Processes
from prefopt.settings import SettingsError
from tests.launch import launch_env, torchrun

SCRIPT = Path(__file__).with_name("compare_script.py")
SETTINGS = {
    "losses": ["grpo"],
    "online": {"steps": 2, "prompts_per_step": 4, "num_samples": 2, "checkpoint_every": 1},
    "max_new_tokens": 12,
    "eval_prompts": 8,
    "preference_config": {"train_prompts": 8, "eval_prompts": 4, "heldout_prompts": 8},
    "progress": False,
}
# Wall times differ from run to run; every other logged value (tokens and token means pooled over the processes
# by `prefopt.online.distributed`) is compared.
NOT_COMPUTED = ("time", "elapsed_s")


def _launch(processes: int, runs: list[dict[str, Any]], tmp_path: Path) -> list[dict[str, Any]]:
    settings = tmp_path / f"compares-{processes}.json"
    settings.write_text(json.dumps(runs))
    env = launch_env()
    command = torchrun(processes)
    done = subprocess.run([*command, str(SCRIPT), str(settings)], capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def _computed(record: dict[str, Any]) -> dict[str, Any]:
    """What a run computed: its last training record (less wall times) and its evaluation."""
    final = record["train"]["final_metrics"]
    kept = {k: v for k, v in final.items() if not k.startswith(NOT_COMPUTED)}
    return {"final": kept, "preference": record["preference"], "generation": record["generation"]}


def _assert_close(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, dict):
        assert sorted(a) == sorted(b), where
        for key in a:
            _assert_close(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert b == pytest.approx(a, abs=1e-5), where
    else:
        assert a == b, where  # sample texts, lengths, counts


@pytest.mark.multiprocess
@pytest.mark.slow
def test_two_processes_compare_like_one_and_reuse(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    _launch(1, [{**SETTINGS, "output_dir": str(one)}], tmp_path)
    two_settings = {**SETTINGS, "output_dir": str(two)}
    lines = _launch(2, [two_settings, two_settings], tmp_path)  # the second comparison loads the finished run
    assert sorted(line["rank"] for line in lines) == [0, 0, 1, 1]
    # every process returns the main process's result; the second comparison loaded the run (its wall time)
    assert all(line["rows"] == lines[0]["rows"] and line["walls"] == lines[0]["walls"] for line in lines)
    record = json.loads((one / "grpo-seed0" / "result.json").read_text())
    shared = json.loads((two / "grpo-seed0" / "result.json").read_text())
    _assert_close(_computed(record), _computed(shared))
    step1 = two / "grpo-seed0" / "train" / "checkpoints" / "step-000001" / "policy.safetensors"
    written = step1.stat().st_mtime_ns
    _launch(2, [{**two_settings, "interrupt": "grpo-seed0"}], tmp_path)  # killed after step 1: resumes from there
    resumed = json.loads((two / "grpo-seed0" / "result.json").read_text())
    _assert_close(_computed(record), _computed(resumed))
    assert step1.stat().st_mtime_ns == written  # resumed from the step-1 checkpoint, not trained again from step 0
    assert record["train"]["final_metrics"]["loss"] == pytest.approx(shared["train"]["final_metrics"]["loss"], abs=1e-5)
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())  # one writer, same files


def test_jobs_are_refused_under_a_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launched, "launched_processes", lambda: Processes(0, 2, launched=True))
    config = CompareConfig(losses=("dpo",), jobs=2, progress=False)
    with pytest.raises(SettingsError, match=r"CompareConfig.jobs=2 \(--jobs\).*2 launched processes.*set it to 1"):
        launched.compare_processes(config)
    assert launched.compare_processes(CompareConfig(losses=("dpo",), jobs=1)).size == 2
    assert launched.compare_processes(CompareConfig(losses=("dpo",))).launched  # None: one run at a time
