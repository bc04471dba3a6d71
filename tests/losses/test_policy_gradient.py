"""Hand-computed values and gradients of the policy-gradient losses (PPO, RLOO, GRPO, Dr. GRPO, ReMax).

The contract test (tests/losses/test_rollout_contract.py) covers finiteness, shapes and gradcheck;
here each loss is checked against values derived by hand in the docstrings.
"""

from __future__ import annotations

import math

import pytest
import torch

from prefopt.losses import dr_grpo, grpo, ppo, remax, rloo
from prefopt.registry import LossInputError

LN2, LN15, LN05 = math.log(2.0), math.log(1.5), math.log(0.5)


def _mask(lengths: list[int], steps: int) -> torch.Tensor:
    return torch.arange(steps).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)


def test_ppo_policy_loss_hand_computed() -> None:
    """ε = 0.2. Row 0 (2 valid tokens):
        ρ = 1.5, A = 1:  max(−1.5, −1.2) = −1.2   (clipped branch, no gradient)
        ρ = 0.5, A = 2:  max(−1.0, −1.6) = −1.0   (unclipped, ∂/∂logπ = −Aρ = −1)
    Row 1 (3 tokens):
        ρ = 1.5, A = −1: max(1.5, 1.2) = 1.5      (unclipped, ∂ = −Aρ = 1.5)
        ρ = 0.5, A = −1: max(0.5, 0.8) = 0.8      (clipped, no gradient)
        ρ = 1,   A = 3:  −3                       (inside the clip range, ∂ = −3)
    Token mean over the 5 valid tokens: (−1.2 − 1.0 + 1.5 + 0.8 − 3)/5 = −0.58, clipfrac 2/5,
    approxkl = ½·(2·ln²1.5 + 2·ln²0.5)/5; per-sequence means −1.1 and −0.7/3; gradients are ∂/5."""
    mask = _mask([2, 3], 3)
    old = torch.tensor([[-1.0, -1.0, -1.0], [-2.0, -2.0, -2.0]])
    policy = (old + torch.tensor([[LN15, LN05, 40.0], [LN15, LN05, 0.0]])).requires_grad_(True)
    advantages = torch.tensor([[1.0, 2.0, 0.0], [-1.0, -1.0, 3.0]])
    out = ppo(policy, old, mask, advantages=advantages)
    assert out.loss.item() == pytest.approx(-0.58, abs=1e-6)
    torch.testing.assert_close(out.per_example, torch.tensor([-1.1, -0.7 / 3]))
    assert out.metrics["policy/clipfrac"].item() == pytest.approx(0.4)
    assert out.metrics["policy/approxkl"].item() == pytest.approx(0.5 * (2 * LN15**2 + 2 * LN05**2) / 5, rel=1e-6)
    assert out.metrics["loss/policy"].item() == pytest.approx(-0.58, abs=1e-6)
    assert "loss/value" not in out.metrics and "entropy" not in out.metrics
    out.loss.backward()
    torch.testing.assert_close(policy.grad, torch.tensor([[0.0, -1.0, 0.0], [1.5, 0.0, -3.0]]) / 5)


def test_ppo_value_loss_hand_computed() -> None:
    """ε_v = 0.2, c_vf = 0.1, on-policy with A = 0 so only the value loss remains. Per token
    ½·max((V − G)², (clip(V, V_old ± 0.2) − G)²):
        V = 1, V_old = 0.5, G = 0: clip(V) = 0.7; max(1, 0.49) = 1     → 0.5,   ∂/∂V = V − G = 1
        V = 1, V_old = 0.5, G = 2: clip(V) = 0.7; max(1, 1.69) = 1.69  → 0.845, clipped: ∂/∂V = 0
        V = 0.6, V_old = 0.5, G = 0.6: both 0                          → 0
    L_vf = 1.345/3, val/clipfrac = 1/3, total = 0.1·L_vf; ∂total/∂V = 0.1·(1, 0, 0)/3."""
    mask = torch.ones(1, 3, dtype=torch.bool)
    policy = torch.zeros(1, 3, requires_grad=True)
    values = torch.tensor([[1.0, 1.0, 0.6]], requires_grad=True)
    out = ppo(
        policy,
        None,
        mask,
        advantages=torch.zeros(1, 3),
        values=values,
        old_values=torch.tensor([[0.5, 0.5, 0.5]]),
        returns=torch.tensor([[0.0, 2.0, 0.6]]),
        token_entropy=torch.tensor([[1.0, 2.0, 3.0]]),
    )
    assert out.metrics["loss/value"].item() == pytest.approx(1.345 / 3)
    assert out.metrics["val/clipfrac"].item() == pytest.approx(1 / 3)
    assert out.metrics["entropy"].item() == pytest.approx(2.0)
    assert out.loss.item() == pytest.approx(0.1 * 1.345 / 3)
    out.loss.backward()
    torch.testing.assert_close(values.grad, torch.tensor([[0.1 / 3, 0.0, 0.0]]))


