"""From engine outputs to a registered loss's arguments, by the loss's declared contract (never its name).

    kind      policy/ref inputs                                         lengths (when the loss takes them)
    paired    chosen() [B], rejected() [B] of SequenceLogProbs.sum       chosen_lengths, rejected_lengths
    unpaired  sum [B] and batch.extras["labels"] [B]                     lengths [B]
    ranked    grouped() [B, K] (best first)                              lengths [B, K]

Extra inputs a loss declares (`LossSpec.extra_inputs`) come from the batch's extras when it has a tensor
of that name (e.g. `margin`), or from what the loss declares the loop serves (`prefopt.loss_state`), once
per optimiser step for the whole global batch:

    LossSpec.state         a running state: its `inputs()`; the loop feeds it each micro-batch's
                           `observe(policy, reference)` and, after the step, `update`s it with the global
                           batch's statistics, so step t reads the state of steps < t
    LossSpec.batch_inputs  providers called with the global batch (`PlannedBatch`): each process scores its
                           share of any rows a provider builds and the sums are all-reduced, so the value is
                           the same however the batch is split over processes and accumulation steps
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from prefopt.batch import TokenBatch
from prefopt.engine import SequenceLogProbs
from prefopt.registry import LENGTH_INPUTS, LossSpec

__all__ = ["BATCH_EXTRAS", "PlannedBatch", "check_loop_can_feed", "loss_arguments"]

# Batch extras the collator provides (prefopt.data.collate): an extra input of one of these names is fed from it.
BATCH_EXTRAS = ("margin", "weight", "ranks", "pair_ids", "prompt_lengths")


def check_loop_can_feed(spec: LossSpec) -> None:
    """Raise a clear error, before training starts, for a loss input the offline loop cannot supply."""
    missing = [n for n in spec.extra_inputs if n not in spec.loop_inputs and n not in BATCH_EXTRAS]
    if missing:
        raise ValueError(
            f"loss {spec.name!r} takes input(s) {missing} that the offline training loop cannot provide "
            f"(it feeds the batch extras {list(BATCH_EXTRAS)} and what the loss declares in its state and "
            "batch_inputs, prefopt.loss_state); call the loss from your own loop instead"
        )


def _accepted(spec: LossSpec) -> set[str]:
    return set(inspect.signature(spec.fn).parameters)


def _by_kind(kind: str, out: SequenceLogProbs, values: Tensor) -> list[Tensor]:
    """Per-sequence `values` [S] split into the kind's tensors (see the module table)."""
    if kind == "paired":
        return [out.chosen(values), out.rejected(values)]
    if kind == "ranked":
        return [out.grouped(values)]
    return [values]


def loss_arguments(
    spec: LossSpec,
    policy: SequenceLogProbs,
    reference: SequenceLogProbs | None,
    batch: TokenBatch,
    context: Mapping[str, Any],
) -> tuple[list[Any], dict[str, Any]]:
    """(positional, keyword) arguments of `spec`'s loss for one micro-batch.

    Args:
        policy: engine output for the batch (with gradient); reference: π_ref's (or None when the loss
            is reference-free).
        context: values of the loss's `LossSpec.loop_inputs` for this global batch.
    """
    args: list[Any] = _by_kind(spec.kind, policy, policy.sum)
    if spec.needs_reference:
        if reference is None:
            raise ValueError(f"loss {spec.name!r} needs reference log-probs but the run has no reference")
        args += _by_kind(spec.kind, reference, reference.sum)
    else:
        args += [None] * len(args)
    if spec.kind == "unpaired":
        labels = batch.extras.get("labels")
        if labels is None:
            raise ValueError(f"loss {spec.name!r} needs labels: unpaired rows with a boolean `label` column")
        args.append(labels.to(policy.sum.device))
    kwargs: dict[str, Any] = {}
    accepted = _accepted(spec)
    lengths = _by_kind(spec.kind, policy, policy.count.to(policy.sum.dtype))
    for name, value in zip(LENGTH_INPUTS[spec.kind], lengths):
        if name in accepted:
            kwargs[name] = value
    for name in spec.extra_inputs:
        if name in context:
            kwargs[name] = context[name]
        elif name in batch.extras:
            kwargs[name] = batch.extras[name].to(policy.sum.device)
    return args, kwargs


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
