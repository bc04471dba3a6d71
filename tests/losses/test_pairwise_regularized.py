"""Hand-computed values and analytic facts for the regularised DPO losses (prefopt/losses/pairwise_regularized.py).

Expected numbers come from the `math` module applied to the formulas in each docstring, not from the code
under test. Notation: ρ = logπ_θ − logπ_ref, Δ = ρ_w − ρ_l, softplus(z) = log(1 + eᶻ), so DPO's
−log σ(βΔ) = softplus(−βΔ).
"""

from __future__ import annotations

import math

import pytest
import torch

import prefopt
from prefopt.losses import dpo_norm, dpop, odpo, rdpo, rpo, wpo, wpo_unaligned
from prefopt.registry import LossInputError, loss_spec


def softplus(z: float) -> float:
    return math.log1p(math.exp(z))


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def dpo(*args: torch.Tensor, **kwargs: float) -> torch.Tensor:
    return prefopt.get_loss("dpo")(*args, **kwargs).per_example


def random_pairs(n: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(-torch.rand(n, generator=g, dtype=torch.float64) * 30 - 0.1 for _ in range(4))


# ---------------------------------------------------------------- DPOP


def test_dpop_hand_values() -> None:
    """β = 0.5, λ = 2.

    Row 0: policy (−2, −5), reference (−3, −4): ρ_w = 1, ρ_l = −1, Δ = 2, penalty max(0, −1) = 0
           → softplus(−0.5·2) = softplus(−1) = 0.313262 (DPO's value).
    Row 1: policy (−4, −7), reference (−3, −4): ρ_w = −1, ρ_l = −3, Δ = 2, penalty max(0, 1) = 1
           → softplus(−0.5·(2 − 2·1)) = softplus(0) = log 2 = 0.693147 (DPO would give 0.313262).
    """
    out = dpop(t(-2.0, -4.0), t(-5.0, -7.0), t(-3.0, -3.0), t(-4.0, -4.0), beta=0.5, lambda_=2.0)
    torch.testing.assert_close(out.per_example, t(softplus(-1.0), math.log(2.0)))
    torch.testing.assert_close(out.metrics["dpop_penalty"], torch.tensor(0.5))  # mean(0, 1)


def test_dpop_default_value() -> None:
    """Defaults β = 0.3, λ = 50: ρ_w = −0.1, ρ_l = −2 → Δ = 1.9, penalty 0.1.

    L = softplus(−0.3·(1.9 − 50·0.1)) = softplus(0.93) = log(1 + e^0.93) = 1.262574.
    """
    out = dpop(t(-10.1), t(-7.0), t(-10.0), t(-5.0))
    torch.testing.assert_close(out.loss, torch.tensor(softplus(0.3 * 3.1), dtype=torch.float64))


def test_dpop_equals_dpo_when_chosen_is_above_reference_and_exceeds_it_otherwise() -> None:
    """Penalty is 0 iff log π_θ(y_w) ≥ log π_ref(y_w); otherwise the logit drops by βλ·penalty > 0 and
    softplus(−x) is strictly decreasing, so DPOP > DPO row by row."""
    pc, pr, rc, rr = random_pairs(64, seed=0)
    above = torch.maximum(pc, rc)  # chosen log-prob at or above the reference on every row
    torch.testing.assert_close(
        dpop(above, pr, rc, rr, beta=0.3, lambda_=50.0).per_example, dpo(above, pr, rc, rr, beta=0.3)
    )
    below = rc - torch.rand(64, generator=torch.Generator().manual_seed(1), dtype=torch.float64) - 0.01
    assert (dpop(below, pr, rc, rr, beta=0.3, lambda_=50.0).per_example > dpo(below, pr, rc, rr, beta=0.3)).all()


def test_dpop_penalty_pushes_the_chosen_likelihood_up() -> None:
    """Below the reference the chosen gradient is −β(1 + λ)·σ(−z) per row: (1 + λ) times DPO's.

    β = 0.5, λ = 2, row 1 above: z = 0 → d/dlogπ(y_w) = −0.5·3·½ = −0.75 (DPO's: −0.5·σ(−1) = −0.134471).
    """
    pw = t(-4.0).requires_grad_()
    dpop(pw, t(-7.0), t(-3.0), t(-4.0), beta=0.5, lambda_=2.0).loss.backward()
    torch.testing.assert_close(pw.grad, t(-0.75))


# ---------------------------------------------------------------- R-DPO


def test_rdpo_hand_values() -> None:
    """β = 0.5, α = 0.1, Δ = 2 on both rows (policy (−2, −5), reference (−3, −4)).

    Row 0: |y_w| = 10, |y_l| = 5 → logit 0.5·2 + 0.1·5 = 1.5 → softplus(−1.5) = 0.201413.
    Row 1: |y_w| = 3, |y_l| = 8 → logit 1 − 0.5 = 0.5 → softplus(−0.5) = 0.474077.
    """
    out = rdpo(
        t(-2.0, -2.0),
        t(-5.0, -5.0),
        t(-3.0, -3.0),
        t(-4.0, -4.0),
        chosen_lengths=t(10.0, 3.0),
        rejected_lengths=t(5.0, 8.0),
        beta=0.5,
        alpha=0.1,
    )
    torch.testing.assert_close(out.per_example, t(softplus(-1.5), softplus(-0.5)))
    torch.testing.assert_close(out.metrics["length_margin"], torch.tensor(0.0))  # mean(0.5, −0.5)


def test_rdpo_with_alpha_zero_is_dpo() -> None:
    pc, pr, rc, rr = random_pairs(32, seed=2)
    lengths = {
        "chosen_lengths": torch.arange(1.0, 33.0, dtype=torch.float64),
        "rejected_lengths": torch.arange(32.0, 0.0, -1.0, dtype=torch.float64),
    }
    torch.testing.assert_close(
        rdpo(pc, pr, rc, rr, **lengths, beta=0.2, alpha=0.0).per_example, dpo(pc, pr, rc, rr, beta=0.2)
    )


def test_rdpo_length_term_has_the_papers_sign() -> None:
    """Park et al. 2024: +α(|y_w| − |y_l|) inside σ. A longer chosen answer therefore lowers the loss and
    shrinks the push on the margin: dL/dΔ = −β·σ(−(βΔ + α(|y_w| − |y_l|))), smaller in size than DPO's.

    β = 0.5, α = 0.1, Δ = 2, |y_w| − |y_l| = 5: dL/dlogπ(y_w) = −0.5·σ(−1.5) = −0.091213
    versus DPO's −0.5·σ(−1) = −0.134471.
    """
    pw = t(-2.0).requires_grad_()
    out = rdpo(pw, t(-5.0), t(-3.0), t(-4.0), chosen_lengths=t(10.0), rejected_lengths=t(5.0), beta=0.5, alpha=0.1)
    out.loss.backward()
    torch.testing.assert_close(pw.grad, t(-0.5 * sigmoid(-1.5)))
    assert float(out.loss.detach()) < float(dpo(t(-2.0), t(-5.0), t(-3.0), t(-4.0), beta=0.5))
    assert abs(float(pw.grad)) < 0.5 * sigmoid(-1.0)


# ---------------------------------------------------------------- length-normalised DPO


def test_dpo_norm_hand_values() -> None:
    """β = 2. Row 0: ρ_w = 4 over 4 tokens, ρ_l = −3 over 6 tokens → 1 − (−0.5) = 1.5 → softplus(−3) = 0.048587.
    Row 1: ρ_w = 1 over 2, ρ_l = 1 over 1 → 0.5 − 1 = −0.5 → softplus(1) = 1.313262.
    """
    out = dpo_norm(
        t(-1.0, -2.0),
        t(-8.0, -2.0),
        t(-5.0, -3.0),
        t(-5.0, -3.0),
        chosen_lengths=t(4.0, 2.0),
        rejected_lengths=t(6.0, 1.0),
        beta=2.0,
    )
    torch.testing.assert_close(out.per_example, t(softplus(-3.0), softplus(1.0)))
    torch.testing.assert_close(out.metrics["normalized_margin"], torch.tensor(0.5))  # mean(1.5, −0.5)
    torch.testing.assert_close(out.metrics["rewards/chosen"], torch.tensor(5.0))  # β·Σρ: 2·mean(4, 1)


def test_dpo_norm_equals_dpo_when_both_lengths_are_one() -> None:
    pc, pr, rc, rr = random_pairs(16, seed=4)
    ones = torch.ones(16, dtype=torch.float64)
    torch.testing.assert_close(
        dpo_norm(pc, pr, rc, rr, chosen_lengths=ones, rejected_lengths=ones, beta=0.7).per_example,
        dpo(pc, pr, rc, rr, beta=0.7),
    )


# ---------------------------------------------------------------- RPO


def test_rpo_hand_values() -> None:
    """β = 0.5, policy (−6, −5), reference (−7, −4): Δ = 1 − (−1) = 2 → DPO part softplus(−1) = 0.313262.

    NLL = −log π_θ(y_w)/|y_w| = 6/3 = 2. α = 1 → 2.313262; α = 0.5 → 1.313262.
    """
    args = (t(-6.0), t(-5.0), t(-7.0), t(-4.0))
    lengths = {"chosen_lengths": t(3.0), "rejected_lengths": t(9.0)}
    out = rpo(*args, **lengths, beta=0.5)
    torch.testing.assert_close(out.loss, torch.tensor(softplus(-1.0) + 2.0, dtype=torch.float64))
    torch.testing.assert_close(out.metrics["nll_loss"], torch.tensor(2.0))
    torch.testing.assert_close(
        rpo(*args, **lengths, beta=0.5, alpha=0.5).loss, torch.tensor(softplus(-1.0) + 1.0, dtype=torch.float64)
    )


def test_rpo_with_alpha_zero_is_dpo_and_ignores_rejected_length() -> None:
    pc, pr, rc, rr = random_pairs(8, seed=5)
    lengths = {
        "chosen_lengths": torch.full((8,), 4.0, dtype=torch.float64),
        "rejected_lengths": torch.full((8,), 99.0, dtype=torch.float64),
    }
    torch.testing.assert_close(rpo(pc, pr, rc, rr, **lengths, alpha=0.0).per_example, dpo(pc, pr, rc, rr))


# ---------------------------------------------------------------- WPO


WPO_ARGS = (t(-2.0), t(-3.0), t(-3.0), t(-2.0))  # ρ_w = 1, ρ_l = −1, Δ = 2
WPO_LENGTHS = {"chosen_lengths": t(4.0), "rejected_lengths": t(2.0)}
WPO_SQ = {"chosen_log_sum_sq_probs": t(-1.2), "rejected_log_sum_sq_probs": t(-0.8)}  # Σ_t log Σ_v p_v²


def test_wpo_hand_values_with_the_alignment() -> None:
    """β = 0.5: w(y_w) = exp((−2 + 1.2)/4) = e^−0.2, w(y_l) = exp((−3 + 0.8)/2) = e^−1.1, product e^−1.3 =
    0.272532; DPO part softplus(−1) = 0.313262; L = 0.085373. Without the alignment (wpo_unaligned) the weight
    would be exp(−2/4 − 3/2) = e^−2 = 0.135335: the alignment doubles this pair's weight."""
    out = wpo(*WPO_ARGS, **WPO_LENGTHS, **WPO_SQ, beta=0.5)
    assert math.exp(-1.3) * softplus(-1.0) == pytest.approx(0.085373, abs=1e-6)
    torch.testing.assert_close(out.loss, t(math.exp(-1.3) * softplus(-1.0))[0])
    torch.testing.assert_close(out.metrics["wpo_weight"], torch.tensor(math.exp(-1.3), dtype=torch.float32))
    assert prefopt.loss_spec("wpo").defaults() == {"beta": 0.01, "clamp_weight": True}


def test_wpo_clamps_the_pair_weight_at_one_unless_told_not_to() -> None:
    """Σ_t log Σ_v p² of the chosen = −8: aligned mean (−2 + 8)/4 = 1.5, rejected (−3 + 2.4)/2 = −0.3; the
    product e^1.2 = 3.320117 is clamped at 1 (the authors' code), kept with clamp_weight=False (TRL ≥ 0.29)."""
    sq = {"chosen_log_sum_sq_probs": t(-8.0), "rejected_log_sum_sq_probs": t(-2.4)}
    clamped = wpo(*WPO_ARGS, **WPO_LENGTHS, **sq, beta=0.5)
    assert float(clamped.metrics["wpo_weight"]) == 1.0
    torch.testing.assert_close(clamped.per_example, t(softplus(-1.0)))
    free = wpo(*WPO_ARGS, **WPO_LENGTHS, **sq, beta=0.5, clamp_weight=False)
    torch.testing.assert_close(free.per_example, t(math.exp(1.2) * softplus(-1.0)))


def test_wpo_weights_carry_no_gradient() -> None:
    """With w detached, d/dlogπ(y_w) = w·(−β·σ(−βΔ)) = e^−1.3·(−0.5·σ(−1)) and d/dlogπ(y_l) = the opposite;
    the statistics Σ_t log Σ_v p² get no gradient either."""
    pw, pl = t(-2.0).requires_grad_(), t(-3.0).requires_grad_()
    sq = {k: v.clone().requires_grad_() for k, v in WPO_SQ.items()}
    wpo(pw, pl, t(-3.0), t(-2.0), **WPO_LENGTHS, **sq, beta=0.5).loss.backward()
    expected = math.exp(-1.3) * 0.5 * sigmoid(-1.0)
    torch.testing.assert_close(pw.grad, t(-expected))
    torch.testing.assert_close(pl.grad, t(expected))
    assert all(v.grad is None for v in sq.values())


def test_wpo_without_the_statistic_points_to_the_engine_and_to_wpo_unaligned() -> None:
    with pytest.raises(LossInputError, match=r"wpo needs chosen_log_sum_sq_probs.*return_stats=True.*wpo_unaligned"):
        wpo(*WPO_ARGS, **WPO_LENGTHS)
    with pytest.raises(LossInputError, match=r"rejected_log_sum_sq_probs is above 0 at rows \[0\]"):
        wpo(*WPO_ARGS, **WPO_LENGTHS, chosen_log_sum_sq_probs=t(-1.0), rejected_log_sum_sq_probs=t(0.5))


def test_wpo_unaligned_hand_values() -> None:
    """β = 0.5: w(y_w)·w(y_l) = exp(−2/4 − 3/2) = e^−2 = 0.135335; DPO part softplus(−1) = 0.313262;
    L = 0.042395. Second input: both average log-probs 0 → weight 1 → L = DPO; ρ_w = 1, ρ_l = 0
    → softplus(−0.5) = 0.474077.
    """
    out = wpo_unaligned(*WPO_ARGS, **WPO_LENGTHS, beta=0.5)
    torch.testing.assert_close(out.loss, torch.tensor(math.exp(-2.0) * softplus(-1.0), dtype=torch.float64))
    torch.testing.assert_close(out.metrics["wpo_weight"], torch.tensor(math.exp(-2.0), dtype=torch.float32))
    sure = wpo_unaligned(t(0.0), t(0.0), t(-1.0), t(0.0), **WPO_LENGTHS, beta=0.5)
    torch.testing.assert_close(sure.loss, torch.tensor(softplus(-0.5), dtype=torch.float64))


def test_wpo_unaligned_weights_carry_no_gradient() -> None:
    """With w detached, d/dlogπ(y_w) = w·(−β·σ(−βΔ)) = e^−2·(−0.5·σ(−1)) = −0.018199 and
    d/dlogπ(y_l) = +0.018199. Were w differentiated, each would gain w·L/|y| ≠ 0 (e.g. +0.010599 on y_w)."""
    pw, pl = t(-2.0).requires_grad_(), t(-3.0).requires_grad_()
    wpo_unaligned(pw, pl, t(-3.0), t(-2.0), **WPO_LENGTHS, beta=0.5).loss.backward()
    expected = math.exp(-2.0) * 0.5 * sigmoid(-1.0)
    torch.testing.assert_close(pw.grad, t(-expected))
    torch.testing.assert_close(pl.grad, t(expected))


def test_wpo_unaligned_weight_never_exceeds_one() -> None:
    """Log-probs rounded above 0 would give w > 1; the log-weight is clamped at 0, so w ≤ 1."""
    out = wpo_unaligned(t(1e-3), t(2e-3), t(-1.0), t(-1.0), **WPO_LENGTHS, beta=0.5)
    assert float(out.metrics["wpo_weight"]) == 1.0


# ---------------------------------------------------------------- ODPO


def test_odpo_hand_values() -> None:
    """β = 0.5, α = 2, margins s_w − s_l = 3 and 0.5: x = β·Δ − α·log(margin).
        pair 1 (Δ = 2):  x = 1 − 2·log 3 = −1.197225;  L = softplus(1.197225) = 1.461150
        pair 2 (Δ = −1): x = −0.5 − 2·log 0.5 = 0.886294; L = softplus(−0.886294)
    A margin below 1 lowers the bar (negative offset); α = 0 is DPO."""
    args = (t(-2.0, -5.0), t(-3.0, -4.0), t(-3.0, -5.0), t(-2.0, -5.0))
    margin = t(3.0, 0.5)
    out = odpo(*args, margin=margin, beta=0.5, alpha=2.0)
    expected = [softplus(-(1.0 - 2 * math.log(3.0))), softplus(-(-0.5 - 2 * math.log(0.5)))]
    assert expected[0] == pytest.approx(1.461150, abs=1e-6)
    assert out.per_example.tolist() == pytest.approx(expected, rel=1e-12)
    assert float(out.metrics["offset"]) == pytest.approx(math.log(3.0) + math.log(0.5), rel=1e-6)
    torch.testing.assert_close(odpo(*args, margin=margin, beta=0.5, alpha=0.0).per_example, dpo(*args, beta=0.5))


def test_odpo_gradient_and_gradcheck() -> None:
    """dL/dlogπ(y_w) = −β·σ(−x)/B with x of pair 1 above (B = 2); the margin gets no gradient."""
    pc, pr = t(-2.0, -5.0).requires_grad_(), t(-3.0, -4.0).requires_grad_()
    margin = t(3.0, 0.5).requires_grad_()
    odpo(pc, pr, t(-3.0, -5.0), t(-2.0, -5.0), margin=margin, beta=0.5, alpha=2.0).loss.backward()
    x = 1.0 - 2 * math.log(3.0)
    assert float(pc.grad[0]) == pytest.approx(-0.5 * sigmoid(-x) / 2, rel=1e-12)
    assert margin.grad is None
    f = lambda a, b: odpo(a, b, t(-3.0, -5.0), t(-2.0, -5.0), margin=t(3.0, 0.5), beta=0.7, alpha=1.5).loss  # noqa: E731
    assert torch.autograd.gradcheck(f, (t(-2.0, -5.0).requires_grad_(), t(-3.0, -4.0).requires_grad_()))


def test_odpo_needs_a_positive_score_difference() -> None:
    args = (t(-2.0, -5.0), t(-3.0, -4.0), t(-3.0, -5.0), t(-2.0, -5.0))
    with pytest.raises(LossInputError, match=r"odpo needs margin = s\(y_w\) − s\(y_l\) > 0.*`margin` column"):
        odpo(*args)
    with pytest.raises(LossInputError, match=r"margin is ≤ 0 at rows \[1\]"):
        odpo(*args, margin=t(1.0, 0.0))
    with pytest.raises(LossInputError, match=r"margin must be a tensor of shape \(2,\)"):
        odpo(*args, margin=t(1.0))


# ---------------------------------------------------------------- registration and errors


@pytest.mark.parametrize(
    ("name", "defaults", "needs_lengths"),
    [
        ("dpop", {"beta": 0.3, "lambda_": 50.0}, False),
        ("rdpo", {"beta": 0.1, "alpha": 0.05}, True),
        ("dpo_norm", {"beta": 5.0}, True),
        ("rpo", {"beta": 0.1, "alpha": 1.0}, True),
        ("wpo", {"beta": 0.01, "clamp_weight": True}, True),
        ("wpo_unaligned", {"beta": 0.01}, True),
        ("odpo", {"beta": 0.1, "alpha": 1.0}, False),
    ],
)
def test_registered_contract(name: str, defaults: dict[str, float], needs_lengths: bool) -> None:
    spec = loss_spec(name)
    assert spec.defaults() == defaults and spec.needs_lengths is needs_lengths and spec.needs_reference


def test_ld_dpo_is_not_registered() -> None:
    """LD-DPO needs shared-prefix log-probs the uniform call lacks (module docstring)."""
    assert "ld_dpo" not in prefopt.list_losses()


def test_errors_name_the_argument() -> None:
    args = (t(-1.0), t(-2.0), t(-1.0), t(-1.0))
    with pytest.raises(LossInputError, match="rdpo is length-normalised and needs chosen_lengths"):
        rdpo(*args)
    with pytest.raises(LossInputError, match=r"lambda_=-1.0 is outside its domain"):
        dpop(*args, lambda_=-1.0)
    with pytest.raises(LossInputError, match=r"rejected_lengths is ≤ 0 at rows \[0\]"):
        wpo(*args, chosen_lengths=t(2.0), rejected_lengths=t(0.0))
