"""Prefix-shared batches: each prompt once, its K completions behind a block mask, positions continuing.

The unshared batch of the same rows is the truth: per-sequence log-probs (and gradients) must agree to
1e-5 in float32 on every architecture the engine is tested on, padded and packed, ragged lengths, K = 2
(pairs) and K = 3 (rankings). Architectures that cannot take the mask are refused by name.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention.flex_attention import flex_attention
from transformers import MistralConfig

from prefopt.data.collate import collate_preferences, uncollate, unshare_prompts
from prefopt.engine import LogProbEngine
from prefopt.engine.prompt_sharing import (
    PromptSharing,
    allowed_pairs,
    flex_block_mask,
    shared_mask_mod,
    shared_positions,
)
from prefopt.errors import BatchError

from ._engine_batches import VOCAB, tiny_model
from .test_engine import MODELS, SMALL, NoHeadLM, gemma2, llama

ATOL = 1e-5
EXACT = ("llama", "qwen2", "gemma", "gpt2", "phi")


def grouped_rows(b: int, k: int, seed: int, prompt: tuple[int, int] = (3, 9), completion: tuple[int, int] = (1, 6)):
    """B rows of one prompt and K completions, ragged lengths (prompt and completion ranges inclusive)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(b):
        p = int(torch.randint(prompt[0], prompt[1] + 1, (1,), generator=g))
        lengths = torch.randint(completion[0], completion[1] + 1, (k,), generator=g).tolist()
        rows.append(
            {
                "prompt_ids": torch.randint(1, VOCAB, (p,), generator=g).tolist(),
                "completion_ids": [torch.randint(1, VOCAB, (c,), generator=g).tolist() for c in lengths],
            }
        )
    return rows


@pytest.mark.parametrize("name", [*EXACT, "gemma2", "gemma3"])
def test_shared_log_probs_equal_unshared(name):
    """The tested architectures (Gemma 2/3: sequences longer than their sliding window of 4, so the window
    must be applied per layer type; Cohere and Granite differ from Llama only in the head), pairs and
    rankings, padded and packed."""
    model = MODELS[name]()
    engine = LogProbEngine(model)
    assert engine.prompt_sharing.unsupported is None
    assert engine.prompt_sharing.per_layer_type == (name in ("gemma2", "gemma3"))
    for k, packed in ((2, False), (3, True)):
        rows = grouped_rows(3, k, seed=k)
        expected = engine(collate_preferences(rows, pad_token_id=0)).sum
        batch = collate_preferences(rows, pad_token_id=0, packed=packed, share_prompt=True)
        assert batch.shared_prefix and batch.input_ids.numel() < sum(
            len(r["prompt_ids"]) * k + sum(map(len, r["completion_ids"])) for r in rows
        ) * (1 if packed else 3)
        out = engine(batch)
        torch.testing.assert_close(out.sum, expected, atol=ATOL, rtol=0)
        assert out.count.tolist() == [len(r["completion_ids"][j]) for j in range(k) for r in rows]


@pytest.mark.parametrize("name", EXACT)
def test_shared_gradients_equal_unshared(name):
    rows = grouped_rows(3, 2, seed=7)
    weights = torch.linspace(-1, 1, 6)
    grads = []
    for share in (False, True):
        model = MODELS[name]().train()
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        out = LogProbEngine(model)(collate_preferences(rows, pad_token_id=0, share_prompt=share))
        (out.sum * weights).sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 5
    for key in grads[0]:
        torch.testing.assert_close(grads[1][key], grads[0][key], atol=ATOL, rtol=0, msg=key)


def test_first_completion_token_is_scored_from_the_last_prompt_position():
    """Per-token values: y_k's first token equals its value in the unshared batch (read from the prompt's
    last hidden row, which all K completions share), and every value sits under its own token."""
    model = llama()
    rows = grouped_rows(2, 3, seed=11)
    plain = collate_preferences(rows, pad_token_id=0)
    shared = collate_preferences(rows, pad_token_id=0, share_prompt=True)
    expected = LogProbEngine(model)(plain, return_tokens=True)
    out = LogProbEngine(model)(shared, return_tokens=True)
    for s in range(6):
        want = expected.tokens[expected.token_sequence_ids == s][plain.completion_mask[plain.sequence_ids == s]]
        got = out.tokens[out.token_sequence_ids == s]
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    assert (out.tokens[shared.sequence_ids < 0] == 0).all()  # prompt tokens are never scored


