"""Hand-computed values and analytic facts for the anchored pairwise losses (prefopt/losses/pairwise_anchored.py).

Expected numbers come from the `math` module applied to the formulas written in each docstring, never from
the torch code under test. Notation: ρ = logπ_θ − logπ_ref, r̂ = β·ρ, softplus(z) = log(1 + eᶻ) = −log σ(−z).
"""

from __future__ import annotations

import math

import pytest
import torch

import prefopt
from prefopt.losses import aot, aot_unpaired, apo_down, apo_zero, bco_pair, nca
from prefopt.registry import LossInputError, loss_spec


def softplus(z: float) -> float:
    return math.log1p(math.exp(z))


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# Two pairs used by the per-row losses:
#   row 0: policy (−2, −6), reference (−4, −4)  →  ρ_w = 2, ρ_l = −2
#   row 1: policy (−3, −3), reference (−3, −3)  →  ρ_w = 0, ρ_l = 0
POLICY_W, POLICY_L = t(-2.0, -3.0), t(-6.0, -3.0)
REF_W, REF_L = t(-4.0, -3.0), t(-4.0, -3.0)


def test_nca_hand_values() -> None:
    """NCA-pair, L = softplus(−r̂_w) + ½·softplus(r̂_w) + ½·softplus(r̂_l)  (−log σ(−z) = softplus(z)).

    β = 0.5. Row 0: r̂_w = 1, r̂_l = −1 → softplus(−1) + ½·softplus(1) + ½·softplus(−1)
                 = 0.313262 + 0.656631 + 0.156631 = 1.126523.
    Row 1: r̂ = 0 → log 2 + ½ log 2 + ½ log 2 = 2 log 2 = 1.386294.
    """
    out = nca(POLICY_W, POLICY_L, REF_W, REF_L, beta=0.5)
    row0 = softplus(-1.0) + 0.5 * softplus(1.0) + 0.5 * softplus(-1.0)
    row1 = 2.0 * math.log(2.0)
    torch.testing.assert_close(out.per_example, t(row0, row1))
    torch.testing.assert_close(out.loss, torch.tensor((row0 + row1) / 2, dtype=torch.float64))
    torch.testing.assert_close(out.metrics["rewards/chosen"], torch.tensor(0.5))  # mean(β·ρ_w) = (1 + 0)/2


def test_nca_default_beta_value() -> None:
    """At the paper default β = 0.01: ρ_w = 100, ρ_l = −50 → r̂_w = 1, r̂_l = −0.5.

    L = softplus(−1) + ½·softplus(1) + ½·softplus(−0.5) = 0.313262 + 0.656631 + 0.237039 = 1.206931.
    """
    out = nca(t(-1.0), t(-60.0), t(-101.0), t(-10.0))
    torch.testing.assert_close(
        out.loss, torch.tensor(softplus(-1) + 0.5 * softplus(1) + 0.5 * softplus(-0.5), dtype=torch.float64)
    )


def test_bco_pair_hand_values() -> None:
    """BCO-pair with δ = 0, L = softplus(−r̂_w) + softplus(r̂_l).

    β = 0.5. Row 0: r̂_w = 1, r̂_l = −1 → 2·softplus(−1) = 0.626523. Row 1: 2·log 2 = 1.386294.
    """
    out = bco_pair(POLICY_W, POLICY_L, REF_W, REF_L, beta=0.5)
    torch.testing.assert_close(out.per_example, t(2 * softplus(-1.0), 2 * math.log(2.0)))


def test_apo_zero_hand_values() -> None:
    """APO-zero, L = (1 − σ(r̂_w)) + σ(r̂_l).

    β = 0.5. Row 0: (1 − σ(1)) + σ(−1) = 2·σ(−1) = 0.537883. Row 1: ½ + ½ = 1.
    """
    out = apo_zero(POLICY_W, POLICY_L, REF_W, REF_L, beta=0.5)
    torch.testing.assert_close(out.per_example, t(1 - sigmoid(1.0) + sigmoid(-1.0), 1.0))


def test_apo_down_hand_values() -> None:
    """APO-down, L = σ(r̂_w) + (1 − σ(β·Δ)).

    β = 0.5. Row 0: Δ = 4 → σ(1) + 1 − σ(2) = 0.731059 + 0.119203 = 0.850261. Row 1: ½ + ½ = 1.
    """
    out = apo_down(POLICY_W, POLICY_L, REF_W, REF_L, beta=0.5)
    torch.testing.assert_close(out.per_example, t(sigmoid(1.0) + 1 - sigmoid(2.0), 1.0))


