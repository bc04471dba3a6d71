"""`collate_preferences(..., share_prompt=True)`: the prefix-shared layout, and back (`uncollate`)."""

from __future__ import annotations

import pytest
import torch

from prefopt.data.collate import PreferenceCollator, collate_preferences, uncollate, unshare_prompts
from prefopt.data.prompt_sharing import saved_fraction

PAIRS = [
    {"prompt_ids": [1, 2, 3], "completion_ids": [[4, 5], [6]], "example_index": 7, "margin": 0.5},
    {"prompt_ids": [8, 9], "completion_ids": [[10], [11, 12, 13]], "example_index": 3, "margin": 1.5},
]


def test_padded_shared_pairs_one_group_per_row():
    batch = collate_preferences(PAIRS, pad_token_id=0, share_prompt=True, pad_to_multiple_of=4)
    assert batch.shared_prefix and not batch.packed and batch.group_size == 2 and batch.num_sequences == 4
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 5, 6, 0, 0], [8, 9, 10, 11, 12, 13, 0, 0]]
    assert batch.sequence_ids.tolist() == [[-1, -1, -1, 0, 0, 2, -1, -1], [-1, -1, 1, 3, 3, 3, -1, -1]]
    assert batch.group_ids.tolist() == [[0] * 6 + [-1] * 2, [1] * 6 + [-1] * 2]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 4, 3, 0, 0], [0, 1, 2, 2, 3, 4, 0, 0]]
    assert batch.completion_mask.long().tolist() == [[0, 0, 0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1, 0, 0]]
    assert batch.attention_mask.tolist() == [[1] * 6 + [0] * 2] * 2
    assert batch.extras["example_index"].tolist() == [7, 3]
    assert batch.extras["prompt_lengths"].tolist() == [3, 2]


def test_the_same_completion_tokens_are_scored_in_every_layout():
    for packed in (False, True):
        plain = collate_preferences(PAIRS, pad_token_id=0, packed=packed)
        shared = collate_preferences(PAIRS, pad_token_id=0, packed=packed, share_prompt=True)
        for s in range(4):
            assert (
                plain.input_ids[plain.completion_mask & (plain.sequence_ids == s)].tolist()
                == shared.input_ids[shared.completion_mask & (shared.sequence_ids == s)].tolist()
            )
        assert shared.input_ids.ne(0).sum() == plain.input_ids.ne(0).sum() - 5  # each prompt once: 3 + 2 fewer


def test_ranked_rows_round_trip_and_unshare():
    rows = [
        {"prompt_ids": [5, 6], "completion_ids": [[1], [2, 3], [4]], "ranks": [0, 1, 2]},
        {"prompt_ids": [7], "completion_ids": [[8, 9], [10], [11, 12]], "ranks": [0, 0, 1]},
    ]
    shared = collate_preferences(rows, pad_token_id=0, packed=True, share_prompt=True)
    assert shared.input_ids.shape == (1, 2 + 4 + 1 + 5) and shared.group_size == 3
    assert uncollate(shared) == rows
    plain = unshare_prompts(shared)
    expected = collate_preferences(rows, pad_token_id=0, packed=True)
    for name in ("input_ids", "attention_mask", "completion_mask", "sequence_ids", "position_ids"):
        assert torch.equal(getattr(plain, name), getattr(expected, name)), name
    assert not plain.shared_prefix and plain.extras.keys() == shared.extras.keys()
    assert unshare_prompts(expected) is expected


def test_one_completion_per_row_has_nothing_to_share():
    rows = [{"prompt_ids": [1, 2], "completion_ids": [[3]], "label": True}]
    assert not collate_preferences(rows, pad_token_id=0, share_prompt=True).shared_prefix
    assert not PreferenceCollator(0, share_prompt=True)([{"prompt_ids": [1], "completion_ids": []}]).shared_prefix


def test_collator_passes_share_prompt():
    assert PreferenceCollator(0, packed=True, share_prompt=True)(PAIRS).shared_prefix


def test_saved_fraction():
    # DPO at prompt:completion 4:1, P = 4, C = 1 per completion: (2 − 1)·4 / (2·4 + 2) = 0.4
    assert saved_fraction(4, 2, 2) == pytest.approx(0.4)
    assert saved_fraction(1, 2, 2) == pytest.approx(0.25)  # 1:1 → a quarter
    assert saved_fraction(3, 3, 1) == 0.0 and saved_fraction(0, 0, 2) == 0.0
