"""Hand-computed values and gradients of DAPO, GSPO and CISPO (prefopt/losses/policy_ratio.py), each with
non-default clip ranges, and what sets each apart from GRPO.

Shared rollout: one prompt, K = 2 samples with rewards (1, 0), so Â = ±a with a = 0.5/(std + 1e-4),
std = √0.5 (the unbiased std of (1, 0)); sample 0 has 2 completion tokens, sample 1 has 1 (T = 2).
The contract test (tests/losses/test_rollout_contract.py) adds finiteness, shapes and the float64 gradcheck.
"""

from __future__ import annotations

import math

import pytest
import torch

import prefopt
from prefopt.losses import cispo, dapo, grpo, gspo
from prefopt.registry import LossInputError, loss_spec

A = 0.5 / (math.sqrt(0.5) + 1e-4)
MASK = torch.tensor([[True, True], [True, False]])
REWARDS = torch.tensor([[1.0, 0.0]], dtype=torch.float64)


def _rollout(log_ratios: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(policy log-probs with gradient, old log-probs) whose per-token log-ratios are `log_ratios`."""
    policy = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]], dtype=torch.float64, requires_grad=True)
    return policy, policy.detach() - torch.tensor(log_ratios, dtype=torch.float64)


def test_dapo_hand_computed_with_clip_higher() -> None:
    """ε_low = 0.1, ε_high = 0.5 (non-default). Sample 0 (Â = +a): ρ = 1.6 → max(−1.6a, −1.5a) = −1.5a
    (clipped, no gradient); ρ = 0.8 → max(−0.8a, −0.9a) = −0.8a (∂/∂log π = −aρ = −0.8a). Sample 1 (Â = −a):
    ρ = 0.5 → max(0.5a, 0.9a) = 0.9a (clipped). One mean over the N = 3 tokens: L = (−1.5a − 0.8a + 0.9a)/3
    = −1.4a/3; per_example = sums·S/N = (−2.3a, 0.9a)·2/3; ∂ = (0, −0.8a, 0)/3; clipfrac 2/3. With the
    paper's (0.2, 0.28): −1.28a, −0.8a (ρ = 0.8 is on the lower bound), 0.8a, so L = −1.28a/3."""
    policy, old = _rollout([[math.log(1.6), math.log(0.8)], [math.log(0.5), 0.0]])
    out = dapo(policy, old, MASK, rewards=REWARDS, clip_low=0.1, clip_high=0.5)
    assert out.loss.item() == pytest.approx(-1.4 * A / 3, rel=1e-9)
    torch.testing.assert_close(out.per_example, torch.tensor([-2.3 * A, 0.9 * A], dtype=torch.float64) * 2 / 3)
    assert out.metrics["policy/clipfrac"].item() == pytest.approx(2 / 3)
    out.loss.backward()
    expected = torch.tensor([[0.0, -0.8 * A / 3], [0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(policy.grad, expected)
    assert dapo(policy, old, MASK, rewards=REWARDS).loss.item() == pytest.approx(-1.28 * A / 3, rel=1e-9)


def test_dapo_is_token_level_where_grpo_is_sequence_level() -> None:
    """On-policy (ρ = 1), β = 0: DAPO averages the 3 tokens, (−a − a + a)/3 = −a/3, so the 2-token answer
    weighs twice the 1-token one; GRPO averages each sequence first, (−a + a)/2 = 0."""
    policy, _ = _rollout([[0.0, 0.0], [0.0, 0.0]])
    assert dapo(policy, None, MASK, rewards=REWARDS).loss.item() == pytest.approx(-A / 3, rel=1e-9)
    assert grpo(policy, None, MASK, rewards=REWARDS, beta=0.0).loss.item() == pytest.approx(0.0, abs=1e-12)


def test_dapo_declares_its_online_options_and_trl_names() -> None:
    spec = loss_spec("dapo")
    assert dict(spec.online_defaults) == {"dynamic_sampling": 1, "overlong_shaping": 1, "token_mean": 1}
    assert not spec.needs_reference and "beta" not in spec.defaults()
    with pytest.raises(Exception, match="epsilon_high means clip_high"):
        prefopt.get_loss("dapo", epsilon_high=0.3)


def test_gspo_hand_computed_sequence_ratio() -> None:
    """ε_low = 0.1, ε_high = 0.2 (non-default). Sample 0 (Â = +a): token log-ratios (0.3, 0.1), s = e^0.2 =
    1.2214 > 1.2 → max(−1.2214a, −1.2a) = −1.2a, clipped: no gradient to either token, although GRPO's token
    clip would still train the second (ρ = e^0.1 inside 1 ± 0.2). Sample 1 (Â = −a): s = e^0.1 = 1.1052,
    inside → a·e^0.1, ∂/∂log π = a·s·(1/|o|)/S = a·e^0.1/2. L = (−1.2a + a·e^0.1)/2; clipfrac = 2/3 of tokens."""
    policy, old = _rollout([[0.3, 0.1], [0.1, 0.0]])
    out = gspo(policy, old, MASK, rewards=REWARDS, clip_low=0.1, clip_high=0.2)
    s1 = math.exp(0.1)
    assert out.loss.item() == pytest.approx((-1.2 * A + A * s1) / 2, rel=1e-9)
    torch.testing.assert_close(out.per_example, torch.tensor([-1.2 * A, A * s1], dtype=torch.float64))
    assert out.metrics["policy/clipfrac"].item() == pytest.approx(2 / 3)
    assert out.metrics["policy/sequence_ratio"].item() == pytest.approx((math.exp(0.2) + s1) / 2, rel=1e-6)
    out.loss.backward()
    torch.testing.assert_close(policy.grad, torch.tensor([[0.0, 0.0], [A * s1 / 2, 0.0]], dtype=torch.float64))


def test_gspo_spreads_the_sequence_gradient_over_its_tokens() -> None:
    """Inside the clip range the sequence ratio's gradient is s·(1/|o|)·Σ_t ∇log π: sample 0 (2 tokens,
    log-ratios 1e-4 and −1e-4, s = 1) gives each token −a·1·(1/2)/S = −a/4; with the paper's ranges
    (3e-4, 4e-4) nothing is clipped here."""
    policy, old = _rollout([[1e-4, -1e-4], [0.0, 0.0]])
    out = gspo(policy, old, MASK, rewards=REWARDS)
    assert out.metrics["policy/clipfrac"].item() == 0.0
    out.loss.backward()
    torch.testing.assert_close(policy.grad, torch.tensor([[-A / 4, -A / 4], [A / 2, 0.0]], dtype=torch.float64))


def test_cispo_hand_computed_keeps_clipped_tokens_gradient() -> None:
    """ε_low = 0.5, ε_high = 0.1 (non-default), log π = (−1, −2 | −0.5). Sample 0 (Â = +a): ρ = e^0.3 = 1.35
    → weight 1.1; ρ = e^−0.8 = 0.449 → weight 0.5. Sample 1 (Â = −a): ρ = e^0.05 → weight e^0.05.
    Token losses −w·Â·log π: 1.1a, 1.0a, −0.5·e^0.05·a; L = their sum / 3. Gradient −w·Â/3 at every token,
    (−1.1a, −0.5a | e^0.05·a)/3: the two clipped tokens keep theirs (PPO's min would zero the first, whose
    ρ > 1 + ε with Â > 0). clipfrac 2/3."""
    policy, old = _rollout([[0.3, -0.8], [0.05, 0.0]])
    out = cispo(policy, old, MASK, rewards=REWARDS, clip_low=0.5, clip_high=0.1)
    w = math.exp(0.05)
    assert out.loss.item() == pytest.approx((1.1 * A + 1.0 * A - 0.5 * w * A) / 3, rel=1e-9)
    torch.testing.assert_close(out.per_example, torch.tensor([2.1 * A, -0.5 * w * A], dtype=torch.float64) * 2 / 3)
    assert out.metrics["policy/clipfrac"].item() == pytest.approx(2 / 3)
    out.loss.backward()
    expected = torch.tensor([[-1.1 * A, -0.5 * A], [w * A, 0.0]], dtype=torch.float64) / 3
    torch.testing.assert_close(policy.grad, expected)


def test_cispo_default_has_no_lower_bound() -> None:
    """The paper's setting (clip_low None, clip_high 0.28): ρ = e^0.3 = 1.35 is weighted 1.28, ρ = e^−0.8 =
    0.449 keeps its weight (no lower bound), ρ = e^0.05 too; clipfrac 1/3."""
    policy, old = _rollout([[0.3, -0.8], [0.05, 0.0]])
    out = cispo(policy, old, MASK, rewards=REWARDS)
    out.loss.backward()
    weights = torch.tensor([[1.28, math.exp(-0.8)], [math.exp(0.05), 0.0]], dtype=torch.float64)
    torch.testing.assert_close(policy.grad, -weights * torch.tensor([[A], [-A]], dtype=torch.float64) / 3)
    assert out.metrics["policy/clipfrac"].item() == pytest.approx(1 / 3)


def test_group_losses_need_two_samples_per_prompt() -> None:
    policy = torch.zeros(2, 1, requires_grad=True)
    for loss in (dapo, gspo, cispo):
        with pytest.raises(LossInputError, match="K ≥ 2"):
            loss(policy, None, torch.ones(2, 1, dtype=torch.bool), rewards=torch.zeros(2, 1))


def test_clip_hyperparameters_are_named_clip() -> None:
    """Every rollout hyper-parameter that clips something is named clip_… (issue 15)."""
    for name in prefopt.list_losses("rollout"):
        for h in loss_spec(name).hparams:
            if "clip" in h.help.lower():
                assert h.name.startswith("clip"), (name, h.name)


def test_on_policy_equivalences() -> None:
    """With one update per rollout (ρ = s = 1) the clip ranges never bind: DAPO and CISPO both give
    −Â_i·∇log π/N per token (the same update), and GSPO gives GRPO's −Â_i·∇log π/(S·|o_i|) with β = 0."""
    g = torch.Generator().manual_seed(0)
    mask = torch.arange(5).unsqueeze(0) < torch.tensor([5, 3, 1, 4, 2, 5]).unsqueeze(1)
    rewards = torch.randn(3, 2, generator=g, dtype=torch.float64)

    def grad(loss, **hparams) -> torch.Tensor:
        policy = (-torch.rand(6, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)).requires_grad_()
        loss(policy, None, mask, rewards=rewards, **hparams).loss.backward()
        return policy.grad

    torch.testing.assert_close(grad(dapo), grad(cispo))
    torch.testing.assert_close(grad(gspo), grad(grpo, beta=0.0))
