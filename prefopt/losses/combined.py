"""The declaration and the call of a weighted sum of registered losses (`prefopt.losses.combine` builds them).

    CombinedSpec    a `LossSpec` whose hyper-parameters are its parts', named `part.name` (`dpo.beta`), whose
                    `parts` are (the part's spec, its weight), whose state and batch inputs are the parts'
    CombinedLoss    a `BoundLoss` of it; a call's hyper-parameters, shared (`beta`) or a part's, override it
    CombinedState   the parts' running states, each under its part's name (saved so in checkpoints)

The call passes its arguments to every part as given (tensors or engine outputs; each part checks them), the
lengths and extra inputs to the parts that take them and each part its own hyper-parameters, and returns
Σ weight·part of the losses and of the per-example losses, with each part's loss and metrics under its name.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from prefopt.loss_inputs import KIND_INPUTS, LENGTH_INPUTS, EngineOutput
from prefopt.loss_state import BatchInput, GlobalBatch, LossState, LossStateSpec
from prefopt.losses.base import LossOutput
from prefopt.registry import BoundLoss, LossInputError, LossSpec, UnknownLossError
from prefopt.registry.spec import _unknown

__all__ = ["MPO_PAPER", "CombinedLoss", "CombinedSpec", "CombinedState", "combined_spec", "weight_text"]

MPO_PAPER = (
    "Wang et al. 2024, Enhancing the Reasoning Ability of Multimodal Large Language Models via Mixed Preference "
    "Optimization, arXiv:2411.10442"
)
Parts = tuple[tuple[LossSpec, float], ...]


def weight_text(weight: float) -> str:
    """A weight as the spelling writes it: the shortest text that reads back as the same float, without "+"."""
    text = repr(float(weight)).replace("e+", "e")
    return text[:-2] if text.endswith(".0") else text


@dataclass(frozen=True)
class CombinedSpec(LossSpec):
    """The declaration of a weighted sum of registered losses: a `LossSpec` whose hyper-parameters are its
    parts', named `part.name`, and whose `parts` are (the part's spec, its weight)."""

    parts: Parts = ()

    def part_hparams(self, hparams: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Per part, the values `hparams` gives it, validated: a shared name (`beta`) goes to every part that
        declares it, then a part's own (`dpo.beta`) over it. A name no part takes raises `UnknownLossError`."""
        known = {h.name: h for h in self.hparams}
        index = {spec.name: i for i, (spec, _) in enumerate(self.parts)}
        out: list[dict[str, Any]] = [{} for _ in self.parts]
        for key, value in sorted(hparams.items(), key=lambda item: "." in item[0]):  # shared first: a part's wins
            targets = [key] if "." in key else [f"{spec.name}.{key}" for spec, _ in self.parts]
            targets = [t for t in targets if t in known]
            if not targets:
                raise UnknownLossError(self._unknown_hparam(key))
            for target in targets:
                part, _, name = target.partition(".")
                out[index[part]][name] = known[target].validate(self.name, value)
        return out

    def validate_hparams(self, hparams: Mapping[str, Any]) -> dict[str, Any]:
        """Check names and values; returns them per part (`dpo.beta`), shared names expanded."""
        per_part = self.part_hparams(hparams)
        return {f"{spec.name}.{k}": v for (spec, _), values in zip(self.parts, per_part) for k, v in values.items()}

    def _unknown_hparam(self, key: str) -> str:
        part, dot, _ = key.partition(".")
        names = [spec.name for spec, _ in self.parts]
        if dot and part not in names:
            return f"{self.name}: {_unknown('part', part, names)} Set a part's hyper-parameter as PART.NAME."
        takes = "; ".join(f"{s.name}: {', '.join(h.name for h in s.hparams) or 'none'}" for s, _ in self.parts)
        valid = [h.name for h in self.hparams] + sorted({h.name.partition(".")[2] for h in self.hparams})
        near = difflib.get_close_matches(key, valid, n=3)
        hint = f" Did you mean {', '.join(repr(n) for n in near)}?" if near else ""
        return f"{self.name}: no part takes hyper-parameter {key!r} (its parts take {takes}).{hint}"


