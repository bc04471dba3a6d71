"""Collation into TokenBatch: group-major order, exact masks, padding vs packing, extras, and properties."""

from __future__ import annotations

import datasets
import pytest
import torch
from torch.utils.data import DataLoader

from prefopt.data import (
    PreferenceCollator,
    TokenizeConfig,
    collate_preferences,
    collate_prompts,
    load_preferences,
    to_unpaired,
    tokenize_preferences,
)

from .conftest import FIXTURES

PAD = 0


def _row(prompt: list[int], *completions: list[int], **extra) -> dict:
    return {"prompt_ids": prompt, "completion_ids": list(completions), **extra}


def completion_tokens(batch) -> list[list[int]]:
    """Per sequence s, the scored token ids, in order (works for padded and packed batches)."""
    out = []
    for s in range(batch.num_sequences):
        where = (batch.sequence_ids == s) & batch.completion_mask
        out.append(batch.input_ids[where].tolist())
    return out


def test_padded_paired_is_group_major_with_exact_masks():
    rows = [_row([1, 5], [6, 7, 2], [8, 2], margin=1.0), _row([1, 9, 9, 9], [3, 2], [4, 4, 4, 2], margin=0.5)]
    batch = collate_preferences(rows, pad_token_id=PAD)
    assert batch.input_ids.shape == (4, 8) and batch.group_size == 2 and batch.num_groups == 2
    assert batch.input_ids[0].tolist() == [1, 5, 6, 7, 2, PAD, PAD, PAD]  # chosen of pair 0
    assert batch.input_ids[1].tolist() == [1, 9, 9, 9, 3, 2, PAD, PAD]  # chosen of pair 1
    assert batch.input_ids[2].tolist() == [1, 5, 8, 2, PAD, PAD, PAD, PAD]  # rejected of pair 0
    assert batch.completion_mask[0].tolist() == [False, False, True, True, True, False, False, False]
    assert batch.sequence_ids[3].tolist() == [3] * 8
    assert batch.sequence_ids[2].tolist() == [2, 2, 2, 2, -1, -1, -1, -1]
    assert batch.attention_mask[2].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert batch.position_ids[1].tolist()[:6] == [0, 1, 2, 3, 4, 5]
    assert batch.extras["margin"].tolist() == [1.0, 0.5] and batch.extras["prompt_lengths"].tolist() == [2, 4]
    assert completion_tokens(batch) == [[6, 7, 2], [3, 2], [8, 2], [4, 4, 4, 2]]


def test_packed_restarts_positions_and_marks_segments():
    rows = [_row([1, 5], [6, 7, 2], [8, 2]), _row([1, 9], [3, 2], [4, 2])]
    batch = collate_preferences(rows, pad_token_id=PAD, packed=True)
    assert batch.packed and batch.input_ids.shape == (1, 17)  # 5 + 4 + 4 + 4 tokens, no padding
    assert batch.input_ids[0].tolist() == [1, 5, 6, 7, 2, 1, 9, 3, 2, 1, 5, 8, 2, 1, 9, 4, 2]
    assert batch.position_ids[0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3]
    assert batch.sequence_ids[0].tolist() == [0] * 5 + [1] * 4 + [2] * 4 + [3] * 4
    assert batch.attention_mask[0].tolist() == [1] * 17
    padded = collate_preferences(rows, pad_token_id=PAD)
    assert completion_tokens(batch) == completion_tokens(padded)


def test_pad_to_multiple_leaves_padding_unscored():
    batch = collate_preferences([_row([1, 5], [6, 2])], pad_token_id=PAD, packed=True, pad_to_multiple_of=8)
    assert batch.input_ids.shape == (1, 8)
    assert batch.sequence_ids[0, 4:].tolist() == [-1] * 4 and not batch.completion_mask[0, 4:].any()
    assert batch.attention_mask[0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]


