"""Every CPU backend is at least as accurate as the same-dtype torch reference (see _accuracy.py)."""

from __future__ import annotations

import math

import pytest
import torch

from prefopt.kernels import linear_logprobs

from ._accuracy import CASES, STATS_CASES, Case, accuracy_report, make_inputs, stats_report


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", STATS_CASES, ids=lambda c: c.name)
def test_chunked_logit_stats_match_float64_logits(case: Case, dtype: torch.dtype) -> None:
    """`return_stats`: the mean logit and log Σ_v p_v² are no less accurate than the reference's; the argmax flag
    is exact on every row whose top two logits are not within the dtype's rounding, and False on ignored rows."""
    for key, (err, err_ref, allowed) in stats_report(case, "chunked", dtype).items():
        assert err <= allowed, f"{key}: chunked {err:.3g}, reference {err_ref:.3g}, allowed {allowed:.3g}"


def test_logit_stats_harness_can_fail() -> None:
    """The harness catches a wrong mean (the first logit's, not the vocabulary mean) and a wrong argmax flag."""
    case = STATS_CASES[0]
    hidden, weight, bias, labels = make_inputs(case, torch.float32)
    logits = hidden @ weight.T + bias
    labels[1::2] = logits.argmax(-1)[1::2]
    labels[::5] = -100
    kept = labels != -100
    _, stats = linear_logprobs(hidden, weight, labels, bias=bias, return_stats=True, backend="chunked")
    torch.testing.assert_close(stats.mean[kept], logits.mean(-1)[kept], atol=1e-6, rtol=0)
    assert (stats.mean[kept] - logits[kept, 0]).abs().max() > 0.1
    assert torch.equal(stats.correct, kept & (torch.arange(case.n) % 2 == 1))  # ties: none in float32 here
    assert not stats.correct[~kept].any() and (stats.mean[~kept] == 0).all()
    # log Σ p²: the softmax's, not the logits' (log Σ e^{2z} differs by 2·lse), 0 at ignored rows
    true_sq = torch.logsumexp(2.0 * torch.log_softmax(logits, -1), -1)
    torch.testing.assert_close(stats.log_sum_sq_probs[kept], true_sq[kept], atol=1e-5, rtol=0)
    assert (stats.log_sum_sq_probs[kept] - torch.logsumexp(2.0 * logits, -1)[kept]).abs().min() > 1.0
    assert (stats.log_sum_sq_probs[~kept] == 0).all() and (stats.log_sum_sq_probs[kept] < 0).all()


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_log_sum_sq_probs_of_known_distributions(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A uniform row over V = 300 gives log(1/300); a one-hot row (one logit 60 above the rest, in the last vocab
    tile) gives ≈ 0. Tiles of 128 columns (TILE_BYTES patched) exercise the online rescaling
    s₂ ← s₂·e^{2(m_old − m)} when the maximum arrives in a later tile."""
    monkeypatch.setattr("prefopt.kernels.chunked.TILE_BYTES", 4 * 2 * 128)
    v = 300
    weight = torch.zeros(v, 2)
    weight[250, 0] = 60.0
    hidden = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    _, stats = linear_logprobs(hidden, weight, torch.tensor([3, 250]), return_stats=True, backend=backend)
    torch.testing.assert_close(stats.log_sum_sq_probs, torch.tensor([math.log(1 / v), 0.0]), atol=1e-6, rtol=0)