@dataclass(frozen=True, repr=False)
class CombinedLoss(BoundLoss):
    """A combination with its hyper-parameters bound, per part (`dpo.beta`). A call's hyper-parameters, shared
    or a part's, override the bound ones for that call."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        named = inspect.signature(self.spec.fn).parameters
        inputs = {k: v for k, v in kwargs.items() if k in named and k != "hparams"}
        given = self.spec.validate_hparams({k: v for k, v in kwargs.items() if k not in inputs})
        return self.spec.fn(*args, **inputs, **{**self.hparams, **given})


@dataclass
class CombinedState:
    """The running states of a combination's parts, each under its part's name (a `prefopt.loss_state.LossState`).
    `observe` returns [S, P], one column per stateful part; `update` gives each part its column."""

    states: dict[str, LossState]

    def inputs(self) -> dict[str, Any]:
        return {name: value for state in self.states.values() for name, value in state.inputs().items()}

    def observe(self, policy: EngineOutput, reference: EngineOutput | None) -> Tensor:
        stats = [state.observe(policy, reference) for state in self.states.values()]
        return torch.stack([s.to(stats[0].dtype) for s in stats], dim=-1)  # [S, P]

    def update(self, stats: Tensor) -> None:
        for column, state in enumerate(self.states.values()):
            state.update(stats[..., column])

    def state_dict(self) -> dict[str, Any]:
        return {name: state.state_dict() for name, state in self.states.items()}

    def load_state_dict(self, saved: Mapping[str, Any]) -> None:
        for name, state in self.states.items():
            state.load_state_dict(saved[name])


class _PartBatch:
    """The global batch as one part's `batch_inputs` provider sees it: with that part's hyper-parameters."""

    def __init__(self, batch: GlobalBatch, hparams: Mapping[str, Any]) -> None:
        self._batch, self.hparams = batch, hparams
        self.rows, self.positions = batch.rows, batch.positions

    def score(self, rows: Sequence[Mapping[str, Any]]) -> tuple[EngineOutput, EngineOutput]:
        return self._batch.score(rows)

    def all_reduce_sum(self, values: Tensor) -> Tensor:
        return self._batch.all_reduce_sum(values)


_SPECS: dict[str, CombinedSpec] = {}


def combined_spec(parts: Parts) -> CombinedSpec:
    """The declaration of Σ weight·part over checked `parts` (`prefopt.losses.combine` checks them), built once per
    spelling, and again when a part was registered anew."""
    name = "+".join(f"{spec.name}:{weight_text(weight)}" for spec, weight in parts)
    cached = _SPECS.get(name)
    if cached is None or any(a is not b for (a, _), (b, _) in zip(cached.parts, parts)):
        cached = _SPECS[name] = _build_spec(name, parts)
    return cached


def _build_spec(name: str, parts: Parts) -> CombinedSpec:
    specs = [spec for spec, _ in parts]
    first = specs[0]
    extra = tuple(dict.fromkeys(n for spec in specs for n in spec.extra_inputs))
    signature = _signature(first, extra)
    accepted = [set(inspect.signature(spec.fn).parameters) - set(first.inputs) for spec in specs]
    stateful, providers = _served(name, specs)

    def combined(*args: Any, **kwargs: Any) -> LossOutput:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as err:
            valid = ", ".join([*signature.parameters][:-1])
            names = ", ".join(h.name for h in spec.hparams) or "none"
            raise UnknownLossError(f"{name}: {err}. Valid arguments: {valid}; hyper-parameters: {names}.") from None
        values = dict(bound.arguments)
        per_part = spec.part_hparams(values.pop("hparams", {}))
        positional = [values.get(n) for n in first.inputs]
        outputs = [
            part.fn(*positional, **{n: v for n, v in values.items() if n in takes and v is not None}, **hparams)
            for part, takes, hparams in zip(specs, accepted, per_part)
        ]
        return _weighted(parts, outputs)

    def init_state(hparams: Mapping[str, Any]) -> CombinedState:
        per_part = dict(zip((s.name for s in specs), spec.part_hparams(hparams)))
        return CombinedState({s.name: s.state.init({**s.defaults(), **per_part[s.name]}) for s in stateful})  # type: ignore[union-attr]

    def provider(index: int, provide: BatchInput) -> BatchInput:
        part = specs[index]
        return lambda batch: provide(_PartBatch(batch, {**part.defaults(), **spec.part_hparams(batch.hparams)[index]}))

    state_inputs = tuple(n for s in stateful for n in s.state.inputs)  # type: ignore[union-attr]
    includes_current = {s.state.includes_current for s in stateful}  # type: ignore[union-attr]
    if len(includes_current) > 1:
        raise LossInputError(
            f"{name}: {', '.join(s.name for s in stateful)} update their running states at different times (before "
            f"a micro-batch's loss, or after the step: LossStateSpec.includes_current), so one loop cannot keep both"
        )
    spec = CombinedSpec(
        name=name,
        kind=first.kind,
        needs_reference=any(s.needs_reference for s in specs),
        paper=f"{MPO_PAPER} (MPO, a weighted sum of losses); each part's paper: `prefopt losses PART`",
        formula=" + ".join(f"{weight_text(weight)}·L_{s.name}" for s, weight in parts),
        hparams=tuple(replace(h, name=f"{s.name}.{h.name}") for s in specs for h in s.hparams),
        needs_lengths=any(s.needs_lengths for s in specs),
        scores=first.scores,
        summary=f"A weighted sum of {', '.join(s.name for s in specs)} (prefopt.combine_losses).",
        extra_inputs=extra,
        fn=combined,
        batch_dependent=any(s.batch_dependent for s in specs),
        needs_nonpositive_logps=any(s.needs_nonpositive_logps for s in specs),
        state=LossStateSpec(state_inputs, init_state, includes_current=True in includes_current) if stateful else None,
        batch_inputs=MappingProxyType({n: provider(i, p) for n, (i, p) in providers.items()}),
        parts=parts,
    )
    combined.__signature__ = signature  # type: ignore[attr-defined]
    combined.__name__ = combined.__qualname__ = "combined_loss"
    combined.__doc__ = f"{spec.summary} L = {spec.formula}."
    combined.spec = spec  # type: ignore[attr-defined]
    return spec


def _signature(first: LossSpec, extra: tuple[str, ...]) -> inspect.Signature:
    """The kind's inputs (optional from the first reference input on), keyword-only lengths and extra inputs
    (default None), then the parts' hyper-parameters as `**hparams` (`beta`, `dpo.beta`)."""
    Parameter = inspect.Parameter
    params, optional = [], False
    for n in KIND_INPUTS[(first.kind, first.scores)]:
        optional = optional or n.startswith("ref_")
        params.append(Parameter(n, Parameter.POSITIONAL_OR_KEYWORD, default=None if optional else Parameter.empty))
    for n in (*LENGTH_INPUTS[first.kind], *extra):
        params.append(Parameter(n, Parameter.KEYWORD_ONLY, default=None))
    params.append(Parameter("hparams", Parameter.VAR_KEYWORD))
    return inspect.Signature(params, return_annotation="LossOutput")


