"""Collation of tokenised rows into a `TokenBatch`, by right-padding or by padding-free packing.

A batch of B rows with K completions each (paired K = 2: chosen, rejected; ranked: K best first;
unpaired and prompt-only: 1) holds S = B·K sequences in group-major order: sequence k·B + b is
prompt_b + completion_{b,k}. So for paired data sequences 0..B−1 are chosen and B..2B−1 rejected, and
the engine scores every completion of the batch in one forward pass.

    padded:  R = S rows of length T = max sequence length (rounded up to `pad_to_multiple_of`)
    packed:  R = 1 row holding all S sequences back to back; `position_ids` restart at 0 per sequence and
             `sequence_ids` mark the segments (attention must not cross them: the engine passes the
             boundaries to the model's varlen / block-diagonal attention)

    shared:  `share_prompt=True` and K ≥ 2: each group's prompt once, then its K completions
             (`prefopt.data.prompt_sharing`; padded: one group per row, packed: one row)

All modes put the same completion tokens under `completion_mask` (tested). Per-group extras travel
in `TokenBatch.extras`: `labels` (bool [B], unpaired), `pair_ids` [B], `ranks` [B, K] (dense, 0 =
best; equal values are ties), `margin` [B], `weight` [B], `prompt_lengths` [B], and from tokenised
rows `example_index` [B] (position in the tokenised dataset: what `prefopt.engine`'s reference cache
looks rows up by) and `row_index` [B] (position in the loaded dataset, for tracing back to the file).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from prefopt.batch import TokenBatch
from prefopt.data.prompt_sharing import collate_shared, shared_segments, sharing_pays

__all__ = ["collate_preferences", "collate_prompts", "uncollate", "unshare_prompts", "PreferenceCollator"]


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
    share_prompt: bool | Literal["auto"] = False,
) -> TokenBatch:
    """Tokenised rows (`prompt_ids`, `completion_ids` [K][C], …) → a group-major `TokenBatch`.

    Args:
        rows: B rows of one tokenised dataset, all with the same K.
        pad_token_id: id written at padded positions (never attended, never scored).
        packed: one packed row instead of S padded rows.
        pad_to_multiple_of: round T up (helps tensor cores and compiled shapes).
        share_prompt: with K ≥ 2, the prefix-shared layout (each prompt once, then its K completions;
            `prefopt.data.prompt_sharing`); rows with one completion or none are collated as without it.
            "auto": shared when that runs `MIN_SAVING` (a fifth) fewer positions (`sharing_pays`).
    Returns:
        TokenBatch with S = B·max(K, 1) sequences and group_size = max(K, 1); shapes [R, T] as documented
        in `prefopt.batch`.
    """
    seqs, prompt_lengths, k = _sequences(rows)
    groups = [(list(r["prompt_ids"]), [list(c) for c in r["completion_ids"]]) for r in rows] if share_prompt else []
    if k >= 2 and (share_prompt is True or (share_prompt == "auto" and sharing_pays(groups, packed=packed))):
        extras = _extras(rows)
        return collate_shared(
            groups, pad_token_id=pad_token_id, packed=packed, pad_to_multiple_of=pad_to_multiple_of, extras=extras
        )
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


# Per-group extras of a batch → the row field `_extras` made them from (prompt_lengths is recomputed).
_ROW_FIELDS = {
    "labels": "label",
    "pair_ids": "pair_id",
    "example_index": "example_index",
    "row_index": "row_index",
    "ranks": "ranks",
    "margin": "margin",
    "weight": "weight",
}


def uncollate(batch: TokenBatch) -> list[dict[str, Any]]:
    """The B tokenised rows of a `TokenBatch`, padded or packed: the inverse of `collate_preferences`.

    Row b holds `prompt_ids`, `completion_ids` [K][C] (the completions of sequences k·B + b) and the per-group
    extras under their row names (`label`, `pair_id`, `example_index`, `row_index`, `ranks`, `margin`,
    `weight`), so `collate_preferences(uncollate(batch), ...)` rebuilds the batch.

    Raises:
        ValueError: a sequence whose completion tokens are not one run at its end, or a group whose
            completions follow different prompts (such a batch did not come from rows).
    """
    prompts, completions = _shared_pieces(batch) if batch.shared_prefix else _pieces(batch)
    b, k = batch.num_groups, batch.group_size
    rows: list[dict[str, Any]] = []
    for g in range(b):
        if any(prompts[j * b + g] != prompts[g] for j in range(k)):
            raise ValueError(f"uncollate: the {k} completions of group {g} follow different prompts")
        rows.append({"prompt_ids": prompts[g], "completion_ids": [completions[j * b + g] for j in range(k)]})
    for name, field in _ROW_FIELDS.items():
        if name in batch.extras and batch.extras[name].shape[:1] == (b,):
            for row, value in zip(rows, batch.extras[name].cpu().tolist()):
                row[field] = value
    return rows


def unshare_prompts(batch: TokenBatch) -> TokenBatch:
    """A prefix-shared batch in the unshared layout (each sequence with its own copy of the prompt; padded or
    packed as the batch was), with the same sequences, order and extras; any other batch unchanged."""
    if not batch.shared_prefix:
        return batch
    rows = uncollate(batch)
    out = collate_preferences(rows, pad_token_id=0, packed=batch.packed)
    out.extras = dict(batch.extras)
    return out.to(batch.input_ids.device)


def _not_one_run(s: int) -> ValueError:
    return ValueError(
        f"uncollate: sequence {s} has completion tokens that are not one run at its end; only batches "
        "of (prompt, completion) rows can be taken apart"
    )


def _shared_pieces(batch: TokenBatch) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt, completion) token lists per sequence of a prefix-shared batch."""
    prompts, completions, marks = shared_segments(batch)
    for s, mask in enumerate(marks):
        if not all(mask):
            raise _not_one_run(s)
    return prompts, completions


def _pieces(batch: TokenBatch) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt, completion) token lists per sequence of a padded or packed batch."""
    seq = batch.sequence_ids.reshape(-1).cpu()
    real = (seq >= 0).nonzero().flatten()
    order = real[torch.argsort(seq[real], stable=True)]  # each sequence's tokens, in order (never split over rows)
    ids = batch.input_ids.reshape(-1).cpu()[order].tolist()
    scored = batch.completion_mask.reshape(-1).cpu()[order].tolist()
    lengths = torch.bincount(seq[real], minlength=batch.num_sequences).tolist()
    prompts, completions, start = [], [], 0
    for s, n in enumerate(lengths):
        tokens, mask = ids[start : start + n], scored[start : start + n]
        cut = mask.index(True) if True in mask else n
        if not all(mask[cut:]):
            raise _not_one_run(s)
        prompts.append(tokens[:cut])
        completions.append(tokens[cut:])
        start += n
    return prompts, completions


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
    share_prompt: bool | Literal["auto"] = False

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
            rows,
            pad_token_id=self.pad_token_id,
            packed=self.packed,
            pad_to_multiple_of=self.pad_to_multiple_of,
            share_prompt=self.share_prompt,
        )
