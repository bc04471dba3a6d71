"""From a `TokenBatch` to the keyword arguments of the model body, and the positions to score.

Padded batches (one sequence per row, right-padded) go in as HF expects them: a 2-D attention mask
and positions 0, 1, … per row. Packed batches (several sequences per row) need each sequence to see
only itself. Two equivalent ways, chosen by `packing`:

* `"position_ids"`: attention_mask=None and position_ids restarting at 0 per sequence. transformers 5
  detects the restarts (`masking_utils.find_packed_sequence_indices`) and builds the block-diagonal
  causal mask itself — keeping sliding windows right — or takes the varlen path of flash attention.
* `"mask"`: an explicit additive 4-D mask [R, 1, T, T], 0 where key k may be seen from query q
  (same sequence, k ≤ q), −∞ (finfo.min) elsewhere; used as-is by eager and sdpa attention. Full
  causal only: sliding windows of the model are not applied.

Scored positions: token t of row r is scored when `completion_mask[r, t]`; its log-prob comes from
the hidden state at t − 1, which must belong to the same sequence.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

from prefopt.batch import TokenBatch
from prefopt.engine.prompt_sharing import check_shared_batch
from prefopt.errors import BatchError

__all__ = [
    "Packing",
    "as_token_batch",
    "check_batch",
    "sequence_positions",
    "body_kwargs",
    "scored_positions",
    "default_packing",
]

Packing = Literal["auto", "position_ids", "mask"]


def as_token_batch(batch: TokenBatch | Mapping[str, Any]) -> TokenBatch:
    """The engine's input: a `TokenBatch`, or a mapping of its field names (read by `TokenBatch.from_dict`)."""
    if isinstance(batch, TokenBatch):
        return batch
    if isinstance(batch, Mapping):
        return TokenBatch.from_dict(batch)
    raise BatchError(
        f"LogProbEngine: expected a TokenBatch or a mapping of its fields, got {type(batch).__name__}; build one "
        "with prefopt.data.PreferenceCollator, or with prefopt.data.from_trl_batch from TRL's batches"
    )


def check_batch(batch: TokenBatch) -> None:
    """Raise ValueError, naming row and position, if a completion token cannot be scored.

    A completion token needs a previous token of its own sequence (so t ≥ 1 and
    sequence_ids[r, t−1] == sequence_ids[r, t]), and must not be padding. A prefix-shared batch is checked
    against its own layout (`prefopt.engine.prompt_sharing.check_shared_batch`).
    """
    if batch.shared_prefix:
        return check_shared_batch(batch)
    cm = batch.completion_mask.bool()
    seq = batch.sequence_ids
    if cm.shape[1] and bool(cm[:, 0].any()):
        row = int(cm[:, 0].nonzero()[0, 0])
        raise ValueError(
            f"TokenBatch row {row}: completion_mask is True at position 0, which has no previous token to "
            "predict it from; every sequence needs at least one prompt (or BOS) token"
        )
    bad = cm & ((batch.attention_mask == 0) | (seq < 0))
    bad[:, 1:] |= cm[:, 1:] & (seq[:, 1:] != seq[:, :-1])
    if bool(bad.any()):
        row, pos = (int(v) for v in bad.nonzero()[0])
        raise ValueError(
            f"TokenBatch row {row}, position {pos}: completion token is padding or the first token of its "
            "sequence (sequence_ids changes there); the prompt/completion boundary or the packing is wrong"
        )
    if seq.numel() and int(seq.max()) >= batch.num_sequences:
        raise ValueError(f"TokenBatch: sequence_ids reach {int(seq.max())} but num_sequences={batch.num_sequences}")


def sequence_positions(sequence_ids: Tensor) -> Tensor:
    """Positions restarting at 0 where `sequence_ids` changes along a row; 0 on padding (id < 0). [R, T] long."""
    r, t = sequence_ids.shape
    idx = torch.arange(t, device=sequence_ids.device).expand(r, t)
    start = torch.ones_like(sequence_ids, dtype=torch.bool)
    start[:, 1:] = sequence_ids[:, 1:] != sequence_ids[:, :-1]
    first = torch.where(start, idx, torch.zeros_like(idx)).cummax(dim=1).values  # start index of the segment
    return torch.where(sequence_ids >= 0, idx - first, torch.zeros_like(idx))


def default_packing(model: nn.Module) -> Literal["position_ids", "mask"]:
    """`"position_ids"` when the model's modeling module builds masks with transformers' `create_causal_mask`
    (which detects packed position_ids) or uses flash attention; `"mask"` otherwise."""
    config = getattr(model, "config", None)
    if "flash" in str(getattr(config, "_attn_implementation", "")):
        return "position_ids"
    module = sys.modules.get(type(model).__module__)
    return "position_ids" if hasattr(module, "create_causal_mask") else "mask"


def block_causal_mask(sequence_ids: Tensor, dtype: torch.dtype) -> Tensor:
    """Additive mask [R, 1, T, T]: 0 where q and k share a sequence and k ≤ q, finfo(dtype).min elsewhere.

    Padding queries (id < 0) attend to themselves only, so no softmax row is empty.
    """
    t = sequence_ids.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=sequence_ids.device).tril()
    same = sequence_ids[:, :, None] == sequence_ids[:, None, :]  # (R, T, T)
    allowed = same & causal & (sequence_ids[:, None, :] >= 0)
    allowed |= torch.eye(t, dtype=torch.bool, device=sequence_ids.device)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=sequence_ids.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min).unsqueeze(1)


def body_kwargs(batch: TokenBatch, packing: Literal["position_ids", "mask"], dtype: torch.dtype) -> dict[str, Any]:
    """Keyword arguments for the model (or its body) that reproduce per-sequence attention."""
    positions = sequence_positions(batch.sequence_ids)
    if batch.position_ids is not None:
        real = batch.sequence_ids >= 0
        if not torch.equal(batch.position_ids[real], positions[real]):
            raise ValueError(
                "TokenBatch.position_ids disagree with sequence_ids: positions must restart at 0 at the first "
                "token of every sequence and count up by one"
            )
    kwargs: dict[str, Any] = {"input_ids": batch.input_ids, "position_ids": positions, "use_cache": False}
    if not batch.packed:
        kwargs["attention_mask"] = batch.attention_mask
    elif packing == "mask":
        kwargs["attention_mask"] = block_causal_mask(batch.sequence_ids, dtype)
    else:
        kwargs["attention_mask"] = None
    return kwargs


def scored_positions(batch: TokenBatch) -> tuple[Tensor, Tensor, Tensor]:
    """Where to read hidden states, which labels, for which sequence.

    Returns:
        select: [R, T−1] bool, True at t − 1 for every completion token t (index into hidden[:, :−1]).
        labels: [N] long, input_ids of the completion tokens, N = select.sum().
        seq: [N] long, their sequence index.
    """
    select = batch.completion_mask[:, 1:].bool()
    return select, batch.input_ids[:, 1:][select], batch.sequence_ids[:, 1:][select]
