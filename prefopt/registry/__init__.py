"""The loss registry: every loss declares its contract as data that trainers, the CLI and the docs read.

A loss is a *body* (its formula) plus a declaration (name, data kind, reference, hyper-parameters with
their paper defaults, paper). `prefopt.losses.kinds` has one registration helper per data kind; each
supplies the kind's canonical public signature, the checks, the kind's standard terms (log-ratios,
margins, average log-probs) and the assembly of `LossOutput` with the metrics the field logs, so a
paired body is one expression of a `PairedTerms`.

Adding a paired loss: one decorated function in its family file (and its name in that file's
`__all__`), plus a test of hand-computed values; then regenerate docs/losses.md and the README's loss
count (tests/test_package.py checks both). This runs as written (tests/losses/test_kinds.py):

    import torch
    from torch import Tensor

    import prefopt
    from prefopt.losses.base import neg_logsigmoid
    from prefopt.losses.kinds import PairedTerms, paired_loss
    from prefopt.registry import NON_NEGATIVE, POSITIVE, HParam

    @paired_loss(
        "margin_dpo",
        needs_reference=True,
        paper="(your citation, with the equation number)",
        formula="−log σ(β·Δ − γ)",
        hparams=[HParam("beta", 0.1, "inverse temperature β of the implicit reward", POSITIVE),
                 HParam("gamma", 0.5, "target margin γ of the logit β·Δ", NON_NEGATIVE)],
    )
    def margin_dpo(t: PairedTerms, *, beta: float, gamma: float) -> Tensor:
        \"\"\"DPO with a target margin: the logit β·Δ must exceed γ.\"\"\"
        return neg_logsigmoid(beta * t.margin - gamma)  # [B]

    policy_chosen = torch.tensor([-12.0, -30.5], requires_grad=True)
    policy_rejected = torch.tensor([-14.0, -29.0], requires_grad=True)
    ref_chosen, ref_rejected = torch.tensor([-12.5, -31.0]), torch.tensor([-13.0, -29.5])
    out = prefopt.get_loss("margin_dpo", gamma=0.2)(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    out.loss.backward()
    assert set(out.metrics) >= {"rewards/chosen", "rewards/margins", "rewards/accuracies", "logps/chosen"}

What the helper does with that body:
  * The public function `prefopt.losses.margin_dpo` has the kind's canonical signature, built from the
    declaration: `(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps=None,
    ref_rejected_logps=None, *, chosen_lengths=None, rejected_lengths=None, beta=0.1, gamma=0.5)`.
    The defaults come from the `HParam`s only; a body parameter with a default is refused, and so is a
    declared hyper-parameter that the body does not take (it would be accepted and ignored).
  * Each call is bound to that signature, hyper-parameters are validated against their domains, inputs
    against the kind's contract (`prefopt.loss_inputs.check_inputs`: shapes, a missing reference, missing
    or zero lengths, labels, engine outputs, detaching the reference, upcasting to float32). The body then
    receives only what it declares: the kind's terms object and its keyword-only hyper-parameters and
    extra inputs. A body parameter annotated without `None` never receives None (no `assert … is not None`).
  * Reference-free losses (`needs_reference=False`) keep the uniform call: the trainers and
    `get_loss(name)(policy_chosen, policy_rejected, ref_chosen, ref_rejected, **lengths)` call every
    paired loss alike, so the reference arguments are accepted, checked like any input (shape, all or
    none), detached, and not passed on: the body receives a `PolicyPair`, which has no reference to read.
  * The output: a body returns the per-example loss [B], or `Reported(per_example, metrics=…, rewards=…)`
    for extra metrics or rewards other than β·ρ; the helper adds the kind's standard metrics.

Rollout and reward-model bodies declare by name the inputs they read (`rollout_loss`,
`reward_model_loss`): no terms object, the same rules for defaults and None (`prefopt.losses.bodies`).
`register_loss` remains for a loss whose whole signature is written by hand (defaults then repeat the
`HParam`s).

Inputs from beyond one micro-batch are declared too, so the training loop never names a loss: `state`
(running state kept across steps and saved in checkpoints, e.g. BCO's δ) and `batch_inputs` (statistics of
the global batch, e.g. KTO's z₀), see `prefopt.loss_state`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ParamSpec, TypeVar

from prefopt.errors import UnknownLossError
from prefopt.loss_inputs import (
    KIND_INPUTS,
    LENGTH_INPUTS,
    ROLLOUT_TOKEN_INPUTS,
    LossInputError,
    check_inputs,
)
from prefopt.loss_state import BatchInput, LossStateSpec, RolloutInput
from prefopt.registry.spec import (
    HALF_OPEN,
    NON_NEGATIVE,
    ONLINE_DEFAULT_KEYS,
    POSITIVE,
    UNIT_OPEN,
    BoundLoss,
    HParam,
    Interval,
    Kind,
    LossSpec,
    Scores,
    _unknown,
    install_registered,
)

__all__ = [
    "HParam",
    "Interval",
    "LossSpec",
    "LossStateSpec",
    "BoundLoss",
    "LossInputError",
    "UnknownLossError",
    "register_loss",
    "register_combinations",
    "COMBINATION_MARKS",
    "LossDeclaration",
    "get_loss",
    "list_losses",
    "loss_spec",
    "KIND_INPUTS",
    "LENGTH_INPUTS",
    "ONLINE_DEFAULT_KEYS",
    "ROLLOUT_TOKEN_INPUTS",
    "POSITIVE",
    "NON_NEGATIVE",
    "UNIT_OPEN",
    "HALF_OPEN",
    "Kind",
    "Scores",
]

P = ParamSpec("P")
R = TypeVar("R")


# Filled by the family modules' @register_loss. Importing any prefopt module first runs prefopt/__init__.py,
# which imports prefopt.losses, so the registry is complete before anyone can query it (and this module,
# a layer below the losses, never imports them).
_REGISTRY: dict[str, LossSpec] = {}
# Unknown hyper-parameters' errors point to the registered losses that take the name (spec.hparam_hint); the
# lambda reads the table at call time, so a test that swaps `_REGISTRY` for a copy is seen too.
install_registered(lambda: _REGISTRY.values())

# A weighted combination of registered losses is named by its spelling, "dpo:0.8+sft:1", wherever a loss name
# goes; it is never registered (list_losses() lists single losses only). `prefopt.losses.combine` installs the
# function that binds a spelling here when prefopt is imported, as the families fill _REGISTRY.
COMBINATION_MARKS = ("+", ":")
_COMBINATIONS: list[Callable[[str, Mapping[str, Any]], BoundLoss]] = []


def register_combinations(bind: Callable[[str, Mapping[str, Any]], BoundLoss]) -> None:
    """Install `bind(spelling, hparams) -> BoundLoss`, which `loss_spec` and `get_loss` call for a name that
    spells a combination (holds one of `COMBINATION_MARKS`); `prefopt.losses.combine` is the one caller."""
    _COMBINATIONS[:] = [bind]


def _combination(name: str) -> Callable[[str, Mapping[str, Any]], BoundLoss] | None:
    if name in _REGISTRY or not _COMBINATIONS or not any(mark in name for mark in COMBINATION_MARKS):
        return None
    return _COMBINATIONS[0]


def list_losses(kind: str | None = None) -> list[str]:
    """Names of registered losses (sorted), optionally only those of one data kind."""
    return sorted(n for n, s in _REGISTRY.items() if kind is None or s.kind == kind)


def loss_spec(name: str) -> LossSpec:
    """The declaration of loss `name` (or of a combination's spelling, "dpo:0.8+sft:1"); an unknown name
    raises an error listing the valid ones."""
    bind = _combination(name)
    if bind is not None:
        return bind(name, {}).spec
    if name not in _REGISTRY:
        raise UnknownLossError(_unknown("loss", name, list(_REGISTRY)))
    return _REGISTRY[name]


def get_loss(name: str, **hparams: Any) -> BoundLoss:
    """The loss `name` with hyper-parameters bound (validated now, paper defaults for the rest). A combination's
    spelling gives `prefopt.combine_losses` of its parts, `hparams` shared by every part that takes them."""
    bind = _combination(name)
    if bind is not None:
        return bind(name, hparams)
    spec = loss_spec(name)
    return BoundLoss(spec, spec.validate_hparams(hparams))


@dataclass(frozen=True)
class LossDeclaration:
    """A loss's declaration (the arguments of `register_loss`, with its defaults), checked on creation; `publish`
    registers the checked public function of a given signature. The one place both `register_loss` and
    `prefopt.losses.bodies.register_body` turn their arguments into a declaration: `hparams` is kept as a tuple,
    `online_defaults` and `batch_inputs` as dicts (None for none)."""

    name: str
    kind: str
    needs_reference: bool
    paper: str
    formula: str
    hparams: Sequence[HParam] = ()
    needs_lengths: bool = False
    scores: str = "logps"
    batch_dependent: bool = False
    needs_nonpositive_logps: bool = False
    online_defaults: Mapping[str, int] | None = None
    state: LossStateSpec | None = None
    batch_inputs: Mapping[str, BatchInput] | None = None
    accepts_pair_loss: bool = False
    rollout_inputs: Mapping[str, RolloutInput] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "hparams", tuple(self.hparams))
        object.__setattr__(self, "online_defaults", dict(self.online_defaults or {}))
        object.__setattr__(self, "batch_inputs", dict(self.batch_inputs or {}))
        object.__setattr__(self, "rollout_inputs", dict(self.rollout_inputs or {}))
        where = f"loss {self.name!r}"
        if (self.kind, self.scores) not in KIND_INPUTS:
            raise ValueError(f"{where}: unknown kind/scores {(self.kind, self.scores)}; known: {list(KIND_INPUTS)}")
        if self.name in _REGISTRY:
            raise ValueError(f"register_loss: a loss named {self.name!r} is already registered")
        if self.online_defaults and self.kind != "rollout":
            raise ValueError(f"{where}: online_defaults are for rollout losses (the online loop), not {self.kind}")
        for key, value in self.online_defaults.items():
            if key not in ONLINE_DEFAULT_KEYS or isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"{where}: online_defaults[{key!r}]={value!r}; keys are {list(ONLINE_DEFAULT_KEYS)}, "
                    f"values integers ≥ 1"
                )
        if (self.state is not None or self.batch_inputs) and self.kind == "rollout":
            raise ValueError(
                f"{where}: state and batch_inputs are served by the offline training loop; the online "
                f"loop makes a rollout loss's inputs itself (prefopt.online.rollout_step)"
            )
        if self.accepts_pair_loss and self.kind != "rollout":
            raise ValueError(f"{where}: accepts_pair_loss is for rollout losses (the online loop), not {self.kind}")
        if self.rollout_inputs and self.kind != "rollout":
            raise ValueError(f"{where}: rollout_inputs are for rollout losses (the online loop), not {self.kind}")
        served = [*(self.state.inputs if self.state is not None else ()), *self.batch_inputs]
        if len(set(served)) != len(served):
            raise ValueError(f"{where}: an input is declared twice in state.inputs and batch_inputs: {served}")

    def _check_served(self, extra_inputs: tuple[str, ...]) -> None:
        """Every input that `state`, `batch_inputs` or `rollout_inputs` serves is an extra input of the loss."""
        served = [*(self.state.inputs if self.state is not None else ()), *self.batch_inputs, *self.rollout_inputs]
        unknown = [n for n in served if n not in extra_inputs]
        if unknown:
            raise TypeError(
                f"loss {self.name!r}: state/batch_inputs/rollout_inputs serve {unknown}, which the loss does not take "
                f"(its extra inputs: {list(extra_inputs)})"
            )

    def publish(
        self,
        signature: inspect.Signature,
        extra_inputs: tuple[str, ...],
        doc_source: Callable[..., Any],
        invoke: Callable[[LossSpec, inspect.BoundArguments], Any],
    ) -> Callable[..., Any]:
        """Register the checked public function of `signature`; each call is validated, then `invoke`d."""
        self._check_served(extra_inputs)
        name, hparams = self.name, tuple(self.hparams)
        valid = list(signature.parameters)

        def checked(*args: Any, **kwargs: Any) -> Any:
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError as err:
                raise UnknownLossError(f"{name}: {err}. Valid arguments: {', '.join(valid)}.") from None
            values = bound.arguments
            for h in hparams:
                if h.name in values:
                    values[h.name] = h.validate(name, values[h.name])
            check_inputs(spec, values, reference_free=_reference_free)
            return invoke(spec, bound)

        for attr in ("__module__", "__name__", "__qualname__"):
            setattr(checked, attr, getattr(doc_source, attr))
        checked.__doc__ = doc_source.__doc__
        checked.__signature__ = signature  # type: ignore[attr-defined]
        summary = (inspect.getdoc(doc_source) or "").split("\n\n")[0].replace("\n", " ")
        spec = LossSpec(
            name=name,
            kind=self.kind,
            needs_reference=self.needs_reference,
            paper=self.paper,
            formula=self.formula,
            hparams=hparams,
            needs_lengths=self.needs_lengths,
            scores=self.scores,
            summary=summary,
            extra_inputs=extra_inputs,
            fn=checked,
            batch_dependent=self.batch_dependent,
            needs_nonpositive_logps=self.needs_nonpositive_logps,
            online_defaults=MappingProxyType(dict(self.online_defaults)),
            state=self.state,
            batch_inputs=MappingProxyType(dict(self.batch_inputs)),
            accepts_pair_loss=self.accepts_pair_loss,
            rollout_inputs=MappingProxyType(dict(self.rollout_inputs)),
        )
        _REGISTRY[name] = spec
        checked.spec = spec  # type: ignore[attr-defined]
        return checked


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
    online_defaults: Mapping[str, int] | None = None,
    state: LossStateSpec | None = None,
    batch_inputs: Mapping[str, BatchInput] | None = None,
    accepts_pair_loss: bool = False,
    rollout_inputs: Mapping[str, RolloutInput] | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Register a loss whose whole canonical signature is written by hand, and return its checked wrapper.

    The function must take the kind's canonical inputs first (`KIND_INPUTS`), then keyword-only
    lengths, extra inputs and hyper-parameters whose defaults equal the declared `HParam` defaults.
    The built-in losses use the helpers of `prefopt.losses.kinds` instead (`prefopt.losses.bodies`), which
    build that signature from the declaration so that a body holds only its formula.

    `batch_dependent=True` declares that one example's loss depends on the rest of the batch, so trainers
    refuse to split its batch across micro-batches or processes. `needs_nonpositive_logps=True` declares that
    the loss reads the policy's log-probs as probabilities, so the wrapper refuses positive ones.
    `online_defaults` (rollout losses) overrides the online loop's defaults, keys `ONLINE_DEFAULT_KEYS`.
    `state` and `batch_inputs` declare extra inputs that the training loop serves from beyond one micro-batch:
    running state across steps, statistics of the global batch (`prefopt.loss_state`). `accepts_pair_loss`
    (rollout losses that train on best/worst pairs) lets the online loop run a paired loss in their place.
    `rollout_inputs` (rollout losses) declares inputs the online loop computes over the whole rollout before its
    minibatches (`prefopt.loss_state.RolloutBatch`).
    """
    declaration = LossDeclaration(
        name,
        kind,
        needs_reference,
        paper,
        formula,
        hparams,
        needs_lengths,
        scores,
        batch_dependent,
        needs_nonpositive_logps,
        online_defaults,
        state,
        batch_inputs,
        accepts_pair_loss,
        rollout_inputs,
    )

    def decorator(fn: Callable[P, R]) -> Callable[P, R]:
        sig = inspect.signature(fn)
        params = list(sig.parameters.values())
        inputs = KIND_INPUTS[(kind, scores)]
        if tuple(p.name for p in params[: len(inputs)]) != inputs:
            raise TypeError(f"loss {name!r} must take {inputs} first, got {[p.name for p in params]}")
        keyword = {p.name: p for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
        for h in hparams:
            if h.name not in keyword or keyword[h.name].default != h.default:
                raise TypeError(
                    f"loss {name!r}: hyper-parameter {h.name!r} must be keyword-only with default {h.default!r}"
                )
        hp_names = {h.name for h in hparams}
        extra = tuple(n for n in keyword if n not in hp_names and n not in LENGTH_INPUTS.get(kind, ()))
        checked = declaration.publish(sig, extra, fn, lambda _spec, bound: fn(*bound.args, **bound.kwargs))
        functools.update_wrapper(checked, fn)
        return checked  # type: ignore[return-value]

    return decorator


def _reference_free(kind: str) -> list[str]:
    return [n for n, s in _REGISTRY.items() if s.kind == kind and not s.needs_reference] or ["none registered"]
