"""The tiny synthetic policy the online-trainer tests share: `SFTConfig.tiny()` trained once per test process
(≈11 s on one core; reused from `$PREFOPT_CACHE` when that cache holds it)."""

from __future__ import annotations

import copy
import functools
import os
import tempfile
from typing import Any

TINY_PROMPTS = 48


@functools.lru_cache(maxsize=1)
def _tiny() -> tuple[Any, Any, list[str], list[str], Any]:
    import torch

    from prefopt.data.synthetic import SFTConfig, reference_policy
    from prefopt.online.setup import synthetic_prompts
    from prefopt.threads import torch_threads

    cache = os.environ.get("PREFOPT_CACHE") or tempfile.mkdtemp(prefix="prefopt-online-tests-")
    with torch_threads(1):
        policy = reference_policy(0, SFTConfig.tiny(), cache_dir=cache, progress=False)
    train, heldout = synthetic_prompts(0)
    torch.manual_seed(0)
    return policy.model, policy.tokenizer, train[:TINY_PROMPTS], heldout[:32], policy.path


def tiny_policy() -> tuple[Any, Any]:
    """(a fresh copy of the tiny trained policy, its tokenizer): training mutates the model it is given."""
    model, tokenizer, _, _, _ = _tiny()
    return copy.deepcopy(model), tokenizer


def tiny_prompts() -> tuple[list[str], list[str]]:
    """(train prompts, held-out prompts) of the synthetic task, cut to test size."""
    _, _, train, heldout, _ = _tiny()
    return list(train), list(heldout)


def tiny_model_path() -> Any:
    """The folder of the saved tiny policy (weights + tokenizer), for command-line runs."""
    return _tiny()[4]


def online_settings(tmp_path: Any, **overrides: Any) -> dict[str, Any]:
    """train_online keyword arguments of a seconds-scale run on the tiny policy."""
    model, tokenizer = tiny_policy()
    settings = {
        "model": model,
        "tokenizer": tokenizer,
        "prompts": tiny_prompts()[0],
        "steps": 2,
        "prompts_per_step": 4,
        "max_new_tokens": 24,
        "output_dir": str(tmp_path / "run"),
        "progress": False,
        "num_threads": 1,
        "lr": 2e-4,
    }
    settings.update(overrides)
    return settings
