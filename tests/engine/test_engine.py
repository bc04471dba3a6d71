"""LogProbEngine against the obvious logits path: model(...).logits → fp32 log_softmax → gather.

Every model is built from a tiny config (no download). Tolerance 1e-5 in float32.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import (
    CohereConfig,
    Gemma2Config,
    Gemma3TextConfig,
    GemmaConfig,
    GPT2Config,
    GraniteConfig,
    LlamaConfig,
    PhiConfig,
    Qwen2Config,
)

from prefopt.engine import LogitTransform, LogProbEngine, SequenceLogProbs
from prefopt.engine.head import KNOWN_HEADS

from ._engine_batches import VOCAB, make_batch, naive_sequence_logps, ragged_examples, tiny_model

ATOL = 1e-5
SMALL = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


def llama(**kw):
    return tiny_model(LlamaConfig(**SMALL, num_key_value_heads=2, tie_word_embeddings=False), **kw)


def gpt2(**kw):  # tied input/output embeddings, biased layer norms, learned positions
    return tiny_model(
        GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, bos_token_id=1, eos_token_id=1), **kw
    )


def qwen2(**kw):  # tied embeddings, biased q/k/v
    return tiny_model(Qwen2Config(**SMALL, num_key_value_heads=2, tie_word_embeddings=True), **kw)


def gemma(**kw):  # embeddings scaled by √D inside the body, tied head
    return tiny_model(GemmaConfig(**SMALL, num_key_value_heads=2, head_dim=8), **kw)


def gemma2(**kw):  # final-logit soft-capping, attention soft-capping, sliding window < sequence length
    config = Gemma2Config(**SMALL, num_key_value_heads=2, head_dim=8, final_logit_softcapping=2.0, sliding_window=4)
    return tiny_model(config, head_gain=30.0, attn="eager", **kw)


def gemma3(**kw):  # Gemma3ForCausalLM (model_type "gemma3_text"): soft-capping, sliding window
    config = Gemma3TextConfig(**SMALL, num_key_value_heads=2, head_dim=8, final_logit_softcapping=2.0, sliding_window=4)
    return tiny_model(config, head_gain=30.0, attn="eager", **kw)


def phi(**kw):  # lm_head with a bias (perturbed from its zero init so that it matters)
    model = tiny_model(PhiConfig(**SMALL, num_key_value_heads=4), **kw)
    with torch.no_grad():
        model.lm_head.bias.normal_(0, 1.0)
    return model


def cohere(**kw):  # logits * logit_scale
    return tiny_model(CohereConfig(**SMALL, num_key_value_heads=2, logit_scale=0.25), head_gain=10.0, **kw)


def granite(**kw):  # logits / logits_scaling
    return tiny_model(GraniteConfig(**SMALL, num_key_value_heads=2, logits_scaling=4.0), head_gain=10.0, **kw)


MODELS = {
    "llama": llama,
    "gpt2": gpt2,
    "qwen2": qwen2,
    "gemma": gemma,
    "gemma2": gemma2,
    "gemma3": gemma3,
    "phi": phi,
    "cohere": cohere,
    "granite": granite,
}


@pytest.fixture(scope="module", params=list(MODELS))
def model(request):
    return MODELS[request.param]()


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_engine_matches_logits_path(model, packed):
    examples = ragged_examples(6, seed=1)
    expected, expected_tokens = naive_sequence_logps(model, make_batch(examples))
    engine = LogProbEngine(model)
    assert engine.fused
    batch = make_batch(examples, packed=packed, row_capacity=24)
    out = engine(batch, return_tokens=True)
    torch.testing.assert_close(out.sum, expected, atol=ATOL, rtol=0)
    assert out.count.tolist() == [len(c) for _, c in examples]
    torch.testing.assert_close(out.mean, expected / out.count, atol=ATOL, rtol=0)
    if not packed:  # per-token values sit under the tokens they score
        torch.testing.assert_close(out.tokens, expected_tokens, atol=ATOL, rtol=0)
    else:
        torch.testing.assert_close(
            out.tokens[batch.completion_mask], expected_tokens[expected_tokens != 0], atol=ATOL, rtol=0
        )


@pytest.mark.parametrize("temperature", [0.5])
def test_temperature_composes_with_scale_and_softcap(temperature):
    for build in (gemma2, cohere, granite):
        m = build()
        batch = make_batch(ragged_examples(4, seed=2))
        expected, _ = naive_sequence_logps(m, batch, temperature=temperature)
        out = LogProbEngine(m, temperature=temperature)(batch)
        torch.testing.assert_close(out.sum, expected, atol=ATOL, rtol=0)


def test_known_head_transforms_read_the_config():
    assert KNOWN_HEADS["gemma2"](gemma2().config) == LogitTransform(softcap=2.0)
    assert KNOWN_HEADS["cohere"](cohere().config) == LogitTransform(scale=0.25)
    assert KNOWN_HEADS["granite"](granite().config) == LogitTransform(scale=0.25)
    # softcap(s·x)/T with c=2, s=0.5, T=4 == kernel's c'·tanh((x/T')/c'), T'=T/s=8, c'=c/T=0.5
    x = torch.linspace(-9, 9, 19)
    temperature, softcap = LogitTransform(scale=0.5, softcap=2.0).kernel_args(4.0)
    torch.testing.assert_close(softcap * torch.tanh(x / temperature / softcap), 2.0 * torch.tanh(0.5 * x / 2.0) / 4.0)


@pytest.mark.parametrize("build", [llama, gpt2], ids=["llama", "gpt2-tied"])
def test_gradients_match_logits_path(build):
    examples = ragged_examples(5, seed=3)
    weights = torch.linspace(-1, 1, 5)
    grads = []
    for path in ("naive", "engine"):
        m = build().train()  # no dropout in these configs' defaults that would make paths differ
        for module in m.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        if path == "naive":
            sums, _ = naive_sequence_logps(m, make_batch(examples))
        else:
            sums = LogProbEngine(m)(make_batch(examples, packed=True)).sum
        (sums * weights).sum().backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 5
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=2e-5, rtol=1e-4, msg=name)


def test_packing_mask_and_position_ids_agree_with_padding():
    m = llama()
    examples = ragged_examples(7, seed=4)
    padded = LogProbEngine(m)(make_batch(examples)).sum
    for packing in ("position_ids", "mask"):
        for capacity in (None, 20):
            packed = LogProbEngine(m, packing=packing)(
                make_batch(examples, packed=True, row_capacity=capacity, pad_to=40)
            )
            torch.testing.assert_close(packed.sum, padded, atol=ATOL, rtol=0)


def test_mask_packing_refuses_rows_longer_than_sliding_window():
    m = gemma2()
    engine = LogProbEngine(m, packing="mask")
    with pytest.raises(ValueError, match="sliding_window=4.*packing='position_ids'"):
        engine(make_batch(ragged_examples(3), packed=True))


class NoHeadLM(torch.nn.Module):
    """A causal LM the engine cannot split: no config, logits from a single module."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = gpt2()

    def forward(self, **kwargs):
        return self.inner(**kwargs)


