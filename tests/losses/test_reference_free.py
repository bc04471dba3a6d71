"""Hand-computed values and analytic facts for the reference-free losses: ORPO, CPO, SimPO, SFT, CPO-SimPO, AlphaPO.

Expected numbers are evaluated with the `math` module from the formulas written in each docstring,
never by calling the torch implementation.
"""

from __future__ import annotations

import math

import pytest
import torch

import prefopt
from prefopt.losses import alphapo, cpo, cpo_simpo, orpo, orpo_seq, sft, simpo
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


def test_orpo_seq_hand_values_whole_sequence_nll() -> None:
    """λ = 0.5 (not the default). Row 1: logπ(y_w) = −2 over 4 tokens, the prompt's tokens after the first −3
    over 2: NLL = 5/6; ℓ_w = −0.5, ℓ_l = −6/3 = −2 (the odds ratio reads completions only, as orpo's).
    Row 2: a one-token prompt (nothing to score): NLL = 6/1; ℓ_w = −6, ℓ_l = −1."""
    out = orpo_seq(
        t(-2.0, -6.0),
        t(-6.0, -1.0),
        chosen_lengths=t(4, 1),
        rejected_lengths=t(3, 1),
        chosen_prompt_sum=t(-3.0, 0.0),
        chosen_prompt_count=torch.tensor([2, 0]),
        lambda_=0.5,
    )
    rows = [(5 / 6, -0.5, -2.0), (6.0, -6.0, -1.0)]
    expected = [nll + 0.5 * softplus(-(math_log_odds(w) - math_log_odds(lo))) for nll, w, lo in rows]
    assert expected[0] == pytest.approx(5 / 6 + 0.5 * 0.09671, abs=1e-5)
    torch.testing.assert_close(out.per_example, t(*expected), rtol=1e-12, atol=1e-12)
    assert float(out.metrics["nll_loss"]) == pytest.approx((5 / 6 + 6.0) / 2, rel=1e-6)
    assert float(out.metrics["rewards/chosen"]) == pytest.approx(0.5 * (-0.5 - 6.0) / 2, rel=1e-6)


def test_orpo_seq_gradients_and_no_prompt_equals_orpo() -> None:
    """∂L/∂ logπ(x)_b = −1/(B·(|x_b|−1 + |y_w,b|)) (the odds ratio does not read the prompt); gradcheck in float64;
    with no prompt tokens orpo_seq is orpo."""
    lengths = {"chosen_lengths": t(4, 2), "rejected_lengths": t(3, 5)}
    prompt = t(-3.0, -7.5).requires_grad_()
    pc, pr = t(-2.0, -3.0).requires_grad_(), t(-6.0, -4.0).requires_grad_()
    count = torch.tensor([2, 6])
    out = orpo_seq(pc, pr, **lengths, chosen_prompt_sum=prompt, chosen_prompt_count=count, lambda_=0.3)
    out.loss.backward()
    torch.testing.assert_close(prompt.grad, t(-1 / (2 * 6), -1 / (2 * 8)), rtol=1e-12, atol=0)

    def f(a, b, x):
        return orpo_seq(a, b, **lengths, chosen_prompt_sum=x, chosen_prompt_count=count, lambda_=0.3).loss

    leaves = (t(-2.0, -3.0).requires_grad_(), t(-6.0, -4.0).requires_grad_(), t(-3.0, -7.5).requires_grad_())
    assert torch.autograd.gradcheck(f, leaves)
    none = orpo_seq(pc, pr, **lengths, chosen_prompt_sum=t(0.0, 0.0), chosen_prompt_count=torch.tensor([0, 0]))
    torch.testing.assert_close(none.per_example, orpo(pc, pr, **lengths).per_example, rtol=0, atol=0)
    with pytest.raises(LossInputError, match="chosen_prompt_sum is above 0"):
        orpo_seq(pc, pr, **lengths, chosen_prompt_sum=t(0.5, -1.0), chosen_prompt_count=count)


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


# ----------------------------------------------------------------------------------------------- SFT


