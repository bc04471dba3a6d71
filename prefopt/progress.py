"""Progress bars of the libraries prefopt drives (transformers' weight loading and saving, datasets' `map`).

A prefopt command shows its own bars; with `progress=False` (or `--quiet`) the libraries' bars should
stay quiet too, and be restored afterwards for the rest of the user's program:

    with library_progress_bars(config.progress):
        ...
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["library_progress_bars"]


@contextlib.contextmanager
def library_progress_bars(enabled: bool) -> Iterator[None]:
    """Run the block with transformers' and datasets' progress bars off unless `enabled`; restore them after."""
    from datasets.utils import logging as datasets_logging  # heavy: loaded on first use
    from transformers.utils import logging as transformers_logging  # heavy: loaded on first use

    libraries = (transformers_logging, datasets_logging)
    were_enabled = [library.is_progress_bar_enabled() for library in libraries]
    if not enabled:
        for library in libraries:
            library.disable_progress_bar()
    try:
        yield
    finally:
        for library, was_enabled in zip(libraries, were_enabled):
            if was_enabled:
                library.enable_progress_bar()