def test_engine_share_prompt_false_unshares_the_batch():
    model = llama()
    rows = grouped_rows(3, 2, seed=12)
    shared = collate_preferences(rows, pad_token_id=0, packed=True, share_prompt=True)
    calls = []
    handle = model.model.register_forward_pre_hook(
        lambda m, a, kw: calls.append(kw["input_ids"].shape), with_kwargs=True
    )
    try:
        out = LogProbEngine(model, share_prompt=False)(shared, return_tokens=True)
    finally:
        handle.remove()
    unshared = unshare_prompts(shared)
    assert calls == [unshared.input_ids.shape] and not unshared.shared_prefix
    assert out.tokens.shape == unshared.input_ids.shape
    torch.testing.assert_close(out.sum, LogProbEngine(model)(shared).sum, atol=ATOL, rtol=0)
    assert uncollate(unshared) == uncollate(shared) == rows


def test_positions_continue_from_the_prompt():
    rows = [
        {"prompt_ids": [5, 6, 7], "completion_ids": [[8, 9], [10]]},
        {"prompt_ids": [4], "completion_ids": [[3], [2, 1]]},
    ]
    batch = collate_preferences(rows, pad_token_id=0, packed=True, share_prompt=True)
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9, 10, 4, 3, 2, 1]]
    assert batch.sequence_ids.tolist() == [[-1, -1, -1, 0, 0, 2, -1, 1, 3, 3]]
    assert batch.group_ids.tolist() == [[0] * 6 + [1] * 4]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 4, 3, 0, 1, 1, 2]]
    assert shared_positions(batch).tolist() == batch.position_ids.tolist()
    allowed = allowed_pairs(batch.group_ids, batch.sequence_ids, batch.position_ids)[0]
    assert allowed[5].nonzero().flatten().tolist() == [0, 1, 2, 5]  # y_0,1 sees the prompt and itself
    assert allowed[8].nonzero().flatten().tolist() == [6, 8]  # y_1,1's first token: its prompt, itself
    window = allowed_pairs(batch.group_ids, batch.sequence_ids, batch.position_ids, window=2)[0]
    assert window[5].nonzero().flatten().tolist() == [2, 5]  # position 3 sees positions 2 and 3


def test_models_that_cannot_take_the_mask_are_refused_by_name_or_unshared():
    """share_prompt=True refuses, naming why; "auto" (the default) runs such a model on the unshared batch."""
    rows = grouped_rows(2, 2, seed=13, prompt=(6, 8))
    batch = collate_preferences(rows, pad_token_id=0, share_prompt=True)
    flash = llama()
    expected = LogProbEngine(flash)(batch).sum
    flash.config._attn_implementation = "flash_attention_2"
    with pytest.raises(BatchError, match="attn_implementation='flash_attention_2'.*share_prompt=False"):
        LogProbEngine(flash, share_prompt=True)(batch)
    auto = LogProbEngine(flash)  # reads the attention now: it will unshare
    flash.config._attn_implementation = "sdpa"  # flash attention itself does not run on this CPU
    shapes = []
    flash.model.register_forward_pre_hook(lambda m, a, kw: shapes.append(kw["input_ids"].shape), with_kwargs=True)
    torch.testing.assert_close(auto(batch).sum, expected, atol=ATOL, rtol=0)
    assert shapes == [unshare_prompts(batch).input_ids.shape]
    with pytest.warns(UserWarning, match="logits path"):
        no_config = LogProbEngine(NoHeadLM(), share_prompt=True)
    with pytest.raises(BatchError, match="no transformers config"):
        no_config(batch)
    config = MistralConfig(**SMALL, num_key_value_heads=2, sliding_window=4)  # one mask for every layer
    mistral = tiny_model(config)
    assert PromptSharing.of(mistral).per_layer_type is False
    with pytest.raises(BatchError, match=r"of \d+ tokens exceeds MistralForCausalLM's sliding_window=4"):
        LogProbEngine(mistral, share_prompt=True)(batch)
    torch.testing.assert_close(  # "auto": unshared, so the model's own sliding-window mask applies
        LogProbEngine(mistral)(batch).sum, LogProbEngine(mistral)(unshare_prompts(batch)).sum, atol=ATOL, rtol=0
    )
    short = grouped_rows(2, 2, seed=13, prompt=(1, 2), completion=(1, 2))
    short = collate_preferences(short, pad_token_id=0, share_prompt=True)
    torch.testing.assert_close(  # within the window a full mask is exact
        LogProbEngine(mistral, share_prompt=True)(short).sum,
        LogProbEngine(mistral)(unshare_prompts(short)).sum,
        atol=ATOL,
        rtol=0,
    )


