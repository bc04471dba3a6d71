"""`ReferenceLogProbs`: log π_ref of a batch's completions, from one of three sources.

(a) a separate frozen model:        ReferenceLogProbs.from_model(ref_model)
(b) the policy with its PEFT adapter disabled, which *is* the base model (LoRA: W + BA → W):
                                    ReferenceLogProbs.from_disabled_adapter(peft_model)
(c) a precomputed on-disk cache:    ReferenceLogProbs.from_cache(ReferenceCache.load(path, key))

All three return detached `SequenceLogProbs` computed without autograd, in eval mode (no dropout),
so π_ref is deterministic as the DPO objective assumes (Rafailov et al. 2023, arXiv:2305.18290, §4).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from prefopt.batch import TokenBatch
from prefopt.engine.cache import ReferenceCache
from prefopt.engine.engine import LogProbEngine
from prefopt.engine.outputs import SequenceLogProbs

__all__ = ["ReferenceLogProbs", "eval_mode"]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode for the block, then restore each one's own training flag."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


class ReferenceLogProbs:
    """A callable `batch → SequenceLogProbs` for the reference policy; build it with a `from_*` method.

    Attributes:
        source: "model", "disabled_adapter" or "cache" (for logs and errors).
    """

    def __init__(self, compute: Callable[[TokenBatch], SequenceLogProbs], *, source: str) -> None:
        self._compute = compute
        self.source = source

    def __call__(self, batch: TokenBatch) -> SequenceLogProbs:
        """[S] reference sums/counts of `batch` (detached, float32)."""
        with torch.no_grad():
            return self._compute(batch).detach()

    def __repr__(self) -> str:
        return f"ReferenceLogProbs(source={self.source!r})"

    @classmethod
    def from_model(cls, model: nn.Module, **engine_kwargs: Any) -> "ReferenceLogProbs":
        """A separate reference model, frozen here: `requires_grad_(False)` and eval mode.

        `engine_kwargs` go to `LogProbEngine` (backend, temperature, packing, split).
        """
        model.requires_grad_(False)
        model.eval()
        engine = LogProbEngine(model, **engine_kwargs)
        return cls(engine, source="model")

    @classmethod
    def from_disabled_adapter(
        cls, model: nn.Module, *, engine: LogProbEngine | None = None, **engine_kwargs: Any
    ) -> "ReferenceLogProbs":
        """The same PEFT model with its adapters disabled (π_ref = the frozen base), sharing its weights.

        Args:
            model: a PEFT `PeftModel` (anything with a `disable_adapter()` context manager).
            engine: the policy's engine over `model`, to reuse; otherwise one is built from `engine_kwargs`.
        """
        disable = getattr(model, "disable_adapter", None)
        if not callable(disable):
            raise TypeError(
                f"from_disabled_adapter needs a PEFT model with disable_adapter(), got {type(model).__name__}; "
                "use ReferenceLogProbs.from_model(ref_model) for a separate reference model"
            )
        if engine is not None and engine.model is not model:
            raise ValueError("from_disabled_adapter: `engine` was built over a different model")
        engine = engine if engine is not None else LogProbEngine(model, **engine_kwargs)

        def compute(batch: TokenBatch) -> SequenceLogProbs:
            with disable(), eval_mode(model):
                return engine(batch)

        return cls(compute, source="disabled_adapter")

    @classmethod
    def from_cache(cls, cache: ReferenceCache) -> "ReferenceLogProbs":
        """Look batches up in a precomputed `ReferenceCache` (needs `batch.extras['example_index']`)."""
        return cls(cache.lookup, source="cache")
