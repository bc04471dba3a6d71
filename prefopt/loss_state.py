"""What a loss reads beyond one micro-batch, declared on its `LossSpec` and served by the training loop.

Two declarations, so that the loop never needs to know which loss it runs:

    LossSpec.state         LossStateSpec(inputs, init): running state kept across optimiser steps
    LossSpec.batch_inputs  {input name: provider}: a statistic of the whole global batch, once per step

A state (`LossState`) lives for the whole run. At optimiser step t the loop

    passes   state.inputs()                   to every micro-batch's loss call (keyword inputs)
    collects state.observe(policy, reference) [S] detached, from every micro-batch it runs
    calls    state.update(stats)              after the step, with the statistics of the GLOBAL batch,
                                              all-gathered in global order (the same on every process)

so step t reads the state of steps < t, whatever the micro-batch split. A state declared `includes_current`
(BCO, as TRL: its δ includes the batch it shifts) is instead updated before each micro-batch's loss with that
micro-batch's statistics, all-gathered over processes, so micro-batch k of step t reads steps < t and
micro-batches ≤ k of step t (then it depends on the split, as TRL's does). `state_dict()` (JSON-able) is
saved in every checkpoint and `load_state_dict()` restores it on resume, so a resumed run continues
exactly. A provider of `batch_inputs` is called once per optimiser step, before the micro-batches, with
a `GlobalBatch`: the tokenised rows of the global batch, the positions this process scores, a scorer of
rows under π_θ and π_ref (no gradient) and an all-reduce; summing over this process's positions and
all-reducing makes the statistic independent of how the batch is split over processes and steps.

Declaring state: BCO keeps δ, the running mean of its implicit rewards (`prefopt.losses.unpaired`):

    @unpaired_loss("bco", ..., state=LossStateSpec(("state",), BCORunningDelta.from_hparams, includes_current=True))
    def bco(t: UnpairedTerms, *, state: BCOState | None, beta: float) -> Reported: ...

Declaring a batch statistic: KTO's reference point z₀ from mismatched pairs of the global batch:

    @unpaired_loss("kto", ..., batch_inputs={"kl": kto_reference_point})
    def kto(t: UnpairedTerms, *, kl: Tensor | float | None, beta: float, ...) -> Reported: ...

The online loop serves a rollout loss the same way from a third declaration, `LossSpec.rollout_inputs`
({input name: provider}): each provider is called once per rollout with a `RolloutBatch` (the whole rollout,
before it is split into minibatches) and returns a per-token tensor that every minibatch's call receives cut
to its rows, e.g. REINFORCE++'s advantages normalised over the global batch (`prefopt.losses.policy_reinforce`).

This module imports nothing of prefopt above `prefopt.loss_inputs`, so the registry can hold these types.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from torch import Tensor

from prefopt.loss_inputs import EngineOutput

__all__ = ["BatchInput", "GlobalBatch", "LossState", "LossStateSpec", "RolloutBatch", "RolloutInput"]


class LossState(Protocol):
    """A loss's running state, owned by the training loop for one run (module docstring)."""

    def inputs(self) -> dict[str, Any]:
        """The loss's keyword inputs for the current step (names as declared in `LossStateSpec.inputs`)."""
        ...

    def observe(self, policy: EngineOutput, reference: EngineOutput | None) -> Tensor:
        """A detached per-sequence statistic [S] of one micro-batch (reference None for a reference-free loss)."""
        ...

    def update(self, stats: Tensor) -> None:
        """Merge the global batch's statistics (all micro-batches of every process, in global order)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """A JSON-able snapshot; `load_state_dict` of it restores the state exactly."""
        ...

    def load_state_dict(self, saved: Mapping[str, Any]) -> None:
        """Restore a snapshot written by `state_dict`."""
        ...


@dataclass(frozen=True)
class LossStateSpec:
    """The declaration of a loss's running state.

    Attributes:
        inputs: names of the loss's extra inputs that `LossState.inputs()` supplies.
        init: a fresh state from the loss's hyper-parameters (paper defaults filled in).
        includes_current: the state folds in each micro-batch's own statistics before that micro-batch's loss
            (TRL's BCO: its running δ includes the current batch). The loop then updates it per micro-batch, with
            the micro-batch's statistics all-gathered over processes, instead of once after the step; `LossCall`
            updates it before the call's loss instead of after.
    """

    inputs: tuple[str, ...]
    init: Callable[[Mapping[str, Any]], LossState]
    includes_current: bool = False


class GlobalBatch(Protocol):
    """One optimiser step's global batch, as a `batch_inputs` provider sees it.

    Attributes:
        rows: the G tokenised rows of the global batch in plan order (`prompt_ids`, `completion_ids`, …,
            as `prefopt.data.collate` takes them).
        positions: the indices into `rows` that this process scores.
        hparams: the loss's hyper-parameters (paper defaults filled in).
    """

    @property
    def rows(self) -> Sequence[Mapping[str, Any]]: ...

    @property
    def positions(self) -> Sequence[int]: ...

    @property
    def hparams(self) -> Mapping[str, Any]: ...

    def score(self, rows: Sequence[Mapping[str, Any]]) -> tuple[EngineOutput, EngineOutput]:
        """(policy, reference) engine outputs of `rows` (tokenised like `rows`), without gradient."""
        ...

    def all_reduce_sum(self, values: Tensor) -> Tensor:
        """`values` summed over every process (the identity on one process)."""
        ...


# A provider of one batch input: the global batch → the value passed to every micro-batch's loss call.
BatchInput = Callable[[GlobalBatch], Any]


@dataclass(frozen=True)
class RolloutBatch:
    """One online step's whole rollout (its global batch), as a `rollout_inputs` provider sees it: the tensors
    the loop holds after scoring, before it splits the rollout into minibatches. Rows are group-major
    (s = k·B + b), every per-token tensor [S, T] in the rollout's layout.

    Attributes:
        rewards: [B, K] sequence rewards (after the loop's shaping: missing-EOS penalty, overlong penalty).
        old_logps, ref_logps: [S, T] per-token log-probs of the behaviour policy and of the reference.
        completion_mask: [S, T] bool, True at completion tokens.
        hparams: the loss's hyper-parameters (paper defaults filled in).
    """

    rewards: Tensor
    old_logps: Tensor
    ref_logps: Tensor | None
    completion_mask: Tensor
    hparams: Mapping[str, Any]


# A provider of one rollout input: the whole rollout → a per-token tensor [S, T] (in the rollout's layout) that
# the online loop cuts to each minibatch's rows, like the critic's targets. Declared on a rollout loss's spec
# (`LossSpec.rollout_inputs`) for a statistic of the global batch: REINFORCE++'s advantages, normalised over
# every token of the rollout rather than of one minibatch.
RolloutInput = Callable[[RolloutBatch], Tensor]
