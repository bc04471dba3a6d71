"""The loss registry: every loss declares its contract as data that trainers, the CLI and the docs read.

    @register_loss("dpo", kind="paired", needs_reference=True, paper=..., formula=...,
                   hparams=[HParam("beta", 0.1, "KL strength β", POSITIVE)])
    def dpo(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps=None,
            ref_rejected_logps=None, *, chosen_lengths=None, rejected_lengths=None, beta=0.1):
        ...

The decorator returns a checked wrapper: hyper-parameters are validated against their domains,
input tensors against the kind's shapes, a missing reference or missing lengths raise an error that
says what to pass, and low-precision inputs are upcast to float32. Engine outputs (`SequenceLogProbs`)
may stand in for a kind's log-prob tensors: their counts become the lengths, and a zero count raises.
Labels must be bool or 0/1; a loss that declares `needs_nonpositive_logps` refuses positive policy
log-probs. The loss body is pure tensor math.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import Tensor

from prefopt.loss_inputs import (
    KIND_INPUTS,
    LENGTH_INPUTS,
    ROLLOUT_TOKEN_INPUTS,
    LossInputError,
    check_inputs,
)

__all__ = [
    "HParam",
    "Interval",
    "LossSpec",
    "BoundLoss",
    "LossInputError",
    "UnknownLossError",
    "register_loss",
    "get_loss",
    "list_losses",
    "loss_spec",
    "KIND_INPUTS",
    "LENGTH_INPUTS",
    "ROLLOUT_TOKEN_INPUTS",
    "POSITIVE",
    "NON_NEGATIVE",
    "UNIT_OPEN",
    "HALF_OPEN",
]

Kind = Literal["paired", "unpaired", "ranked", "rollout"]
Scores = Literal["logps", "rewards"]

class UnknownLossError(ValueError):
    """An unknown loss or hyper-parameter name; the message lists the valid ones."""


@dataclass(frozen=True)
class Interval:
    """A real interval used as a hyper-parameter domain, e.g. `Interval(0, 0.5)` is (0, 0.5)."""

    lo: float = -math.inf
    hi: float = math.inf
    lo_closed: bool = False
    hi_closed: bool = False

    def __contains__(self, x: float) -> bool:
        above = x >= self.lo if self.lo_closed else x > self.lo
        below = x <= self.hi if self.hi_closed else x < self.hi
        return above and below

    def __str__(self) -> str:
        lo = f"[{self.lo:g}" if self.lo_closed else f"({self.lo:g}"
        hi = f"{self.hi:g}]" if self.hi_closed else f"{self.hi:g})"
        return f"{lo}, {hi}".replace("inf", "∞")


POSITIVE = Interval(0.0, math.inf)
NON_NEGATIVE = Interval(0.0, math.inf, lo_closed=True)
UNIT_OPEN = Interval(0.0, 1.0)
HALF_OPEN = Interval(0.0, 0.5)


@dataclass(frozen=True)
class HParam:
    """One hyper-parameter: name, the paper's default, a one-line meaning and its valid domain.

    `default=None` marks an optional hyper-parameter (None is then always accepted).
    """

    name: str
    default: Any
    help: str
    domain: Interval | None = None
    choices: tuple[Any, ...] | None = None

    def validate(self, loss: str, value: Any) -> Any:
        if value is None and self.default is None:
            return None
        if self.choices is not None:
            if value not in self.choices:
                raise LossInputError(
                    f"{loss}: {self.name}={value!r} is not one of {list(self.choices)}; {self.help}"
                )
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, Tensor) and value.numel() == 1:
                value = float(value)
            else:
                raise LossInputError(f"{loss}: {self.name} must be a number, got {value!r}; {self.help}")
        if not math.isfinite(value) or (self.domain is not None and value not in self.domain):
            raise LossInputError(
                f"{loss}: {self.name}={value!r} is outside its domain {self.domain}; {self.help} "
                f"(paper default: {self.default})"
            )
        return value


@dataclass(frozen=True)
class LossSpec:
    """The declaration of a registered loss: data that trainers, the CLI and the docs read."""

    name: str
    kind: str
    needs_reference: bool
    paper: str
    formula: str
    hparams: tuple[HParam, ...]
    needs_lengths: bool
    scores: str
    summary: str
    extra_inputs: tuple[str, ...]
    fn: Callable[..., Any] = field(repr=False, compare=False)
    # True when one example's loss depends on the others in the batch (e.g. AOT sorts over the batch):
    # such a loss is not separable, so micro-batched gradient accumulation or data parallelism changes it.
    batch_dependent: bool = False
    # True when the loss reads the policy's log-probs as probabilities (an NLL, odds, exp as a weight), so a
    # positive "log-prob" would silently give a wrong loss: the wrapper refuses one (loss_inputs.LOGP_TOLERANCE).
    needs_nonpositive_logps: bool = False

    @property
    def inputs(self) -> tuple[str, ...]:
        return KIND_INPUTS[(self.kind, self.scores)]

    def defaults(self) -> dict[str, Any]:
        return {h.name: h.default for h in self.hparams}

    def validate_hparams(self, hparams: Mapping[str, Any]) -> dict[str, Any]:
        """Check names and values; unknown names raise an error listing the valid ones."""
        known = {h.name: h for h in self.hparams}
        out = {}
        for key, value in hparams.items():
            if key not in known:
                raise UnknownLossError(_unknown(f"hyper-parameter of loss '{self.name}'", key, list(known)))
            out[key] = known[key].validate(self.name, value)
        return out

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


@dataclass(frozen=True)
class BoundLoss:
    """A registered loss with its hyper-parameters fixed: `get_loss("kto", beta=0.1)(...)`."""

    spec: LossSpec
    hparams: Mapping[str, Any]

    @property
    def name(self) -> str:
        return self.spec.name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.spec.fn(*args, **{**self.hparams, **kwargs})

    def __repr__(self) -> str:
        merged = {**self.spec.defaults(), **self.hparams}
        return f"{self.spec.name}({', '.join(f'{k}={v!r}' for k, v in merged.items())})"


_REGISTRY: dict[str, LossSpec] = {}


def _unknown(what: str, name: str, valid: Sequence[str]) -> str:
    near = difflib.get_close_matches(name, valid, n=3)
    hint = f" Did you mean {', '.join(repr(n) for n in near)}?" if near else ""
    return f"unknown {what}: {name!r}.{hint} Valid: {', '.join(sorted(valid)) or '(none)'}."


def _ensure_registered() -> None:
    # Importing the family modules registers their losses; done lazily so `prefopt.registry` has no
    # import-time dependency on them.
    import prefopt.losses  # noqa: F401


def list_losses(kind: str | None = None) -> list[str]:
    """Names of registered losses (sorted), optionally only those of one data kind."""
    _ensure_registered()
    return sorted(n for n, s in _REGISTRY.items() if kind is None or s.kind == kind)


def loss_spec(name: str) -> LossSpec:
    """The declaration of loss `name`; an unknown name raises an error listing the valid ones."""
    _ensure_registered()
    if name not in _REGISTRY:
        raise UnknownLossError(_unknown("loss", name, list(_REGISTRY)))
    return _REGISTRY[name]


def get_loss(name: str, **hparams: Any) -> BoundLoss:
    """The loss `name` with hyper-parameters bound (validated now, paper defaults for the rest)."""
    spec = loss_spec(name)
    return BoundLoss(spec, spec.validate_hparams(hparams))


def register_loss(
    name: str,
    *,
    kind: str,
    needs_reference: bool,
    paper: str,
    formula: str,
    hparams: Sequence[HParam] = (),
    needs_lengths: bool = False,
    scores: str = "logps",
    batch_dependent: bool = False,
    needs_nonpositive_logps: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a loss function under `name` and return its checked public wrapper.

    The function must take the kind's canonical inputs first (`KIND_INPUTS`), then keyword-only
    lengths, extra inputs and hyper-parameters whose defaults equal the declared `HParam` defaults.
    `batch_dependent=True` declares that one example's loss depends on the rest of the batch, so trainers
    refuse to split its batch across micro-batches or processes. `needs_nonpositive_logps=True` declares that
    the loss reads the policy's log-probs as probabilities, so the wrapper refuses positive ones.
    """
    if (kind, scores) not in KIND_INPUTS:
        raise ValueError(f"register_loss({name!r}): unknown kind/scores {(kind, scores)}; known: {list(KIND_INPUTS)}")

    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            raise ValueError(f"register_loss: a loss named {name!r} is already registered")
        sig = inspect.signature(fn)
        params = list(sig.parameters.values())
        inputs = KIND_INPUTS[(kind, scores)]
        if tuple(p.name for p in params[: len(inputs)]) != inputs:
            raise TypeError(f"loss {name!r} must take {inputs} first, got {[p.name for p in params]}")
        keyword = {p.name: p for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
        for h in hparams:
            if h.name not in keyword or keyword[h.name].default != h.default:
                raise TypeError(f"loss {name!r}: hyper-parameter {h.name!r} must be keyword-only with default {h.default!r}")
        hp_names = {h.name for h in hparams}
        extra = tuple(n for n in keyword if n not in hp_names and n not in LENGTH_INPUTS.get(kind, ()))

        @functools.wraps(fn)
        def checked(*args: Any, **kwargs: Any) -> Any:
            try:
                bound = sig.bind(*args, **kwargs)
            except TypeError as err:
                valid = [p.name for p in params]
                raise UnknownLossError(f"{name}: {err}. Valid arguments: {', '.join(valid)}.") from None
            values = bound.arguments
            for h in hparams:
                if h.name in values:
                    values[h.name] = h.validate(name, values[h.name])
            check_inputs(spec, values, reference_free=_reference_free)
            return fn(*bound.args, **bound.kwargs)

        summary = (inspect.getdoc(fn) or "").split("\n\n")[0].replace("\n", " ")
        spec = LossSpec(name, kind, needs_reference, paper, formula, tuple(hparams), needs_lengths,
                        scores, summary, extra, checked, batch_dependent, needs_nonpositive_logps)
        _REGISTRY[name] = spec
        checked.spec = spec  # type: ignore[attr-defined]
        return checked

    return decorator


def _reference_free(kind: str) -> list[str]:
    return [n for n, s in _REGISTRY.items() if s.kind == kind and not s.needs_reference] or ["none registered"]
