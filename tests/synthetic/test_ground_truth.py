"""Ground-truth helpers: the exact KL against a brute-force enumeration, win rate, length, evaluation."""

from __future__ import annotations

import itertools

import pytest
import torch

from prefopt.data.synthetic import evaluate_against_reference, mean_gold_reward, mean_length, sequence_kl, win_rate

PIZZA = "food review of the pizza :"


def tiny_lm(seed: int, vocab: int = 4):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=16,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # sharpen the random init so the two models differ visibly
        model.lm_head.weight.mul_(30)
    return model


@torch.no_grad()
def test_sequence_kl_equals_brute_force_enumeration() -> None:
    """Chain rule: Σ_y π(y)·Σ_t KL(π(·|s_t) ‖ π_ref(·|s_t)) = Σ_y π(y) log π(y)/π_ref(y), enumerating all
    V^L = 4^3 completions of the one-token prompt [0]."""
    policy, reference = tiny_lm(0), tiny_lm(1)
    ys = torch.tensor(list(itertools.product(range(4), repeat=3)))  # (64, 3)
    ids = torch.cat([torch.zeros(64, 1, dtype=torch.long), ys], dim=1)  # (64, 4)
    mask = torch.ones_like(ids)
    completion = torch.zeros_like(ids, dtype=torch.bool)
    completion[:, 1:] = True

    def seq_logp(model) -> torch.Tensor:
        logp = torch.log_softmax(model(input_ids=ids).logits[:, :-1].double(), -1)
        return logp.gather(-1, ids[:, 1:, None]).squeeze(-1).sum(-1)  # (64,)

    lp, lq = seq_logp(policy), seq_logp(reference)
    assert float(lp.exp().sum()) == pytest.approx(1.0, abs=1e-6)
    brute = float((lp.exp() * (lp - lq)).sum())
    kl = sequence_kl(policy, reference, ids, mask, completion, batch_size=16).double()
    assert kl.shape == (64,) and bool((kl >= 0).all())
    assert brute > 0.05
    assert float((lp.exp() * kl).sum()) == pytest.approx(brute, rel=1e-5)


@torch.no_grad()
def test_sequence_kl_masks_padding_and_prompt() -> None:
    policy, reference = tiny_lm(0), tiny_lm(1)
    ids = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 0]])  # row 1: three real tokens + padding
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    completion = torch.tensor([[False, False, True, True], [False, False, True, False]])
    kl = sequence_kl(policy, reference, ids, mask, completion)
    alone = sequence_kl(policy, reference, ids[1:, :3], mask[1:, :3], completion[1:, :3])
    torch.testing.assert_close(kl[1:], alone)
    assert float(kl[0]) > float(kl[1]) > 0  # one more completion position adds a positive KL term
    assert float(sequence_kl(policy, policy, ids, mask, completion).abs().max()) == 0.0
    with pytest.raises(ValueError, match="first token"):
        sequence_kl(policy, reference, ids, mask, torch.ones_like(completion))
    with pytest.raises(ValueError, match="same"):
        sequence_kl(policy, reference, ids, mask[:, :3], completion)


def test_win_rate_counts_ties_half_and_means() -> None:
    prompts = [PIZZA] * 3
    mine = [" it was very good .", " it was good .", " it was bad ."]
    theirs = [" it was good .", " it was good .", " it was good ."]
    assert win_rate(prompts, mine, theirs) == pytest.approx((1 + 0.5 + 0) / 3)
    assert mean_length(mine) == pytest.approx(13 / 3)
    assert mean_gold_reward(prompts, theirs) == pytest.approx(1.0 + 0.25 * torch.log(torch.tensor(5.0)).item())
    with pytest.raises(ValueError, match="equally many"):
        win_rate(prompts, mine[:2], theirs)
    with pytest.raises(ValueError, match="no completions"):
        mean_length([])


def test_evaluate_against_reference_on_itself(tiny_policy) -> None:
    prompts = [PIZZA, "film review of the movie :", "hotel review of the hotel : i"] * 4
    report = evaluate_against_reference(tiny_policy.model, tiny_policy.model, tiny_policy.tokenizer, prompts, seed=3)
    assert report["kl"] == 0.0
    assert 0.0 <= report["win_rate"] <= 1.0 and 0.0 <= report["acceptance_rate"] <= 1.0
    assert set(report) == {
        "gold_reward",
        "reference_gold_reward",
        "win_rate",
        "kl",
        "mean_words",
        "reference_mean_words",
        "acceptance_rate",
    }
