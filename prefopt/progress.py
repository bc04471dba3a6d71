"""Progress bars of the libraries prefopt drives (transformers' weight loading and saving, datasets' `map`).

A library call is quiet unless asked: `tokenize_preferences`, `load_preferences` and the other data
functions draw no `datasets` bars by default. One switch turns them on, in the order it is read:

    the call's own `progress=` keyword                  tokenize_preferences(rows, tok, progress=True)
    the enclosing run's setting                         library_progress_bars(config.progress) / progress_scope
    prefopt.set_progress(True | False)                  for the rest of the program (None: back to the default)
    PREFOPT_PROGRESS=1 in the environment               (also true/yes/on; 0/false/no/off or unset: quiet)

A prefopt command shows its own bars and the libraries' (the command line sets the scope from `--quiet`),
and runs such as `train(config)` follow their `config.progress`; bars are restored afterwards for the rest
of the user's program:

    with library_progress_bars(config.progress):
        ...
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar, cast

__all__ = [
    "datasets_progress",
    "library_progress_bars",
    "progress_enabled",
    "progress_scope",
    "quiet_by_default",
    "set_progress",
]

ENV_VAR = "PREFOPT_PROGRESS"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")

F = TypeVar("F", bound=Callable[..., Any])

_switch: bool | None = None  # set_progress
_scope: ContextVar[bool | None] = ContextVar("prefopt_progress_scope", default=None)


def set_progress(enabled: bool | None) -> None:
    """Show (True) or hide (False) the progress bars of prefopt's library calls from now on; None goes back
    to the default (the PREFOPT_PROGRESS environment variable, else quiet)."""
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"prefopt.set_progress: enabled must be True, False or None, got {enabled!r}")
    global _switch
    _switch = enabled


def progress_enabled(progress: bool | None = None) -> bool:
    """Whether a library call shows progress bars: `progress` when given, else the enclosing scope, else
    `set_progress`, else the PREFOPT_PROGRESS environment variable, else False.

    Raises:
        ValueError: PREFOPT_PROGRESS holds something other than 1/true/yes/on or 0/false/no/off.
    """
    for value in (progress, _scope.get(), _switch):
        if value is not None:
            return bool(value)
    text = os.environ.get(ENV_VAR, "").strip().lower()
    if text not in _TRUE + _FALSE:
        raise ValueError(f"{ENV_VAR}={os.environ[ENV_VAR]!r}: use 1 (show progress bars) or 0 (quiet), or unset it")
    return text in _TRUE


@contextlib.contextmanager
def progress_scope(enabled: bool) -> Iterator[None]:
    """Library calls inside the block (without their own `progress=`) show bars iff `enabled`; imports nothing."""
    token = _scope.set(bool(enabled))
    try:
        yield
    finally:
        _scope.reset(token)


@contextlib.contextmanager
def datasets_progress(progress: bool | None = None) -> Iterator[None]:
    """What a data function runs its `datasets` calls in: their bars off unless `progress_enabled(progress)`,
    and the data functions it calls following the same choice; restored after. Only datasets is touched (a
    data function has it loaded already)."""
    from datasets.utils import logging as datasets_logging  # heavy: loaded on first use

    enabled = progress_enabled(progress)
    with progress_scope(enabled), _bars_off(() if enabled else (datasets_logging,)):
        yield


def quiet_by_default(fn: F) -> F:
    """Decorate a data function: its `datasets` calls run in `datasets_progress(progress)`, where `progress` is
    its keyword argument of that name (None when it has none or it was not given)."""

    @functools.wraps(fn)
    def quiet(*args: Any, **kwargs: Any) -> Any:
        with datasets_progress(kwargs.get("progress")):
            return fn(*args, **kwargs)

    return cast(F, quiet)


@contextlib.contextmanager
def library_progress_bars(enabled: bool) -> Iterator[None]:
    """Run the block with transformers' and datasets' progress bars off unless `enabled`, and prefopt's library
    calls inside it following `enabled` (`progress_scope`); restore them after."""
    from datasets.utils import logging as datasets_logging  # heavy: loaded on first use
    from transformers.utils import logging as transformers_logging  # heavy: loaded on first use

    with progress_scope(enabled), _bars_off(() if enabled else (transformers_logging, datasets_logging)):
        yield


@contextlib.contextmanager
def _bars_off(libraries: tuple[Any, ...]) -> Iterator[None]:
    """Disable the progress bars of `libraries` (transformers/datasets logging modules) for the block; each
    one that was on is turned back on after."""
    were_enabled = [library.is_progress_bar_enabled() for library in libraries]
    for library in libraries:
        library.disable_progress_bar()
    try:
        yield
    finally:
        for library, was_enabled in zip(libraries, were_enabled):
            if was_enabled:
                library.enable_progress_bar()
