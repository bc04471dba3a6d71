"""Hand-computed values and analytic facts for the reference-free losses: ORPO, CPO, SimPO.

Expected numbers are evaluated with the `math` module from the formulas written in each docstring,
never by calling the torch implementation.
"""

from __future__ import annotations

import math

import pytest
import torch

import prefopt
from prefopt.losses import cpo, orpo, simpo
from prefopt.losses.reference_free import log_odds
from prefopt.registry import LossInputError

F64 = torch.float64


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def softplus(x: float) -> float:
    """log(1 + e^x) = −log σ(−x)."""
    return math.log1p(math.exp(x))


def math_log_odds(avg: float) -> float:
    """ℓ − log(1 − e^ℓ), with log(1 − e^ℓ) = log(−expm1(ℓ)) (exact in double for ℓ ∈ [−30, 0))."""
    return avg - math.log(-math.expm1(avg))


# ---------------------------------------------------------------------------------------------- ORPO


def test_orpo_hand_values() -> None:
    """Row 1: logπ_w = −2 over 4 tokens → ℓ_w = −0.5; logπ_l = −6 over 3 tokens → ℓ_l = −2; λ = 0.1.
        log odds_w = −0.5 − log(1 − e^−0.5) = −0.5 + 0.93275 = 0.43275
        log odds_l = −2 − log(1 − e^−2)     = −2 + 0.14541  = −1.85459
        L_OR = log(1 + e^−(0.43275 + 1.85459)) = 0.09671;   L = 0.5 + 0.1·0.09671 = 0.50967
    Row 2: ℓ_w = −1e−8 (log odds_w = −1e−8 − log(1e−8 − 5e−17) ≈ 18.42068), logπ_l = −1 over 1 token.
        L = 1e−8 + 0.1·log(1 + e^−(18.42068 − log odds(−1)))
    """
    out = orpo(t(-2.0, -1e-8), t(-6.0, -1.0), chosen_lengths=t(4, 1), rejected_lengths=t(3, 1))
    rows = [(-0.5, -2.0), (-1e-8, -1.0)]
    expected = [-w + 0.1 * softplus(-(math_log_odds(w) - math_log_odds(lo))) for w, lo in rows]
    assert expected[0] == pytest.approx(0.50967, abs=1e-5)
    torch.testing.assert_close(out.per_example, t(*expected), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.loss, torch.tensor(sum(expected) / 2, dtype=F64), rtol=1e-12, atol=0)
    diffs = [math_log_odds(w) - math_log_odds(lo) for w, lo in rows]
    assert float(out.metrics["log_odds_chosen"]) == pytest.approx(sum(diffs) / 2, rel=1e-6)
    assert float(out.metrics["log_odds_ratio"]) == pytest.approx(-sum(softplus(-d) for d in diffs) / 2, rel=1e-6)
    assert float(out.metrics["nll_loss"]) == pytest.approx((0.5 + 1e-8) / 2, rel=1e-6)
    # rewards are λ·ℓ (length-averaged), logps are the summed inputs.
    assert float(out.metrics["rewards/chosen"]) == pytest.approx(0.1 * (-0.5 - 1e-8) / 2, rel=1e-6)
    assert float(out.metrics["rewards/rejected"]) == pytest.approx(0.1 * (-2.0 - 1.0) / 2, rel=1e-6)
    assert float(out.metrics["logps/rejected"]) == pytest.approx(-3.5, rel=1e-6)


