"""A length-grouped sampler: batches of similar length, so right-padding wastes few tokens.

Each epoch the indices are shuffled, cut into mega-batches of `batch_size · mega_batch_mult`, each
mega-batch is sorted by length (longest first) and cut into batches, and the batches are shuffled.
The one short batch (if N is not a multiple of the batch size) comes last. Every index appears exactly
once per epoch; the order is a pure function of (seed, epoch), so all
processes of a distributed run agree and a resumed run replays the same order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

__all__ = ["LengthGroupedSampler"]


class LengthGroupedSampler(Sampler[int]):
    """Yields dataset indices so that consecutive runs of `batch_size` have similar `lengths`.

    Args:
        lengths: [N] a length per row, e.g. the `num_tokens` column of a tokenised dataset.
        batch_size: the DataLoader's batch size.
        mega_batch_mult: mega-batch size in batches; larger = tighter grouping, less randomness.
        seed: base seed; call `set_epoch(e)` each epoch for a new order.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, *, mega_batch_mult: int = 50, seed: int = 0) -> None:
        if batch_size < 1 or mega_batch_mult < 1:
            raise ValueError(
                f"LengthGroupedSampler: batch_size={batch_size} and mega_batch_mult={mega_batch_mult} must be ≥ 1"
            )
        if len(lengths) == 0:
            raise ValueError("LengthGroupedSampler: lengths is empty (the dataset has no rows)")
        self.lengths = [int(n) for n in lengths]
        self.batch_size = batch_size
        self.mega_batch_mult = mega_batch_mult
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order `__iter__` yields."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.lengths), generator=gen).tolist()
        mega = self.batch_size * self.mega_batch_mult
        batches: list[list[int]] = []
        for start in range(0, len(order), mega):
            chunk = sorted(order[start : start + mega], key=lambda i: -self.lengths[i])
            batches += [chunk[j : j + self.batch_size] for j in range(0, len(chunk), self.batch_size)]
        # Only the very last batch can be short; keep it last so DataLoader batches stay aligned with ours.
        tail = batches.pop() if len(batches[-1]) < self.batch_size else []
        for b in torch.randperm(len(batches), generator=gen).tolist():
            yield from batches[b]
        yield from tail
