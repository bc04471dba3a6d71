"""Hand-computed values and gradients of REINFORCE++ (prefopt/losses/policy_reinforce.py) with non-default
hyper-parameters, its group-baseline variant, and global- versus minibatch-normalised advantages.
The contract test (tests/losses/test_rollout_contract.py) adds finiteness, shapes and the float64 gradcheck."""

from __future__ import annotations

import math

import pytest
import torch

from prefopt.loss_state import RolloutBatch
from prefopt.losses import reinforce_pp, reinforce_pp_advantages
from prefopt.registry import LossInputError, loss_spec

F64 = torch.float64


def _whiten(values: list[float]) -> torch.Tensor:
    """(x − mean)/√(unbiased var + 1e-8), the global-batch normalisation."""
    x = torch.tensor(values, dtype=F64)
    return (x - x.mean()) / torch.sqrt(x.var() + 1e-8)


def test_kl_shaped_returns_hand_computed() -> None:
    """One prompt, K = 2, rewards (1, 0), lengths (2, 1), β = 0.5 (non-default). k1 = log π_old − log π_ref:
    sample 0 (0.5, −1.0), sample 1 (−0.25). Returns A_t = r − β·Σ_{u≥t} k1_u: sample 0: 1 − 0.5·(−0.5) = 1.25,
    1 − 0.5·(−1) = 1.5; sample 1: 0 − 0.5·(−0.25) = 0.125. Â = whiten(1.25, 1.5, 0.125) over the 3 tokens
    (mean 0.9583, unbiased var 0.53646). On-policy the loss is the token mean of −Â = 0 (Â has mean 0) and
    ∂/∂log π = −Â/3 per token."""
    mask = torch.tensor([[True, True], [True, False]])
    old = torch.tensor([[-1.0, -2.0], [-0.5, -9.0]], dtype=F64)
    ref = torch.tensor([[-1.5, -1.0], [-0.25, 7.0]], dtype=F64)  # padding holds anything
    rewards = torch.tensor([[1.0, 0.0]], dtype=F64)
    expected = _whiten([1.25, 1.5, 0.125])
    advantages = reinforce_pp_advantages(rewards, old, ref, mask, beta=0.5, baseline="none")
    torch.testing.assert_close(advantages[mask], expected)
    assert advantages[1, 1] == 0
    policy = old.clone().requires_grad_(True)
    out = reinforce_pp(policy, None, mask, rewards=rewards, ref_logps=ref, beta=0.5, clip_range=0.1)
    assert out.loss.item() == pytest.approx(0.0, abs=1e-12)
    assert out.metrics["objective/kl"].item() == pytest.approx((0.5 - 1.0 - 0.25) / 2)
    out.loss.backward()
    torch.testing.assert_close(policy.grad[mask], -expected / 3)


def test_clipped_surrogate_on_the_normalised_advantages() -> None:
    """Same rollout, β = 0.5, ε = 0.1 (non-default), one off-policy token: sample 0's first token has ρ = 1.5
    with Â_0 > 0, so max(−1.5Â_0, −1.1Â_0) = −1.1Â_0 is clipped (no gradient); the others are on-policy."""
    mask = torch.tensor([[True, True], [True, False]])
    old = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]], dtype=F64)
    ref = torch.tensor([[-1.5, -1.0], [-0.25, 0.0]], dtype=F64)
    adv = _whiten([1.25, 1.5, 0.125])
    policy = (old + torch.tensor([[math.log(1.5), 0.0], [0.0, 0.0]], dtype=F64)).requires_grad_(True)
    out = reinforce_pp(
        policy, old, mask, rewards=torch.tensor([[1.0, 0.0]], dtype=F64), ref_logps=ref, beta=0.5, clip_range=0.1
    )
    assert out.loss.item() == pytest.approx(float(-1.1 * adv[0] - adv[1] - adv[2]) / 3, rel=1e-9)
    assert out.metrics["policy/clipfrac"].item() == pytest.approx(1 / 3)
    out.loss.backward()
    torch.testing.assert_close(policy.grad[mask], torch.stack([torch.tensor(0.0, dtype=F64), -adv[1], -adv[2]]) / 3)