def test_ppo_needs_advantages_and_value_targets() -> None:
    policy, mask = torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(LossInputError, match="advantages"):
        ppo(policy, None, mask)
    with pytest.raises(LossInputError, match="returns"):
        ppo(policy, None, mask, advantages=torch.zeros(1, 2), values=torch.zeros(1, 2))


def test_grpo_hand_computed() -> None:
    """One prompt, K = 2, rewards (1, 0): Â = ±a, a = 0.5/(√0.5 + 1e-4). On-policy (ρ = 1), β = 0.04.
    Sequence 0 (2 tokens) has u = log π_ref − log π = (ln 2, 0): k3 = (1 − ln 2, 0); sequence 1 (1 token) u = 0.
        per_example = ((−a + β(1 − ln 2)) + (−a))/2,  (+a)/1
        loss = mean = β(1 − ln 2)/4   (the advantages cancel between equal-weight sequences)
    Gradient: ∂k3/∂logπ = 1 − e^u = −1 at u = ln 2, so ∂loss/∂logπ = (−a − β)/4, −a/4 for sequence 0
    and a/2 for sequence 1 (weights 1/|o_i| · 1/S)."""
    a = 0.5 / (math.sqrt(0.5) + 1e-4)
    beta = 0.04
    mask = _mask([2, 1], 2)
    policy = torch.tensor([[-1.0, -2.0], [-0.5, 9.0]], dtype=torch.float64, requires_grad=True)
    ref = policy.detach() + torch.tensor([[LN2, 0.0], [0.0, 0.0]], dtype=torch.float64)
    out = grpo(policy, None, mask, rewards=torch.tensor([[1.0, 0.0]]), ref_logps=ref)
    torch.testing.assert_close(out.per_example, torch.tensor([(-2 * a + beta * (1 - LN2)) / 2, a], dtype=torch.float64))
    assert out.loss.item() == pytest.approx(beta * (1 - LN2) / 4, rel=1e-9)
    assert out.metrics["kl"].item() == pytest.approx((1 - LN2) / 3, rel=1e-6)
    out.loss.backward()
    torch.testing.assert_close(
        policy.grad, torch.tensor([[(-a - beta) / 4, -a / 4], [a / 2, 0.0]], dtype=torch.float64)
    )


def test_dr_grpo_hand_computed_and_length_bias() -> None:
    """Same rollout, β = 0, L_max = 4: Â = ±0.5 (no std). Per sequence Σ_t −Â/4:
    sequence 0 (2 tokens) −2·0.5/4 = −0.25, sequence 1 (1 token) +0.5/4 = 0.125, loss −0.0625.
    GRPO (β = 0) instead gives −a and +a, loss 0: its 1/|o_i| makes the long correct answer count
    no more than the short wrong one, the length bias Dr. GRPO removes."""
    mask = _mask([2, 1], 2)
    policy = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]])
    rewards = torch.tensor([[1.0, 0.0]])
    out = dr_grpo(policy, None, mask, rewards=rewards, max_length=4)
    torch.testing.assert_close(out.per_example, torch.tensor([-0.25, 0.125]))
    assert out.loss.item() == pytest.approx(-0.0625)
    assert grpo(policy, None, mask, rewards=rewards, beta=0.0).loss.item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(LossInputError, match="max_length is required"):  # never the batch's width T
        dr_grpo(policy, None, mask, rewards=rewards)
    with pytest.raises(LossInputError, match="max_length=1"):
        dr_grpo(policy, None, mask, rewards=rewards, max_length=1)


def test_rloo_hand_computed_with_kl_in_the_reward() -> None:
    """One prompt, K = 3, rewards (1, 2, 6), lengths (2, 1, 3). β = 0: A = (−3, −1.5, 4.5) and, on-policy,
    per_example = −A·|y| = (6, 1.5, −13.5), loss −2. With β = 0.1 and a sequence KL Σ_t(log π_old − log π_ref)
    of 10 on sample 2 only: R = (1, 2, 5), A = (−2.5, −1, 3.5), per_example (5, 1, −10.5), loss −1.5."""
    mask = _mask([2, 1, 3], 3)
    policy = torch.full((3, 3), -1.0, requires_grad=True)
    rewards = torch.tensor([[1.0, 2.0, 6.0]])
    out = rloo(policy, None, mask, rewards=rewards, beta=0.0)
    torch.testing.assert_close(out.per_example, torch.tensor([6.0, 1.5, -13.5]))
    assert out.loss.item() == pytest.approx(-2.0)
    ref = policy.detach().clone()
    ref[2] -= torch.tensor([4.0, 3.0, 3.0])  # k1 = log π_old − log π_ref sums to 10 on sample 2
    shaped = rloo(policy, None, mask, rewards=rewards, ref_logps=ref, beta=0.1)
    torch.testing.assert_close(shaped.per_example, torch.tensor([5.0, 1.0, -10.5]))
    assert shaped.loss.item() == pytest.approx(-1.5)
    assert shaped.metrics["objective/kl"].item() == pytest.approx(10 / 3)
    shaped.loss.backward()
    # REINFORCE: ∂loss/∂logπ(y_t) = −A_i/S on every valid token.
    expected = torch.tensor([[2.5, 2.5, 0.0], [1.0, 0.0, 0.0], [-3.5, -3.5, -3.5]]) / 3
    torch.testing.assert_close(policy.grad, expected)


