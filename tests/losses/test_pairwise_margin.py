"""Hand-computed values and analytic facts for α-DPO (`alpha_dpo`, Wu et al. 2024, arXiv:2410.10148).

Expected numbers come from the formula in `prefopt/losses/pairwise_margin.py`'s docstring, evaluated with the
`math` and `statistics` modules, never by calling the torch implementation. The running statistics follow the
authors' code: an EMA from 0 (no bias correction) of each micro-batch's mean and unbiased std of M.
"""

from __future__ import annotations

import math
import statistics
from types import SimpleNamespace

import pytest
import torch

import prefopt
from prefopt.loss_call.fused import fused_head_reason
from prefopt.losses import AlphaDPOMargin, AlphaDPORunning, alpha_dpo, alpha_dpo_margins, simpo
from prefopt.registry import LossInputError, loss_spec

F64 = torch.float64

# Three pairs: summed log-probs under π_θ and π_ref, and completion lengths.
PC, PR = [-2.0, -9.0, -4.0], [-6.0, -3.0, -5.0]
RC, RR = [-3.0, -8.0, -4.5], [-5.0, -4.0, -4.0]
CL, RL = [4.0, 3.0, 2.0], [3.0, 2.0, 5.0]
# Non-default hyper-parameters (defaults: β = 2.5, γ/β = 0.6, α = 0.2, decay 0.9).
BETA, RATIO, ALPHA, DECAY = 1.5, 0.3, 0.4, 0.5


def t(values: list[float], grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=F64, requires_grad=grad)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x)) if x < 30 else x + math.log1p(math.exp(-x))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def hand_margins() -> list[float]:
    """M = (logπ_w − logπ_ref,w)/|y_w| − (logπ_l − logπ_ref,l)/|y_l|: [7/12, −5/6, 0.45]."""
    return [(pc - rc) / cl - (pr - rr) / rl for pc, rc, cl, pr, rr, rl in zip(PC, RC, CL, PR, RR, RL)]


def hand_logits(mean: float, std: float) -> list[float]:
    """z = β·(ℓ_w − ℓ_l − γ/β − α·(M − mean)/std)."""
    out = []
    for pc, cl, pr, rl, m in zip(PC, CL, PR, RL, hand_margins()):
        out.append(BETA * (pc / cl - pr / rl - RATIO - ALPHA * (m - mean) / std))
    return out


def call(state: AlphaDPOMargin | None, grad: bool = False):
    policy = (t(PC, grad), t(PR, grad))
    out = alpha_dpo(
        *policy,
        t(RC),
        t(RR),
        chosen_lengths=t(CL),
        rejected_lengths=t(RL),
        state=state,
        beta=BETA,
        gamma_beta_ratio=RATIO,
        alpha=ALPHA,
    )
    return out, policy


def test_margins_are_the_per_token_log_ratio_margins() -> None:
    assert hand_margins() == pytest.approx([7 / 12, -5 / 6, 0.45], rel=1e-12)
    got = alpha_dpo_margins(t(PC), t(PR), t(RC), t(RR), t(CL), t(RL))
    torch.testing.assert_close(got, t(hand_margins()), rtol=1e-12, atol=1e-12)


def test_hand_values_after_one_ema_update() -> None:
    """First update from 0 with decay 0.5: mean = 0.5·mean(M) = 1/30, std = 0.5·stdev(M) ≈ 0.391134.
    Row 1: ℓ_w − ℓ_l = −0.5 + 2 = 1.5; M* = (7/12 − 1/30)/0.391134 ≈ 1.40617; target = 0.3 + 0.4·1.40617 ≈ 0.86247;
    z = 1.5·(1.5 − 0.86247) ≈ 0.95630; L = log(1 + e^−0.95630) ≈ 0.32520."""
    m = hand_margins()
    mean, std = 0.5 * statistics.fmean(m), 0.5 * statistics.stdev(m)
    state = AlphaDPOMargin(decay=DECAY)
    state.update(alpha_dpo_margins(t(PC), t(PR), t(RC), t(RR), t(CL), t(RL)))
    assert (state.mean, state.std, state.updates) == (pytest.approx(mean, rel=1e-12), pytest.approx(std), 1)
    out, _ = call(state)
    expected = [softplus(-z) for z in hand_logits(mean, std)]
    assert expected[0] == pytest.approx(0.32520, abs=1e-5)
    torch.testing.assert_close(out.per_example, t(expected), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.loss, torch.tensor(sum(expected) / 3, dtype=F64), rtol=1e-12, atol=0)
    targets = [RATIO + ALPHA * (x - mean) / std for x in m]
    assert float(out.metrics["target"]) == pytest.approx(sum(targets) / 3, rel=1e-6)
    assert float(out.metrics["margin_mean"]) == pytest.approx(mean) and float(
        out.metrics["margin_std"]
    ) == pytest.approx(std)
    # rewards as the official code logs them: β·(ℓ − α·(ℓ − ℓ_ref))
    chosen = [BETA * (pc / cl - ALPHA * (pc - rc) / cl) for pc, rc, cl in zip(PC, RC, CL)]
    assert float(out.metrics["rewards/chosen"]) == pytest.approx(sum(chosen) / 3, rel=1e-6)


