"""Triton backend on CPU under TRITON_INTERPRET=1 (slow: a handful of small odd shapes, ~1 minute).

The interpreter must be switched on before the kernels are defined, so the checks run in one
subprocess (`_triton_interpret.py`) and this module asserts on its JSON report.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
pytestmark = pytest.mark.triton

_SCRIPT = Path(__file__).with_name("_triton_interpret.py")


@pytest.fixture(scope="module")
def report() -> dict[str, dict[str, list[float]]]:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, str(_SCRIPT)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_triton_no_less_accurate_than_reference(report: dict[str, dict[str, list[float]]]) -> None:
    accuracy = {k: v for k, v in report.items() if k not in ("nan-padded-masks", "stats")}
    assert any(k.endswith("bf16") for k in accuracy) and sum(k.endswith("fp32") for k in accuracy) >= 5
    for case, quantities in accuracy.items():
        assert {"logp", "grad_hidden", "grad_weight"} <= set(quantities), case
        for key, (err, err_ref, allowed) in quantities.items():
            assert err <= allowed, f"{case} {key}: triton error {err:.3g} > reference {err_ref:.3g} + tolerance"


def test_triton_masks_never_read_out_of_bounds(report: dict[str, dict[str, list[float]]]) -> None:
    """Inputs are strided views inside NaN-filled buffers: a missing mask would make results NaN."""
    for key, (err,) in report["nan-padded-masks"].items():
        assert math.isfinite(err) and err < 1e-4, key


def test_triton_logit_stats_match_float64_logits(report: dict[str, dict[str, list[float]]]) -> None:
    """`return_stats` in fp32 and bf16, softcap and ignored rows included (see `_accuracy.stats_report`)."""
    stats = report["stats"]
    assert {k.rsplit("-", 1)[1] for k in stats} == {"fp32", "bf16"}
    for case, quantities in stats.items():
        assert set(quantities) == {"logit_mean", "log_sum_sq_probs", "correct", "both_outcomes"}, case
        for key, (err, err_ref, allowed) in quantities.items():
            assert err <= allowed, f"{case} {key}: triton {err:.3g}, reference {err_ref:.3g}, allowed {allowed:.3g}"
