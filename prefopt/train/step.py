"""What the offline training loop serves a loss beyond one micro-batch, and the check that it can.

The loss's arguments come from `prefopt.loss_call.loss_arguments`, the function a loop of your own calls
too; the loop passes it, as keyword inputs, the values of what the loss declares the loop serves
(`prefopt.loss_state`), once per optimiser step for the whole global batch:

    LossSpec.state         a running state: its `inputs()`; the loop feeds it each micro-batch's
                           `observe(policy, reference)` and, after the step, `update`s it with the global
                           batch's statistics, so step t reads the state of steps < t
    LossSpec.batch_inputs  providers called with the global batch (`PlannedBatch`): each process scores its
                           share of any rows a provider builds and the sums are all-reduced, so the value is
                           the same however the batch is split over processes and accumulation steps

Other extra inputs (`LossSpec.extra_inputs`) come from the batch's extras when it has a tensor of that name
(e.g. `margin`), or are statistics of the policy's engine output (`prefopt.loss_call.ENGINE_INPUTS`: the loop
scores every micro-batch with `return_stats=True`, and with the live reference as `kl_reference` when the loss
takes the sequential KL).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from prefopt.batch import TokenBatch
from prefopt.engine import SequenceLogProbs
from prefopt.loss_call import BATCH_EXTRAS, engine_inputs
from prefopt.registry import LossSpec

__all__ = ["BATCH_EXTRAS", "PlannedBatch", "check_loop_can_feed", "needs_reference_head"]


def check_loop_can_feed(spec: LossSpec) -> None:
    """Raise a clear error, before training starts, for a loss input the offline loop cannot supply."""
    served = {*spec.loop_inputs, *BATCH_EXTRAS, *engine_inputs(spec)}
    missing = [n for n in spec.extra_inputs if n not in served]
    if missing:
        raise ValueError(
            f"loss {spec.name!r} takes input(s) {missing} that the offline training loop cannot provide "
            f"(it feeds the batch extras {list(BATCH_EXTRAS)} and what the loss declares in its state and "
            "batch_inputs, prefopt.loss_state); call the loss from your own loop instead"
        )


def needs_reference_head(spec: LossSpec) -> bool:
    """Whether the loss takes the sequential KL (`ENGINE_INPUTS`), which the live reference model computes with the
    policy at every step: the run then keeps that model beside its reference cache."""
    return any(base == "seq_kl" for base, _ in engine_inputs(spec).values())


@dataclass(frozen=True)
class PlannedBatch:
    """One optimiser step's global batch as a `batch_inputs` provider sees it (`prefopt.loss_state.GlobalBatch`).

    Attributes:
        rows: the G tokenised rows of the global batch, in plan order; positions: those this process scores.
        hparams: the loss's hyper-parameters, paper defaults filled in.
        collate: rows → `TokenBatch`; policy_logps, reference_logps: the engine on the policy (with the
            run's autocast) and on the live reference model (None when the run keeps none).
        reduce_sum: sum over processes; device: where batches go.
    """

    rows: Sequence[Mapping[str, Any]]
    positions: Sequence[int]
    hparams: Mapping[str, Any]
    collate: Callable[[list[Mapping[str, Any]]], TokenBatch]
    policy_logps: Callable[[TokenBatch], SequenceLogProbs]
    reference_logps: Callable[[TokenBatch], SequenceLogProbs] | None
    reduce_sum: Callable[[Tensor], Tensor]
    device: torch.device

    def score(self, rows: Sequence[Mapping[str, Any]]) -> tuple[SequenceLogProbs, SequenceLogProbs]:
        """(policy, reference) log-probs of `rows`, without gradient."""
        if self.reference_logps is None:
            raise ValueError("this run keeps no live reference model to score rows outside the dataset")
        batch = self.collate(list(rows)).to(self.device)
        with torch.no_grad():
            return self.policy_logps(batch), self.reference_logps(batch)

    def all_reduce_sum(self, values: Tensor) -> Tensor:
        return self.reduce_sum(values)
