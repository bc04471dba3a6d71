"""Every CPU backend is at least as accurate as the same-dtype torch reference (see _accuracy.py)."""

from __future__ import annotations

import pytest
import torch

from ._accuracy import CASES, Case, accuracy_report


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_chunked_no_less_accurate_than_reference(case: Case, dtype: torch.dtype) -> None:
    report = accuracy_report(case, "chunked", dtype)
    for key, (err, err_ref, allowed) in report.items():
        assert err <= allowed, f"{key}: chunked error {err:.3g} > reference error {err_ref:.3g} + tolerance"


def test_reference_matches_float64_truth_in_float32() -> None:
    """The harness itself can fail: the fp32 reference sits within 1e-4 of the float64 truth."""
    report = accuracy_report(Case(37, 48, 517, bias=True, entropy=True), "reference", torch.float32)
    for key, (err, _, _) in report.items():
        assert err < 1e-4, key
