"""Shared fixtures: one test-size reference policy per session, in a temporary cache root."""

from __future__ import annotations

from pathlib import Path

import pytest

from prefopt.data.synthetic import ReferencePolicy, SFTConfig, reference_policy


@pytest.fixture(scope="session")
def synth_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prefopt-cache")


@pytest.fixture(scope="session")
def tiny_policy(synth_cache: Path) -> ReferencePolicy:
    """`SFTConfig.tiny()` trained once for the session (seed 0), cached under `synth_cache`."""
    return reference_policy(0, SFTConfig.tiny(), cache_dir=synth_cache, progress=False)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """These models are tiny: one thread is as fast, and avoids OpenMP spin-waits on a busy shared CPU."""
    from prefopt.threads import torch_threads

    with torch_threads(1):
        yield
