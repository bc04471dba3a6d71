"""Hand-computed values and analytic facts for prefopt/losses/pairwise_regression.py.

Fixed pairs (summed log-probs, with completion lengths where a loss uses them):

    pair A: log π_θ(y_w) = −10, log π_θ(y_l) = −15, log π_ref(y_w) = −12, log π_ref(y_l) = −14
            ρ_w = 2, ρ_l = −1, Δ = 3;   |y_w| = 4, |y_l| = 2
    pair B: log π_θ(y_w) = −20, log π_θ(y_l) = −8,  log π_ref(y_w) = −18, log π_ref(y_l) = −11
            ρ_w = −2, ρ_l = 3, Δ = −5;  |y_w| = 1, |y_l| = 3

Expected numbers are worked out by hand below (they are small integers or short decimals).
"""

from __future__ import annotations

import pytest
import torch

import prefopt
from prefopt.losses import hinge, ipo, ipo_sum, slic, sppo_hard
from prefopt.registry import LossInputError

PAIRS = ((-10.0, -15.0, -12.0, -14.0), (-20.0, -8.0, -18.0, -11.0))
CHOSEN_LENGTHS = torch.tensor([4.0, 1.0], dtype=torch.float64)
REJECTED_LENGTHS = torch.tensor([2.0, 3.0], dtype=torch.float64)