def test_sft_hand_values() -> None:
    """L = −logπ_w/|y_w|, the mean over rows: logπ_w = −6 over 3 tokens → 2, −3 over 2 tokens → 1.5; mean 1.75.
    Rewards are ℓ = logπ/|y|: ℓ_w = [−2, −1.5], ℓ_l = [−4/4, −9/3] = [−1, −3] → margins mean (−1 + 1.5)/2 = 0.25,
    accuracies 1/2. The rejected side gets no gradient; the chosen gets −1/(B·|y_w|) = [−1/6, −1/4]."""
    pc, pr = t(-6.0, -3.0).requires_grad_(True), t(-4.0, -9.0).requires_grad_(True)
    out = sft(pc, pr, chosen_lengths=t(3, 2), rejected_lengths=t(4, 3))
    assert out.per_example.tolist() == pytest.approx([2.0, 1.5], abs=1e-15)
    assert out.loss.item() == pytest.approx(1.75, abs=1e-15)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(-1.75)
    assert out.metrics["rewards/margins"].item() == pytest.approx(0.25)
    assert out.metrics["rewards/accuracies"].item() == 0.5
    out.loss.backward()
    assert pc.grad.tolist() == pytest.approx([-1 / 6, -1 / 4], abs=1e-15) and pr.grad is None


def test_sft_is_the_nll_term_of_cpo_and_rpo() -> None:
    """cpo at α = 1 is sft plus a preference term; rpo likewise: their `nll_loss` metric is sft's loss."""
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (-torch.rand(6, generator=g, dtype=F64) * 30 - 1 for _ in range(4))
    lengths = {"chosen_lengths": t(1, 2, 3, 4, 5, 6), "rejected_lengths": t(6, 5, 4, 3, 2, 1)}
    nll = sft(pc, pr, rc, rr, **lengths).loss.item()
    assert cpo(pc, pr, **lengths).metrics["nll_loss"].item() == pytest.approx(nll, rel=1e-6)
    assert prefopt.losses.rpo(pc, pr, rc, rr, **lengths).metrics["nll_loss"].item() == pytest.approx(nll, rel=1e-6)


# ----------------------------------------------------------------------------------------- CPO-SimPO


def test_cpo_simpo_hand_values() -> None:
    """β = 2, γ = 0.5, α = 0.3, ε = 0.1. logπ_w = −2 over 4 tokens → ℓ_w = −0.5; logπ_l = −6 over 3 → ℓ_l = −2:
        x = 2·(−0.5) − 2·(−2) − 0.5 = 2.5;  L = 0.9·softplus(−2.5) + 0.1·softplus(2.5) + 0.3·0.5 = 0.478890
    TRL's arrangement (logits = ℓ_w − ℓ_l − γ/β, then β·logits) is the same x."""
    out = cpo_simpo(
        t(-2.0),
        t(-6.0),
        chosen_lengths=t(4),
        rejected_lengths=t(3),
        beta=2.0,
        gamma=0.5,
        alpha=0.3,
        label_smoothing=0.1,
    )
    expected = 0.9 * softplus(-2.5) + 0.1 * softplus(2.5) + 0.3 * 0.5
    assert expected == pytest.approx(0.478890, abs=1e-6)
    assert float(out.loss) == pytest.approx(expected, rel=1e-12)
    trl_x = 2.0 * ((-0.5 - -2.0) - 0.5 / 2.0)
    assert trl_x == pytest.approx(2.5, rel=1e-15)
    assert float(out.metrics["nll_loss"]) == pytest.approx(0.5)
    assert float(out.metrics["rewards/chosen"]) == pytest.approx(-1.0)  # β·ℓ_w


def test_cpo_simpo_is_simpo_plus_alpha_times_sft() -> None:
    g = torch.Generator().manual_seed(2)
    pc, pr = (-torch.rand(6, generator=g, dtype=F64) * 30 - 1 for _ in range(2))
    lengths = {"chosen_lengths": t(1, 2, 3, 4, 5, 6), "rejected_lengths": t(6, 5, 4, 3, 2, 1)}
    ours = cpo_simpo(pc, pr, **lengths, beta=3.0, gamma=1.2, alpha=0.7).per_example
    parts = simpo(pc, pr, **lengths, beta=3.0, gamma=1.2).per_example + 0.7 * sft(pc, pr, **lengths).per_example
    torch.testing.assert_close(ours, parts, rtol=1e-12, atol=1e-12)
    assert prefopt.loss_spec("cpo_simpo").defaults() == {
        "beta": 10.0,
        "gamma": 5.4,
        "alpha": 0.05,
        "label_smoothing": 0.0,
    }


