"""LoRA (PEFT) through the engine, and the three sources of reference log-probs."""

from __future__ import annotations

import os

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig

from prefopt.engine import CacheKey, LogProbEngine, ReferenceCache, ReferenceLogProbs, StaleCacheError, model_identity
from prefopt.engine.cache import EXAMPLE_INDEX, fingerprint

from ._engine_batches import VOCAB, make_batch, naive_sequence_logps, ragged_examples, tiny_model

ATOL = 1e-5


def base_llama():
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    return tiny_model(config)


def lora_llama(dropout: float = 0.0, lora_bias: bool = False):
    """LoRA on attention and on lm_head, with B perturbed so the adapter changes the outputs."""
    base = base_llama()
    config = LoraConfig(
        r=4, lora_alpha=8, lora_dropout=dropout, target_modules=["q_proj", "v_proj", "lm_head"], lora_bias=lora_bias
    )
    model = get_peft_model(base, config)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3)
    return model


@pytest.mark.filterwarnings("ignore:`lora_bias=True` was passed:UserWarning")  # the point of the True case
@pytest.mark.parametrize("lora_bias", [False, True])
def test_lora_on_lm_head_matches_peft_forward(lora_bias):
    model = lora_llama(lora_bias=lora_bias)
    engine = LogProbEngine(model)
    assert engine.fused  # LoRA on lm_head is folded into the kernel call, not a fallback
    examples = ragged_examples(5, seed=7)
    expected, _ = naive_sequence_logps(model, make_batch(examples))
    out = engine(make_batch(examples, packed=True))
    torch.testing.assert_close(out.sum, expected, atol=ATOL, rtol=0)
    out.sum.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    expected.sum().backward()
    for name, param in model.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(grads[name], param.grad, atol=2e-5, rtol=1e-4, msg=name)
    assert any("lm_head.lora_B" in name for name in grads)


def test_lora_dropout_in_train_mode_is_applied_on_the_head():
    model = lora_llama(dropout=0.5).train()
    engine = LogProbEngine(model)
    batch = make_batch(ragged_examples(4, seed=8))
    torch.manual_seed(0)
    first = engine(batch).sum
    torch.manual_seed(1)
    second = engine(batch).sum
    assert not torch.allclose(first, second)  # dropout acts
    model.eval()  # and without it the engine equals PEFT's forward
    torch.testing.assert_close(engine(batch).sum, naive_sequence_logps(model, batch)[0], atol=ATOL, rtol=0)


def test_reference_from_disabled_adapter_is_the_base_model():
    torch.manual_seed(0)
    base_sums, _ = naive_sequence_logps(base_llama(), make_batch(ragged_examples(4, seed=9)))
    model = lora_llama(dropout=0.1).train()
    batch = make_batch(ragged_examples(4, seed=9), packed=True)
    reference = ReferenceLogProbs.from_disabled_adapter(model)
    ref = reference(batch)
    torch.testing.assert_close(ref.sum, base_sums, atol=ATOL, rtol=0)
    assert not ref.sum.requires_grad
    assert model.training and all(m.training for m in model.modules())  # modes restored
    policy = LogProbEngine(model)(batch)  # adapters are back on afterwards
    assert (policy.sum - base_sums).abs().max() > 1e-3
    with pytest.raises(TypeError, match="from_model"):
        ReferenceLogProbs.from_disabled_adapter(base_llama())


def test_reference_from_frozen_model():
    ref_model = base_llama().train()
    reference = ReferenceLogProbs.from_model(ref_model)
    assert not ref_model.training and not any(p.requires_grad for p in ref_model.parameters())
    batch = make_batch(ragged_examples(4, seed=10))
    torch.testing.assert_close(reference(batch).sum, naive_sequence_logps(ref_model, batch)[0], atol=ATOL, rtol=0)


def paired_batches(examples, batch_pairs: int):
    """Paired batches of `batch_pairs` pairs with example_index extras; examples = [(chosen, rejected), ...]."""
    for start in range(0, len(examples), batch_pairs):
        chunk = examples[start : start + batch_pairs]
        batch = make_batch([c for c, _ in chunk] + [r for _, r in chunk], packed=True, group_size=2)
        batch.extras[EXAMPLE_INDEX] = torch.arange(start, start + len(chunk))
        yield batch


