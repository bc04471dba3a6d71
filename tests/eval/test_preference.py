"""Held-out preference metrics: hand-checked values on tensors, and the engine path on a tiny model."""

from __future__ import annotations

import copy

import pytest
import torch

from prefopt import get_loss
from prefopt.data.collate import collate_preferences
from prefopt.engine import LogProbEngine, ReferenceLogProbs
from prefopt.eval.preference import evaluate_preferences, preference_metrics, resolve_beta


def test_paired_metrics_by_hand() -> None:
    """β = 0.5, two pairs (chosen first):
    policy [[−1, −3], [−2, −1]], reference [[−2, −2], [−1, −1]], lengths [[1, 3], [4, 1]]
    ρ = [[1, −1], [−1, 0]] → r̂ = βρ = [[0.5, −0.5], [−0.5, 0]]
    reward accuracy (1 + 0)/2 = 0.5; margin (1 + (−0.5))/2 = 0.25; chosen r̂ 0, rejected r̂ −0.25
    log-prob accuracy: −1 > −3 yes, −2 > −1 no → 0.5
    normalised: −1/1 > −3/3 tie → no; −2/4 > −1/1 yes → 0.5"""
    m = preference_metrics(
        torch.tensor([[-1.0, -3.0], [-2.0, -1.0]]),
        torch.tensor([[1, 3], [4, 1]]),
        torch.tensor([[-2.0, -2.0], [-1.0, -1.0]]),
        beta=0.5,
    )
    assert m.reward_accuracy.mean == 0.5 and m.reward_margin.mean == pytest.approx(0.25)
    assert m.chosen_reward.mean == pytest.approx(0.0) and m.rejected_reward.mean == pytest.approx(-0.25)
    assert m.logp_accuracy.mean == 0.5 and m.logp_accuracy_normalized.mean == 0.5
    assert (m.num_examples, m.group_size, m.beta, m.reference_free) == (2, 2, 0.5, False)
    assert m.to_dict()["reward_margin"]["mean"] == pytest.approx(0.25)


def test_ranked_pairwise_accuracy_by_hand() -> None:
    """K = 3 best first, no reference, β = 1 (r̂ = log π): log π = (−1, −2, −0.5).
    Pairs (0,1) right, (0,2) wrong, (1,2) wrong → accuracy 1/3; margins (1, −0.5, −1.5) → −1/3.
    With ranks (0, 0, 1) the tied pair (0,1) is skipped → accuracy 0, margin −1."""
    logps, lengths = torch.tensor([[-1.0, -2.0, -0.5]]), torch.ones(1, 3, dtype=torch.long)
    m = preference_metrics(logps, lengths, beta=1.0)
    assert m.reward_accuracy.mean == pytest.approx(1 / 3) and m.reward_margin.mean == pytest.approx(-1 / 3)
    assert m.rejected_reward.mean == -0.5 and m.reference_free
    tied = preference_metrics(logps, lengths, beta=1.0, ranks=torch.tensor([[0, 0, 1]]))
    assert tied.reward_accuracy.mean == 0.0 and tied.reward_margin.mean == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="tied"):
        preference_metrics(logps, lengths, beta=1.0, ranks=torch.zeros(1, 3, dtype=torch.long))


def test_beta_and_input_errors() -> None:
    assert resolve_beta(loss="dpo") == 0.1
    assert resolve_beta(loss=get_loss("dpo", beta=0.3)) == 0.3
    assert resolve_beta(0.7, loss="dpo") == 0.7
    with pytest.raises(ValueError, match="'orpo' has no 'beta'"):
        resolve_beta(loss="orpo")
    with pytest.raises(ValueError, match="pass beta="):
        resolve_beta()
    with pytest.raises(ValueError, match="> 0"):
        resolve_beta(-1.0)
    with pytest.raises(ValueError, match=r"expected \[B, K\]"):
        preference_metrics(torch.zeros(3), torch.ones(3), beta=0.1)
    with pytest.raises(ValueError, match="ref_logps has shape"):
        preference_metrics(torch.zeros(3, 2), torch.ones(3, 2), torch.zeros(2, 2), beta=0.1)
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        preference_metrics(torch.zeros(3, 2), torch.tensor([[1, 1], [0, 1], [1, 1]]), beta=0.1)