def _served(name: str, specs: list[LossSpec]) -> tuple[list[LossSpec], dict[str, tuple[int, BatchInput]]]:
    """The parts whose running state the combination keeps, and each batch input's (part index, provider).
    Refuses an input name two parts serve differently, or one part serves and another takes as a plain input."""
    owner: dict[str, tuple[str, object]] = {}
    stateful: list[LossSpec] = []
    providers: dict[str, tuple[int, BatchInput]] = {}
    for index, spec in enumerate(specs):
        ways = [(n, spec.state) for n in (spec.state.inputs if spec.state else ())] + list(spec.batch_inputs.items())
        for n, how in ways:
            if n in owner and owner[n][1] is not how:
                raise LossInputError(
                    f"{name}: {owner[n][0]} and {spec.name} both take the input {n!r}, each served its own way "
                    f"(prefopt.loss_state), so they cannot be combined"
                )
            owner.setdefault(n, (spec.name, how))
        if spec.state is not None and all(owner[n][0] == spec.name for n in spec.state.inputs):
            stateful.append(spec)
        providers.update({n: (index, p) for n, p in spec.batch_inputs.items() if owner[n][0] == spec.name})
    for spec in specs:
        served_here = {*(spec.state.inputs if spec.state else ()), *spec.batch_inputs}
        clash = [n for n in spec.extra_inputs if n in owner and n not in served_here]
        if clash:
            raise LossInputError(
                f"{name}: {spec.name} takes {clash[0]!r} as a plain input, which the training loop serves to "
                f"{owner[clash[0]][0]}, so they cannot be combined"
            )
    return stateful, providers


def _weighted(parts: Parts, outputs: list[LossOutput]) -> LossOutput:
    """Σ weight·part of the losses and the per-example losses; every part's loss and metrics under its name."""
    weights = [weight for _, weight in parts]
    loss = sum(weight * out.loss for weight, out in zip(weights, outputs))
    per_example = sum(weight * out.per_example for weight, out in zip(weights, outputs))
    metrics: dict[str, Tensor] = {}
    for (spec, _), out in zip(parts, outputs):
        metrics[f"{spec.name}/loss"] = out.loss.detach()
        metrics.update({f"{spec.name}/{k}": v for k, v in out.metrics.items()})
    return LossOutput(loss, per_example, metrics)  # type: ignore[arg-type]  # sums of tensors
