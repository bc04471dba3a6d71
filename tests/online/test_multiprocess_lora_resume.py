"""kill -9 of a 2-process LoRA online run (torchrun, CPU, gloo), resumed from its last checkpoint, ends with the
adapter weights, metrics and final model of the uninterrupted 2-process run.

Every process of the killed launch sends itself SIGKILL right after rollout step 3 of 3, before the final checkpoint
(the job killed mid-run, no cleanup); the newest checkpoint then is step 2's, and the resumed launch re-runs step 3. The
LoRA policy's reference is the adapter-disabled base, so only the adapter is trained, checkpointed and compared.
Two launches (the uninterrupted run, then the killed one; the resumed one) on the tiny random Llama of
tests/train/tiny_task.py.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from ..train.tiny_task import write_tiny_task
from .test_multiprocess import _launch, _metrics, _settings


def _lora(model: Path, out: Path, **overrides: Any) -> dict[str, Any]:
    return _settings(model, out, "grpo", steps=3, checkpoint_every=2, lora_r=4, lr=1e-2, **overrides)


def _untimed(record: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in record.items() if not k.startswith("time/") and "elapsed" not in k}


def _same(a: Path, b: Path) -> None:
    first, second = load_file(str(a)), load_file(str(b))
    assert first.keys() == second.keys()
    for name in first:
        assert first[name].equal(second[name]), name  # bit for bit


@pytest.mark.multiprocess
@pytest.mark.slow
def test_kill_9_then_resume_gives_the_uninterrupted_lora_run(tmp_path) -> None:
    model = write_tiny_task(tmp_path / "task")["model"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    done = _launch(2, [_lora(model, full), _lora(model, killed)], tmp_path, kill_at=3)  # the second run killed
    assert (full / "final").exists()
    assert done.returncode != 0 and f"Signal {int(signal.SIGKILL)}" in done.stderr + done.stdout, done.stderr[-2000:]
    assert not (killed / "final").exists()
    assert len(_metrics(killed)) == 3  # step 3 logged, its checkpoint never written
    assert sorted(p.name for p in (killed / "checkpoints").iterdir() if p.name.startswith("step-")) == ["step-000002"]
    _launch(2, [_lora(model, killed, resume=True)], tmp_path)
    assert [_untimed(r) for r in _metrics(killed)] == [_untimed(r) for r in _metrics(full)]  # every value, exactly
    _same(full / "checkpoints/step-000003/policy.safetensors", killed / "checkpoints/step-000003/policy.safetensors")
    adapters = sorted(p.name for p in (full / "final").glob("*.safetensors"))
    assert adapters
    for name in adapters:
        _same(full / "final" / name, killed / "final" / name)
