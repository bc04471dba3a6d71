"""Best-of-N selection, the analytic KL bound, online-DPO pairs and the RAFT SFT loss."""

from __future__ import annotations

import math

import pytest
import torch

import prefopt
from prefopt.losses import best_of_n, best_worst_pairs, bon_kl_bound, kept_sequences_mask, select_best_of_n
from prefopt.registry import LossInputError


def test_kl_bound_hand_values() -> None:
    """log n − (n−1)/n: n = 1 → 0; n = 2 → ln 2 − 1/2 = 0.19315; n = 4 → ln 4 − 3/4 = 0.63629."""
    assert bon_kl_bound(1) == 0.0
    assert bon_kl_bound(2) == pytest.approx(math.log(2) - 0.5)
    assert bon_kl_bound(4) == pytest.approx(0.636294, abs=1e-6)
    for bad in (0, 2.5, True):
        with pytest.raises(LossInputError, match="integer ≥ 1"):
            bon_kl_bound(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("n", [2, 4, 16])
def test_kl_bound_bounds_and_approaches_the_exact_kl(n: int) -> None:
    """Reference uniform over M distinct rewards: best-of-n picks outcome i (ranked ascending) with
    probability (i/M)^n − ((i−1)/M)^n, whose KL to uniform is Σ π_n log(M π_n). It stays below the bound
    and tends to it as M grows (Beirami et al. 2024)."""
    gaps = []
    for m in (10, 10_000):
        i = torch.arange(1, m + 1, dtype=torch.float64)
        p = (i / m) ** n - ((i - 1) / m) ** n
        exact = float((p * torch.log(p * m)).sum())
        assert exact <= bon_kl_bound(n) + 1e-12
        gaps.append(bon_kl_bound(n) - exact)
    assert gaps[1] < gaps[0] and gaps[1] < 1e-2


def test_selection_is_stable_under_ties() -> None:
    rewards = torch.tensor([[1.0, 3.0, 3.0, 0.0], [-1.0, -2.0, 5.0, 5.0]])
    assert select_best_of_n(rewards).tolist() == [[1], [2]]
    assert select_best_of_n(rewards, top_k=2).tolist() == [[1, 2], [2, 3]]
    with pytest.raises(LossInputError, match=r"top_k=5 must be an integer in \[1, K=4\]"):
        select_best_of_n(rewards, top_k=5)


def test_kept_mask_and_pairs_use_group_major_rows() -> None:
    """B = 2, K = 3, rewards [[0, 5, 1], [7, 2, 3]]: prompt 0 keeps sample 1 (row 1·2 + 0 = 2), prompt 1
    keeps sample 0 (row 1). Worst samples: prompt 0 sample 0 (row 0), prompt 1 sample 1 (row 3)."""
    rewards = torch.tensor([[0.0, 5.0, 1.0], [7.0, 2.0, 3.0]])
    assert kept_sequences_mask(rewards).tolist() == [False, True, True, False, False, False]
    chosen, rejected, valid = best_worst_pairs(rewards)
    assert chosen.tolist() == [2, 1] and rejected.tolist() == [0, 3] and valid.tolist() == [True, True]
    _, _, valid = best_worst_pairs(torch.tensor([[4.0, 4.0], [1.0, 2.0]]))
    assert valid.tolist() == [False, True], "a tie is no preference"


def test_raft_loss_hand_computed() -> None:
    """B = 2, K = 2, rewards [[1, 2], [5, 0]]: prompt 0 keeps sample 1 (row 2), prompt 1 keeps sample 0
    (row 1). Row 1 has log-probs (−1, −2), row 2 has (−3): token-mean NLL (1 + 2 + 3)/3 = 2;
    per_example = (0, 1.5, 3, 0); ∂loss/∂logπ = −1/3 on each kept token and 0 elsewhere."""
    mask = torch.tensor([[True, True], [True, True], [True, False], [True, False]])
    policy = torch.tensor([[-9.0, -9.0], [-1.0, -2.0], [-3.0, 0.0], [-7.0, 0.0]], requires_grad=True)
    out = best_of_n(policy, None, mask, rewards=torch.tensor([[1.0, 2.0], [5.0, 0.0]]))
    assert out.loss.item() == pytest.approx(2.0)
    torch.testing.assert_close(out.per_example, torch.tensor([0.0, 1.5, 3.0, 0.0]))
    assert out.metrics["rewards/kept"].item() == pytest.approx(3.5)
    assert out.metrics["rewards/mean"].item() == pytest.approx(2.0)
    assert out.metrics["kept/fraction"].item() == pytest.approx(0.5)
    assert out.metrics["bon/kl_bound"].item() == pytest.approx(bon_kl_bound(2))
    out.loss.backward()
    expected = torch.tensor([[0.0, 0.0], [-1.0, -1.0], [-1.0, 0.0], [0.0, 0.0]]) / 3
    torch.testing.assert_close(policy.grad, expected)


def test_raft_top_k_and_errors() -> None:
    mask = torch.ones(4, 1, dtype=torch.bool)
    policy = torch.tensor([[-1.0], [-2.0], [-3.0], [-4.0]])
    rewards = torch.tensor([[1.0, 2.0], [5.0, 0.0]])
    assert best_of_n(policy, None, mask, rewards=rewards, top_k=2).loss.item() == pytest.approx(2.5)
    with pytest.raises(LossInputError, match="top_k"):
        best_of_n(policy, None, mask, rewards=rewards, top_k=3)
    with pytest.raises(LossInputError, match="top_k"):
        best_of_n(policy, None, mask, rewards=rewards, top_k=1.5)


def test_online_dpo_hand_computed_value_and_gradient() -> None:
    # B = 2 prompts, K = 2 samples: rows s = k·B + b. Prompt 0: sample 0 (row 0) beats sample 1 (row 2);
    # prompt 1 is a tie (rows 1, 3) and gives no pair.
    rewards = torch.tensor([[1.0, 0.0], [2.0, 2.0]])
    mask = torch.tensor([[True, True], [True, False], [True, True], [True, False]])
    policy = torch.tensor([[-0.4, -0.6], [-1.0, 0.0], [-1.0, -2.0], [-0.5, 0.0]], requires_grad=True)
    ref = torch.tensor([[-1.0, -1.0], [-1.0, 0.0], [-1.5, -0.5], [-0.5, 0.0]])
    out = prefopt.losses.online_dpo(policy, None, mask, rewards=rewards, ref_logps=ref, beta=0.5)
    # log-ratios: winner −1 − (−2) = 1, loser −3 − (−2) = −1; β·(1 − (−1)) = 1; −log σ(1) = log(1 + e⁻¹)
    expected = math.log1p(math.exp(-1.0))
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.per_example.tolist() == pytest.approx([expected, 0.0, 0.0, 0.0], abs=1e-6)
    assert out.metrics["pairs/valid"].item() == pytest.approx(0.5)
    out.loss.backward()
    slope = 0.5 * (1.0 / (1.0 + math.e))  # β·σ(−1)
    torch.testing.assert_close(policy.grad, torch.tensor([[-slope, -slope], [0, 0], [slope, slope], [0, 0]]))


def test_rollout_pairs_feed_any_paired_loss() -> None:
    g = torch.Generator().manual_seed(0)
    rewards = torch.randn(3, 4, generator=g)
    mask = torch.ones(12, 5, dtype=torch.bool)
    policy, ref = -torch.rand(12, 5, generator=g), -torch.rand(12, 5, generator=g)
    valid, ((pw, pl), (rw, rl)) = prefopt.losses.rollout_pairs(rewards, mask, policy, ref)
    assert valid.all()
    online = prefopt.losses.online_dpo(policy, None, mask, rewards=rewards, ref_logps=ref, beta=0.3)
    offline = prefopt.losses.dpo(pw, pl, rw, rl, beta=0.3)
    torch.testing.assert_close(online.loss, offline.loss)
    best = rewards.argmax(1)
    assert torch.equal(pw, policy.sum(1)[best * 3 + torch.arange(3)])
