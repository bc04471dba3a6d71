"""`LossCall`: a registered loss run on token batches, with its engine, its reference and its running state."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from prefopt.batch import TokenBatch
from prefopt.errors import LossInputError
from prefopt.loss_call.arguments import (
    _score_reference,
    bind_loss,
    check_loss,
    engine_call,
    missing_reference,
    prepare,
    wants_reference,
)
from prefopt.loss_call.fused import fused_head_reason, fused_loss
from prefopt.loss_call.views import Scorer, kind_view
from prefopt.loss_state import LossState
from prefopt.losses.base import LossOutput
from prefopt.registry import BoundLoss, LossSpec

__all__ = ["LossCall"]


class LossCall:
    """A registered loss run on token batches: `LossCall(name, engine=..., reference=...)(batch) → LossOutput`.

    Args:
        loss: a registered name (`prefopt.list_losses()`), `get_loss(name, ...)` or a `LossSpec`.
        engine: the policy's `LogProbEngine` (or any callable batch → SequenceLogProbs); it runs with gradient.
        reference: a `ReferenceLogProbs` (frozen model, disabled adapter or cache), any callable batch →
            SequenceLogProbs, the `SequenceLogProbs` of a fixed batch, or None for a reference-free loss.
        fused: run a separable loss through the loss-fused head (default True): the head forms the hidden and
            weight gradients while it computes the log-probs, three matmuls instead of four (docs/engine.md,
            "The loss-fused head"). Then `out.loss` carries the gradient and `out.per_example` does not; with
            fused=False, or where the fused head is not taken (`fused_reason` says why), both do.
        hparams: the loss's hyper-parameters (paper defaults for the rest).

    Call: `step(batch, reference=None, **inputs)`: runs the engine (rollout losses: per-token, with
    `return_tokens`) and the reference on `batch` (a `reference` given here wins: a `SequenceLogProbs` of the
    batch or a scorer), builds every input (`loss_arguments`, the table of `prefopt.loss_call`) and calls the
    loss. A loss that takes engine statistics (`ENGINE_INPUTS`: WPO's Σ_t log Σ_v p², TDPO's sequential KL) gets
    the engine call that makes them. A loss with running state (`LossSpec.state`) keeps it here across calls:
    call t reads the state of calls < t (and its own batch too for a state declared `includes_current`, BCO's
    δ as in TRL); `state_dict()` / `load_state_dict()` save and restore it.
    """

    def __init__(
        self,
        loss: str | BoundLoss | LossSpec | Any,
        *,
        engine: Scorer,
        reference: Any = None,
        fused: bool = True,
        **hparams: Any,
    ):
        self.loss = bind_loss(loss, hparams)
        self.spec: LossSpec = self.loss.spec
        check_loss(self.spec)
        if not callable(engine):
            raise LossInputError(f"LossCall({self.spec.name!r}): engine must be the policy's LogProbEngine.")
        self.engine, self.reference = engine, reference
        # Why the loss-fused head is not taken (None: it is, whenever gradients are recorded).
        self.fused_reason: str | None = fused_head_reason(self.spec, engine) if fused else "fused=False"
        hparams_full = {**self.spec.defaults(), **getattr(self.loss, "hparams", {})}
        self.state: LossState | None = self.spec.state.init(hparams_full) if self.spec.state is not None else None

    def __call__(self, batch: TokenBatch, *, reference: Any = None, **inputs: Any) -> LossOutput:
        spec = self.spec
        if not isinstance(batch, TokenBatch):
            raise LossInputError(
                f"LossCall({spec.name!r}): call it with a TokenBatch (prefopt.data.collate_preferences), got "
                f"{type(batch).__name__}."
            )
        reference = reference if reference is not None else self.reference
        rollout = spec.kind == "rollout"
        if reference is None and spec.needs_reference and not rollout:
            raise missing_reference(spec)  # before the engine runs
        if self.fused_reason is None and torch.is_grad_enabled():
            out, attached, _ = fused_loss(self.loss, self.engine, batch, reference=reference, inputs=inputs)  # type: ignore[arg-type]
            return LossOutput(attached, out.per_example, out.metrics)  # no state: a separable loss keeps none
        entropy = "token_entropy" in spec.extra_inputs
        if rollout:
            policy_out = self.engine(batch, return_tokens=True, return_entropy=entropy)
        else:
            policy_out = self.engine(batch, **engine_call(spec, reference))
        ref_out = None
        folds = self.state is not None and spec.state is not None and spec.state.includes_current and not rollout
        if folds:  # the state includes this batch before its loss reads it (BCO's δ, as TRL)
            if reference is not None and wants_reference(spec, inputs):
                ref_out = _score_reference(reference, batch)
            view = kind_view(spec, policy_out, ref_out, batch)
            self.state.update(self.state.observe(view.policy, view.reference))  # type: ignore[union-attr]
        prepared = prepare(self.loss, policy_out, ref_out, batch, self.engine, reference, self.state, inputs)
        out = self.loss(*prepared.arguments[0], **prepared.arguments[1])
        if self.state is not None and prepared.view is not None and not folds:  # the next call reads this one's
            self.state.update(self.state.observe(prepared.view.policy, prepared.view.reference))
        return out

    def state_dict(self) -> dict[str, Any]:
        """The running state's snapshot (`{}` for a loss without state)."""
        return self.state.state_dict() if self.state is not None else {}

    def load_state_dict(self, saved: Mapping[str, Any]) -> None:
        """Restore a snapshot of `state_dict()`."""
        if self.state is None:
            if saved:
                raise LossInputError(f"LossCall({self.spec.name!r}): the loss keeps no state to load.")
            return
        self.state.load_state_dict(saved)

    def __repr__(self) -> str:
        return f"LossCall({self.loss!r}, reference={self.reference!r})"
