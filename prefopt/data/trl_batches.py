"""TRL's DPO batches → a paired `TokenBatch`: chosen block, then rejected block (group_size 2).

`from_trl_batch(batch)` reads the three forms TRL's `DPOTrainer` has produced, told apart by their keys:

    TRL ≥ 1.0, DataCollatorForPreference     input_ids, attention_mask, completion_mask       [2B, T]
        (rows 0..B−1 prompt + chosen, rows B..2B−1 prompt + rejected, right-padded)
    TRL < 1.0, DataCollatorForPreference     prompt_input_ids, prompt_attention_mask          [B, P]
        (prompts left-padded, completions    chosen_input_ids, chosen_attention_mask          [B, C]
        right-padded)                        rejected_input_ids, rejected_attention_mask      [B, C']
    TRL < 1.0, DPOTrainer.concatenated_inputs prompt_input_ids, prompt_attention_mask         [2B, P]
                                             completion_input_ids, completion_attention_mask  [2B, C]

A sequence is its prompt tokens (mask 1) followed by its completion tokens (mask 1), wherever the padding
sits; the batch comes out right-padded, one sequence per row, exactly as `collate_preferences` lays out the
same token ids, so the engine's log-probs are TRL's: Σ over completion tokens of log π(y_t | tokens before
t). TRL's precomputed `ref_chosen_logps` / `ref_rejected_logps` [B], when present, travel in `extras`
under the same names; `extras["prompt_lengths"]` [B] holds each pair's prompt length, as the collator's.
Every mistake (a missing key, shapes that disagree, a mask that is not 0/1, an odd number of rows, pairs
whose prompts differ) raises `BatchError` naming the key and the fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from prefopt.batch import TokenBatch
from prefopt.errors import BatchError

__all__ = ["from_trl_batch"]

_SPLIT = ("prompt", "chosen", "rejected")
_VISION = ("pixel_values", "pixel_attention_mask", "image_sizes", "image_grid_thw")
_FORMS = (
    "TRL ≥ 1.0's DataCollatorForPreference output (input_ids, attention_mask, completion_mask), "
    "TRL < 1.0's (prompt_/chosen_/rejected_ input_ids and attention_mask), or "
    "concatenated_inputs' (prompt_/completion_ input_ids and attention_mask)"
)


def from_trl_batch(batch: Mapping[str, Any], *, check_prompts: bool = True) -> TokenBatch:
    """A paired `TokenBatch` (S = 2B sequences, chosen block then rejected block) from a TRL DPO batch.

    Args:
        batch: a collated TRL DPO batch in any of the forms of the module docstring (tensors or nested
            lists); keys it does not use (text columns, TRL's other fields) are ignored.
        check_prompts: require pair b's chosen and rejected sequences to share their prompt tokens, which
            catches rows in the wrong order (TRL puts every chosen row first, then every rejected row).
            Turn it off only for batches whose prompts were truncated differently on purpose.
    Returns:
        TokenBatch, right-padded, group_size 2; `extras`: `prompt_lengths` [B] (of the chosen rows) and, when
        the batch has them, `ref_chosen_logps` / `ref_rejected_logps` [B].
    Raises:
        BatchError: the key, shape or row that is wrong, and the fix.
    """
    if not isinstance(batch, Mapping):
        raise BatchError(f"from_trl_batch: expected a mapping of TRL's batch keys, got {type(batch).__name__}")
    vision = [key for key in _VISION if key in batch]
    if vision:
        raise BatchError(
            f"from_trl_batch: {vision[0]!r} is a vision input, which the engine does not score; "
            "prefopt's engine reads text-only causal LMs"
        )
    if any(f"{part}_input_ids" in batch for part in ("chosen", "rejected")):
        ids, attention, completion = _split_form(batch)
    elif "completion_input_ids" in batch:
        ids, attention, completion = _concatenated_form(batch)
    elif "input_ids" in batch:
        ids, attention, completion = _collated_form(batch)
    else:
        raise BatchError(f"from_trl_batch: no TRL batch keys in {sorted(map(str, batch))[:8]}; expected {_FORMS}")
    return _paired(batch, ids, attention, completion, check_prompts=check_prompts)


def _matrix(batch: Mapping[str, Any], key: str, *, mask: bool = False) -> Tensor:
    """`batch[key]` as a [rows, width] long tensor; a mask must hold only 0 and 1."""
    if key not in batch:
        raise BatchError(f"from_trl_batch: the batch has no {key!r}; pass the collator's whole output ({_FORMS})")
    try:
        value = torch.as_tensor(batch[key])
    except (TypeError, ValueError, RuntimeError) as err:
        raise BatchError(f"from_trl_batch: {key!r} is not a rectangular array of integers ({err})") from None
    if value.dim() != 2 or value.dtype.is_floating_point or value.is_complex():
        raise BatchError(
            f"from_trl_batch: {key!r} must be a 2-D integer tensor [rows, tokens], got {value.dtype} of shape "
            f"{tuple(value.shape)}"
        )
    if mask and bool(((value != 0) & (value != 1)).any()):
        raise BatchError(f"from_trl_batch: {key!r} holds values other than 0 and 1; a mask marks tokens with 1")
    return value.long()


def _pair(batch: Mapping[str, Any], part: str) -> tuple[Tensor, Tensor]:
    """`{part}_input_ids` and `{part}_attention_mask`, which must have one shape."""
    ids = _matrix(batch, f"{part}_input_ids")
    mask = _matrix(batch, f"{part}_attention_mask", mask=True)
    if ids.shape != mask.shape:
        raise BatchError(
            f"from_trl_batch: {part}_input_ids has shape {tuple(ids.shape)} but {part}_attention_mask "
            f"{tuple(mask.shape)}; they must match"
        )
    return ids, mask


def _split_form(batch: Mapping[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
    """TRL < 1.0's collator: B prompts (left-padded) and B chosen and B rejected completions."""
    (prompt, prompt_mask), *completions = (_pair(batch, part) for part in _SPLIT)
    for part, (ids, _) in zip(_SPLIT[1:], completions):
        if ids.shape[0] != prompt.shape[0]:
            raise BatchError(
                f"from_trl_batch: {part}_input_ids has {ids.shape[0]} rows but prompt_input_ids {prompt.shape[0]}; "
                "each prompt needs one chosen and one rejected completion"
            )
    width = max(ids.shape[1] for ids, _ in completions)
    pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]))  # noqa: E731
    ids = torch.cat([torch.cat([prompt, pad(c)], dim=1) for c, _ in completions])  # (2B, P + C)
    attention = torch.cat([torch.cat([prompt_mask, pad(m)], dim=1) for _, m in completions])
    completion = torch.cat([torch.cat([torch.zeros_like(prompt_mask), pad(m)], dim=1) for _, m in completions])
    return ids, attention, completion


