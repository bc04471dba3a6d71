"""`from_trl_batch` on TRL's three batch forms, `TokenBatch.from_dict`, the engine on a mapping, and their errors.

The batches are TRL's own docstring examples (DataCollatorForPreference of TRL 0.19 and of TRL 1.16), so the
expected layouts are written out by hand: two pairs, prompts [1, 2, 3] and [7, 8].
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from prefopt.batch import TokenBatch
from prefopt.data import from_trl_batch
from prefopt.engine import LogProbEngine
from prefopt.errors import BatchError

T = torch.tensor

# TRL < 1.0 (0.19's docstring): prompts left-padded, completions right-padded.
SPLIT = {
    "prompt_input_ids": T([[1, 2, 3], [0, 7, 8]]),
    "prompt_attention_mask": T([[1, 1, 1], [0, 1, 1]]),
    "chosen_input_ids": T([[4, 5], [9, 10]]),
    "chosen_attention_mask": T([[1, 1], [1, 1]]),
    "rejected_input_ids": T([[6, 0, 0], [11, 12, 13]]),
    "rejected_attention_mask": T([[1, 0, 0], [1, 1, 1]]),
}
# The same pairs as TRL < 1.0's `concatenated_inputs` gives them: 2B rows, chosen rows first.
CONCATENATED = {
    "prompt_input_ids": T([[1, 2, 3], [0, 7, 8]] * 2),
    "prompt_attention_mask": T([[1, 1, 1], [0, 1, 1]] * 2),
    "completion_input_ids": T([[4, 5, 0], [9, 10, 0], [6, 0, 0], [11, 12, 13]]),
    "completion_attention_mask": T([[1, 1, 0], [1, 1, 0], [1, 0, 0], [1, 1, 1]]),
}
# TRL ≥ 1.0 (1.16's docstring, rejected of pair 1 = [10, 11]): one right-padded row per sequence.
COLLATED = {
    "input_ids": T([[1, 2, 3, 4, 5], [7, 8, 9, 0, 0], [1, 2, 3, 6, 0], [7, 8, 10, 11, 0]]),
    "attention_mask": T([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 0]]),
    "completion_mask": T([[0, 0, 0, 1, 1], [0, 0, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 1, 1, 0]]),
}


def _expect(batch: TokenBatch, ids: list[list[int]], prompts: list[int], completions: list[int]) -> None:
    """Rows right-padded with 0: row s is prompt s (length `prompts[s % B]`) + completion (length `completions[s]`)."""
    lengths = [prompts[s % len(prompts)] + c for s, c in enumerate(completions)]
    width = max(lengths)
    assert batch.input_ids.tolist() == [row + [0] * (width - len(row)) for row in ids]
    assert batch.attention_mask.tolist() == [[1] * n + [0] * (width - n) for n in lengths]
    expected_completion = [
        [prompts[s % len(prompts)] <= t < lengths[s] for t in range(width)] for s in range(len(completions))
    ]
    assert batch.completion_mask.tolist() == expected_completion
    assert batch.sequence_ids.tolist() == [[s] * n + [-1] * (width - n) for s, n in enumerate(lengths)]
    assert batch.position_ids.tolist() == [list(range(n)) + [0] * (width - n) for n in lengths]
    assert (batch.num_sequences, batch.group_size, batch.packed) == (len(completions), 2, False)
    assert batch.extras["prompt_lengths"].tolist() == prompts


def test_trl_before_1_0_collator_batch():
    batch = from_trl_batch(SPLIT)
    _expect(batch, [[1, 2, 3, 4, 5], [7, 8, 9, 10], [1, 2, 3, 6], [7, 8, 11, 12, 13]], [3, 2], [2, 2, 1, 3])


def test_concatenated_inputs_give_the_same_batch():
    a, b = from_trl_batch(SPLIT), from_trl_batch(CONCATENATED)
    for name in ("input_ids", "attention_mask", "completion_mask", "sequence_ids", "position_ids"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_trl_1_x_collator_batch_and_reference_logps():
    refs = {"ref_chosen_logps": T([-1.5, -2.0]), "ref_rejected_logps": [-3.0, -4.25]}
    batch = from_trl_batch({**COLLATED, **refs, "prompt": ["a", "b"]})  # text columns are ignored
    _expect(batch, [[1, 2, 3, 4, 5], [7, 8, 9], [1, 2, 3, 6], [7, 8, 10, 11]], [3, 2], [2, 1, 1, 2])
    assert batch.extras["ref_chosen_logps"].tolist() == [-1.5, -2.0]
    assert batch.extras["ref_rejected_logps"].tolist() == [-3.0, -4.25]


def test_padding_anywhere_is_removed_and_lists_are_accepted():
    """Left-padded rows as nested lists: the real tokens move to the front, in order."""
    left = {
        "input_ids": [[0, 0, 1, 2, 3, 4, 5], [0, 0, 0, 0, 7, 8, 9], [0, 0, 0, 1, 2, 3, 6], [0, 0, 0, 7, 8, 10, 11]],
        "attention_mask": [[0, 0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1, 1]],
        "completion_mask": [[0, 0, 0, 0, 0, 1, 1], [0] * 6 + [1], [0] * 6 + [1], [0] * 5 + [1, 1]],
    }
    a, b = from_trl_batch(left), from_trl_batch(COLLATED)
    for name in ("input_ids", "attention_mask", "completion_mask", "sequence_ids", "position_ids"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def _model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=16,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
    )
    return LlamaForCausalLM(config).eval()


def test_every_form_scores_the_same_and_the_engine_reads_a_dict():
    engine = LogProbEngine(_model())
    with torch.no_grad():
        paired = engine(from_trl_batch(SPLIT))
        again = engine(from_trl_batch(CONCATENATED))
        plain = engine(
            {k: getattr(from_trl_batch(SPLIT), k) for k in ("input_ids", "attention_mask", "completion_mask")}
        )
    torch.testing.assert_close(again.sum, paired.sum, rtol=0, atol=0)
    torch.testing.assert_close(plain.sum, paired.sum, rtol=1e-6, atol=1e-6)  # same rows, read one per sequence
    assert paired.count.tolist() == [2, 2, 1, 3] and plain.group_size == 1
    assert paired.chosen().shape == (2,)


def test_from_dict_reads_prefopt_field_names():
    batch = TokenBatch.from_dict(
        {
            "input_ids": [[5, 6, 7, 0], [5, 8, 9, 10]],
            "attention_mask": [[1, 1, 1, 0], [1, 1, 1, 1]],
            "completion_mask": [[0, 1, 1, 0], [0, 0, 1, 1]],
            "group_size": 2,
            "extras": {"margin": [0.5]},
        }
    )
    assert batch.sequence_ids.tolist() == [[0, 0, 0, -1], [1, 1, 1, 1]]
    assert batch.completion_mask.dtype == torch.bool
    assert (batch.num_sequences, batch.group_size, batch.num_groups) == (2, 2, 1)
    assert batch.extras["margin"].tolist() == [0.5]


@pytest.mark.parametrize(
    "values, message",
    [
        ({"input_ids": [[1, 2]], "attention_mask": [[1, 1]]}, "missing 'completion_mask'"),
        ({**COLLATED, "labels": COLLATED["input_ids"]}, "unknown key 'labels'"),
        (SPLIT, "'prompt_input_ids' is a key of TRL's DPO batches, not a TokenBatch field; convert the batch with "),
        ([[1, 2]], "expected a mapping of field names, got list"),
        ({**COLLATED, "packed": True}, "a packed batch needs 'sequence_ids'"),
    ],
)
def test_from_dict_mistakes_name_the_key_and_the_fix(values, message):
    with pytest.raises(BatchError, match="TokenBatch.from_dict: ") as err:
        TokenBatch.from_dict(values)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_engine_on_a_dict_without_completion_mask_names_the_key():
    """What the issue saw: `engine(dict)` raised AttributeError: 'dict' object has no attribute 'completion_mask'."""
    engine = LogProbEngine(_model())
    with pytest.raises(BatchError, match=r"missing 'completion_mask' .* prefopt\.data\.from_trl_batch"):
        engine({"input_ids": T([[1, 2, 3]]), "attention_mask": T([[1, 1, 1]])})
    with pytest.raises(BatchError, match="expected a TokenBatch or a mapping of its fields, got tuple"):
        engine((T([[1, 2]]),))


def _without(batch: dict, key: str) -> dict:
    return {k: v for k, v in batch.items() if k != key}


@pytest.mark.parametrize(
    "batch, message",
    [
        (_without(SPLIT, "rejected_attention_mask"), "the batch has no 'rejected_attention_mask'; pass the collator's"),
        (
            {**SPLIT, "chosen_attention_mask": T([[1, 1, 1], [1, 1, 1]])},
            "chosen_input_ids has shape (2, 2) but chosen_",
        ),
        (
            {**SPLIT, "rejected_input_ids": T([[6]]), "rejected_attention_mask": T([[1]])},
            "rejected_input_ids has 1 rows",
        ),
        (
            {**CONCATENATED, "completion_input_ids": T([[4]] * 3), "completion_attention_mask": T([[1]] * 3)},
            "has 4 rows",
        ),
        ({k: v[:3] for k, v in COLLATED.items()}, "the batch has 3 sequences; a DPO batch holds B chosen rows then B"),
        ({**COLLATED, "attention_mask": COLLATED["attention_mask"] * 2}, "'attention_mask' holds values other than 0"),
        ({**COLLATED, "completion_mask": T([[0, 0, 0, 1, 1]] * 4)}, "sequence 1, position 3 is marked as completion"),
        ({**COLLATED, "input_ids": COLLATED["input_ids"].float()}, "'input_ids' must be a 2-D integer tensor"),
        ({**COLLATED, "attention_mask": COLLATED["attention_mask"][:, :4]}, "but attention_mask (4, 4); they must"),
        ({**COLLATED, "ref_chosen_logps": T([1.0])}, "ref_chosen_logps has shape (1,), expected (2,)"),
        ({**COLLATED, "pixel_values": T([0.0])}, "'pixel_values' is a vision input"),
        ({"tokens": [[1]]}, "no TRL batch keys in ['tokens']"),
        ({"input_ids": [[1, 2], [3]], "attention_mask": [[1]], "completion_mask": [[1]]}, "not a rectangular array"),
    ],
)
def test_adapter_mistakes_name_the_key_and_the_fix(batch, message):
    with pytest.raises(BatchError, match="from_trl_batch: ") as err:
        from_trl_batch(batch)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_pairs_in_the_wrong_order_are_caught():
    """Interleaved rows (chosen 0, rejected 0, chosen 1, rejected 1) put different prompts in one pair."""
    interleaved = {k: v[[0, 2, 1, 3]] for k, v in COLLATED.items()}
    with pytest.raises(BatchError, match=r"sequences 0 and 2 \(pair 0's chosen and rejected\) have different prompts"):
        from_trl_batch(interleaved)
    assert from_trl_batch(interleaved, check_prompts=False).num_sequences == 4
