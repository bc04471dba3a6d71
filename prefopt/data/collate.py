"""Collation of tokenised rows into a `TokenBatch`, by right-padding or by padding-free packing.

A batch of B rows with K completions each (paired K = 2: chosen, rejected; ranked: K best first;
unpaired and prompt-only: 1) holds S = B·K sequences in group-major order: sequence k·B + b is
prompt_b + completion_{b,k}. So for paired data sequences 0..B−1 are chosen and B..2B−1 rejected, and
the engine scores every completion of the batch in one forward pass.

    padded:  R = S rows of length T = max sequence length (rounded up to `pad_to_multiple_of`)
    packed:  R = 1 row holding all S sequences back to back; `position_ids` restart at 0 per sequence and
             `sequence_ids` mark the segments (attention must not cross them: the engine passes the
             boundaries to the model's varlen / block-diagonal attention)

Both modes put the same completion tokens under `completion_mask` (tested). Per-group extras travel
in `TokenBatch.extras`: `labels` (bool [B], unpaired), `pair_ids` [B], `ranks` [B, K] (dense, 0 =
best; equal values are ties), `margin` [B], `weight` [B], `prompt_lengths` [B], and from tokenised
rows `example_index` [B] (position in the tokenised dataset: what `prefopt.engine`'s reference cache
looks rows up by) and `row_index` [B] (position in the loaded dataset, for tracing back to the file).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from prefopt.batch import TokenBatch

__all__ = ["collate_preferences", "collate_prompts", "PreferenceCollator"]


def _sequences(rows: Sequence[Mapping[str, Any]]) -> tuple[list[list[int]], list[int], int]:
    """Group-major token lists, the prompt length of each, and K (completions per row)."""
    if not rows:
        raise ValueError("collate: got an empty list of rows")
    ks = {len(r["completion_ids"]) for r in rows}
    if len(ks) > 1:
        raise ValueError(f"collate: rows have different numbers of completions {sorted(ks)}; a batch needs one K")
    k = ks.pop()
    seqs, prompt_lengths = [], []
    for j in range(max(k, 1)):
        for r in rows:
            completion = r["completion_ids"][j] if k else []
            seqs.append(list(r["prompt_ids"]) + list(completion))
            prompt_lengths.append(len(r["prompt_ids"]))
    return seqs, prompt_lengths, k


def _round_up(n: int, multiple: int | None) -> int:
    return n if not multiple else -(-n // multiple) * multiple


def _extras(rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    first = rows[0]
    out = {"prompt_lengths": torch.tensor([len(r["prompt_ids"]) for r in rows], dtype=torch.long)}
    for name in ("example_index", "row_index", "pair_id"):
        if name in first:
            key = "pair_ids" if name == "pair_id" else name
            out[key] = torch.tensor([r[name] for r in rows], dtype=torch.long)
    if "label" in first:
        out["labels"] = torch.tensor([bool(r["label"]) for r in rows], dtype=torch.bool)
    if "ranks" in first:
        out["ranks"] = torch.tensor([r["ranks"] for r in rows], dtype=torch.long)
    for name in ("margin", "weight"):
        if name in first:
            out[name] = torch.tensor([float(r[name]) for r in rows], dtype=torch.float32)
    return out


def collate_preferences(
    rows: Sequence[Mapping[str, Any]],
    *,
    pad_token_id: int,
    packed: bool = False,
    pad_to_multiple_of: int | None = None,
) -> TokenBatch:
    """Tokenised rows (`prompt_ids`, `completion_ids` [K][C], …) → a group-major `TokenBatch`.

    Args:
        rows: B rows of one tokenised dataset, all with the same K.
        pad_token_id: id written at padded positions (never attended, never scored).
        packed: one packed row instead of S padded rows.
        pad_to_multiple_of: round T up (helps tensor cores and compiled shapes).
    Returns:
        TokenBatch with S = B·max(K, 1) sequences and group_size = max(K, 1); shapes [R, T] as documented
        in `prefopt.batch`.
    """
    seqs, prompt_lengths, k = _sequences(rows)
    lengths = [len(s) for s in seqs]
    num_rows, width = (1, sum(lengths)) if packed else (len(seqs), max(lengths))
    width = _round_up(width, pad_to_multiple_of)
    input_ids = torch.full((num_rows, width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((num_rows, width), dtype=torch.long)
    completion_mask = torch.zeros((num_rows, width), dtype=torch.bool)
    sequence_ids = torch.full((num_rows, width), -1, dtype=torch.long)
    position_ids = torch.zeros((num_rows, width), dtype=torch.long)
    offset = 0
    for s, (seq, prompt_len) in enumerate(zip(seqs, prompt_lengths)):
        row, start = (0, offset) if packed else (s, 0)
        end = start + len(seq)
        input_ids[row, start:end] = torch.tensor(seq, dtype=torch.long)
        attention_mask[row, start:end] = 1
        completion_mask[row, start + prompt_len : end] = True
        sequence_ids[row, start:end] = s
        position_ids[row, start:end] = torch.arange(len(seq))
        offset = end
    return TokenBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        completion_mask=completion_mask,
        sequence_ids=sequence_ids,
        num_sequences=len(seqs),
        group_size=max(k, 1),
        packed=packed,
        position_ids=position_ids,
        extras=_extras(rows),
    )


def collate_prompts(
    rows: Sequence[Mapping[str, Any]], *, pad_token_id: int, padding_side: str = "left"
) -> dict[str, torch.Tensor]:
    """Prompt ids of B rows → `{"input_ids", "attention_mask"}` [B, P] for `model.generate`.

    Left padding (the default) makes every prompt end at the last column, where generation continues.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side={padding_side!r}: use 'left' (generation) or 'right'")
    if not rows:
        raise ValueError("collate_prompts: got an empty list of rows")
    width = max(len(r["prompt_ids"]) for r in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        n = len(r["prompt_ids"])
        cols = slice(width - n, width) if padding_side == "left" else slice(0, n)
        input_ids[b, cols] = torch.tensor(r["prompt_ids"], dtype=torch.long)
        attention_mask[b, cols] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


@dataclass(frozen=True)
class PreferenceCollator:
    """`collate_fn` for a DataLoader over a tokenised dataset: `DataLoader(ds, collate_fn=PreferenceCollator(pad))`."""

    pad_token_id: int
    packed: bool = False
    pad_to_multiple_of: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.pad_token_id, bool) or not isinstance(self.pad_token_id, int) or self.pad_token_id < 0:
            raise ValueError(
                f"PreferenceCollator.pad_token_id={self.pad_token_id!r}: must be a token id ≥ 0 "
                "(tokenizer.pad_token_id, or eos_token_id when the tokenizer has no pad token)"
            )
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of < 1:
            raise ValueError(f"PreferenceCollator.pad_to_multiple_of={self.pad_to_multiple_of}: must be ≥ 1 or None")

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> TokenBatch:
        """`collate_preferences(rows, ...)` with this collator's settings."""
        return collate_preferences(
            rows, pad_token_id=self.pad_token_id, packed=self.packed, pad_to_multiple_of=self.pad_to_multiple_of
        )
