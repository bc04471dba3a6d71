"""Torch's CPU thread count for a block of code, restored afterwards.

A leaf: it imports nothing of prefopt.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["torch_threads"]


@contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Run the block with `num_threads` torch threads (None: leave as is), restoring the count after.

    The synthetic models are tiny: one thread is about as fast as several, and on a busy machine extra
    OpenMP threads spin-wait (steps ≈15× slower measured on a loaded 2-core box).
    """
    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
