"""`TokenBatch`: the one tensor layout the engine consumes, whatever the data kind or loss.

A batch holds S sequences (prompt + completion each), laid out either padded — one sequence per row,
right-padded — or packed — several sequences concatenated in a row with `position_ids` restarting at
0 for each. Sequences are ordered group-major: for paired data with B pairs, sequences 0..B−1 are the
chosen completions and B..2B−1 the rejected ones (group_size = 2); ranked data with K completions uses
K blocks of B, best first; unpaired and prompt-only data use group_size = 1.

    input_ids        [R, T] long   token ids (pad where attention_mask is 0)
    attention_mask   [R, T] long   1 for real tokens
    completion_mask  [R, T] bool   True where the token at t is a completion token to score: its
                                   log-prob is log π(input_ids[t] | tokens < t of the same sequence)
    sequence_ids     [R, T] long   index s ∈ [0, S) of the sequence each token belongs to, −1 on padding
    position_ids     [R, T] long   positions restarting at 0 per sequence (required when packed)
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

__all__ = ["TokenBatch"]


@dataclass
class TokenBatch:
    input_ids: Tensor
    attention_mask: Tensor
    completion_mask: Tensor
    sequence_ids: Tensor
    num_sequences: int
    group_size: int = 1
    packed: bool = False
    position_ids: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        shape = self.input_ids.shape
        for name in ("attention_mask", "completion_mask", "sequence_ids"):
            if getattr(self, name).shape != shape:
                raise ValueError(
                    f"TokenBatch.{name} has shape {tuple(getattr(self, name).shape)}, expected {tuple(shape)}"
                )
        if self.packed and self.position_ids is None:
            raise ValueError("TokenBatch: packed batches need position_ids (restarting at 0 per sequence)")
        if self.num_sequences % self.group_size:
            raise ValueError(
                f"TokenBatch: num_sequences={self.num_sequences} is not a multiple of group_size={self.group_size}"
            )

    @classmethod
    def from_rows(cls, input_ids: Tensor, attention_mask: Tensor, completion_mask: Tensor) -> "TokenBatch":
        """A padded batch of one sequence per row (group_size 1): row r is sequence r, padding is −1."""
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)[:, None].expand_as(input_ids)
        sequence_ids = torch.where(attention_mask.bool(), rows, torch.full_like(rows, -1))
        return cls(input_ids, attention_mask, completion_mask, sequence_ids, num_sequences=input_ids.shape[0])

    @property
    def num_groups(self) -> int:
        """B: pairs for paired data, prompts for ranked data, rows for unpaired data."""
        return self.num_sequences // self.group_size

    def to(self, device: torch.device | str) -> "TokenBatch":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return replace(
            self,
            input_ids=move(self.input_ids),
            attention_mask=move(self.attention_mask),
            completion_mask=move(self.completion_mask),
            sequence_ids=move(self.sequence_ids),
            position_ids=move(self.position_ids),
            extras={k: move(v) for k, v in self.extras.items()},
        )