def test_ema_follows_the_official_update_order() -> None:
    """Second micro-batch: mean ← 0.5·mean + 0.5·mean(M₂), std ← 0.5·std + 0.5·stdev(M₂); NaN entries skipped."""
    m1, m2 = hand_margins(), [0.1, -0.4, 1.3, 0.0]
    state = AlphaDPOMargin(decay=DECAY)
    state.update(t(m1))
    state.update(torch.tensor([0.1, -0.4, 1.3, 0.0, float("nan"), float("nan")], dtype=F64))
    mean = 0.5 * (0.5 * statistics.fmean(m1)) + 0.5 * statistics.fmean(m2)
    std = 0.5 * (0.5 * statistics.stdev(m1)) + 0.5 * statistics.stdev(m2)
    assert (state.mean, state.std, state.updates) == (pytest.approx(mean, rel=1e-12), pytest.approx(std, rel=1e-12), 2)
    fresh = AlphaDPOMargin(decay=0.0)  # decay 0: the micro-batch's own z-score
    fresh.update(t(m1))
    z = fresh.normalise(t(m1))
    assert float(z.mean()) == pytest.approx(0.0, abs=1e-12) and float(z.std()) == pytest.approx(1.0, rel=1e-12)
    with pytest.raises(LossInputError, match="inf"):
        state.update(torch.tensor([1.0, float("inf")]))


def test_gradient_stops_at_the_adaptive_target() -> None:
    """dL/dlogπ_w = −β·σ(−z)/(B·|y_w|), dL/dlogπ_l = +β·σ(−z)/(B·|y_l|): the target sg[γ/β + α·M*] passes none,
    though M reads the policy."""
    m = hand_margins()
    state = AlphaDPOMargin(decay=DECAY)
    state.update(t(m))
    out, (pc, pr) = call(state, grad=True)
    out.loss.backward()
    zs = hand_logits(state.mean, state.std)
    torch.testing.assert_close(pc.grad, t([-BETA * sigmoid(-z) / (3 * c) for z, c in zip(zs, CL)]), rtol=1e-12, atol=0)
    torch.testing.assert_close(pr.grad, t([BETA * sigmoid(-z) / (3 * r) for z, r in zip(zs, RL)]), rtol=1e-12, atol=0)
    assert not any(v.requires_grad for v in out.metrics.values())


def test_without_state_it_is_simpo_with_gamma_beta_times_ratio() -> None:
    out, _ = call(None)
    ref = simpo(t(PC), t(PR), t(RC), t(RR), chosen_lengths=t(CL), rejected_lengths=t(RL), beta=BETA, gamma=BETA * RATIO)
    torch.testing.assert_close(out.per_example, ref.per_example, rtol=1e-12, atol=1e-12)
    flat = AlphaDPOMargin()  # std 0 (nothing seen, or one pair): M* = 0, not a division by zero
    torch.testing.assert_close(call(flat)[0].per_example, ref.per_example, rtol=1e-12, atol=1e-12)
    with pytest.raises(LossInputError, match="AlphaDPOMargin"):
        call({"mean": 0.0})  # type: ignore[arg-type]


def test_running_state_observes_pairs_and_round_trips() -> None:
    """The loop's state: observe() gives M on the chosen half and NaN on the rejected half of the S = 2B
    sequences, so the statistics are over pairs; its checkpoint restores it exactly."""
    running = AlphaDPORunning.from_hparams({"ema_decay": DECAY})
    policy = SimpleNamespace(sum=t(PC + PR), count=t(CL + RL))
    reference = SimpleNamespace(sum=t(RC + RR), count=t(CL + RL))
    stats = running.observe(policy, reference)
    torch.testing.assert_close(stats[:3], t(hand_margins()), rtol=1e-12, atol=1e-12)
    assert torch.isnan(stats[3:]).all()
    running.update(stats)
    by_hand = AlphaDPOMargin(decay=DECAY)
    by_hand.update(t(hand_margins()))
    assert running.inputs()["state"] == by_hand
    restored = AlphaDPORunning.from_hparams({"ema_decay": 0.9})
    restored.load_state_dict(running.state_dict())
    assert restored.running == by_hand
    with pytest.raises(LossInputError, match="reference"):
        running.observe(policy, None)


def test_declaration_names_both_papers_and_is_not_separable() -> None:
    spec = loss_spec("alpha_dpo")
    assert spec.needs_reference and spec.needs_lengths and spec.state is not None and spec.state.includes_current
    assert spec.defaults() == {"beta": 2.5, "gamma_beta_ratio": 0.6, "alpha": 0.2, "ema_decay": 0.9}
    assert "2410.10148" in spec.paper and "2501.03884" in spec.paper
    assert (
        loss_spec("alphapo").paper.startswith("Gupta et al. 2025, AlphaPO")
        and "2501.03884" in loss_spec("alphapo").paper
    )
    assert not spec.separable
    assert "running state" in str(fused_head_reason(spec))
    assert prefopt.get_loss("alpha_dpo", alpha=0.05).hparams == {"alpha": 0.05}
