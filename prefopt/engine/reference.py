"""`ReferenceLogProbs`: log π_ref of a batch's completions, from one of three sources.

(a) a separate frozen model:        ReferenceLogProbs.from_model(ref_model)
(b) the policy with its PEFT adapter disabled, which *is* the base model (LoRA: W + BA → W):
                                    ReferenceLogProbs.from_disabled_adapter(peft_model)
(c) a precomputed on-disk cache:    ReferenceLogProbs.from_cache(ReferenceCache.load(path, key))

All three return detached `SequenceLogProbs` computed without autograd, in eval mode (no dropout),
so π_ref is deterministic as the DPO objective assumes (Rafailov et al. 2023, arXiv:2305.18290, §4).
The two models also give per-token log-probs (`reference(batch, return_tokens=True)`, what rollout
losses take as `ref_logps`); a cache holds per-sequence sums only.
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
from prefopt.engine.sequential_kl import HeadAt, head_at

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

    def __init__(
        self,
        compute: Callable[..., SequenceLogProbs],
        *,
        source: str,
        head: Callable[[TokenBatch], HeadAt] | None = None,
    ) -> None:
        self._compute = compute
        self._head = head
        self.source = source

    def head_inputs(self, batch: TokenBatch) -> HeadAt:
        """The reference model's head at the scored positions of `batch` (no gradient, eval mode): what the
        policy's engine needs for the sequential KL, `engine(batch, kl_reference=reference)` (TDPO)."""
        if self._head is None:
            raise ValueError(
                f"a reference from {self.source!r} holds log-probs only; the sequential KL needs the reference "
                "model's next-token distributions: ReferenceLogProbs.from_model(ref_model) or "
                ".from_disabled_adapter(peft_model)"
            )
        with torch.no_grad():
            return self._head(batch)

    def __call__(self, batch: TokenBatch, *, return_tokens: bool = False) -> SequenceLogProbs:
        """[S] reference sums/counts of `batch` (detached, float32); per-token values too with `return_tokens`."""
        if return_tokens and self.source == "cache":
            raise ValueError(
                "a reference cache holds per-sequence sums only; per-token reference log-probs need the reference "
                "model: ReferenceLogProbs.from_model(ref_model) or .from_disabled_adapter(peft_model)"
            )
        with torch.no_grad():
            out = self._compute(batch, return_tokens=True) if return_tokens else self._compute(batch)
            return out.detach()

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
        return cls(engine, source="model", head=lambda batch: head_at(engine, batch))

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

        def compute(batch: TokenBatch, **kwargs: Any) -> SequenceLogProbs:
            with disable(), eval_mode(model):
                return engine(batch, **kwargs)

        def head(batch: TokenBatch) -> HeadAt:
            with disable(), eval_mode(model):
                return head_at(engine, batch)

        return cls(compute, source="disabled_adapter", head=head)

    @classmethod
    def from_cache(cls, cache: ReferenceCache) -> "ReferenceLogProbs":
        """Look batches up in a precomputed `ReferenceCache` (needs `batch.extras['example_index']`)."""
        return cls(cache.lookup, source="cache")