def test_apo_gradients_point_the_documented_way() -> None:
    """APO-zero raises the chosen and lowers the rejected log-prob; APO-down lowers both, rejected faster.

    d/dlogπ(y_w) of APO-zero = −β·σ'(r̂_w) < 0 (descent raises it); of APO-down: β·σ'(r̂_w) − β·σ'(βΔ),
    which at ρ = 0 is β/4 − β/4 = 0, while the rejected side gets +β/4 > 0 (descent lowers it) and
    d/dlogπ(y_l) of APO-zero = +β·σ'(r̂_l) = β/4 at ρ = 0.
    """
    beta = 0.5
    for fn, expected_w, expected_l in ((apo_zero, -beta / 4, beta / 4), (apo_down, 0.0, beta / 4)):
        pw, pl = t(-3.0).requires_grad_(), t(-3.0).requires_grad_()
        fn(pw, pl, t(-3.0), t(-3.0), beta=beta).loss.backward()
        torch.testing.assert_close(pw.grad, t(expected_w))
        torch.testing.assert_close(pl.grad, t(expected_l))


# AOT example (B = 3, β = 1):
#   policy chosen (−1, −3, −2), rejected (−2, −1, −2) → u = (1, −2, 0) → sorted (−2, 0, 1)
#   reference chosen (−1, −1, −1), rejected (−0.5, −1.5, −1) → v = (−0.5, 0.5, 0) → sorted (−0.5, 0, 0.5)
# u and v are ordered differently, so quantile pairing differs from row pairing.
AOT_PC, AOT_PR = t(-1.0, -3.0, -2.0), t(-2.0, -1.0, -2.0)
AOT_RC, AOT_RR = t(-1.0, -1.0, -1.0), t(-0.5, -1.5, -1.0)


def test_aot_paired_hand_values() -> None:
    """Quantile gaps sort(u) − sort(v) = (−1.5, 0, 0.5); per quantile softplus(−z) with z = β·gap:

    softplus(1.5) = 1.701413, log 2 = 0.693147, softplus(−0.5) = 0.474077; mean 0.956212.
    Pairing rows instead would give gaps u − v = (1.5, −2.5, 0) and mean 1.157817: the sort matters.
    One of three quantiles violates dominance → quantile_violations = 1/3.
    """
    out = aot(AOT_PC, AOT_PR, AOT_RC, AOT_RR, beta=1.0)
    expected = [softplus(1.5), math.log(2.0), softplus(-0.5)]
    torch.testing.assert_close(out.per_example, t(*expected))
    torch.testing.assert_close(out.loss, torch.tensor(sum(expected) / 3, dtype=torch.float64))
    torch.testing.assert_close(out.metrics["quantile_violations"], torch.tensor(1 / 3))
    row_paired = (softplus(-1.5) + softplus(2.5) + math.log(2.0)) / 3
    assert abs(float(out.loss) - row_paired) > 0.05


def test_aot_paired_label_smoothing_value() -> None:
    """ε = 0.25: ℓ(z) = 0.75·softplus(−z) + 0.25·softplus(z) on z = (−1.5, 0, 0.5).

    = (0.75·1.701413 + 0.25·0.201413, log 2, 0.75·0.474077 + 0.25·0.974077) = (1.326413, 0.693147, 0.599077).
    """
    out = aot(AOT_PC, AOT_PR, AOT_RC, AOT_RR, beta=1.0, label_smoothing=0.25)
    torch.testing.assert_close(out.per_example, t(1.326413, math.log(2.0), 0.599077), atol=1e-6, rtol=0)


def test_aot_unpaired_hand_values() -> None:
    """ρ_w = (0, −2, −1) → sorted (−2, −1, 0); ρ_l = (−1.5, 0.5, −1) → sorted (−1.5, −1, 0.5).

    Gaps (−0.5, 0, −0.5), β = 2 → z = (−1, 0, −1): softplus(1) = 1.313262, log 2, softplus(1);
    mean 1.106557. Two of three quantiles violate dominance (gap < 0).
    """
    out = aot_unpaired(AOT_PC, AOT_PR, AOT_RC, AOT_RR, beta=2.0)
    expected = [softplus(1.0), math.log(2.0), softplus(1.0)]
    torch.testing.assert_close(out.per_example, t(*expected))
    torch.testing.assert_close(out.metrics["quantile_violations"], torch.tensor(2 / 3))