def test_reference_cache_roundtrip_staleness_and_atomic_write(tmp_path):
    ref_model = base_llama()
    flat = ragged_examples(10, seed=11)
    pairs = list(zip(flat[:5], flat[5:]))
    key = CacheKey(
        dataset=fingerprint([list(map(list, p)) for p in pairs]),
        tokenization=fingerprint({"tokenizer": "tiny", "max_length": 64}),
        model=model_identity(ref_model),
    )
    source = ReferenceLogProbs.from_model(ref_model)
    path = tmp_path / "ref" / "cache.safetensors"
    built = ReferenceCache.load_or_build(path, key, source, lambda: paired_batches(pairs, 2), num_examples=5)
    assert os.listdir(path.parent) == ["cache.safetensors"]  # no temporary file left behind
    cached = ReferenceLogProbs.from_cache(ReferenceCache.load(path, key))
    assert cached.source == "cache"
    for batch in paired_batches(pairs[::-1][:3], 3):  # a different grouping: examples 4, 3, 2 ...
        batch.extras[EXAMPLE_INDEX] = torch.tensor([4, 3, 2])
        torch.testing.assert_close(cached(batch).sum, source(batch).sum, atol=ATOL, rtol=0)
    assert built.sums.shape == (5, 2)

    changed_model = base_llama()
    with torch.no_grad():
        changed_model.lm_head.weight[0, 0] += 1e-3
    assert model_identity(changed_model) != key.model
    stale = CacheKey(key.dataset, key.tokenization, model_identity(changed_model))
    with pytest.raises(StaleCacheError, match=r"changed: model \(cache"):
        ReferenceCache.load(path, stale)
    with pytest.raises(StaleCacheError, match="tokenization"):
        ReferenceCache.load(path, CacheKey(key.dataset, fingerprint({"max_length": 32}), key.model))


def test_reference_cache_rejects_version_count_and_index_mismatch(tmp_path, monkeypatch):
    import prefopt.engine.cache as cache_module

    key = CacheKey("d", "t", "m")
    cache = ReferenceCache(key, torch.zeros(2, 2), torch.tensor([[1, 2], [3, 4]]))
    path = tmp_path / "c.safetensors"
    cache.save(path)
    monkeypatch.setattr(cache_module, "CACHE_VERSION", 2)
    with pytest.raises(StaleCacheError, match="version '1'.*version 2"):
        ReferenceCache.load(path, key)
    monkeypatch.undo()
    loaded = ReferenceCache.load(path, key)
    batch = make_batch([([1, 2], [3]), ([1], [2, 3, 4]), ([1], [2, 3]), ([1, 2], [3, 4, 5, 6])], group_size=2)
    with pytest.raises(ValueError, match="example_index"):
        loaded.lookup(batch)
    batch.extras[EXAMPLE_INDEX] = torch.tensor([0, 1])
    assert loaded.lookup(batch).count.tolist() == [1, 3, 2, 4]  # group-major: chosen 0, 1, rejected 0, 1
    retokenised = make_batch([([1, 2], [3]), ([1], [2, 3]), ([1], [2, 3]), ([1, 2], [3, 4, 5, 6])], group_size=2)
    retokenised.extras[EXAMPLE_INDEX] = torch.tensor([0, 1])
    with pytest.raises(StaleCacheError, match="token counts differ"):
        loaded.lookup(retokenised)
    retokenised.extras[EXAMPLE_INDEX] = torch.tensor([0, 2])
    with pytest.raises(ValueError, match="holds 2 examples"):
        loaded.lookup(retokenised)


def test_prompt_learning_is_refused_with_the_reason():
    from peft import PromptTuningConfig

    model = get_peft_model(base_llama(), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    with pytest.raises(ValueError, match="virtual tokens"):
        LogProbEngine(model)


def test_cache_build_needs_every_example_and_identity_needs_a_name():
    ref = ReferenceLogProbs.from_model(base_llama())
    flat = ragged_examples(6, seed=17)
    pairs = list(zip(flat[:3], flat[3:]))
    with pytest.raises(ValueError, match="did not cover all 4 examples"):
        ReferenceCache.build(CacheKey("d", "t", "m"), ref, paired_batches(pairs, 3), num_examples=4)
    model = base_llama()
    with pytest.raises(ValueError, match="hash_weights=True"):
        model_identity(model, hash_weights=False)
    model.config._name_or_path, model.config._commit_hash = "org/tiny", "abc123"
    assert model_identity(model, hash_weights=False) == "org/tiny@abc123"
    assert model_identity(model) == model_identity(base_llama())  # same seed ⇒ same weights ⇒ same hash
