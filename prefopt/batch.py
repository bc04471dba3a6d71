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

Prefix-shared layout (`shared_prefix=True`, `collate_preferences(..., share_prompt=True)`): the K sequences
of a group share their prompt, which appears once, followed by the K completions, `[x_b | y_b,0 | y_b,1 |
…]`; a row holds one group (padded) or several (packed). The engine runs it with a block mask (each
completion sees its prompt and itself) and scores y_b,k's first token from the prompt's last position:

    sequence_ids     −1 on the shared prompt tokens (they belong to K sequences), s = k·B + b on y_b,k
    group_ids        [R, T] long   group b of every token (prompt and completions), −1 on padding
    position_ids     [R, T] long   0..P_b−1 on the prompt; P_b, P_b + 1, … on each completion (required)

S, group-major order and `SequenceLogProbs` mean the same as in the other layouts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor

from prefopt.errors import BatchError

__all__ = ["TokenBatch"]

_NEEDED = {
    "input_ids": "[R, T] token ids",
    "attention_mask": "[R, T], 1 at real tokens",
    "completion_mask": "[R, T], True at the completion tokens to score",
}
# Keys of TRL's DPO batches (every version) that are no TokenBatch field.
_TRL_KEYS = frozenset(
    f"{part}_{name}"
    for part in ("prompt", "chosen", "rejected", "completion")
    for name in ("input_ids", "attention_mask", "ids", "labels")
) | {"ref_chosen_logps", "ref_rejected_logps"}


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
    shared_prefix: bool = False
    group_ids: Tensor | None = None

    def __post_init__(self) -> None:
        shape = self.input_ids.shape
        for name in ("attention_mask", "completion_mask", "sequence_ids"):
            if getattr(self, name).shape != shape:
                raise BatchError(
                    f"TokenBatch.{name} has shape {tuple(getattr(self, name).shape)}, expected {tuple(shape)}"
                )
        if self.packed and self.position_ids is None:
            raise BatchError("TokenBatch: packed batches need position_ids (restarting at 0 per sequence)")
        if self.num_sequences % self.group_size:
            raise BatchError(
                f"TokenBatch: num_sequences={self.num_sequences} is not a multiple of group_size={self.group_size}"
            )
        if self.shared_prefix and (self.group_ids is None or self.position_ids is None):
            raise BatchError(
                "TokenBatch: shared_prefix batches need group_ids (the group of every token) and position_ids "
                "(each completion continuing from its prompt); build them with collate_preferences(share_prompt=True)"
            )
        if self.group_ids is not None and self.group_ids.shape != shape:
            raise BatchError(f"TokenBatch.group_ids has shape {tuple(self.group_ids.shape)}, expected {tuple(shape)}")

    @classmethod
    def from_rows(cls, input_ids: Tensor, attention_mask: Tensor, completion_mask: Tensor) -> "TokenBatch":
        """A padded batch of one sequence per row (group_size 1): row r is sequence r, padding is −1."""
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)[:, None].expand_as(input_ids)
        sequence_ids = torch.where(attention_mask.bool(), rows, torch.full_like(rows, -1))
        return cls(input_ids, attention_mask, completion_mask, sequence_ids, num_sequences=input_ids.shape[0])

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TokenBatch":
        """A batch from a mapping with TokenBatch's own field names (what `LogProbEngine` does with a dict).

        `input_ids`, `attention_mask` and `completion_mask` [R, T] (tensors or nested lists) are needed; the
        other fields are optional: without `sequence_ids` row r is sequence r (−1 where attention_mask is 0),
        as in `from_rows`; `num_sequences` defaults to max(sequence_ids) + 1, `group_size` to 1 and `packed`
        to False. TRL's DPO batches are not read here, whatever their version: TRL ≥ 1.0's has these three
        keys, but holds B chosen rows then B rejected ones, which `prefopt.data.from_trl_batch` pairs.

        Raises:
            BatchError: a missing or unknown key (a TRL key names `from_trl_batch`), or fields that disagree.
        """
        _check_keys(values, {f.name for f in fields(cls)})
        tensors = {
            key: torch.as_tensor(values[key])
            for key in (*_NEEDED, "sequence_ids", "position_ids", "group_ids")
            if key in values
        }
        tensors["completion_mask"] = tensors["completion_mask"].bool()
        if "sequence_ids" not in tensors:
            if values.get("packed", False):
                raise BatchError(
                    "TokenBatch.from_dict: a packed batch needs 'sequence_ids' (which sequence each token is)"
                )
            ids = tensors["input_ids"]
            rows = torch.arange(ids.shape[0], device=ids.device)[:, None].expand_as(ids)
            tensors["sequence_ids"] = torch.where(tensors["attention_mask"].bool(), rows, torch.full_like(rows, -1))
        default_count = int(tensors["sequence_ids"].max()) + 1 if tensors["sequence_ids"].numel() else 0
        return cls(
            **tensors,
            num_sequences=int(values.get("num_sequences", default_count)),
            group_size=int(values.get("group_size", 1)),
            packed=bool(values.get("packed", False)),
            extras={k: torch.as_tensor(v) for k, v in dict(values.get("extras") or {}).items()},
            shared_prefix=bool(values.get("shared_prefix", False)),
        )

    @property
    def num_groups(self) -> int:
        """B: pairs for paired data, prompts for ranked data, rows for unpaired data."""
        return self.num_sequences // self.group_size

    @property
    def sequence_tokens(self) -> Tensor:
        """[] long: Σ over the S sequences of their tokens (prompt + completion), whatever the layout: a shared
        prompt counts once for each of the K sequences that read it, padding not at all."""
        real = self.attention_mask.bool()
        tokens = real.sum()
        if self.shared_prefix:
            tokens = tokens + (self.group_size - 1) * (real & (self.sequence_ids < 0)).sum()
        return tokens

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
            group_ids=move(self.group_ids),
        )


def _check_keys(values: Any, known: set[str]) -> None:
    """`TokenBatch.from_dict`'s key check: a mapping, no TRL or unknown key, the three needed ones present."""
    if not isinstance(values, Mapping):
        raise BatchError(f"TokenBatch.from_dict: expected a mapping of field names, got {type(values).__name__}")
    for key in values:
        if key in _TRL_KEYS:
            raise BatchError(
                f"TokenBatch.from_dict: {key!r} is a key of TRL's DPO batches, not a TokenBatch field; "
                "convert the batch with prefopt.data.from_trl_batch(batch)"
            )
        if key not in known:
            raise BatchError(
                f"TokenBatch.from_dict: unknown key {key!r}; TokenBatch's fields are {', '.join(sorted(known))} "
                "(per-group values go under 'extras')"
            )
    for key, meaning in _NEEDED.items():
        if key not in values:
            raise BatchError(
                f"TokenBatch.from_dict: missing {key!r} ({meaning}); build batches with "
                "prefopt.data.PreferenceCollator, or from TRL's with prefopt.data.from_trl_batch"
            )