def test_cpo_simpo_gradient_by_hand() -> None:
    """dL/dlogπ_w = (−(1−ε)·σ(−x) + ε·σ(x))·β/|y_w| − α/|y_w| at the values of the hand test."""
    pc = t(-2.0).requires_grad_()
    cpo_simpo(
        pc, t(-6.0), chosen_lengths=t(4), rejected_lengths=t(3), beta=2.0, gamma=0.5, alpha=0.3, label_smoothing=0.1
    ).loss.backward()
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    expected = (-0.9 * sig(-2.5) + 0.1 * sig(2.5)) * 2.0 / 4 - 0.3 / 4
    assert float(pc.grad) == pytest.approx(expected, rel=1e-12)


# ------------------------------------------------------------------------------------------- AlphaPO


def test_alphapo_hand_values() -> None:
    """β = 2, γ = 0.5, α = 0.5; r_α(ℓ) = (1 − e^{−αℓ})/α.  ℓ_w = −2/4 = −0.5: r = 2·(1 − e^0.25) = −0.568051;
    ℓ_l = −6/3 = −2: r = 2·(1 − e) = −3.436564;  x = 2·(−0.568051 + 3.436564) − 0.5 = 5.237026;
    L = softplus(−5.237026) = 0.005301. Rewards logged: β·r_α."""
    out = alphapo(t(-2.0), t(-6.0), chosen_lengths=t(4), rejected_lengths=t(3), beta=2.0, gamma=0.5, alpha=0.5)
    r_w, r_l = 2 * (1 - math.exp(0.25)), 2 * (1 - math.e)
    x = 2 * (r_w - r_l) - 0.5
    assert x == pytest.approx(5.237026, abs=1e-6) and softplus(-x) == pytest.approx(0.005301, abs=1e-6)
    assert float(out.loss) == pytest.approx(softplus(-x), rel=1e-12)
    assert float(out.metrics["rewards/chosen"]) == pytest.approx(2 * r_w, rel=1e-6)


def test_alphapo_tends_to_simpo_and_refuses_alpha_zero() -> None:
    g = torch.Generator().manual_seed(3)
    pc, pr = (-torch.rand(6, generator=g, dtype=F64) * 30 - 1 for _ in range(2))
    lengths = {"chosen_lengths": t(1, 2, 3, 4, 5, 6), "rejected_lengths": t(6, 5, 4, 3, 2, 1)}
    near = alphapo(pc, pr, **lengths, beta=2.0, gamma=0.4, alpha=1e-9).per_example
    torch.testing.assert_close(near, simpo(pc, pr, **lengths, beta=2.0, gamma=0.4).per_example, rtol=1e-7, atol=1e-8)
    with pytest.raises(LossInputError, match="alpha=0 is SimPO"):
        alphapo(pc, pr, **lengths, alpha=0.0)
    assert prefopt.loss_spec("alphapo").defaults() == {"beta": 2.0, "gamma": 1.0, "alpha": 0.25}


def test_alphapo_gradient_by_hand_and_gradcheck() -> None:
    """dr_α/dℓ = e^{−αℓ}, dℓ/dlogπ = 1/|y|: dL/dlogπ_w = −σ(−x)·β·e^{−αℓ_w}/|y_w| (values of the hand test)."""
    pc = t(-2.0).requires_grad_()
    alphapo(pc, t(-6.0), chosen_lengths=t(4), rejected_lengths=t(3), beta=2.0, gamma=0.5, alpha=0.5).loss.backward()
    x = 2 * (2 * (1 - math.exp(0.25)) - 2 * (1 - math.e)) - 0.5
    assert float(pc.grad) == pytest.approx(-(1 / (1 + math.exp(x))) * 2.0 * math.exp(0.25) / 4, rel=1e-12)
    lengths = {"chosen_lengths": t(2, 5), "rejected_lengths": t(3, 1)}
    for alpha in (0.5, -0.3):
        f = lambda a, b: alphapo(a, b, **lengths, beta=1.5, gamma=0.2, alpha=alpha).loss  # noqa: E731,B023
        assert torch.autograd.gradcheck(f, (t(-2.0, -7.0).requires_grad_(), t(-4.0, -1.0).requires_grad_()))


@pytest.mark.parametrize("name", ["orpo", "cpo", "simpo", "sft", "cpo_simpo", "alphapo"])
def test_length_normalised_losses_need_lengths(name: str) -> None:
    with pytest.raises(LossInputError, match="chosen_lengths"):
        prefopt.get_loss(name)(t(-1.0), t(-2.0))