def test_bad_shared_batches_name_row_and_position():
    engine = LogProbEngine(gemma2())
    rows = grouped_rows(2, 2, seed=14)
    batch = collate_preferences(rows, pad_token_id=0, share_prompt=True)
    batch.completion_mask[1, 0] = True  # a prompt token
    with pytest.raises(BatchError, match="row 1, position 0: in a prefix-shared batch"):
        engine(batch)
    moved = collate_preferences(rows, pad_token_id=0, share_prompt=True)
    moved.position_ids[0, len(rows[0]["prompt_ids"])] = 0  # y_0's first token restarting at 0 (the unshared rule)
    with pytest.raises(BatchError, match="position_ids disagree with the prefix-shared layout"):
        engine(moved)
    with pytest.raises(BatchError, match="need group_ids"):
        type(batch)(
            batch.input_ids,
            batch.attention_mask,
            batch.completion_mask,
            batch.sequence_ids,
            4,
            2,
            shared_prefix=True,
            position_ids=batch.position_ids,
        )


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*flex_attention called without torch.compile")
def test_flex_attention_mask_is_the_same_rule():
    """The flex-attention form: its mask_mod equals `allowed_pairs` everywhere, and torch's (eager, forward-only
    on CPU) flex attention with the BlockMask equals sdpa with the additive mask."""
    batch = collate_preferences(grouped_rows(2, 3, seed=15), pad_token_id=0, share_prompt=True, pad_to_multiple_of=8)
    group, seq, pos = batch.group_ids, batch.sequence_ids, shared_positions(batch)
    r, t = group.shape
    b, q, k = torch.meshgrid(torch.arange(r), torch.arange(t), torch.arange(t), indexing="ij")
    for window in (None, 3):
        assert torch.equal(shared_mask_mod(group, seq, pos, window)(b, 0, q, k), allowed_pairs(group, seq, pos, window))
    g = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(r, 2, t, 8, generator=g) for _ in range(3))
    with torch.no_grad():
        flex = flex_attention(query, key, value, block_mask=flex_block_mask(group, seq, pos))
    dense = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=allowed_pairs(group, seq, pos).unsqueeze(1)
    )
    torch.testing.assert_close(flex, dense, atol=1e-5, rtol=0)


def test_bf16_shared_is_as_accurate_as_bf16_unshared():
    """Against the float32 model's values, a bfloat16 model's shared batch errs no more than its unshared one
    (plus a small slack): the additive mask's −∞ is bfloat16's most negative number."""
    rows = grouped_rows(3, 2, seed=16)
    plain = collate_preferences(rows, pad_token_id=0)
    truth = LogProbEngine(llama())(plain).sum
    engine16 = LogProbEngine(llama().to(torch.bfloat16))
    err_plain = (engine16(plain).sum - truth).abs().max()
    err_shared = (engine16(collate_preferences(rows, pad_token_id=0, share_prompt=True)).sum - truth).abs().max()
    assert err_shared <= err_plain + 1e-3, (err_shared, err_plain)  # errors here ≈ 1e-3 on sums ≈ −14
