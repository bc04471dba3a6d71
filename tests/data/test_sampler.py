"""LengthGroupedSampler: a permutation per epoch, reproducible, and far less padding than random batches."""

from __future__ import annotations

import random

import pytest

from prefopt.data import LengthGroupedSampler


def _padding_fraction(order: list[int], lengths: list[int], batch_size: int) -> float:
    """Padded tokens / total tokens when consecutive runs of `batch_size` are right-padded to their max."""
    padded = real = 0
    for start in range(0, len(order), batch_size):
        batch = [lengths[i] for i in order[start : start + batch_size]]
        padded += max(batch) * len(batch)
        real += sum(batch)
    return 1 - real / padded


def test_each_epoch_is_a_permutation_and_reproducible():
    lengths = [random.Random(0).randint(5, 300) for _ in range(203)]
    sampler = LengthGroupedSampler(lengths, batch_size=8, mega_batch_mult=4, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(203)) and len(sampler) == 203
    assert list(LengthGroupedSampler(lengths, batch_size=8, mega_batch_mult=4, seed=3)) == first
    sampler.set_epoch(1)
    assert list(sampler) != first and sorted(sampler) == list(range(203))


def test_groups_lengths_and_keeps_short_batch_last():
    rng = random.Random(1)
    lengths = [rng.randint(5, 500) for _ in range(1003)]
    order = list(LengthGroupedSampler(lengths, batch_size=8, mega_batch_mult=50))
    shuffled = list(range(len(lengths)))
    rng.shuffle(shuffled)
    grouped, baseline = _padding_fraction(order, lengths, 8), _padding_fraction(shuffled, lengths, 8)
    assert grouped < 0.1 < 0.3 < baseline  # measured ≈ 0.02 vs ≈ 0.45
    # 1003 = 125·8 + 3: the one short batch is last, so every aligned run of 8 is one of the sampler's batches
    # (each a slice of a length-sorted mega-batch, hence non-increasing in length).
    runs = [order[i : i + 8] for i in range(0, len(order), 8)]
    assert len(runs[-1]) == 3
    assert all([lengths[i] for i in run] == sorted((lengths[i] for i in run), reverse=True) for run in runs)


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch_size=0"):
        LengthGroupedSampler([1, 2], batch_size=0)
    with pytest.raises(ValueError, match="lengths is empty"):
        LengthGroupedSampler([], batch_size=2)