def _rows(tokenizer, items):
    rows = []
    for i, (prompt, completions) in enumerate(items):
        ids = [tokenizer(c, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for c in completions]
        rows.append({"prompt_ids": tokenizer(prompt)["input_ids"], "completion_ids": ids, "example_index": i})
    return rows


PAIRS = [
    ("food review of the pizza :", [" it was very good .", " it was bad ."]),
    ("hotel review of the inn :", [" the location was amazing .", " i hated it ."]),
    ("book review of the novel : the", [" plot was good .", " plot was not good and it was bad ."]),
    ("film review of the western :", [" i loved it .", " it was slightly bad but it was good ."]),
]


def _manual_logps(model, batch) -> torch.Tensor:
    """Σ completion log-probs per sequence from the full logits (the naive path), [S]."""
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch.input_ids[:, 1:, None])[..., 0]
    return (logp * batch.completion_mask[:, 1:]).sum(1)


def test_engine_path_matches_the_naive_computation(micro_policy) -> None:
    """The policy against a perturbed copy as reference: evaluate_preferences over two batches equals
    preference_metrics on log-probs computed from the full logits, and equals one batch of all rows."""
    tok, policy = micro_policy.tokenizer, micro_policy.model
    reference = copy.deepcopy(policy)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.3 * torch.randn_like(p))
    rows = _rows(tok, PAIRS)
    batches = [
        collate_preferences(rows[:2], pad_token_id=tok.pad_token_id),
        collate_preferences(rows[2:], pad_token_id=tok.pad_token_id, packed=True),
    ]
    got = evaluate_preferences(
        policy, batches, reference=ReferenceLogProbs.from_model(reference), loss="dpo", n_resamples=200
    )
    full = collate_preferences(rows, pad_token_id=tok.pad_token_id)
    pol, ref = _manual_logps(policy, full), _manual_logps(reference, full)
    counts = full.completion_mask.sum(1)
    want = preference_metrics(
        pol.reshape(2, 4).T, counts.reshape(2, 4).T, ref.reshape(2, 4).T, beta=0.1, n_resamples=200
    )
    for name in ("reward_accuracy", "reward_margin", "logp_accuracy", "logp_accuracy_normalized", "chosen_reward"):
        assert getattr(got, name).mean == pytest.approx(getattr(want, name).mean, abs=1e-5), name
    assert got.num_examples == 4 and got.beta == 0.1
    single = evaluate_preferences(
        LogProbEngine(policy), [full], reference=ReferenceLogProbs.from_model(reference), beta=0.1, n_resamples=200
    )
    assert single.reward_margin.mean == pytest.approx(got.reward_margin.mean, abs=1e-5)


def test_policy_equal_to_reference_has_zero_margin(micro_policy) -> None:
    """π_θ = π_ref → ρ ≡ 0: every implicit reward and margin is 0, and no pair is ranked right (ties count
    as wrong)."""
    tok, policy = micro_policy.tokenizer, micro_policy.model
    batch = collate_preferences(_rows(tok, PAIRS), pad_token_id=tok.pad_token_id)
    m = evaluate_preferences(
        policy, [batch], reference=ReferenceLogProbs.from_model(copy.deepcopy(policy)), beta=0.1, n_resamples=100
    )
    assert m.reward_margin.mean == 0.0 and m.reward_accuracy.mean == 0.0 and m.chosen_reward.mean == 0.0
    with pytest.raises(ValueError, match="group_size=1"):
        evaluate_preferences(
            policy, [collate_preferences([{"prompt_ids": [1, 5], "completion_ids": [[6]]}], pad_token_id=0)], beta=0.1
        )
    with pytest.raises(ValueError, match="empty"):
        evaluate_preferences(policy, [], beta=0.1)