def test_unsplittable_model_falls_back_with_one_warning():
    m = NoHeadLM()
    examples = ragged_examples(4, seed=5)
    expected, _ = naive_sequence_logps(m.inner, make_batch(examples))
    with pytest.warns(UserWarning, match="logits path") as record:
        engine = LogProbEngine(m)
        first = engine(make_batch(examples))
        second = engine(make_batch(examples, packed=True))
    assert len([w for w in record if "logits path" in str(w.message)]) == 1
    assert not engine.fused
    torch.testing.assert_close(first.sum, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(second.sum, expected, atol=ATOL, rtol=0)


def test_unknown_model_type_needs_split_always():
    m = llama()
    m.config.model_type = "my_llama_variant"
    with pytest.warns(UserWarning, match="KNOWN_HEADS"):
        assert not LogProbEngine(m).fused
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        engine = LogProbEngine(m, split="always")
    batch = make_batch(ragged_examples(3))
    torch.testing.assert_close(engine(batch).sum, naive_sequence_logps(m, batch)[0], atol=ATOL, rtol=0)
    assert not LogProbEngine(m, split="never").fused


def test_prompt_tokens_never_reach_the_head():
    m = llama()
    rows = []
    handle = m.lm_head.register_forward_hook(lambda mod, inp, out: rows.append(inp[0].shape))
    engine = LogProbEngine(m)
    examples = [([5, 6, 7, 8, 9], [10, 11]), ([5, 6], [12, 13, 14])]
    seen_by_kernel = []
    import prefopt.engine.engine as engine_module

    original = engine_module._linear_logprobs

    def spy(hidden, weight, labels, **kw):
        seen_by_kernel.append(hidden.shape[0])
        return original(hidden, weight, labels, **kw)

    engine_module._linear_logprobs = spy
    try:
        engine(make_batch(examples))
    finally:
        engine_module._linear_logprobs = original
        handle.remove()
    assert rows == []  # lm_head's module forward never runs
    assert seen_by_kernel == [5]  # 2 + 3 completion tokens, no prompt positions


def test_bad_batches_name_row_and_fix():
    engine = LogProbEngine(llama())
    batch = make_batch([([1, 2], [3]), ([4], [5, 6])])
    batch.completion_mask[1, 0] = True
    with pytest.raises(ValueError, match="row 1: completion_mask is True at position 0"):
        engine(batch)
    packed = make_batch([([1, 2], [3]), ([4], [5, 6])], packed=True)
    packed.completion_mask[0, 3] = True  # first token of the second sequence
    with pytest.raises(ValueError, match="row 0, position 3"):
        engine(packed)
    shifted = make_batch([([1, 2], [3]), ([4], [5, 6])], packed=True)
    shifted.position_ids[0] = torch.arange(shifted.position_ids.shape[1])  # no restart per sequence
    with pytest.raises(ValueError, match="position_ids disagree with sequence_ids"):
        engine(shifted)
    with pytest.raises(ValueError, match="temperature"):
        LogProbEngine(llama(), temperature=0.0)


def test_grouped_views_for_paired_and_ranked():
    out = SequenceLogProbs(torch.arange(6.0), torch.tensor([1, 2, 3, 4, 5, 6]), group_size=2)
    assert out.chosen().tolist() == [0.0, 1.0, 2.0] and out.rejected().tolist() == [3.0, 4.0, 5.0]
    assert out.chosen(out.mean).tolist() == pytest.approx([0.0, 0.5, 2 / 3])
    ranked = SequenceLogProbs(torch.arange(6.0), torch.ones(6, dtype=torch.long), group_size=3)
    assert ranked.grouped().tolist() == [[0.0, 2.0, 4.0], [1.0, 3.0, 5.0]]
    with pytest.raises(ValueError, match="group_size=3"):
        ranked.chosen()
    empty = SequenceLogProbs(torch.zeros(2), torch.tensor([0, 2]))
    assert empty.mean.tolist() == [0.0, 0.0]


def test_paired_batch_end_to_end_with_dpo():
    import prefopt

    m = llama()
    pairs = ragged_examples(6, seed=6)
    batch = make_batch(pairs, packed=True, group_size=2)  # 3 pairs: chosen block, then rejected block
    out = LogProbEngine(m)(batch)
    ref = out.detach()
    loss = prefopt.get_loss("dpo", beta=0.1)(out.chosen(), out.rejected(), ref.chosen(), ref.rejected())
    loss.loss.backward()
    assert abs(float(loss.loss.detach()) - 0.6931472) < 1e-6  # policy == reference ⇒ −log σ(0)
    assert m.lm_head.weight.grad is not None


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_kernel_backends_agree_through_the_engine(backend):
    m = llama()
    batch = make_batch(ragged_examples(5, seed=14), packed=True)
    expected = naive_sequence_logps(m, make_batch(ragged_examples(5, seed=14)))[0]
    out = LogProbEngine(m, backend=backend, chunk_size=3)(batch)
    torch.testing.assert_close(out.sum, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("split", ["auto", "never"], ids=["fused", "logits-path"])
def test_entropy_matches_full_softmax(split):
    m = gemma2()  # soft-capped, so the entropy must see the capped logits
    batch = make_batch(ragged_examples(4, seed=15))
    logits = m(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float() / 1.5
    logprobs = torch.log_softmax(logits[:, :-1], -1)
    per_token = -(logprobs.exp() * logprobs).sum(-1) * batch.completion_mask[:, 1:]  # (R, T−1)
    out = LogProbEngine(m, split=split, temperature=1.5)(batch, return_tokens=True, return_entropy=True)
    torch.testing.assert_close(out.token_entropy[:, 1:], per_token, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.entropy, per_token.sum(-1), atol=ATOL, rtol=0)  # one sequence per row
    assert LogProbEngine(m)(batch).entropy is None


def test_bf16_engine_is_no_less_accurate_than_the_bf16_logits_path():
    """Same body in bf16 for both paths; against the fp32 model's values the engine's error must not
    exceed the bf16 logits path's error (plus a small slack), as in the kernel accuracy tests."""
    m = llama()
    examples = ragged_examples(6, seed=16)
    truth, _ = naive_sequence_logps(m, make_batch(examples))
    m16 = llama().to(torch.bfloat16)
    naive16, _ = naive_sequence_logps(m16, make_batch(examples))
    engine16 = LogProbEngine(m16)(make_batch(examples)).sum  # padded: the same bf16 body as the naive path
    assert engine16.dtype == torch.float32
    err_naive, err_engine = (naive16 - truth).abs().max(), (engine16 - truth).abs().max()
    assert err_engine <= err_naive + 1e-3, (err_engine, err_naive)  # errors here are ≈ 2e-3 on sums ≈ −30
