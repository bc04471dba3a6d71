"""Shared fixtures of the trainer tests: the tiny on-disk task (built once per session) and one torch thread."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .tiny_task import write_tiny_task

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_task(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_tiny_task(tmp_path_factory.mktemp("tiny-task"))


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models: one thread is as fast and avoids OpenMP spin-waits on the shared 2-core CPU."""
    from prefopt.threads import torch_threads

    with torch_threads(1):
        yield
