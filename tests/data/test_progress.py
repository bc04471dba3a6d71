"""Library data calls draw no `datasets` progress bars unless asked; one switch (or the call's `progress=`,
or PREFOPT_PROGRESS=1) turns them on, and the user's own setting of datasets' bars is restored afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import datasets
import pytest
from datasets.utils import logging as datasets_logging

import prefopt
from prefopt.data import load_preferences, to_unpaired, tokenize_preferences
from prefopt.progress import ENV_VAR, progress_enabled, progress_scope, set_progress

ROWS = [{"prompt": "What is the answer?", "chosen": " yes", "rejected": " no"}] * 3


@pytest.fixture(autouse=True)
def bars_on_and_switch_reset(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """datasets' own bars on (their default), no switch, no environment variable; restored after."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    was_enabled = datasets_logging.is_progress_bar_enabled()
    datasets_logging.enable_progress_bar()
    yield
    set_progress(None)
    (datasets_logging.enable_progress_bar if was_enabled else datasets_logging.disable_progress_bar)()


def _stderr_of(capsys: pytest.CaptureFixture[str], byte_tokenizer: Any, **kwargs: Any) -> str:
    """stderr of loading, splitting and tokenising three in-memory pairs (four `datasets` maps)."""
    capsys.readouterr()
    rows = load_preferences(datasets.Dataset.from_list(ROWS), kind="paired", **kwargs)
    tokenize_preferences(to_unpaired(rows, **kwargs), byte_tokenizer, **kwargs)
    return capsys.readouterr().err


def test_quiet_by_default(capsys, byte_tokenizer) -> None:
    assert _stderr_of(capsys, byte_tokenizer) == ""
    assert datasets_logging.is_progress_bar_enabled()  # the user's setting is back


def test_one_switch_turns_the_bars_on(capsys, byte_tokenizer) -> None:
    prefopt.set_progress(True)
    err = _stderr_of(capsys, byte_tokenizer)
    assert "extract prompts" in err and "split pairs" in err and "tokenize" in err and "3/3" in err
    prefopt.set_progress(None)
    assert _stderr_of(capsys, byte_tokenizer) == ""


def test_keyword_environment_and_scope(capsys, byte_tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Order: the call's `progress=`, then the enclosing run's scope, then the switch, then PREFOPT_PROGRESS.
    A call's choice holds for the data functions it calls (load_preferences → extract prompts)."""
    assert "extract prompts" in _stderr_of(capsys, byte_tokenizer, progress=True)
    monkeypatch.setenv(ENV_VAR, "1")
    assert "tokenize" in _stderr_of(capsys, byte_tokenizer)
    assert _stderr_of(capsys, byte_tokenizer, progress=False) == ""
    with progress_scope(False):  # a run with progress off (`--quiet`, config.progress=False) wins over the env
        assert _stderr_of(capsys, byte_tokenizer) == ""
        set_progress(True)
        assert not progress_enabled() and progress_enabled(True)
    assert progress_enabled()


def test_a_wrong_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "maybe")
    with pytest.raises(ValueError, match=r"PREFOPT_PROGRESS='maybe': use 1 \(show progress bars\) or 0"):
        progress_enabled()
    with pytest.raises(TypeError, match="set_progress: enabled must be True, False or None"):
        set_progress("yes")  # type: ignore[arg-type]


def test_bars_the_user_turned_off_stay_off(capsys, byte_tokenizer) -> None:
    datasets_logging.disable_progress_bar()
    set_progress(True)
    assert _stderr_of(capsys, byte_tokenizer) == ""
    assert not datasets_logging.is_progress_bar_enabled()
