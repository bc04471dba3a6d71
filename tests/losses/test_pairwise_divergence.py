"""Hand-computed values and gradients of f-DPO and TDPO (prefopt/losses/pairwise_divergence.py).

Expected numbers come from the `math` module applied to the formulas in the docstrings, not from the code under
test. Notation: ρ = logπ_θ − logπ_ref, Δ = ρ_w − ρ_l, softplus(z) = log(1 + eᶻ), so −log σ(x) = softplus(−x).
The pairs: ρ_w = 1, ρ_l = −1 (policy −1/−3, reference −2/−2) and ρ_w = 0.5, ρ_l = 0 (−4/−6 against −4.5/−6).
"""

from __future__ import annotations

import math

import pytest
import torch

import prefopt
from prefopt.losses import fdpo, tdpo, tdpo1
from prefopt.registry import LossInputError

F64 = torch.float64
RATIOS = ((1.0, -1.0), (0.5, 0.0))  # (ρ_w, ρ_l) of the two pairs


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def softplus(z: float) -> float:
    return math.log1p(math.exp(z))


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def log_sigmoid(z: float) -> float:
    return -softplus(-z)


def pairs() -> list[torch.Tensor]:
    """policy chosen, policy rejected, reference chosen, reference rejected: ρ as in RATIOS."""
    return [t(-1.0, -4.0), t(-3.0, -6.0), t(-2.0, -4.5), t(-2.0, -6.0)]


# --------------------------------------------------------------------------------------------- f-DPO


F_PRIME_MARGIN = {  # f'(u_w) − f'(u_l) of the module docstring's table, ρ = log u
    "reverse_kl": lambda w, lo, a: w - lo,
    "forward_kl": lambda w, lo, a: math.exp(-lo) - math.exp(-w),
    "js": lambda w, lo, a: log_sigmoid(w) - log_sigmoid(lo),
    "alpha": lambda w, lo, a: (math.exp(-a * lo) - math.exp(-a * w)) / a,
}


@pytest.mark.parametrize("divergence", list(F_PRIME_MARGIN))
def test_fdpo_hand_values(divergence: str) -> None:
    """β = 0.5, α = 0.3. Pair 1 (ρ_w = 1, ρ_l = −1):
    reverse_kl  margin 2                                   L = softplus(−1)       = 0.313262
    forward_kl  e¹ − e⁻¹ = 2.350402                        L = softplus(−1.175201) = 0.269078
    js          log σ(1) − log σ(−1) = 1                   L = softplus(−0.5)     = 0.474077
    alpha       (e^0.3 − e^−0.3)/0.3 = 2.030135           L = softplus(−1.015068) = 0.309232
    """
    out = fdpo(*pairs(), beta=0.5, divergence=divergence, alpha=0.3)
    expected = [softplus(-0.5 * F_PRIME_MARGIN[divergence](w, lo, 0.3)) for w, lo in RATIOS]
    assert out.per_example.tolist() == pytest.approx(expected, rel=1e-12)
    first = {"reverse_kl": 0.313262, "forward_kl": 0.269078, "js": 0.474077, "alpha": 0.309232}[divergence]
    assert expected[0] == pytest.approx(first, abs=1e-6)
    margins = [F_PRIME_MARGIN[divergence](w, lo, 0.3) for w, lo in RATIOS]
    assert float(out.metrics["f_margin"]) == pytest.approx(sum(margins) / 2, rel=1e-6)


def test_fdpo_reverse_kl_is_dpo() -> None:
    g = torch.Generator().manual_seed(0)
    args = [-torch.rand(16, generator=g, dtype=F64) * 40 for _ in range(4)]
    for beta in (0.05, 0.7):
        ours, dpo = fdpo(*args, beta=beta), prefopt.losses.dpo(*args, beta=beta)
        assert torch.equal(ours.per_example, dpo.per_example)
    assert prefopt.loss_spec("fdpo").defaults() == {"beta": 0.1, "divergence": "reverse_kl", "alpha": 0.5}


