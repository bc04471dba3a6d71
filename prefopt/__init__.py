"""prefopt: preference-optimization losses for language models on one batched, fused log-prob engine.

    import prefopt
    out = prefopt.losses.dpo(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1)
    kto = prefopt.get_loss("kto", beta=0.1)
    prefopt.list_losses()

Heavy pieces (the engine, Triton kernels, transformers) are imported on first use, not here.
"""

from __future__ import annotations

import importlib
from typing import Any

from prefopt import losses
from prefopt.losses.base import LossOutput
from prefopt.registry import (
    BoundLoss,
    HParam,
    LossInputError,
    LossSpec,
    UnknownLossError,
    get_loss,
    list_losses,
    loss_spec,
    register_loss,
)

__version__ = "0.1.0"

__all__ = [
    "BoundLoss",
    "HParam",
    "LossInputError",
    "LossOutput",
    "LossSpec",
    "UnknownLossError",
    "get_loss",
    "list_losses",
    "loss_spec",
    "losses",
    "register_loss",
    "LogProbEngine",
    "ReferenceLogProbs",
    "SequenceLogProbs",
]

_LAZY = {
    "LogProbEngine": "prefopt.engine",
    "SequenceLogProbs": "prefopt.engine",
    "ReferenceLogProbs": "prefopt.engine",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'prefopt' has no attribute {name!r}")
