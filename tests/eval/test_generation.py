"""Generation metrics: hand-checked KL estimates and summaries, and the synthetic task end to end."""

from __future__ import annotations

import copy
import math
import random

import pytest
import torch

from prefopt.data import synthetic
from prefopt.eval.generation import completion_lengths, evaluate_generations, generation_metrics, kl_estimates


def test_kl_estimates_by_hand() -> None:
    """Two sampled tokens with (π, π_ref) = (½, ¼) and (¼, ½), a padded third position ignored:
    k1 = log 2 + log ½ = 0;  k3 = (½ − 1 + log 2) + (2 − 1 − log 2) = 0.5."""
    policy = torch.log(torch.tensor([[0.5, 0.25, 0.9]]))
    ref = torch.log(torch.tensor([[0.25, 0.5, 0.1]]))
    mask = torch.tensor([[True, True, False]])
    k1, k3 = kl_estimates(policy, ref, mask)
    assert k1.item() == pytest.approx(0.0, abs=1e-12) and k3.item() == pytest.approx(0.5, abs=1e-7)
    assert kl_estimates(policy, policy, mask)[1].item() == 0.0
    with pytest.raises(ValueError, match="one \\[S, T\\] shape"):
        kl_estimates(policy, ref[:, :2], mask)


def test_completion_lengths_drop_the_eos() -> None:
    mask = torch.tensor([[False, True, True, True], [False, True, True, False]])
    assert completion_lengths(mask, torch.tensor([True, False])).tolist() == [2, 2]


def test_generation_metrics_by_hand() -> None:
    """Rewards (1, 0, 2, 2) against (0, 0, 3, 1): outcomes (1, ½, 0, 1) → win rate 0.625; equal lengths
    → LC win rate 0.625; mean reward 1.25 vs 1.0; mean length 3; the exact KL is the headline."""
    m = generation_metrics(
        [1.0, 0.0, 2.0, 2.0],
        [0.0, 0.0, 3.0, 1.0],
        [3, 3, 3, 3],
        [2, 4, 3, 3],
        kl_k1=[0.1, -0.1, 0.2, 0.0],
        kl_k3=[0.2, 0.1, 0.3, 0.2],
        kl_exact=[0.2, 0.2, 0.2, 0.2],
        finished=[True, True, False, True],
        n_resamples=200,
    )
    assert m.win_rate.mean == 0.625 and m.reward.mean == 1.25 and m.reference_reward.mean == 1.0
    assert m.mean_length.mean == 3.0 and m.reference_mean_length.mean == 3.0 and m.finished_rate == 0.75
    assert m.kl_method == "exact" and m.kl.mean == pytest.approx(0.2) and m.kl_k3.mean == pytest.approx(0.2)
    assert m.kl_k1.mean == pytest.approx(0.05)
    assert 0 < m.lc_win_rate.mean < 1
    sampled = generation_metrics([1.0, 0.0], [0.0, 0.0], [3, 3], [3, 3], kl_k3=[0.5, 0.7], n_resamples=50)
    assert sampled.kl_method == "k3" and sampled.kl.mean == pytest.approx(0.6) and sampled.kl_exact is None
    assert sampled.lc_win_rate.mean == pytest.approx(sampled.win_rate.mean)  # equal lengths
    d = m.to_dict()
    assert d["kl_method"] == "exact" and "rewards" not in d
    assert m.to_dict(per_prompt=True)["rewards"] == [1.0, 0.0, 2.0, 2.0]
    with pytest.raises(ValueError, match="reference_rewards has 1 values"):
        generation_metrics([1.0, 2.0], [1.0], [1, 1], [1, 1])