def test_fdpo_alpha_divergence_interpolates_the_two_kls() -> None:
    """(1 − u^−α)/α → log u as α → 0 (reverse KL) and → 1 − 1/u at α = 1 (forward KL, up to a constant)."""
    args = pairs()
    near_zero = fdpo(*args, beta=0.5, divergence="alpha", alpha=1e-7).per_example
    torch.testing.assert_close(near_zero, fdpo(*args, beta=0.5).per_example, rtol=1e-6, atol=1e-7)
    near_one = fdpo(*args, beta=0.5, divergence="alpha", alpha=1 - 1e-7).per_example
    forward = fdpo(*args, beta=0.5, divergence="forward_kl").per_example
    torch.testing.assert_close(near_one, forward, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("c", [0.2, 0.5, 0.75])
def test_fdpo_alpha_equals_trl_coefficient_one_minus_alpha(c: float) -> None:
    """TRL ≥ 0.29 scores a completion by (u^(c−1) − 1)/(c − 1) (its f_alpha_divergence_coef c), the paper's
    (1 − u^−α)/α for α = 1 − c: the logits β·(score_w − score_l) agree (formula written out here)."""
    trl = [(math.exp((c - 1) * w) - 1) / (c - 1) - (math.exp((c - 1) * lo) - 1) / (c - 1) for w, lo in RATIOS]
    out = fdpo(*pairs(), beta=0.5, divergence="alpha", alpha=1 - c)
    assert out.per_example.tolist() == pytest.approx([softplus(-0.5 * m) for m in trl], rel=1e-12)


def test_fdpo_forward_kl_gradient_by_hand() -> None:
    """x = β(e^{−ρ_l} − e^{−ρ_w}): dL/dlogπ(y_w) = −σ(−x)·β·e^{−ρ_w}, dL/dlogπ(y_l) = +σ(−x)·β·e^{−ρ_l}
    (pair 1, β = 0.5: x = 1.175201; the loss is the mean over 2 pairs, hence the ½)."""
    pc, pr, rc, rr = pairs()
    pc.requires_grad_(True)
    pr.requires_grad_(True)
    fdpo(pc, pr, rc, rr, beta=0.5, divergence="forward_kl").loss.backward()
    x = 0.5 * (math.e - math.exp(-1.0))
    assert float(pc.grad[0]) == pytest.approx(-0.5 * sigmoid(-x) * 0.5 * math.exp(-1.0), rel=1e-12)
    assert float(pr.grad[0]) == pytest.approx(0.5 * sigmoid(-x) * 0.5 * math.e, rel=1e-12)


@pytest.mark.parametrize("divergence", list(F_PRIME_MARGIN))
def test_fdpo_gradcheck_every_divergence(divergence: str) -> None:
    g = torch.Generator().manual_seed(1)
    args = [(-torch.rand(5, generator=g, dtype=F64) * 4).requires_grad_(i < 2) for i in range(4)]
    f = lambda pc, pr: fdpo(pc, pr, *args[2:], beta=0.7, divergence=divergence, alpha=0.3).loss  # noqa: E731
    assert torch.autograd.gradcheck(f, tuple(args[:2]), eps=1e-6, atol=1e-6)


def test_fdpo_far_log_ratios_stay_finite() -> None:
    """ρ_w = −1e4: e^{−ρ} is taken of a capped argument, so forward KL and α give a finite loss and gradient."""
    pc = torch.tensor([-1e4], requires_grad=True)
    for divergence in ("forward_kl", "alpha"):
        out = fdpo(pc, torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]), divergence=divergence)
        out.loss.backward()
        assert torch.isfinite(out.loss) and float(out.loss.detach()) > 1e30 and torch.isfinite(pc.grad).all()
        pc.grad = None


def test_fdpo_unknown_divergence_names_the_valid_ones() -> None:
    with pytest.raises(LossInputError, match=r"divergence='kl'.*reverse_kl"):
        fdpo(*pairs(), divergence="kl")
    with pytest.raises(LossInputError, match=r"alpha=1.*domain"):
        fdpo(*pairs(), divergence="alpha", alpha=1.0)


# ---------------------------------------------------------------------------------------------- TDPO


KL_W, KL_L = t(0.4, 0.1), t(1.2, 0.3)  # D_SeqKL of the chosen and rejected completions


