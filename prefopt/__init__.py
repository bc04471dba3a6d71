"""prefopt: preference-optimization losses for language models on one batched, fused log-prob engine.

    import prefopt
    out = prefopt.losses.dpo(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1)
    kto = prefopt.get_loss("kto", beta=0.1)
    prefopt.list_losses()
    prefopt.engine.LogProbEngine          # every subpackage is an attribute, imported on first access
    prefopt.set_progress(True)            # progress bars of library calls (quiet by default)

Heavy pieces (the engine, Triton kernels, transformers) are imported on first use, not here.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from prefopt import losses
from prefopt.losses.base import LossOutput
from prefopt.losses.combine import combine_losses
from prefopt.losses.combined import CombinedLoss
from prefopt.progress import set_progress
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
    "CombinedLoss",
    "HParam",
    "LossInputError",
    "LossOutput",
    "LossSpec",
    "UnknownLossError",
    "combine_losses",
    "get_loss",
    "list_losses",
    "loss_spec",
    "losses",
    "register_loss",
    "set_progress",
    "LogProbEngine",
    "ReferenceLogProbs",
    "SequenceLogProbs",
    "LossCall",
    "loss_arguments",
    "from_trl_dpo_config",
]

_LAZY = {
    "LogProbEngine": "prefopt.engine",
    "SequenceLogProbs": "prefopt.engine",
    "ReferenceLogProbs": "prefopt.engine",
    "LossCall": "prefopt.loss_call",
    "loss_arguments": "prefopt.loss_call",
    "from_trl_dpo_config": "prefopt.trl_config",
}


# The command line is no attribute: the library never imports it (`import prefopt.cli` where you need it).
_NOT_ATTRIBUTES = ("cli", "__main__")


def _submodules() -> list[str]:
    """The public subpackages and modules (`prefopt.data`, `prefopt.engine`, ...), read from the package folder."""
    return sorted(
        m.name for m in pkgutil.iter_modules(__path__) if m.name not in _NOT_ATTRIBUTES and not m.name.startswith("_")
    )


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if not name.startswith("_") and name in _submodules():  # imported on first access; then a plain attribute
        return importlib.import_module(f"{__name__}.{name}")
    if name in _NOT_ATTRIBUTES:
        raise AttributeError(f"prefopt.{name} is the command line, which `import prefopt` leaves out: import it")
    raise AttributeError(f"module 'prefopt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, *_submodules()})
