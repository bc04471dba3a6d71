"""One registration helper per data kind, so that a loss's body is its formula (`prefopt.registry` explains).

    helper               the body receives                          the body returns
    paired_loss          PairedTerms (PolicyPair if reference-free)  per-example loss [B] or Reported
    unpaired_loss        UnpairedTerms                               per-example loss [B] or Reported
    ranked_loss          RankedTerms                                 per-example loss [B] or Reported
    rollout_loss         the inputs it names (per token, [S, T])     LossOutput
    reward_model_loss    the reward scores it names                  LossOutput

After the terms object a body takes keyword-only hyper-parameters and extra inputs, none with a default (the
`HParam` holds it). The paired, unpaired and ranked helpers log the kind's standard metrics of the implicit
rewards β·ρ (`rewards/*`, `logps/*`; reference-free paired losses return their own rewards) plus whatever
`Reported.metrics` adds, and reduce the loss to the mean of `per_example`.

Each helper returns the public function typed by the kind's Protocol (`PairedLoss`, …), so a type checker
sees the canonical call. Hyper-parameters and extra inputs are `**Any` there: PEP 612 cannot append keyword
parameters to a signature, and the registry checks their names and domains at call time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Concatenate, Literal, Protocol, cast, overload

from torch import Tensor

from prefopt.loss_inputs import EngineOutput
from prefopt.loss_state import BatchInput, LossStateSpec, RolloutInput
from prefopt.losses.base import (
    LossOutput,
)
from prefopt.losses.bodies import register_body
from prefopt.losses.terms import (
    PairedTerms,
    PolicyPair,
    RankedTerms,
    Reported,
    UnpairedTerms,
    paired_adapter,
    ranked_adapter,
    unpaired_adapter,
)
from prefopt.registry import HParam, LossSpec

__all__ = [
    "PolicyPair",
    "PairedTerms",
    "UnpairedTerms",
    "RankedTerms",
    "Reported",
    "PairedLoss",
    "UnpairedLoss",
    "RankedLoss",
    "RolloutLoss",
    "RewardModelLoss",
    "paired_loss",
    "unpaired_loss",
    "ranked_loss",
    "rollout_loss",
    "reward_model_loss",
]


_PAIRED_CALL = (
    "Call: f(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps=None, ref_rejected_logps=None, *, "
    "chosen_lengths=None, rejected_lengths=None, **hyper-parameters) with [B] summed completion log-probs, or "
    "f(policy_out, ref_out) with the engine's outputs of a paired batch."
)
_REFERENCE_FREE = " Reference-free: reference arguments are accepted for the uniform call, checked and not used."


def _needs_beta(name: str, hparams: Sequence[HParam], what: str) -> None:
    if all(h.name != "beta" for h in hparams):
        raise TypeError(f"loss {name!r}: a {what} loss logs rewards β·ρ, so it declares a `beta` HParam")


# ── public faces, as type checkers see them ───────────────────────────────────────────────────────────────


class PairedLoss(Protocol):
    """A registered paired loss: four [B] log-prob tensors (or the engine's two outputs) and hyper-parameters."""

    spec: LossSpec

    @overload
    def __call__(
        self,
        policy_chosen_logps: Tensor,
        policy_rejected_logps: Tensor,
        ref_chosen_logps: Tensor | None = None,
        ref_rejected_logps: Tensor | None = None,
        *,
        chosen_lengths: Tensor | None = None,
        rejected_lengths: Tensor | None = None,
        **hparams: Any,
    ) -> LossOutput: ...

    @overload
    def __call__(self, policy: EngineOutput, reference: EngineOutput | None, /, **hparams: Any) -> LossOutput: ...


class UnpairedLoss(Protocol):
    """A registered unpaired loss: [B] log-probs and labels (or engine outputs), extra inputs, hyper-parameters."""

    spec: LossSpec

    def __call__(
        self,
        policy_logps: Tensor | EngineOutput,
        ref_logps: Tensor | EngineOutput | None = None,
        labels: Tensor | None = None,
        *,
        lengths: Tensor | None = None,
        **inputs: Any,
    ) -> LossOutput: ...


class RankedLoss(Protocol):
    """A registered ranked loss: [B, K] log-probs, best first (or engine outputs), and hyper-parameters."""

    spec: LossSpec

    def __call__(
        self,
        policy_logps: Tensor | EngineOutput,
        ref_logps: Tensor | EngineOutput | None = None,
        *,
        lengths: Tensor | None = None,
        **hparams: Any,
    ) -> LossOutput: ...


class RolloutLoss(Protocol):
    """A registered rollout loss: per-token [S, T] log-probs and mask, keyword inputs and hyper-parameters."""

    spec: LossSpec

    def __call__(
        self,
        policy_logps: Tensor,
        old_logps: Tensor | None = None,
        completion_mask: Tensor | None = None,
        **inputs: Any,
    ) -> LossOutput: ...


class RewardModelLoss(Protocol):
    """A registered reward-model loss: reward scores ([B] pairs or [B, K] rankings), inputs, hyper-parameters."""

    spec: LossSpec

    def __call__(self, *scores: Tensor, **inputs: Any) -> LossOutput: ...


# ── the helpers ───────────────────────────────────────────────────────────────────────────────────────────


@overload
def paired_loss(
    name: str,
    *,
    needs_reference: Literal[True],
    paper: str,
    formula: str,
    hparams: Sequence[HParam] = (),
    needs_lengths: bool = False,
    batch_dependent: bool = False,
    needs_nonpositive_logps: bool = False,
    state: LossStateSpec | None = None,
    batch_inputs: Mapping[str, BatchInput] | None = None,
) -> Callable[[Callable[Concatenate[PairedTerms, ...], Tensor | Reported]], PairedLoss]: ...


@overload
def paired_loss(
    name: str,
    *,
    needs_reference: Literal[False],
    paper: str,
    formula: str,
    hparams: Sequence[HParam] = (),
    needs_lengths: bool = False,
    batch_dependent: bool = False,
    needs_nonpositive_logps: bool = False,
    state: LossStateSpec | None = None,
    batch_inputs: Mapping[str, BatchInput] | None = None,
) -> Callable[[Callable[Concatenate[PolicyPair, ...], Tensor | Reported]], PairedLoss]: ...


def paired_loss(
    name: str,
    *,
    needs_reference: bool,
    paper: str,
    formula: str,
    hparams: Sequence[HParam] = (),
    needs_lengths: bool = False,
    batch_dependent: bool = False,
    needs_nonpositive_logps: bool = False,
    state: LossStateSpec | None = None,
    batch_inputs: Mapping[str, BatchInput] | None = None,
) -> Callable[[Callable[..., Tensor | Reported]], PairedLoss]:
    """Register a paired loss from a body `(t, *, hyper-parameters) -> per-example [B] | Reported`.

    `t` is a `PairedTerms` (ρ_w, ρ_l, Δ, …) when `needs_reference`, else a `PolicyPair` (no reference to
    read). The logged `rewards/*` are β·ρ with the loss's `beta`; a reference-free body returns its own in
    `Reported.rewards`. `needs_lengths`: the loss reads completion lengths (t.chosen_lengths, averages), so
    the registry requires them. `state`, `batch_inputs`: extra inputs the training loop serves from beyond one
    micro-batch (`prefopt.loss_state`). Other arguments as `prefopt.registry.register_loss`.
    """
    if needs_reference:
        _needs_beta(name, hparams, "reference-based paired")
    call_doc = _PAIRED_CALL + ("" if needs_reference else _REFERENCE_FREE)
    register = register_body(
        name,
        kind="paired",
        needs_reference=needs_reference,
        paper=paper,
        formula=formula,
        hparams=hparams,
        needs_lengths=needs_lengths,
        batch_dependent=batch_dependent,
        needs_nonpositive_logps=needs_nonpositive_logps,
        state=state,
        batch_inputs=batch_inputs,
        adapter=paired_adapter,
        call_doc=call_doc,
    )
    return lambda body: cast(PairedLoss, register(body))


def unpaired_loss(
    name: str,
    *,
    paper: str,
    formula: str,
    hparams: Sequence[HParam] = (),
    needs_lengths: bool = False,
    needs_nonpositive_logps: bool = False,
    state: LossStateSpec | None = None,
    batch_inputs: Mapping[str, BatchInput] | None = None,
) -> Callable[[Callable[Concatenate[UnpairedTerms, ...], Tensor | Reported]], UnpairedLoss]:
    """Register an unpaired loss from a body `(t: UnpairedTerms, *, hyper-parameters, extra inputs)`.

    Unpaired losses need the reference (t.ratio = ρ) and declare `beta`: the logged rewards are β·ρ class
    means (`unpaired_reward_metrics`). Extra inputs (KTO's `kl`, BCO's `state`) are keyword-only body
    parameters that are not hyper-parameters; they default to None in the public signature. `state` and
    `batch_inputs` declare how the training loop serves such inputs (`prefopt.loss_state`): KTO's `kl` is a
    statistic of the global batch, BCO's `state` a running mean kept across steps.
    """
    _needs_beta(name, hparams, "unpaired")
    register = register_body(
        name,
        kind="unpaired",
        needs_reference=True,
        paper=paper,
        formula=formula,
        hparams=hparams,
        needs_lengths=needs_lengths,
        needs_nonpositive_logps=needs_nonpositive_logps,
        state=state,
        batch_inputs=batch_inputs,
        adapter=unpaired_adapter,
        call_doc="Call: f(policy_logps, ref_logps, labels, *, lengths=None, **inputs) with [B] "
        "summed log-probs and bool labels, or f(policy_out, ref_out, labels).",
    )
    return lambda body: cast(UnpairedLoss, register(body))


def ranked_loss(
    name: str,
    *,
    paper: str,
    formula: str,
    hparams: Sequence[HParam] = (),
    needs_lengths: bool = False,
    state: LossStateSpec | None = None,
    batch_inputs: Mapping[str, BatchInput] | None = None,
) -> Callable[[Callable[Concatenate[RankedTerms, ...], Tensor | Reported]], RankedLoss]:
    """Register a ranked (K-wise) loss from a body `(t: RankedTerms, *, hyper-parameters)`.

    Ranked losses need the reference and declare `beta`: the logged metrics are `ranked_reward_metrics` of
    β·ρ plus `logps/chosen`, `logps/rejected` of the best and the worst completion. `state`, `batch_inputs`
    as `unpaired_loss`.
    """
    _needs_beta(name, hparams, "ranked")
    register = register_body(
        name,
        kind="ranked",
        needs_reference=True,
        paper=paper,
        formula=formula,
        hparams=hparams,
        needs_lengths=needs_lengths,
        state=state,
        batch_inputs=batch_inputs,
        adapter=ranked_adapter,
        call_doc="Call: f(policy_logps, ref_logps, *, lengths=None, **hyper-parameters) with "
        "[B, K] summed log-probs, best first, or f(policy_out, ref_out).",
    )
    return lambda body: cast(RankedLoss, register(body))


def rollout_loss(
    name: str,
    *,
    needs_reference: bool,
    paper: str,
    formula: str,
    hparams: Sequence[HParam] = (),
    needs_nonpositive_logps: bool = False,
    online_defaults: Mapping[str, int] | None = None,
    accepts_pair_loss: bool = False,
    rollout_inputs: Mapping[str, RolloutInput] | None = None,
) -> Callable[[Callable[..., LossOutput]], RolloutLoss]:
    """Register a rollout (online) loss from a body that names the inputs it reads and returns `LossOutput`.

    The body may take policy_logps, old_logps (the policy's, detached, when the caller passes None) and
    completion_mask [S, T] (bool) — non-optional — then keyword-only extra inputs (rewards, ref_logps,
    advantages, …; annotate `… | None` unless the registry guarantees them) and hyper-parameters.
    `online_defaults` sets the online loop's defaults for this algorithm (`ONLINE_DEFAULT_KEYS`).
    `accepts_pair_loss`: the loss trains on each prompt's best/worst pair, so the online loop may run a paired
    log-prob loss on those pairs in its place (`OnlineConfig.pair_loss`).
    `rollout_inputs`: {input: provider} the online loop computes once over the whole rollout before its
    minibatches (`prefopt.loss_state.RolloutBatch` → [S, T]), for statistics of the global batch.
    """
    register = register_body(
        name,
        kind="rollout",
        needs_reference=needs_reference,
        paper=paper,
        formula=formula,
        hparams=hparams,
        needs_nonpositive_logps=needs_nonpositive_logps,
        online_defaults=online_defaults,
        accepts_pair_loss=accepts_pair_loss,
        rollout_inputs=rollout_inputs,
    )
    return lambda body: cast(RolloutLoss, register(body))


def reward_model_loss(
    name: str,
    *,
    kind: Literal["paired", "ranked"],
    paper: str,
    formula: str,
    hparams: Sequence[HParam] = (),
) -> Callable[[Callable[..., LossOutput]], RewardModelLoss]:
    """Register a reward-model loss on scalar scores r(x, y) from a body naming the inputs it reads.

    paired: chosen_rewards, rejected_rewards [B]; ranked: rewards [B, K] best first (the public signature
    also accepts `lengths`, unused, like every ranked loss). Reward models have no reference.
    """
    register = register_body(
        name, kind=kind, scores="rewards", needs_reference=False, paper=paper, formula=formula, hparams=hparams
    )
    return lambda body: cast(RewardModelLoss, register(body))