def test_tdpo_hand_values() -> None:
    """β = 0.5, α = 0.25. TDPO₂: x = β(Δ − α(KL_l − KL_w)); TDPO₁: x = β(Δ − (KL_l − KL_w)).
    pair 1 (Δ = 2, KL 0.4 / 1.2):  TDPO₂ x = 0.5·(2 − 0.2) = 0.9;  TDPO₁ x = 0.5·(2 − 0.8) = 0.6
    pair 2 (Δ = 0.5, KL 0.1 / 0.3): TDPO₂ x = 0.5·(0.5 − 0.05) = 0.225; TDPO₁ x = 0.5·0.3 = 0.15
    """
    two = tdpo(*pairs(), chosen_seq_kl=KL_W, rejected_seq_kl=KL_L, beta=0.5, alpha=0.25)
    assert two.per_example.tolist() == pytest.approx([softplus(-0.9), softplus(-0.225)], rel=1e-12)
    one = tdpo1(*pairs(), chosen_seq_kl=KL_W, rejected_seq_kl=KL_L, beta=0.5)
    assert one.per_example.tolist() == pytest.approx([softplus(-0.6), softplus(-0.15)], rel=1e-12)
    assert float(two.metrics["seq_kl/rejected"]) == pytest.approx(0.75)
    assert float(two.metrics["seq_kl/chosen"]) == pytest.approx(0.25)


def test_tdpo_gradients_stop_at_the_chosen_kl() -> None:
    """TDPO₂: dL/dKL_w = 0 (sg), dL/dKL_l = σ(−x)·β·α / 2; TDPO₁: dL/dKL_w = −σ(−x)·β / 2 = −dL/dKL_l
    (pair 1; ½ from the mean over two pairs)."""
    kl_w, kl_l = KL_W.clone().requires_grad_(True), KL_L.clone().requires_grad_(True)
    tdpo(*pairs(), chosen_seq_kl=kl_w, rejected_seq_kl=kl_l, beta=0.5, alpha=0.25).loss.backward()
    assert kl_w.grad is None or torch.equal(kl_w.grad, torch.zeros_like(kl_w))
    assert float(kl_l.grad[0]) == pytest.approx(sigmoid(-0.9) * 0.5 * 0.25 / 2, rel=1e-12)
    kl_w, kl_l = KL_W.clone().requires_grad_(True), KL_L.clone().requires_grad_(True)
    tdpo1(*pairs(), chosen_seq_kl=kl_w, rejected_seq_kl=kl_l, beta=0.5).loss.backward()
    assert float(kl_w.grad[0]) == pytest.approx(-sigmoid(-0.6) * 0.5 / 2, rel=1e-12)
    assert float(kl_l.grad[0]) == pytest.approx(sigmoid(-0.6) * 0.5 / 2, rel=1e-12)


def test_tdpo_gradcheck_through_log_probs_and_kls() -> None:
    """gradcheck of TDPO₁ in every input, and of TDPO₂ in everything but the (stopped) chosen KL."""
    pc, pr, rc, rr = pairs()
    inputs = [x.clone().requires_grad_(True) for x in (pc, pr, KL_W, KL_L)]
    one = lambda a, b, kw, kl: tdpo1(a, b, rc, rr, chosen_seq_kl=kw, rejected_seq_kl=kl, beta=0.7).loss  # noqa: E731
    assert torch.autograd.gradcheck(one, tuple(inputs), eps=1e-6, atol=1e-7)
    two = lambda a, b, kl: tdpo(a, b, rc, rr, chosen_seq_kl=KL_W, rejected_seq_kl=kl, beta=0.7, alpha=0.3).loss  # noqa: E731
    assert torch.autograd.gradcheck(two, (inputs[0], inputs[1], inputs[3]), eps=1e-6, atol=1e-7)


def test_tdpo_with_zero_kl_is_dpo_and_missing_kl_is_explained() -> None:
    zero = t(0.0, 0.0)
    for loss in (tdpo, tdpo1):
        out = loss(*pairs(), chosen_seq_kl=zero, rejected_seq_kl=zero, beta=0.3)
        torch.testing.assert_close(out.per_example, prefopt.losses.dpo(*pairs(), beta=0.3).per_example)
    with pytest.raises(LossInputError, match=r"tdpo needs chosen_seq_kl and rejected_seq_kl.*LossCall"):
        tdpo(*pairs())
    with pytest.raises(LossInputError, match=r"rejected_seq_kl is below 0 at rows \[1\]"):
        tdpo1(*pairs(), chosen_seq_kl=zero, rejected_seq_kl=t(0.1, -0.5))
