"""Training data: load with the loss's data kind, tokenise, and plan which examples each process sees.

The plan is a pure function of (seed, epoch, step), so every process computes the same global batch
without communicating, a resumed run replays the same order from its step counter alone, and the
split of a global batch over processes and accumulation steps never changes what the step computes:

    order_e     = LengthGroupedSampler(lengths, G, seed).set_epoch(e)     permutation of the N examples
    batch(s)    = order_e[i·G : (i+1)·G],  e = s // steps_per_epoch, i = s mod steps_per_epoch
    chunk c     = batch(s)[c·m : (c+1)·m],  c = p·A + a   for process p, accumulation step a
    G = batch_size (global), m = micro_batch_size, A = G / (m·P), steps_per_epoch = ⌊N / G⌋

The last N mod G examples of each epoch are dropped (they appear in other epochs' batches, since the
order changes per epoch), so every step normalises by exactly G examples.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from prefopt.batch import TokenBatch
from prefopt.data.collate import collate_preferences
from prefopt.data.formats import to_unpaired
from prefopt.data.loading import load_preferences, open_preferences
from prefopt.data.sampler import LengthGroupedSampler
from prefopt.errors import TrainDataError

if TYPE_CHECKING:
    import datasets

__all__ = ["TrainDataError", "BatchPlan", "load_train_rows", "kind_of_columns"]


def kind_of_columns(columns: list[str]) -> str | None:
    """The data kind that canonical columns hold: chosen → paired, completions → ranked, completion → unpaired."""
    if "chosen" in columns and "rejected" in columns:
        return "paired"
    if "completions" in columns:
        return "ranked"
    if "completion" in columns and "label" in columns:
        return "unpaired"
    return None


def load_train_rows(
    source: Any, *, kind: str, loss: str, split: str | None = None, revision: str | None = None, identical: str = "warn"
) -> datasets.Dataset:
    """Load and validate preference rows for a loss of data kind `kind`.

    Paired data given to an unpaired loss (KTO, BCO, …) is split into desirable/undesirable rows
    (`prefopt.data.to_unpaired`, the conversion KTO's paper uses for paired datasets); any other
    mismatch raises `TrainDataError` naming both kinds. Messages name the file (and its lines).

    Args:
        source: path / Hub name / `datasets.Dataset` / `DatasetDict` (see `prefopt.data.load_preferences`).
        kind: the loss's data kind; loss: its name (for messages); split: which split; revision: the Hub
            dataset's pinned revision; identical: pairs with chosen == rejected, "warn" | "drop" | "error".
    """
    opened = open_preferences(source, split=split, revision=revision, kind=kind)  # once, to read the columns first
    found = kind_of_columns(opened.dataset.column_names)
    if found == kind or found is None:  # None: let the validator report the missing columns
        return load_preferences(opened, kind=kind, identical=identical)
    if found == "paired" and kind == "unpaired":
        return to_unpaired(load_preferences(opened, kind="paired", identical=identical))
    raise TrainDataError(
        f"loss {loss!r} consumes {kind} data, but the training data holds {found} data ({opened.name}, columns "
        f"{opened.dataset.column_names}); use a {found} loss (`prefopt losses --kind {found}`) or {kind} data"
    )


@dataclass
class BatchPlan:
    """Which examples each optimiser step, process and accumulation step uses (module docstring).

    Attributes:
        tokens: the tokenised dataset (`prefopt.data.tokenize_preferences` output).
        batch_size: G, global examples per step; micro_batch_size: m per forward; num_processes: P.
        seed: data-order seed; pad_token_id, packed: collation settings; share_prompt: True, False or "auto"
            (`collate_preferences`), as resolved for the model (`prefopt.train.setup`).
    """

    tokens: datasets.Dataset
    batch_size: int
    micro_batch_size: int
    num_processes: int
    seed: int
    pad_token_id: int
    packed: bool = False
    share_prompt: bool | Literal["auto"] = False

    def __post_init__(self) -> None:
        per_step = self.micro_batch_size * self.num_processes
        if self.batch_size % per_step:
            raise TrainDataError(
                f"batch_size={self.batch_size} must be a multiple of micro_batch_size × processes = "
                f"{self.micro_batch_size} × {self.num_processes}; change one of them"
            )
        if len(self.tokens) < self.batch_size:
            raise TrainDataError(
                f"the training data has {len(self.tokens)} examples after tokenisation, fewer than one global batch "
                f"(batch_size={self.batch_size}); lower batch_size or add data"
            )
        column = "num_tokens" if self.packed else "longest_sequence"
        self._lengths = list(self.tokens[column])
        self._orders: dict[int, list[int]] = {}
        dropped = len(self.tokens) % self.batch_size
        if dropped:
            warnings.warn(
                f"{dropped} of {len(self.tokens)} examples left out of each epoch (not a multiple of "
                f"batch_size={self.batch_size}); the order changes per epoch",
                stacklevel=2,
            )

    @property
    def accumulation_steps(self) -> int:
        """A = G / (m·P)."""
        return self.batch_size // (self.micro_batch_size * self.num_processes)

    @property
    def steps_per_epoch(self) -> int:
        """⌊N / G⌋ optimiser steps per pass over the data."""
        return len(self.tokens) // self.batch_size

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            sampler = LengthGroupedSampler(self._lengths, self.batch_size, seed=self.seed)
            sampler.set_epoch(epoch)
            self._orders = {epoch: list(sampler)}  # keep one epoch in memory
        return self._orders[epoch]

    def global_indices(self, step: int) -> list[int]:
        """The G dataset indices of optimiser step `step` (0-based), the same on every process."""
        epoch, i = divmod(step, self.steps_per_epoch)
        return self._order(epoch)[i * self.batch_size : (i + 1) * self.batch_size]

    def local_chunks(self, step: int, process_index: int) -> list[list[int]]:
        """The A micro-batches (dataset indices) of `process_index` at `step`."""
        indices = self.global_indices(step)
        m, a = self.micro_batch_size, self.accumulation_steps
        first = process_index * a
        return [indices[(first + j) * m : (first + j + 1) * m] for j in range(a)]

    def rows(self, indices: list[int]) -> list[Mapping[str, Any]]:
        """Tokenised rows at `indices`, in that order."""
        block = self.tokens.select(indices)
        return [block[j] for j in range(len(indices))]

    def collate(self, rows: list[Mapping[str, Any]]) -> TokenBatch:
        """Rows → `TokenBatch` with this plan's padding/packing."""
        return collate_preferences(
            rows, pad_token_id=self.pad_token_id, packed=self.packed, share_prompt=self.share_prompt
        )

    def example_ids(self, indices: list[int]) -> list[Any]:
        """Human-readable ids of examples (the data's `id` column, else the loaded row index)."""
        column = "id" if "id" in self.tokens.column_names else "row_index"
        return [self.tokens[i][column] for i in indices]