def test_reference_against_itself_end_to_end(micro_policy) -> None:
    """The synthetic task's (micro) reference policy evaluated against itself on 48 held-out-style prompts:
    the exact KL and both sampled estimates are 0, the win rate (independent samples) is ≈ ½ and agrees
    with the synthetic task's own `win_rate` helper, and the mean length with its `mean_length`."""
    tok, model = micro_policy.tokenizer, micro_policy.model
    rng = random.Random(7)
    prompts = [synthetic.sample_prompt(rng) for _ in range(48)]
    reference = copy.deepcopy(model)
    ref_samples = synthetic.sample(
        reference, tok, prompts, generator=torch.Generator().manual_seed(1), max_new_tokens=12
    )
    m = evaluate_generations(
        model,
        reference,
        tok,
        prompts,
        reward=synthetic.GoldReward(),
        max_new_tokens=12,
        reference_samples=ref_samples,
        n_resamples=300,
    )
    assert m.kl_method == "exact" and m.num_prompts == 48
    assert m.kl.mean == pytest.approx(0.0, abs=1e-6)
    assert m.kl_k1.mean == pytest.approx(0.0, abs=1e-6) and m.kl_k3.mean == pytest.approx(0.0, abs=1e-6)
    assert m.win_rate.covers(0.5) and abs(m.win_rate.mean - 0.5) < 0.2
    assert m.win_rate.mean == synthetic.win_rate(prompts, m.completions, ref_samples.completions)
    assert m.mean_length.mean == pytest.approx(synthetic.mean_length(m.completions))
    assert m.reward.mean == pytest.approx(synthetic.mean_gold_reward(prompts, m.completions), abs=1e-6)
    ref_mean = synthetic.mean_gold_reward(prompts, ref_samples.completions)
    assert m.reference_reward.mean == pytest.approx(ref_mean, abs=1e-6)
    assert math.isfinite(m.lc_win_rate.mean)


def test_a_different_policy_has_positive_kl(micro_policy) -> None:
    """A perturbed policy: the exact KL is > 0, every sampled k3 term is ≥ 0, sampled estimates are finite."""
    tok, reference = micro_policy.tokenizer, micro_policy.model
    policy = copy.deepcopy(reference)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.5 * torch.randn_like(p))
    prompts = [synthetic.sample_prompt(random.Random(i)) for i in range(16)]
    m = evaluate_generations(
        policy, reference, tok, prompts, reward=synthetic.GoldReward(), max_new_tokens=8, n_resamples=100
    )
    assert m.kl_exact.mean > 0.05 and m.kl_k3.low >= 0 and math.isfinite(m.kl_k1.mean)
    sampled = evaluate_generations(
        policy, reference, tok, prompts, reward=synthetic.GoldReward(), max_new_tokens=8, kl="sampled", n_resamples=100
    )
    assert sampled.kl_exact is None and sampled.kl_method == "k3" and sampled.kl_k3.mean == pytest.approx(m.kl_k3.mean)
    with pytest.raises(ValueError, match="kl='bogus'"):
        evaluate_generations(policy, reference, tok, prompts, reward=synthetic.GoldReward(), kl="bogus")  # type: ignore[arg-type]


class _CharacterCount:
    """A toy `RewardFunction`: the completion's number of characters."""

    def score(self, prompts, completions) -> torch.Tensor:
        return torch.tensor([float(len(c)) for c in completions])


def test_any_tokenizer_with_sample_texts() -> None:
    """A byte-level BPE and a random tiny Llama (no synthetic task): `sample_texts` decodes completions so
    that prompt + completion is the decoded sequence; the model against itself has KL 0, and the custom
    reward is what the metrics average."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    from prefopt.sampling import sample_texts

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        ["the capital of France is Paris and the answer is yes"] * 10,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<pad>", "<eos>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>", pad_token="<pad>")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    )
    prompts = ["the capital of", "Paris is", "the answer", "France"] * 3
    samples = sample_texts(model, tok, prompts, generator=torch.Generator().manual_seed(0), max_new_tokens=6)
    for prompt, completion, ids in zip(prompts, samples.completions, samples.input_ids):
        assert prompt + completion == tok.decode(ids, skip_special_tokens=True)
    m = evaluate_generations(
        model,
        copy.deepcopy(model),
        tok,
        prompts,
        reward=_CharacterCount(),
        max_new_tokens=6,
        sampler=sample_texts,
        n_resamples=100,
    )
    assert m.kl_method == "exact" and m.kl.mean == pytest.approx(0.0, abs=1e-6)
    assert m.reward.mean == pytest.approx(sum(len(c) for c in m.completions) / len(prompts))
    tok.pad_token = None
    with pytest.raises(ValueError, match="pad_token"):
        sample_texts(model, tok, prompts, generator=torch.Generator())