@pytest.mark.parametrize("name", ["aot", "aot_unpaired"])
def test_aot_is_invariant_to_permuting_the_batch(name: str) -> None:
    """Sorting makes the loss (and each per-quantile loss) a function of the batch as a multiset of rows."""
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (-torch.rand(9, generator=g, dtype=torch.float64) * 20 for _ in range(4))
    fn = loss_spec(name).fn
    base = fn(pc, pr, rc, rr, beta=0.3)
    for seed in range(3):
        perm = torch.randperm(9, generator=torch.Generator().manual_seed(seed + 1))
        out = fn(pc[perm], pr[perm], rc[perm], rr[perm], beta=0.3)
        torch.testing.assert_close(out.loss, base.loss)
        torch.testing.assert_close(out.per_example, base.per_example)


def test_aot_unpaired_ignores_the_pairing() -> None:
    """aot_unpaired sorts chosen and rejected separately, so shuffling only the rejected rows changes nothing."""
    perm = torch.tensor([2, 0, 1])
    a = aot_unpaired(AOT_PC, AOT_PR, AOT_RC, AOT_RR, beta=2.0)
    b = aot_unpaired(AOT_PC, AOT_PR[perm], AOT_RC, AOT_RR[perm], beta=2.0)
    torch.testing.assert_close(a.loss, b.loss)


def test_aot_is_not_additive_over_micro_batches() -> None:
    """The documented caveat: accumulating micro-batches optimises a different objective.

    Full batch (β = 1): 0.956212 (above). Micro-batches {row 0} and {rows 1, 2}, weighted 1:2 by size:
    row 0 alone: gap u − v = 1 − (−0.5) = 1.5 → softplus(−1.5) = 0.201413;
    rows 1, 2: sorted u (−2, 0) − sorted v (0, 0.5) = (−2, −0.5) → softplus(2) + softplus(0.5) = 3.101005;
    accumulated mean (0.201413 + 3.101005)/3 = 1.100806 ≠ 0.956212.
    """
    one = aot(AOT_PC[:1], AOT_PR[:1], AOT_RC[:1], AOT_RR[:1], beta=1.0).loss
    two = aot(AOT_PC[1:], AOT_PR[1:], AOT_RC[1:], AOT_RR[1:], beta=1.0).loss
    accumulated = (one + 2 * two) / 3
    expected = (softplus(-1.5) + softplus(2.0) + softplus(0.5)) / 3
    torch.testing.assert_close(accumulated, torch.tensor(expected, dtype=torch.float64))
    full = aot(AOT_PC, AOT_PR, AOT_RC, AOT_RR, beta=1.0).loss
    assert abs(float(full) - expected) > 0.1


def test_reward_metrics_are_the_unsorted_implicit_rewards() -> None:
    """Metrics report β·ρ per input row (before any sort): rewards/chosen = β·mean ρ_w = 2·(−1) = −2."""
    out = aot_unpaired(AOT_PC, AOT_PR, AOT_RC, AOT_RR, beta=2.0)
    torch.testing.assert_close(out.metrics["rewards/chosen"], torch.tensor(-2.0))
    torch.testing.assert_close(out.metrics["rewards/rejected"], torch.tensor(2.0 * (-2.0 / 3)))
    assert all(not v.requires_grad for v in out.metrics.values())


@pytest.mark.parametrize(
    ("name", "beta"),
    [("nca", 0.01), ("bco_pair", 0.01), ("apo_zero", 0.1), ("apo_down", 0.1), ("aot", 0.01), ("aot_unpaired", 0.01)],
)
def test_paper_defaults_are_registered(name: str, beta: float) -> None:
    """β defaults as cited in each `paper=` string; AOT's ε defaults to 0 (the paper's plain logistic loss)."""
    spec = loss_spec(name)
    assert spec.defaults()["beta"] == beta and spec.needs_reference and not spec.needs_lengths
    if name.startswith("aot"):
        assert spec.defaults()["label_smoothing"] == 0.0


def test_bad_hyper_parameters_raise_clear_errors() -> None:
    with pytest.raises(LossInputError, match=r"label_smoothing=0.5 is outside its domain \[0, 0.5\)"):
        prefopt.get_loss("aot", label_smoothing=0.5)
    with pytest.raises(LossInputError, match="beta=0 is outside"):
        nca(POLICY_W, POLICY_L, REF_W, REF_L, beta=0)