def test_orpo_lambda_zero_is_token_mean_nll_and_reference_is_ignored() -> None:
    """λ = 0 leaves L = −logπ_w/|y_w|: (12/4 + 5/5)/2 = 2. A reference changes nothing."""
    pc, pr, lc, lr = t(-12.0, -5.0), t(-1.0, -9.0), t(4, 5), t(2, 3)
    out = orpo(pc, pr, chosen_lengths=lc, rejected_lengths=lr, lambda_=0.0)
    assert float(out.loss) == pytest.approx(2.0, rel=1e-12)
    with_ref = orpo(pc, pr, t(0.0, 0.0), t(-50.0, 3.0), chosen_lengths=lc, rejected_lengths=lr)
    without = orpo(pc, pr, chosen_lengths=lc, rejected_lengths=lr)
    assert torch.equal(with_ref.per_example, without.per_example)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_orpo_log_odds_stable_near_zero_and_far_below(dtype: torch.dtype) -> None:
    """log odds(ℓ) = ℓ − log(1 − e^ℓ):
    ℓ → 0⁻: log(1 − e^ℓ) = log(−ℓ) + O(ℓ), so log odds(−1e−6) = 13.81551 and log odds(−1e−30) = 69.07755
    (the naive log(1 − exp(ℓ)) gives −inf once e^ℓ rounds to 1);
    ℓ = −1e4: e^ℓ underflows, log odds = −1e4 exactly; ℓ = 0 stays finite (capped).
    """
    avg = torch.tensor([-1e-6, -1e-30, -1e4, -0.5, 0.0], dtype=dtype, requires_grad=True)
    lo = log_odds(avg)
    expected = [-1e-6 - math.log(-math.expm1(-1e-6)), -1e-30 - math.log(1e-30), -1e4, math_log_odds(-0.5)]
    torch.testing.assert_close(lo[:4].double(), torch.tensor(expected, dtype=F64), rtol=1e-6, atol=0)
    assert torch.isfinite(lo).all()
    naive = avg.detach() - torch.log(1 - torch.exp(avg.detach()))
    assert not torch.isfinite(naive[1])  # the failure log1mexp avoids
    lo.sum().backward()
    assert torch.isfinite(avg.grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_orpo_finite_at_extremes(dtype: torch.dtype) -> None:
    """Average log-probs at 0, −1e−7 (fp32 ulp scale) and −1e4 give a finite loss and finite gradients."""
    pc = torch.tensor([0.0, -1e-7, -1e4, -3.0], dtype=dtype, requires_grad=True)
    pr = torch.tensor([-1e4, 0.0, -1e-7, -3.0], dtype=dtype, requires_grad=True)
    lengths = torch.tensor([1.0, 1.0, 1.0, 2.0], dtype=dtype)
    out = orpo(pc, pr, chosen_lengths=lengths, rejected_lengths=lengths)
    out.loss.backward()
    assert torch.isfinite(out.per_example).all()
    assert torch.isfinite(pc.grad.float()).all() and torch.isfinite(pr.grad.float()).all()


# ----------------------------------------------------------------------------------------------- CPO


def test_cpo_hand_values() -> None:
    """L = −log σ(β(logπ_w − logπ_l)) + α·(−logπ_w/|y_w|).
    β = 0.1, α = 1: logπ_w = −10 (5 tokens), logπ_l = −14 → log(1 + e^−0.4) + 2 = 0.51302 + 2 = 2.51302.
    β = 0.5, α = 0.25: logπ_w = −3 (2 tokens), logπ_l = −1 → log(1 + e^1) + 0.25·1.5 = 1.31326 + 0.375.
    """
    out = cpo(t(-10.0), t(-14.0), chosen_lengths=t(5), rejected_lengths=t(9))
    assert float(out.loss) == pytest.approx(softplus(-0.4) + 2.0, rel=1e-12)
    assert float(out.loss) == pytest.approx(2.51302, abs=1e-5)
    out2 = cpo(t(-3.0), t(-1.0), chosen_lengths=t(2), rejected_lengths=t(7), beta=0.5, alpha=0.25)
    assert float(out2.loss) == pytest.approx(softplus(1.0) + 0.375, rel=1e-12)
    assert float(out2.metrics["nll_loss"]) == pytest.approx(1.5)
    assert float(out2.metrics["rewards/chosen"]) == pytest.approx(-1.5)  # β·logπ_w, summed
    assert float(out2.metrics["rewards/accuracies"]) == 0.0


def test_cpo_nll_is_token_mean_of_chosen_only() -> None:
    """Doubling |y_w| halves the NLL term; |y_l| does not enter (−log σ(0) = log 2 with equal logps)."""
    base = cpo(t(-8.0), t(-8.0), chosen_lengths=t(4), rejected_lengths=t(1))
    longer = cpo(t(-8.0), t(-8.0), chosen_lengths=t(8), rejected_lengths=t(100))
    assert float(base.loss) == pytest.approx(math.log(2) + 2.0, rel=1e-12)
    assert float(longer.loss) == pytest.approx(math.log(2) + 1.0, rel=1e-12)


# --------------------------------------------------------------------------------------------- SimPO


def test_simpo_hand_values_default_margin() -> None:
    """Defaults β = 2, γ = 0.5·β = 1. logπ_w = −6 (3 tokens) → ℓ_w = −2; logπ_l = −12 (4 tokens) → ℓ_l = −3:
    −log σ(2·(−2) − 2·(−3) − 1) = −log σ(1) = log(1 + e^−1) = 0.31326.
    """
    out = simpo(t(-6.0), t(-12.0), chosen_lengths=t(3), rejected_lengths=t(4))
    assert float(out.loss) == pytest.approx(softplus(-1.0), rel=1e-12)
    assert float(out.loss) == pytest.approx(0.31326, abs=1e-5)
    assert float(out.metrics["gamma"]) == 1.0
    assert float(out.metrics["rewards/chosen"]) == pytest.approx(-4.0)  # β·ℓ_w
    assert float(out.metrics["rewards/margins"]) == pytest.approx(2.0)


def test_simpo_hand_values_explicit_gamma() -> None:
    """β = 2.5, γ = 0.3: ℓ_w = −1/1, ℓ_l = −1/2 → logits = −2.5 + 1.25 − 0.3 = −1.55, L = log(1 + e^1.55)."""
    out = simpo(t(-1.0), t(-1.0), chosen_lengths=t(1), rejected_lengths=t(2), beta=2.5, gamma=0.3)
    assert float(out.loss) == pytest.approx(softplus(1.55), rel=1e-12)


@pytest.mark.parametrize(("beta", "ratio"), [(2.0, 0.5), (2.5, 0.55), (10.0, 0.3), (0.7, 0.0)])
def test_simpo_two_spellings_agree(beta: float, ratio: float) -> None:
    """gamma = β·gamma_beta_ratio gives the same loss as gamma_beta_ratio (the official code's γ/β)."""
    g = torch.Generator().manual_seed(0)
    pc, pr = -torch.rand(8, generator=g) * 20, -torch.rand(8, generator=g) * 20
    lc, lr = torch.randint(1, 30, (8,), generator=g).float(), torch.randint(1, 30, (8,), generator=g).float()
    by_ratio = simpo(pc, pr, chosen_lengths=lc, rejected_lengths=lr, beta=beta, gamma_beta_ratio=ratio)
    by_gamma = simpo(pc, pr, chosen_lengths=lc, rejected_lengths=lr, beta=beta, gamma=beta * ratio)
    assert torch.equal(by_ratio.per_example, by_gamma.per_example)
    # And the official form β·(ℓ_w − ℓ_l − γ/β) agrees up to rounding.
    official = torch.nn.functional.softplus(-beta * (pc / lc - pr / lr - ratio))
    torch.testing.assert_close(by_ratio.per_example, official, rtol=1e-5, atol=1e-6)


def test_simpo_both_spellings_is_an_error_and_domain_checked() -> None:
    args = (t(-1.0), t(-2.0))
    lengths = {"chosen_lengths": t(1), "rejected_lengths": t(1)}
    with pytest.raises(LossInputError, match="not both"):
        simpo(*args, **lengths, gamma=1.0, gamma_beta_ratio=0.5)
    with pytest.raises(LossInputError, match="not both"):
        prefopt.get_loss("simpo", gamma=1.0, gamma_beta_ratio=0.5)(*args, **lengths)
    with pytest.raises(LossInputError, match="gamma=-1"):
        simpo(*args, **lengths, gamma=-1.0)


@pytest.mark.parametrize("name", ["orpo", "cpo", "simpo"])
def test_length_normalised_losses_need_lengths(name: str) -> None:
    with pytest.raises(LossInputError, match="chosen_lengths"):
        prefopt.get_loss(name)(t(-1.0), t(-2.0))
