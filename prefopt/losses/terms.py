"""What a loss body receives: the kind's terms object, built from one call's checked inputs
(`prefopt.losses.kinds` builds them and calls the body), and `Reported`, what a body may return.

    PolicyPair       the policy's side of B pairs (a reference-free paired body)
    PairedTerms      PolicyPair plus the reference: ρ_w, ρ_l, Δ, per-token margin
    UnpairedTerms    [B] log-probs, labels and ρ
    RankedTerms      [B, K] log-probs, best first, and ρ
    Reported         a per-example loss with extra metrics (and, reference-free paired, its rewards)

The adapters (`paired_adapter`, `unpaired_adapter`, `ranked_adapter`, `prefopt.losses.bodies.Adapter`) build a
call's terms, run the body on them, and assemble the `LossOutput` with the kind's standard metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from torch import Tensor

from prefopt.loss_inputs import LossInputError
from prefopt.losses.base import (
    LossOutput,
    detached_mean,
    pairwise_reward_metrics,
    ranked_reward_metrics,
    unpaired_reward_metrics,
)
from prefopt.registry import LossSpec

__all__ = [
    "PolicyPair",
    "PairedTerms",
    "UnpairedTerms",
    "RankedTerms",
    "Reported",
    "paired_adapter",
    "unpaired_adapter",
    "ranked_adapter",
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


def paired_adapter(spec: LossSpec, values: Mapping[str, Any], run: Callable[[Any], Any]) -> LossOutput:
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


def unpaired_adapter(spec: LossSpec, values: Mapping[str, Any], run: Callable[[Any], Any]) -> LossOutput:
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


def ranked_adapter(spec: LossSpec, values: Mapping[str, Any], run: Callable[[Any], Any]) -> LossOutput:
    terms = RankedTerms(
        loss=spec.name, logps=values["policy_logps"], ref_logps=values["ref_logps"], given_length=values["lengths"]
    )
    out = _reported(spec, run(terms))
    standard = ranked_reward_metrics(values["beta"] * terms.ratio)
    standard["logps/chosen"] = terms.logps[:, 0].detach().float().mean()
    standard["logps/rejected"] = terms.logps[:, -1].detach().float().mean()
    return _output(out.per_example, standard, out.metrics)
