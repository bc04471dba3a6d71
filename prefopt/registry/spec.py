"""The loss declarations: what a registered loss is, as data that trainers, the CLI and the docs read.

`LossSpec` (name, data kind, reference, hyper-parameters, paper, online defaults, state), `HParam` and its
domain (`Interval`, `POSITIVE`, ...), and `BoundLoss` (a loss with its hyper-parameters fixed). The
registration functions that build and record them are in `prefopt.registry`, which re-exports this module.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from torch import Tensor

from prefopt.errors import LossInputError, UnknownLossError
from prefopt.loss_inputs import KIND_INPUTS
from prefopt.loss_state import BatchInput, LossStateSpec, RolloutInput

__all__ = [
    "HParam",
    "Interval",
    "LossSpec",
    "BoundLoss",
    "Kind",
    "Scores",
    "ONLINE_DEFAULT_KEYS",
    "POSITIVE",
    "NON_NEGATIVE",
    "UNIT_OPEN",
    "HALF_OPEN",
]

Kind = Literal["paired", "unpaired", "ranked", "rollout"]
Scores = Literal["logps", "rewards"]

# What a rollout loss may set in `online_defaults`: the online loop's per-algorithm defaults (samples per
# prompt, the smallest K the loss accepts, optimisation passes over each rollout; prefopt.online.rollout_step),
# and trainer options it switches on by default (value 1): `dynamic_sampling` (drop the groups whose rewards
# are all equal and sample more to refill) and `overlong_shaping` (the soft overlong penalty); OnlineConfig can
# turn either off, or on for any other rollout loss. `token_mean` (value 1) declares that the loss averages over
# every completion token of its batch (not over sequences): several processes then weigh their shares by tokens.
ONLINE_DEFAULT_KEYS = ("num_samples", "min_samples", "epochs", "dynamic_sampling", "overlong_shaping", "token_mean")


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

    `default=None` marks an optional hyper-parameter (None is then always accepted). `aliases` are other
    libraries' names for it (TRL's config fields, e.g. `label_smoothing` for cDPO's ε): an unknown
    hyper-parameter's error points to the losses that take it under that name; they are never accepted as
    keywords.
    """

    name: str
    default: Any
    help: str
    domain: Interval | None = None
    choices: tuple[Any, ...] | None = None
    aliases: tuple[str, ...] = ()

    def validate(self, loss: str, value: Any) -> Any:
        if value is None and self.default is None:
            return None
        if self.choices is not None:
            if value not in self.choices:
                raise LossInputError(f"{loss}: {self.name}={value!r} is not one of {list(self.choices)}; {self.help}")
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
    # Rollout losses: the online loop's defaults for this algorithm where they differ from its generic ones
    # (keys ONLINE_DEFAULT_KEYS, e.g. PPO samples once per prompt and makes 4 passes over each rollout).
    online_defaults: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}), compare=False)
    # Inputs from beyond one micro-batch, served by the training loop (`prefopt.loss_state`): running state kept
    # across steps and saved in checkpoints (BCO's δ), and statistics of the global batch (KTO's z₀).
    state: LossStateSpec | None = field(default=None, compare=False)
    batch_inputs: Mapping[str, BatchInput] = field(default_factory=lambda: MappingProxyType({}), compare=False)
    # Rollout losses that train on each prompt's best/worst pair of samples (online DPO): the online loop may run
    # any paired log-prob loss on those pairs in place of this one (`OnlineConfig.pair_loss`).
    accepts_pair_loss: bool = False
    # Rollout losses: inputs the online loop computes once over the whole rollout (the global batch) before its
    # minibatches, by calling provider(RolloutBatch) → [S, T] (`prefopt.loss_state`): REINFORCE++'s advantages.
    rollout_inputs: Mapping[str, RolloutInput] = field(default_factory=lambda: MappingProxyType({}), compare=False)

    @property
    def loop_inputs(self) -> tuple[str, ...]:
        """The extra inputs a training loop serves from `state` and `batch_inputs` (not from the batch)."""
        return (*(self.state.inputs if self.state is not None else ()), *self.batch_inputs)

    @property
    def separable(self) -> bool:
        """True when each example group's loss reads only the log-probs of its own sequences: a paired, unpaired
        or ranked log-prob loss that is not `batch_dependent` and takes no running `state` and no `batch_inputs`.
        The gradient of such a loss with respect to a sequence's log-prob sum is known as soon as its group's
        sums are, which the loss-fused head uses (`prefopt.loss_call.fused`, docs/engine.md)."""
        offline = self.kind in ("paired", "unpaired", "ranked") and self.scores == "logps"
        return offline and not self.batch_dependent and self.state is None and not self.batch_inputs

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
                message = _unknown(f"hyper-parameter of loss '{self.name}'", key, list(known))
                raise UnknownLossError(f"{message}{hparam_hint(self.name, key)}")
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


# The registered declarations, read by `hparam_hint`; `prefopt.registry` installs its table here when it is
# imported (this module is imported by it, so it cannot import the table).
_REGISTERED: list[Callable[[], Iterable[LossSpec]]] = []


def install_registered(source: Callable[[], Iterable[LossSpec]]) -> None:
    """Install the function that lists every registered `LossSpec` (`prefopt.registry` is the one caller)."""
    _REGISTERED[:] = [source]


def hparam_hint(loss: str, key: str) -> str:
    """Where an unknown hyper-parameter `key` of `loss` lives: the other registered losses that take it, and
    those that take it under another name (`HParam.aliases`, e.g. TRL's `label_smoothing` is cDPO's
    `epsilon`). "" when no registered loss knows the name."""
    specs = sorted(_REGISTERED[0]() if _REGISTERED else (), key=lambda s: s.name)
    takes = [s.name for s in specs if s.name != loss and any(h.name == key for h in s.hparams)]
    hint = f" {key} is a hyper-parameter of {_some(takes)}." if takes else ""
    renamed: dict[str, list[str]] = {}  # hyper-parameter name → the losses that take `key` under it
    for s in specs:
        for h in s.hparams:
            if key in h.aliases:
                renamed.setdefault(h.name, []).append(s.name)
    own = [name for name, losses in renamed.items() if loss in losses]
    if own:
        return f"{hint} Elsewhere (TRL) {key} means {own[0]}: set {own[0]}=… instead."
    if renamed:
        where = "; ".join(f"{name} of {_some(losses)}" for name, losses in renamed.items())
        name, losses = next(iter(renamed.items()))
        hint += f" Elsewhere (TRL) {key} means {where}: e.g. loss {losses[0]!r} with {name}=…."
    return hint


def _some(names: Sequence[str], most: int = 6) -> str:
    shown = ", ".join(names[:most])
    return shown if len(names) <= most else f"{shown} and {len(names) - most} more"


def _unknown(what: str, name: str, valid: Sequence[str]) -> str:
    near = difflib.get_close_matches(name, valid, n=3)
    hint = f" Did you mean {', '.join(repr(n) for n in near)}?" if near else ""
    return f"unknown {what}: {name!r}.{hint} Valid: {', '.join(sorted(valid)) or '(none)'}."