def _concatenated_form(batch: Mapping[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
    """TRL < 1.0's `concatenated_inputs`: 2B prompts (each twice) and 2B completions, chosen rows first."""
    prompt, prompt_mask = _pair(batch, "prompt")
    answer, answer_mask = _pair(batch, "completion")
    if prompt.shape[0] != answer.shape[0]:
        raise BatchError(
            f"from_trl_batch: prompt_input_ids has {prompt.shape[0]} rows but completion_input_ids "
            f"{answer.shape[0]}; concatenated_inputs gives both 2·B rows (chosen rows, then rejected rows)"
        )
    completion = torch.cat([torch.zeros_like(prompt_mask), answer_mask], dim=1)
    return torch.cat([prompt, answer], dim=1), torch.cat([prompt_mask, answer_mask], dim=1), completion


def _collated_form(batch: Mapping[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
    """TRL ≥ 1.0's collator: 2B sequences with a completion mask, chosen rows first."""
    ids = _matrix(batch, "input_ids")
    masks = {key: _matrix(batch, key, mask=True) for key in ("attention_mask", "completion_mask")}
    for key, mask in masks.items():
        if mask.shape != ids.shape:
            raise BatchError(
                f"from_trl_batch: input_ids has shape {tuple(ids.shape)} but {key} {tuple(mask.shape)}; they must match"
            )
    return ids, masks["attention_mask"], masks["completion_mask"]


def _paired(
    batch: Mapping[str, Any], ids: Tensor, attention: Tensor, completion: Tensor, *, check_prompts: bool
) -> TokenBatch:
    """The TokenBatch of 2B sequences: each row's real tokens moved to its front, in order (right padding)."""
    rows = ids.shape[0]
    if rows == 0 or rows % 2:
        raise BatchError(
            f"from_trl_batch: the batch has {rows} sequences; a DPO batch holds B chosen rows then B rejected "
            "rows, an even number ≥ 2"
        )
    if bool((completion.bool() & ~attention.bool()).any()):
        row, pos = (int(v) for v in (completion.bool() & ~attention.bool()).nonzero()[0])
        raise BatchError(
            f"from_trl_batch: sequence {row}, position {pos} is marked as completion but its attention mask is 0; "
            "a completion token must be a real token"
        )
    order = torch.argsort((attention == 0).to(torch.int8), dim=1, stable=True)  # real tokens first, in order
    width = int(attention.sum(1).max())
    ids, attention, completion = (t.gather(1, order)[:, :width] for t in (ids, attention, completion))
    real = attention.bool()
    b = rows // 2
    prompt_tokens = real & ~completion.bool()
    if check_prompts:
        _check_prompts(torch.where(prompt_tokens, ids, torch.full_like(ids, -1)), b)
    sequence = torch.arange(rows)[:, None].expand_as(ids)
    return TokenBatch(
        input_ids=ids,
        attention_mask=attention,
        completion_mask=completion.bool(),
        sequence_ids=torch.where(real, sequence, torch.full_like(sequence, -1)),
        num_sequences=rows,
        group_size=2,
        position_ids=torch.where(real, real.long().cumsum(1) - 1, torch.zeros_like(ids)),
        extras={"prompt_lengths": prompt_tokens[:b].sum(1), **_reference_logps(batch, b)},
    )


def _check_prompts(prompts: Tensor, b: int) -> None:
    """Pair b's chosen row b and rejected row B + b must hold the same prompt tokens (−1 elsewhere)."""
    differ = (prompts[:b] != prompts[b:]).any(1)
    if bool(differ.any()):
        pair = int(differ.nonzero()[0, 0])
        raise BatchError(
            f"from_trl_batch: sequences {pair} and {b + pair} (pair {pair}'s chosen and rejected) have different "
            "prompts; TRL's batches hold all B chosen rows first, then the B rejected rows in the same order. "
            "Fix the row order, or pass check_prompts=False if the prompts were truncated differently on purpose"
        )


def _reference_logps(batch: Mapping[str, Any], b: int) -> dict[str, Tensor]:
    """TRL's precomputed reference log-probs (`precompute_ref_log_probs=True`), [B] each, when present."""
    out = {}
    for key in ("ref_chosen_logps", "ref_rejected_logps"):
        if key in batch:
            value = torch.as_tensor(batch[key], dtype=torch.float32)
            if value.shape != (b,):
                raise BatchError(
                    f"from_trl_batch: {key} has shape {tuple(value.shape)}, expected ({b},): one value per pair"
                )
            out[key] = value
    return out