def _inputs(pairs=PAIRS, dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    """Four [B] tensors (policy chosen, policy rejected, ref chosen, ref rejected)."""
    return [torch.tensor([p[i] for p in pairs], dtype=dtype) for i in range(4)]


# ---------------------------------------------------------------------------------------------- IPO


def test_ipo_hand_values_token_mean() -> None:
    """IPO (per-token log-ratios), τ = β = 0.1, target 1/(2τ) = 5.

    A: h = 2/4 − (−1)/2 = 0.5 + 0.5 = 1, loss (1 − 5)² = 16.
    B: h = −2/1 − 3/3 = −3, loss (−3 − 5)² = 64.  Mean 40; `ipo/margin` = (1 − 3)/2 = −1.
    Reward metrics stay β·Σρ: rewards/margins = 0.1·(3 − 5)/2 = −0.1.
    """
    out = ipo(*_inputs(), chosen_lengths=CHOSEN_LENGTHS, rejected_lengths=REJECTED_LENGTHS, beta=0.1)
    assert out.per_example.tolist() == pytest.approx([16.0, 64.0], rel=1e-12)
    assert float(out.loss) == pytest.approx(40.0, rel=1e-12)
    assert float(out.metrics["ipo/margin"]) == pytest.approx(-1.0, rel=1e-6)
    assert float(out.metrics["rewards/margins"]) == pytest.approx(-0.1, rel=1e-6)


def test_ipo_sum_hand_values() -> None:
    """IPO as in Azar et al. Eq. 17 (sums), τ = 0.1: A (Δ = 3): (3 − 5)² = 4; B (Δ = −5): (−5 − 5)² = 100.

    With τ = 0.5 (target 1): A: (3 − 1)² = 4; B: (−5 − 1)² = 36. Lengths are ignored.
    """
    out = ipo_sum(*_inputs(), beta=0.1)
    assert out.per_example.tolist() == pytest.approx([4.0, 100.0], rel=1e-12)
    out = ipo_sum(*_inputs(), chosen_lengths=CHOSEN_LENGTHS, rejected_lengths=REJECTED_LENGTHS, beta=0.5)
    assert out.per_example.tolist() == pytest.approx([4.0, 36.0], rel=1e-12)


def test_ipo_and_ipo_sum_agree_only_for_single_token_completions() -> None:
    """With |y_w| = |y_l| = 1 the per-token and summed margins coincide; with the lengths above they differ."""
    ones = torch.ones(2, dtype=torch.float64)
    x = _inputs()
    assert torch.equal(ipo(*x, chosen_lengths=ones, rejected_lengths=ones).per_example, ipo_sum(*x).per_example)
    normalised = ipo(*x, chosen_lengths=CHOSEN_LENGTHS, rejected_lengths=REJECTED_LENGTHS).per_example
    assert not torch.allclose(normalised, ipo_sum(*x).per_example)


@pytest.mark.parametrize("tau", [0.1, 0.5, 2.0])
def test_ipo_optimum_is_one_over_two_tau(tau: float) -> None:
    """L(h) = (h − 1/(2τ))² has its unique minimum 0 at h* = 1/(2τ), where dL/dh = 0; gradient descent on
    log π_θ(y_w) (|y_w| = 4, |y_l| = 2, ρ_l = 0) drives h to h*.

    dL/d log π_θ(y_w) = 2(h − h*)/|y_w| and dh/d log π_θ(y_w) = 1/|y_w|, so one step of size 4 moves h by
    −2·4·(h − h*)/16: the error halves per step (2⁻⁸⁰ after 80 steps).
    """
    target = 1.0 / (2.0 * tau)
    chosen = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    zeros = torch.zeros(1, dtype=torch.float64)
    lengths = dict(
        chosen_lengths=torch.tensor([4.0], dtype=torch.float64),
        rejected_lengths=torch.tensor([2.0], dtype=torch.float64),
    )
    opt = torch.optim.SGD([chosen], lr=4.0)
    for _ in range(80):
        opt.zero_grad()
        ipo(chosen, zeros, zeros, zeros, **lengths, beta=tau).loss.backward()
        opt.step()
    h = float(chosen.detach()) / 4.0
    assert h == pytest.approx(target, rel=1e-12)
    at_optimum = chosen.detach().clone().requires_grad_(True)
    out = ipo(at_optimum, zeros, zeros, zeros, **lengths, beta=tau)
    out.loss.backward()
    assert float(out.loss.detach()) == pytest.approx(0.0, abs=1e-20)
    assert float(at_optimum.grad) == pytest.approx(0.0, abs=1e-12)


def test_ipo_needs_lengths() -> None:
    """The per-token form cannot run without lengths; the error says what to pass."""
    with pytest.raises(LossInputError, match="length-normalised and needs chosen_lengths"):
        ipo(*_inputs())


# ---------------------------------------------------------------------------------------- SPPO hard


def test_sppo_hard_hand_values() -> None:
    """(ρ_w − 1/(2β))² + (ρ_l + 1/(2β))².

    β = 0.5 (targets ±1): A: (2 − 1)² + (−1 + 1)² = 1;  B: (−2 − 1)² + (3 + 1)² = 9 + 16 = 25.
    β = 1e-3 (targets ±500): A: 498² + 499² = 248004 + 249001 = 497005;
                             B: 502² + 503² = 252004 + 253009 = 505013.
    """
    assert sppo_hard(*_inputs(), beta=0.5).per_example.tolist() == pytest.approx([1.0, 25.0], rel=1e-12)
    out = sppo_hard(*_inputs())
    assert out.per_example.tolist() == pytest.approx([497005.0, 505013.0], rel=1e-12)


def test_sppo_hard_moves_each_likelihood_not_only_the_margin() -> None:
    """Unlike IPO, shifting both log-ratios by the same c changes the loss: the optimum is the point
    ρ_w = +1/(2β), ρ_l = −1/(2β) (loss 0), not a line Δ = const. β = 0.5: ρ = (1, −1) → 0; (3, 1) → 8.
    """
    zero = torch.zeros(1, dtype=torch.float64)
    at = sppo_hard(
        torch.tensor([1.0], dtype=torch.float64), torch.tensor([-1.0], dtype=torch.float64), zero, zero, beta=0.5
    )
    shifted = sppo_hard(
        torch.tensor([3.0], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64), zero, zero, beta=0.5
    )
    assert float(at.loss) == 0.0
    assert float(shifted.loss) == pytest.approx(8.0, rel=1e-12)  # (3 − 1)² + (1 + 1)²


# -------------------------------------------------------------------------------------------- hinge


def test_hinge_hand_values_and_zero_gradient_past_the_margin() -> None:
    """max(0, 1 − βΔ), β = 0.05: A: 1 − 0.15 = 0.85; B: 1 + 0.25 = 1.25. A pair with Δ = 30 has
    βΔ = 1.5 > 1: loss 0 and no gradient; below the margin ∂L/∂log π_θ(y_w) = −β/B.
    """
    out = hinge(*_inputs(), beta=0.05)
    assert out.per_example.tolist() == pytest.approx([0.85, 1.25], rel=1e-12)
    pc, pr, rc, rr = _inputs(PAIRS + ((0.0, -30.0, 0.0, 0.0),))
    pc.requires_grad_(True)
    out = hinge(pc, pr, rc, rr, beta=0.05)
    out.loss.backward()
    assert float(out.per_example[2].detach()) == 0.0
    assert pc.grad.tolist() == pytest.approx([-0.05 / 3, -0.05 / 3, 0.0], rel=1e-12)


# --------------------------------------------------------------------------------------------- SLiC


def test_slic_hand_values() -> None:
    """max(0, δ − log π_θ(y_w) + log π_θ(y_l)) + λ·(−log π_θ(y_w)), δ = 1, λ = 0.1 (sequence NLL).

    A: max(0, 1 + 10 − 15) = 0, NLL 10 → 0 + 1.0 = 1.0.
    B: max(0, 1 + 20 − 8) = 13, NLL 20 → 13 + 2.0 = 15.0.  calibration_loss = 6.5, nll_loss = 15.
    With δ = 6, λ = 0: A: max(0, 6 − 5) = 1; B: 6 + 12 = 18.
    """
    out = slic(*_inputs())
    assert out.per_example.tolist() == pytest.approx([1.0, 15.0], rel=1e-12)
    assert float(out.metrics["calibration_loss"]) == pytest.approx(6.5)
    assert float(out.metrics["nll_loss"]) == pytest.approx(15.0)
    assert float(out.metrics["rewards/chosen"]) == pytest.approx(-15.0)  # reference-free: log π_θ
    out = slic(*_inputs(), delta=6.0, lambda_=0.0)
    assert out.per_example.tolist() == pytest.approx([1.0, 18.0], rel=1e-12)


def test_slic_is_reference_free() -> None:
    """The reference arguments are ignored: the same result with, without, or with a different reference."""
    pc, pr, rc, rr = _inputs()
    with_ref = slic(pc, pr, rc, rr).per_example
    assert torch.equal(slic(pc, pr).per_example, with_ref)
    assert torch.equal(slic(pc, pr, rc + 7.0, rr - 3.0).per_example, with_ref)
    assert not prefopt.loss_spec("slic").needs_reference


def test_slic_gradient_once_calibrated_is_the_nll_only() -> None:
    """Pair A already has its margin (log π_θ(y_w) − log π_θ(y_l) = 5 ≥ δ = 1): the hinge is flat, so
    ∂L/∂log π_θ(y_l) = 0 and ∂L/∂log π_θ(y_w) = −λ = −0.1 (B = 1).
    """
    pc, pr, _, _ = _inputs(PAIRS[:1])
    pc.requires_grad_(True)
    pr.requires_grad_(True)
    slic(pc, pr).loss.backward()
    assert float(pr.grad) == 0.0
    assert float(pc.grad) == pytest.approx(-0.1, rel=1e-12)


def test_slic_lambda_weighs_the_sequence_nll_as_its_source() -> None:
    """The defaults (δ = 1, λ = 0.1) come from HALOs' config/loss/slic.yaml of 2023-12-03, whose SLiCTrainer summed
    the completion's token log-probs before `reg_loss = −policy_chosen_logps`: L = max(0, 1 − Σlogπ_w + Σlogπ_l)
    + 0.1·(−Σlogπ_w). So the NLL term is the sequence sum: a chosen of 4 tokens at −2.5 each (Σ = −10) and one of
    10 tokens at −1 each (Σ = −10) give the same loss, 1.0 with the rejected at Σ = −15 (a per-token NLL
    would give 0.25 and 0.1). Lengths are not an input of slic at all."""
    per_token = [-2.5] * 4, [-1.0] * 10
    for tokens in per_token:
        pc, pr = torch.tensor([sum(tokens)], dtype=torch.float64), torch.tensor([-15.0], dtype=torch.float64)
        halos_2023 = max(0.0, 1.0 - sum(tokens) + -15.0) + 0.1 * -sum(tokens)
        assert float(slic(pc, pr).loss) == pytest.approx(halos_2023, rel=1e-12) == 1.0
    assert (
        "chosen_lengths" not in prefopt.loss_spec("slic").extra_inputs and not prefopt.loss_spec("slic").needs_lengths
    )


def test_regression_losses_reject_non_positive_hyperparameters() -> None:
    """β/τ must be > 0 (the target 1/(2τ) is undefined at 0); δ and λ must be ≥ 0."""
    with pytest.raises(LossInputError, match=r"beta=0.0 is outside its domain"):
        ipo_sum(*_inputs(), beta=0.0)
    with pytest.raises(LossInputError, match=r"lambda_=-1.0 is outside its domain"):
        slic(*_inputs(), lambda_=-1.0)
