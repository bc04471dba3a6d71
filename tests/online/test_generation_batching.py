"""`GenerationConfig.batching` (`prefopt.online.generation_batching`): prompts of different token lengths left-padded
into one `generate` call decode what one call per length decodes (greedy: the same tokens; the sampler's per-token
log-probs equal to 1e-5), and the sampler's log-probs of a padded call are the engine's of the same completions,
for Llama and GPT-2 (positions from the attention mask)."""

from __future__ import annotations

import pytest
import torch

from prefopt.data.synthetic import build_tokenizer
from prefopt.engine import LogProbEngine
from prefopt.online.config import OnlineConfig
from prefopt.online.generation import GenerationConfig, generate
from prefopt.online.generation_batching import left_padded, pad_fraction, plan_calls
from prefopt.settings import SettingsError
from tests.train.tiny_task import tiny_llama

PROMPTS = ["the food was", "service", "we came back for the view", "the food was", "a long wait"]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def _gpt2(tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=128,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )  # no dropout: the engine scores the model in train mode
    return GPT2LMHeadModel(config)


def test_plans():
    lengths = [3, 1, 6, 3, 2]
    assert plan_calls(lengths, 64, "length") == [[1], [4], [0, 3], [2]]  # by length, shortest first (as before)
    assert plan_calls(lengths, 2, "length") == [[1], [4], [0, 3], [2]]
    assert plan_calls(lengths, 64, "padded") == [[1, 4, 0, 3, 2]]  # sorted by length, one call
    assert plan_calls(lengths, 2, "padded") == [[1, 4], [0, 3], [2]]
    assert pad_fraction([1, 2, 3, 3, 6]) == pytest.approx(1 - 15 / 30)
    assert plan_calls(lengths, 64, "auto") == [[1, 4, 0, 3, 2]]  # half the block is padding: still padded
    assert plan_calls([1, 1, 10], 64, "auto") == [[0, 1], [2]]  # 60% padding: by length
    ids, mask, width = left_padded([[5, 6], [7]], pad=0, device=torch.device("cpu"))
    assert width == 2 and ids.tolist() == [[5, 6], [0, 7]] and mask.tolist() == [[1, 1], [0, 1]]
    with pytest.raises(ValueError, match="batching='pad'"):
        GenerationConfig(batching="pad")
    with pytest.raises(SettingsError, match="generation_batching='pad'"):
        OnlineConfig(generation_batching="pad")


@pytest.mark.parametrize("build", [tiny_llama, _gpt2], ids=["llama", "gpt2"])
def test_padded_greedy_decodes_what_one_call_per_length_decodes(tokenizer, build):
    policy = build(tokenizer)
    settings = GenerationConfig(do_sample=False, max_new_tokens=8, backend="hf", logprobs=True)
    by_length = generate(policy, tokenizer, PROMPTS, settings)
    padded = generate(policy, tokenizer, PROMPTS, GenerationConfig(**{**vars(settings), "batching": "padded"}))
    assert padded.completions == by_length.completions and torch.equal(padded.input_ids, by_length.input_ids)
    mask = padded.completion_mask
    torch.testing.assert_close(padded.sampler_logps[mask], by_length.sampler_logps[mask], rtol=0, atol=1e-5)
    engine = LogProbEngine(policy)(padded.token_batch(), return_tokens=True).tokens
    torch.testing.assert_close(padded.sampler_logps[mask], engine[mask], rtol=0, atol=1e-5)


@pytest.mark.parametrize("build", [tiny_llama, _gpt2], ids=["llama", "gpt2"])
def test_padded_samples_score_as_unpadded(tokenizer, build):
    """Sampled in one left-padded call: the sampler's log-prob of each token (the padded forward's) equals the
    engine's on the unpadded rollout rows, to 1e-5; the same seed gives the same samples again."""
    policy = build(tokenizer)
    settings = GenerationConfig(num_samples=3, max_new_tokens=8, backend="hf", logprobs=True, batching="padded")
    rollout = generate(policy, tokenizer, PROMPTS, settings, seed=3)
    assert len({len(tokenizer(p)["input_ids"]) for p in PROMPTS}) > 2  # several lengths in the one call
    mask = rollout.completion_mask
    engine = LogProbEngine(policy)(rollout.token_batch(), return_tokens=True).tokens
    torch.testing.assert_close(rollout.sampler_logps[mask], engine[mask], rtol=0, atol=1e-5)
    again = generate(policy, tokenizer, PROMPTS, settings, seed=3)
    assert again.completions == rollout.completions


def test_a_logits_processor_gets_unpadded_calls(tokenizer, monkeypatch):
    """A caller's processor (NLPO's action mask) sees input_ids without the mask: its calls stay one per length."""
    policy = tiny_llama(tokenizer)
    masks = []
    original = type(policy).generate

    def spy(self, *args, **kwargs):
        masks.append(bool(kwargs["attention_mask"].all()))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(policy), "generate", spy)
    settings = GenerationConfig(max_new_tokens=3, backend="hf", batching="padded")
    generate(policy, tokenizer, PROMPTS, settings, logits_processor=lambda ids, scores: scores)
    assert len(masks) == len({len(tokenizer(p)["input_ids"]) for p in PROMPTS}) and all(masks)
