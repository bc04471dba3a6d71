"""KL estimators, KL-shaped rewards, the EOS penalty and the KL controllers, against hand values."""

from __future__ import annotations

import math

import pytest
import torch

from prefopt.registry import LossInputError
from prefopt.rl import (
    AdaptiveKLController,
    FixedKLController,
    adaptive_kl_coef,
    apply_eos_penalty,
    contains_eos,
    kl_k1,
    kl_k3,
    kl_penalized_rewards,
    token_kl,
)


def test_k1_and_k3_hand_values() -> None:
    """log π = log 0.5, log π_ref = log 0.25: k1 = log 2 = 0.6931; u = log(π_ref/π) = −log 2,
    k3 = e^u − 1 − u = 0.5 − 1 + log 2 = 0.1931. u = 0 gives k1 = k3 = 0; u = log 2 gives
    k3 = 2 − 1 − log 2 = 0.3069 while k1 = −log 2 < 0."""
    logp = torch.log(torch.tensor([0.5, 0.3, 0.25]))
    ref = torch.log(torch.tensor([0.25, 0.3, 0.5]))
    torch.testing.assert_close(kl_k1(logp, ref), torch.tensor([math.log(2), 0.0, -math.log(2)]))
    torch.testing.assert_close(kl_k3(logp, ref), torch.tensor([math.log(2) - 0.5, 0.0, 1 - math.log(2)]))


def test_estimators_are_unbiased_under_the_sampling_policy() -> None:
    """E_{y∼π}[k1] = E_{y∼π}[k3] = KL(π‖π_ref): for k3, E[π_ref/π] = 1 so E[e^u − 1 − u] = E[−u] = KL."""
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(50, generator=g, dtype=torch.float64), 0)
    q = torch.softmax(torch.randn(50, generator=g, dtype=torch.float64), 0)
    kl = (p * (p.log() - q.log())).sum()
    torch.testing.assert_close((p * kl_k1(p.log(), q.log())).sum(), kl)
    torch.testing.assert_close((p * kl_k3(p.log(), q.log())).sum(), kl)
    assert (kl_k3(p.log(), q.log()) >= 0).all()


def test_token_kl_masks_padding_and_rejects_unknown_estimators() -> None:
    logp = torch.tensor([[-1.0, -2.0, 50.0]])
    ref = torch.tensor([[-1.5, -2.0, -50.0]])
    mask = torch.tensor([[True, True, False]])
    torch.testing.assert_close(token_kl(logp, ref, mask, "k1"), torch.tensor([[0.5, 0.0, 0.0]]))
    assert token_kl(logp, ref, mask, "k3")[0, 2] == 0
    with pytest.raises(LossInputError, match="k2"):
        token_kl(logp, ref, mask, "k2")  # type: ignore[arg-type]


def test_kl_penalized_rewards_hand_computed() -> None:
    """β = 0.1, k1 per token: row 0 (length 3) k = (1, 0, −2) → r = (−0.1, 0, 0.2 + 2.0) with the score 2
    on the last token; row 1 (length 1) k = (0.5) → r = (−0.05 − 1.0) with score −1."""
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, 7.0, 7.0]])
    ref = torch.tensor([[-2.0, -2.0, -1.0], [-1.0, -7.0, 3.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    rewards, kl = kl_penalized_rewards(torch.tensor([2.0, -1.0]), logp, ref, mask, beta=0.1)
    torch.testing.assert_close(rewards, torch.tensor([[-0.1, 0.0, 2.2], [-1.05, 0.0, 0.0]]))
    torch.testing.assert_close(kl.sum(1), torch.tensor([-1.0, 0.5]))


def test_kl_penalized_rewards_rejects_empty_rows_and_bad_beta() -> None:
    logp = torch.zeros(2, 2)
    mask = torch.tensor([[True, False], [False, False]])
    with pytest.raises(LossInputError, match=r"rows \[1\] have no completion tokens"):
        kl_penalized_rewards(torch.zeros(2), logp, logp, mask, beta=0.1)
    with pytest.raises(LossInputError, match="beta"):
        kl_penalized_rewards(torch.zeros(2), logp, logp, torch.ones(2, 2, dtype=torch.bool), beta=-1.0)


def test_eos_detection_and_penalty() -> None:
    """Row 0 ends with EOS (id 2); row 1's EOS sits in padding, so it is missing; row 2 stops on the
    second EOS id 3. Penalty 1.5 lowers only row 1: (1, 0.5 − 1.5, 2)."""
    ids = torch.tensor([[5, 6, 2], [5, 6, 2], [3, 0, 0]])
    mask = torch.tensor([[True, True, True], [True, True, False], [True, False, False]])
    has_eos = contains_eos(ids, mask, torch.tensor([2, 3]))
    assert has_eos.tolist() == [True, False, True]
    assert contains_eos(ids, mask, 2).tolist() == [True, False, False]
    torch.testing.assert_close(
        apply_eos_penalty(torch.tensor([1.0, 0.5, 2.0]), has_eos, 1.5), torch.tensor([1.0, -1.0, 2.0])
    )
    with pytest.raises(LossInputError, match="bool"):
        apply_eos_penalty(torch.zeros(3), torch.ones(3), 1.0)


def test_adaptive_kl_controller_hand_computed() -> None:
    """β = 0.2, target 6, horizon 1e4. KL 9 → e = clip(9/6 − 1 = 0.5) = 0.2, n = 1000:
    β = 0.2·(1 + 0.2·0.1) = 0.204. Then KL 5.4 → e = −0.1: β = 0.204·(1 − 0.01) = 0.20196."""
    controller = AdaptiveKLController(value=0.2, target=6.0, horizon=10000)
    assert controller.update(9.0, 1000) == pytest.approx(0.204)
    assert controller.update(5.4, 1000) == pytest.approx(0.20196)
    assert adaptive_kl_coef(0.1, 0.0, 10000, target=6.0, horizon=10000) == pytest.approx(0.08)  # e = −0.2 floor
    assert FixedKLController(0.05).update(100.0, 10) == 0.05
    with pytest.raises(LossInputError, match="target"):
        adaptive_kl_coef(0.1, 1.0, 1, target=0.0, horizon=1.0)