def test_ranked_unpaired_and_prompt_only_layouts():
    ranked = collate_preferences(
        [_row([1], [2], [3], [4], ranks=[0, 1, 1]), _row([1], [5], [6], [7], ranks=[0, 1, 2])], pad_token_id=PAD
    )
    assert ranked.group_size == 3 and ranked.num_sequences == 6
    assert ranked.input_ids[:, 1].tolist() == [2, 5, 3, 6, 4, 7]  # K blocks of B, best first
    assert ranked.extras["ranks"].tolist() == [[0, 1, 1], [0, 1, 2]]
    unpaired = collate_preferences(
        [_row([1], [2], label=True, pair_id=0), _row([1], [3], label=False, pair_id=0)], pad_token_id=PAD
    )
    assert unpaired.group_size == 1 and unpaired.extras["labels"].tolist() == [True, False]
    assert unpaired.extras["pair_ids"].tolist() == [0, 0]
    prompts = collate_preferences([_row([1, 2]), _row([1])], pad_token_id=PAD)
    assert prompts.num_sequences == 2 and not prompts.completion_mask.any()


def test_collate_errors():
    with pytest.raises(ValueError, match=r"different numbers of completions \[1, 2\]"):
        collate_preferences([_row([1], [2]), _row([1], [2], [3])], pad_token_id=PAD)
    with pytest.raises(ValueError, match="empty list"):
        collate_preferences([], pad_token_id=PAD)
    with pytest.raises(ValueError, match="pad_token_id=None"):
        PreferenceCollator(None)  # type: ignore[arg-type]


def test_collate_prompts_left_pads_for_generation():
    out = collate_prompts([_row([1, 2, 3]), _row([4])], pad_token_id=PAD)
    assert out["input_ids"].tolist() == [[1, 2, 3], [PAD, PAD, 4]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    right = collate_prompts([_row([1, 2, 3]), _row([4])], pad_token_id=PAD, padding_side="right")
    assert right["input_ids"].tolist()[1] == [4, PAD, PAD]


def test_dataloader_end_to_end_unpaired_from_paired(chat_tokenizer, cache_dir):
    rows = to_unpaired(load_preferences(FIXTURES / "paired_margin_weight.jsonl", kind="paired", cache_dir=cache_dir))
    tokens = tokenize_preferences(rows, chat_tokenizer, TokenizeConfig(max_length=32))
    loader = DataLoader(tokens, batch_size=4, collate_fn=PreferenceCollator(chat_tokenizer.pad_token_id))
    batches = list(loader)
    assert [b.num_sequences for b in batches] == [4, 2]
    first = batches[0]
    assert first.extras["pair_ids"].tolist() == [0, 0, 1, 1] and first.extras["weight"].tolist() == [1.0, 1.0, 0.5, 0.5]
    assert batches[1].extras["example_index"].tolist() == [4, 5] == batches[1].extras["row_index"].tolist()
    decoded = [chat_tokenizer.decode(t) for t in completion_tokens(first)]
    assert decoded == [" Seven.<eos>", " Banana.<eos>", " Hi there!<eos>", " No.<eos>"]


def test_tokenised_ranked_dataset_collates_best_first(byte_tokenizer, cache_dir):
    ds = load_preferences(FIXTURES / "ranked_scores.jsonl", kind="ranked", ties="keep", cache_dir=cache_dir)
    batch = PreferenceCollator(PAD)(list(tokenize_preferences(ds, byte_tokenizer)))
    texts = [byte_tokenizer.decode(t[:-1]) for t in completion_tokens(batch)]
    assert texts[0::2] == [" Mass attracts mass.", " Things fall.", " Apples.", " Magic."]
    assert batch.extras["ranks"].tolist() == [[0, 1, 2, 3], [0, 0, 1, 2]]


def test_in_memory_and_file_sources_give_same_batches(byte_tokenizer, cache_dir):
    from_file = load_preferences(FIXTURES / "paired_strings.jsonl", kind="paired", cache_dir=cache_dir)
    in_memory = load_preferences(datasets.Dataset.from_list(from_file.to_list()), kind="paired")
    a = PreferenceCollator(PAD)(list(tokenize_preferences(from_file, byte_tokenizer)))
    b = PreferenceCollator(PAD)(list(tokenize_preferences(in_memory, byte_tokenizer)))
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.completion_mask, b.completion_mask)