def test_remax_hand_computed() -> None:
    """B = 2 prompts, K = 1, rewards (1, 0), greedy rewards (0.5, 0.5): A = (0.5, −0.5); lengths (2, 3):
    per_example = −A·|y| = (−1, 1.5), loss 0.25; ∂loss/∂logπ = −A/2 per valid token."""
    mask = _mask([2, 3], 3)
    policy = torch.zeros(2, 3, requires_grad=True)
    out = remax(policy, None, mask, rewards=torch.tensor([[1.0], [0.0]]), greedy_rewards=torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(out.per_example, torch.tensor([-1.0, 1.5]))
    assert out.loss.item() == pytest.approx(0.25)
    assert out.metrics["rewards/greedy"].item() == pytest.approx(0.5)
    out.loss.backward()
    torch.testing.assert_close(policy.grad, torch.tensor([[-0.25, -0.25, 0.0], [0.25, 0.25, 0.25]]))
    with pytest.raises(LossInputError, match="greedy_rewards"):
        remax(policy, None, mask, rewards=torch.tensor([[1.0], [0.0]]))


def test_group_layout_is_group_major() -> None:
    """B = 2 prompts, K = 2: rows are (p0 s0, p1 s0, p0 s1, p1 s1). Rewards [[1, 0], [5, 5]]: prompt 1
    is a tie (Â = 0), prompt 0 gives Â = (+a, −a) to rows 0 and 2, so rows 1 and 3 get no gradient."""
    mask = torch.ones(4, 1, dtype=torch.bool)
    policy = torch.zeros(4, 1, requires_grad=True)
    grpo(policy, None, mask, rewards=torch.tensor([[1.0, 0.0], [5.0, 5.0]]), beta=0.0).loss.backward()
    grad = policy.grad.flatten()
    assert grad[0] < 0 < grad[2] and grad[1] == 0 and grad[3] == 0


def test_ppo_dual_clip_hand_computed() -> None:
    """Dual-clip PPO (Ye et al. 2020), ε = 0.2, c = 2.5 (clip_dual; off by default). One row of 4 tokens:
        A = −2, ρ = e^1.5 = 4.48: max(8.96, 2.4) = 8.96 > −cA = 5 → 5   (dual clip binds, no gradient)
        A = −2, ρ = e^0.5 = 1.65: max(3.30, 2.4) = 3.30 < 5              (unchanged, ∂ = −Aρ = 2e^0.5)
        A = 1,  ρ = e^1.5:        max(−4.48, −1.2) = −1.2               (A ≥ 0: unchanged, clipped)
        A = 1,  ρ = 1:            −1                                    (∂ = −1)
    Token mean (5 + 2e^0.5 − 1.2 − 1)/4, dual_clipfrac 1/4; without c the first token keeps 2e^1.5."""
    mask = torch.ones(1, 4, dtype=torch.bool)
    old = torch.zeros(1, 4, dtype=torch.float64)
    policy = torch.tensor([[1.5, 0.5, 1.5, 0.0]], dtype=torch.float64, requires_grad=True)
    advantages = torch.tensor([[-2.0, -2.0, 1.0, 1.0]], dtype=torch.float64)
    out = ppo(policy, old, mask, advantages=advantages, clip_dual=2.5)
    assert out.loss.item() == pytest.approx((5 + 2 * math.exp(0.5) - 2.2) / 4, rel=1e-9)
    assert out.metrics["policy/dual_clipfrac"].item() == pytest.approx(0.25)
    out.loss.backward()
    torch.testing.assert_close(
        policy.grad, torch.tensor([[0.0, 2 * math.exp(0.5), 0.0, -1.0]], dtype=torch.float64) / 4
    )
    plain = ppo(policy, old, mask, advantages=advantages)
    assert plain.loss.item() == pytest.approx((2 * math.exp(1.5) + 2 * math.exp(0.5) - 2.2) / 4, rel=1e-9)
    assert "policy/dual_clipfrac" not in plain.metrics
    with pytest.raises(LossInputError, match="clip_dual"):
        ppo(policy, old, mask, advantages=advantages, clip_dual=1.0)  # c must exceed 1