def test_group_baseline_hand_computed() -> None:
    """B = 2 prompts, K = 2, one token each, β = 0; rows group-major (k·B + b): rewards r[b0] = (1, 0), r[b1] =
    (3, 3). baseline="none": returns (1, 3, 0, 3) by row, Â = whiten → (−0.5, 0.8333, −1.1667, 0.8333): the
    solved prompt b1 is pushed up. baseline="group": r' = (0.5, 0, −0.5, 0), Â = (1.2247, 0, −1.2247, 0)."""
    mask = torch.ones(4, 1, dtype=torch.bool)
    zeros = torch.zeros(4, 1, dtype=F64)
    rewards = torch.tensor([[1.0, 0.0], [3.0, 3.0]], dtype=F64)
    plain = reinforce_pp_advantages(rewards, zeros, None, mask, beta=0.0, baseline="none")
    torch.testing.assert_close(plain[:, 0], torch.tensor([-0.5, 5 / 6, -7 / 6, 5 / 6], dtype=F64), rtol=1e-7, atol=1e-7)
    group = reinforce_pp_advantages(rewards, zeros, None, mask, beta=0.0, baseline="group")
    torch.testing.assert_close(group[:, 0], _whiten([0.5, 0.0, -0.5, 0.0]))
    assert group[1, 0] == 0 and group[3, 0] == 0
    with pytest.raises(LossInputError, match="K ≥ 2"):
        reinforce_pp(
            zeros.clone().requires_grad_(True), None, mask, rewards=rewards.reshape(4, 1), beta=0.0, baseline="group"
        )


def test_advantages_are_normalised_over_the_global_batch() -> None:
    """The online loop computes Â once over the whole rollout (the spec's `rollout_inputs` provider) and cuts
    each minibatch's rows from it; a minibatch normalising over its own rows would not match. Prompt b0 alone
    (rows 0 and 2 above) has returns (1, 0), whitened to (0.707, −0.707), not the global (−0.5, −1.1667)."""
    mask = torch.ones(4, 1, dtype=torch.bool)
    zeros = torch.zeros(4, 1, dtype=F64)
    rewards = torch.tensor([[1.0, 0.0], [3.0, 3.0]], dtype=F64)
    provider = loss_spec("reinforce_pp").rollout_inputs["advantages"]
    batch = RolloutBatch(rewards, zeros, zeros, mask, {"beta": 0.0, "baseline": "none"})
    global_advantages = provider(batch)
    torch.testing.assert_close(
        global_advantages, reinforce_pp_advantages(rewards, zeros, None, mask, beta=0.0, baseline="none")
    )
    rows = torch.tensor([0, 2])
    local = reinforce_pp_advantages(rewards[:1], zeros[rows], None, mask[rows], beta=0.0, baseline="none")
    torch.testing.assert_close(local[:, 0], _whiten([1.0, 0.0]))
    assert not torch.allclose(local, global_advantages[rows])
    policy = zeros[rows].clone().requires_grad_(True)
    out = reinforce_pp(policy, None, mask[rows], rewards=rewards[:1], advantages=global_advantages[rows], beta=0.0)
    out.loss.backward()
    torch.testing.assert_close(policy.grad, -global_advantages[rows] / 2)


def test_declaration() -> None:
    spec = loss_spec("reinforce_pp")
    assert spec.needs_reference and spec.defaults() == {"beta": 0.01, "clip_range": 0.2, "baseline": "none"}
    assert dict(spec.online_defaults) == {"min_samples": 1, "token_mean": 1}
    assert set(spec.rollout_inputs) == {"advantages"}
    with pytest.raises(LossInputError, match="baseline"):
        spec.validate_hparams({"baseline": "leave_one_out"})
