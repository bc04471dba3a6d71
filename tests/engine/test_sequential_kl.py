"""`engine(batch, kl_reference=reference)`: TDPO's sequential KL, Σ_t KL(π_ref(·|x, y_<t) ‖ π_θ(·|x, y_<t)), per
sequence, against the obvious computation from both models' full logits of a padded batch (float32, 1e-5), its
gradient into the policy's parameters, the logits path and packing (prefopt/engine/sequential_kl.py).
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig

from prefopt.batch import TokenBatch
from prefopt.engine import CacheKey, LogProbEngine, ReferenceCache, ReferenceLogProbs

from ._engine_batches import VOCAB, make_batch, ragged_examples, tiny_model

SMALL = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


def llama(seed: int) -> torch.nn.Module:
    return tiny_model(LlamaConfig(**SMALL, num_key_value_heads=2, tie_word_embeddings=False), seed=seed, head_gain=3.0)


def naive_seq_kl(policy: torch.nn.Module, reference: torch.nn.Module, batch: TokenBatch) -> torch.Tensor:
    """[S] Σ over completion positions of Σ_v p_ref (log p_ref − log p_θ), from the two [R, T, V] logits."""
    log_p = torch.log_softmax(policy(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits, -1)
    with torch.no_grad():
        ref_logits = reference(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    log_ref = torch.log_softmax(ref_logits, -1)
    kl = (log_ref.exp() * (log_ref - log_p)).sum(-1)[:, :-1]  # position t−1 predicts token t
    mask = batch.completion_mask[:, 1:]
    return torch.zeros(batch.num_sequences).index_add(0, batch.sequence_ids[:, 1:][mask], kl[mask])


@pytest.fixture(scope="module")
def setup() -> tuple[list, torch.nn.Module, torch.nn.Module]:
    return ragged_examples(4, seed=31), llama(0), llama(1)


@pytest.mark.parametrize(
    ("split", "packed"),
    [("auto", False), ("auto", True), ("never", False)],
    ids=["fused", "fused-packed", "logits-path"],
)
def test_seq_kl_equals_the_full_logits_computation(setup, split: str, packed: bool) -> None:
    examples, policy, reference_model = setup
    padded = make_batch(examples)
    expected = naive_seq_kl(policy, reference_model, padded)
    (expected * torch.linspace(-1, 1, 4)).sum().backward()
    naive_grads = [p.grad.clone() for p in policy.parameters()]
    policy.zero_grad()
    reference = ReferenceLogProbs.from_model(reference_model)
    out = LogProbEngine(policy, split=split, chunk_size=8)(make_batch(examples, packed=packed), kl_reference=reference)
    assert out.seq_kl is not None and out.seq_kl.requires_grad
    assert float(expected.detach().min()) > 0.1  # two different models: a real divergence at every sequence
    torch.testing.assert_close(out.seq_kl, expected.detach(), atol=1e-5, rtol=1e-5)
    (out.seq_kl * torch.linspace(-1, 1, 4)).sum().backward()
    for got, want in zip([p.grad for p in policy.parameters()], naive_grads):
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    policy.zero_grad()
    assert all(p.grad is None for p in reference_model.parameters())
    assert out.detach().seq_kl is not None and not out.detach().seq_kl.requires_grad


def test_the_same_model_has_zero_kl_and_a_cache_cannot_give_it(setup, tmp_path) -> None:
    examples, policy, _ = setup
    batch = make_batch(examples)
    with torch.no_grad():
        same = LogProbEngine(policy)(batch, kl_reference=ReferenceLogProbs.from_model(llama(0)))
    assert same.seq_kl is not None and float(same.seq_kl.abs().max()) < 1e-5
    key = CacheKey(dataset="d", tokenization="t", model="m")
    batch.extras["example_index"] = torch.arange(4)
    cache = ReferenceCache.load_or_build(
        tmp_path / "r.safetensors", key, ReferenceLogProbs.from_model(llama(1)), lambda: [batch], num_examples=4
    )
    with pytest.raises(ValueError, match="holds log-probs only.*from_model"):
        LogProbEngine(policy)(batch, kl_reference=ReferenceLogProbs.from_cache(cache))
    with pytest.raises(TypeError, match="kl_reference must give the reference model's head"):
        LogProbEngine(policy)(batch, kl_reference=object())
