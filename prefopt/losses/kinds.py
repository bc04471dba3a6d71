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
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Concatenate, Literal, Protocol, cast, overload

from torch import Tensor

from prefopt.loss_inputs import EngineOutput, LossInputError
from prefopt.loss_state import BatchInput, LossStateSpec
from prefopt.losses.base import (
    LossOutput,
    detached_mean,
    pairwise_reward_metrics,
    ranked_reward_metrics,
    unpaired_reward_metrics,
)
from prefopt.losses.bodies import register_body
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


def _given(loss: str, name: str, value: Tensor | None) -> Tensor:
    if value is None:
        raise LossInputError(
            f"{loss} reads {name}: pass the number of completion tokens per sequence "
            f"(SequenceLogProbs.count), or the engine outputs themselves."
        )
    return value


@dataclass(frozen=True, kw_only=True)
class PolicyPair:
    """The policy's side of B preference pairs: what a reference-free paired body reads. Shapes [B].

    Attributes:
        loss: the loss's name (for error messages).
        chosen_logps, rejected_logps: log π_θ(y_w|x), log π_θ(y_l|x), sums over completion tokens.
        given_lengths: the caller's (chosen_lengths, rejected_lengths), read through the properties below.
    """

    loss: str
    chosen_logps: Tensor
    rejected_logps: Tensor
    given_lengths: tuple[Tensor | None, Tensor | None] = (None, None)

    @property
    def chosen_lengths(self) -> Tensor:
        """|y_w| in tokens (the registry requires them of a loss that declares needs_lengths=True)."""
        return _given(self.loss, "chosen_lengths", self.given_lengths[0])

    @property
    def rejected_lengths(self) -> Tensor:
        """|y_l| in tokens."""
        return _given(self.loss, "rejected_lengths", self.given_lengths[1])

    @cached_property
    def chosen_avg_logps(self) -> Tensor:
        """ℓ_w = log π_θ(y_w|x) / |y_w|, the length-averaged log-prob."""
        return self.chosen_logps / self.chosen_lengths

    @cached_property
    def rejected_avg_logps(self) -> Tensor:
        """ℓ_l = log π_θ(y_l|x) / |y_l|."""
        return self.rejected_logps / self.rejected_lengths

    @cached_property
    def policy_margin(self) -> Tensor:
        """log π_θ(y_w|x) − log π_θ(y_l|x)."""
        return self.chosen_logps - self.rejected_logps


@dataclass(frozen=True, kw_only=True)
class PairedTerms(PolicyPair):
    """B preference pairs under the policy and the reference: what a reference-based paired body reads.

    Adds ref_chosen_logps, ref_rejected_logps [B] (detached by the registry) and the log-ratio terms:
        chosen_ratio ρ_w = log π_θ(y_w) − log π_ref(y_w);  rejected_ratio ρ_l likewise
        margin Δ = ρ_w − ρ_l;  normalized_margin ρ_w/|y_w| − ρ_l/|y_l|;  ref_margin log π_ref(y_w) − log π_ref(y_l)
    """

    ref_chosen_logps: Tensor
    ref_rejected_logps: Tensor

    @cached_property
    def chosen_ratio(self) -> Tensor:
        """ρ_w = log π_θ(y_w|x) − log π_ref(y_w|x)."""
        return self.chosen_logps - self.ref_chosen_logps

    @cached_property
    def rejected_ratio(self) -> Tensor:
        """ρ_l = log π_θ(y_l|x) − log π_ref(y_l|x)."""
        return self.rejected_logps - self.ref_rejected_logps

    @cached_property
    def margin(self) -> Tensor:
        """Δ = ρ_w − ρ_l, the implicit-reward margin in log space."""
        return self.chosen_ratio - self.rejected_ratio

    @cached_property
    def normalized_margin(self) -> Tensor:
        """ρ_w/|y_w| − ρ_l/|y_l|, the margin of per-token log-ratios."""
        return self.chosen_ratio / self.chosen_lengths - self.rejected_ratio / self.rejected_lengths

    @cached_property
    def ref_margin(self) -> Tensor:
        """log π_ref(y_w|x) − log π_ref(y_l|x)."""
        return self.ref_chosen_logps - self.ref_rejected_logps


@dataclass(frozen=True, kw_only=True)
class UnpairedTerms:
    """B labelled completions: what an unpaired body reads. Shapes [B].

    Attributes:
        loss: the loss's name; logps, ref_logps: log π_θ(y|x), log π_ref(y|x) (sums); labels: bool, True =
        desirable; given_length: the caller's lengths (read through `lengths`); ratio ρ = logps − ref_logps.
    """

    loss: str
    logps: Tensor
    ref_logps: Tensor
    labels: Tensor
    given_length: Tensor | None = None

    @property
    def lengths(self) -> Tensor:
        """|y| in tokens."""
        return _given(self.loss, "lengths", self.given_length)

    @cached_property
    def ratio(self) -> Tensor:
        """ρ = log π_θ(y|x) − log π_ref(y|x)."""
        return self.logps - self.ref_logps


