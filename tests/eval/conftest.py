"""Shared fixtures: a micro synthetic reference policy (6 training steps, ≈2 s) and one torch thread."""

from __future__ import annotations

import pytest

from prefopt.data.synthetic import ReferencePolicy, SFTConfig, train_reference_policy

# The synthetic task's model and recipe at micro size: the end-to-end checks (a model against itself)
# hold for any weights, so a few steps suffice.
MICRO = SFTConfig(
    hidden_size=16,
    num_layers=1,
    num_heads=2,
    num_kv_heads=1,
    intermediate_size=32,
    steps=6,
    batch_size=8,
    warmup_steps=2,
    eval_reviews=4,
    eval_samples=4,
    max_new_tokens=8,
)


@pytest.fixture(scope="session")
def micro_policy() -> ReferencePolicy:
    return train_reference_policy(MICRO, 0, progress=False)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models: one thread is as fast, and avoids OpenMP spin-waits on a busy shared CPU."""
    from prefopt.threads import torch_threads

    with torch_threads(1):
        yield