@dataclass(frozen=True, kw_only=True)
class RankedTerms:
    """B prompts with K completions each, best first: what a ranked body reads. Shapes [B, K].

    Attributes:
        loss: the loss's name; logps, ref_logps: summed log-probs under π_θ and π_ref; given_length: the
        caller's lengths (read through `lengths`); ratio ρ = logps − ref_logps.
    """

    loss: str
    logps: Tensor
    ref_logps: Tensor
    given_length: Tensor | None = None

    @property
    def lengths(self) -> Tensor:
        """|y| in tokens, [B, K]."""
        return _given(self.loss, "lengths", self.given_length)

    @cached_property
    def ratio(self) -> Tensor:
        """ρ = log π_θ(y_k|x) − log π_ref(y_k|x), [B, K]."""
        return self.logps - self.ref_logps


@dataclass(frozen=True)
class Reported:
    """A body's per-example loss with what it reports beyond the kind's standard metrics.

    Attributes:
        per_example: [B] per-example losses; the loss is their mean.
        metrics: extra metrics by name; a [B] tensor is logged as its detached float32 mean, a scalar tensor
            as it is (detached).
        rewards: paired losses only, the (chosen, rejected) rewards [B] behind `rewards/*` when they are not
            β·ρ (reference-free losses: e.g. β·logπ_θ/|y|).
    """

    per_example: Tensor
    metrics: Mapping[str, Tensor] = field(default_factory=dict)
    rewards: tuple[Tensor, Tensor] | None = None


def _reported(spec: LossSpec, out: Tensor | Reported, *, rewards: bool = False) -> Reported:
    if isinstance(out, Tensor):
        return Reported(out)
    if out.rewards is not None and not rewards:
        raise TypeError(f"{spec.name}: Reported.rewards is for paired losses; a {spec.kind} loss logs β·ρ")
    return out


def _logged(metrics: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach() if v.dim() == 0 else detached_mean(v) for k, v in metrics.items()}


def _output(per_example: Tensor, standard: dict[str, Tensor], extra: Mapping[str, Tensor]) -> LossOutput:
    return LossOutput(per_example.mean(), per_example, {**standard, **_logged(extra)})


# ── adapters: one call's arguments → the kind's terms → the body → LossOutput ─────────────────────────────


def _paired(spec: LossSpec, values: Mapping[str, Any], run: Callable[[Any], Any]) -> LossOutput:
    policy = dict(
        loss=spec.name,
        chosen_logps=values["policy_chosen_logps"],
        rejected_logps=values["policy_rejected_logps"],
        given_lengths=(values["chosen_lengths"], values["rejected_lengths"]),
    )
    terms = (
        PairedTerms(
            **policy, ref_chosen_logps=values["ref_chosen_logps"], ref_rejected_logps=values["ref_rejected_logps"]
        )
        if spec.needs_reference
        else PolicyPair(**policy)
    )
    out = _reported(spec, run(terms), rewards=True)
    if out.rewards is not None:
        rewards = out.rewards
    elif isinstance(terms, PairedTerms):
        rewards = (values["beta"] * terms.chosen_ratio, values["beta"] * terms.rejected_ratio)
    else:
        raise TypeError(f"{spec.name}: a reference-free paired loss returns Reported(..., rewards=(chosen, rejected))")
    standard = pairwise_reward_metrics(*rewards, terms.chosen_logps, terms.rejected_logps)
    return _output(out.per_example, standard, out.metrics)


def _unpaired(spec: LossSpec, values: Mapping[str, Any], run: Callable[[Any], Any]) -> LossOutput:
    terms = UnpairedTerms(
        loss=spec.name,
        logps=values["policy_logps"],
        ref_logps=values["ref_logps"],
        labels=values["labels"],
        given_length=values["lengths"],
    )
    out = _reported(spec, run(terms))
    standard = unpaired_reward_metrics(values["beta"] * terms.ratio, terms.logps, terms.labels)
    return _output(out.per_example, standard, out.metrics)


def _ranked(spec: LossSpec, values: Mapping[str, Any], run: Callable[[Any], Any]) -> LossOutput:
    terms = RankedTerms(
        loss=spec.name, logps=values["policy_logps"], ref_logps=values["ref_logps"], given_length=values["lengths"]
    )
    out = _reported(spec, run(terms))
    standard = ranked_reward_metrics(values["beta"] * terms.ratio)
    standard["logps/chosen"] = terms.logps[:, 0].detach().float().mean()
    standard["logps/rejected"] = terms.logps[:, -1].detach().float().mean()
    return _output(out.per_example, standard, out.metrics)


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
        adapter=_paired,
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
        adapter=_unpaired,
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
        adapter=_ranked,
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
) -> Callable[[Callable[..., LossOutput]], RolloutLoss]:
    """Register a rollout (online) loss from a body that names the inputs it reads and returns `LossOutput`.

    The body may take policy_logps, old_logps (the policy's, detached, when the caller passes None) and
    completion_mask [S, T] (bool) — non-optional — then keyword-only extra inputs (rewards, ref_logps,
    advantages, …; annotate `… | None` unless the registry guarantees them) and hyper-parameters.
    `online_defaults` sets the online loop's defaults for this algorithm (`ONLINE_DEFAULT_KEYS`).
    `accepts_pair_loss`: the loss trains on each prompt's best/worst pair, so the online loop may run a paired
    log-prob loss on those pairs in its place (`OnlineConfig.pair_loss`).
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
