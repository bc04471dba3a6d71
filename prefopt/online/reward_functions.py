"""Python callables as reward functions (TRL's GRPO convention), several of them with weights, and the checks
of what a reward function returns.

A reward function is any callable that scores a batch, TRL's `GRPOTrainer` convention:

    def f(prompts, completions, **kwargs) -> list[float | None]     # one value per completion, in order

It is called with keyword arguments: `completions` (S strings), `prompts` (the S prompts, row s the prompt of
completion s) and each extra column of the prompt rows as a list aligned with the completions (a prompt's
value repeated for its K samples). A function with `**kwargs` gets every column; one without gets only the
columns its signature names (`def f(completions, answer)`); one whose parameters name neither `completions`
nor `**kwargs` is called positionally, `f(prompts, completions)` (e.g. `lambda ps, cs: ...`). A column the
function requires that the prompts do not have is an error naming it.

`None` means "not applicable" beside other functions (TRL's multi-task rewards): `CombinedReward` adds the
weighted values of the functions that scored a row and skips the Nones (TRL's nan-sum). A row that no
function scored is an error here; TRL logs a warning and gives that completion zero advantage.

Every error names the function by `module:qualname`, and the row: a wrong number of values, a value that is
not a number, a non-finite value (row index, prompt and completion excerpts), an exception raised inside
(the batch's rows; the original exception chained).
"""

from __future__ import annotations

import functools
import inspect
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from prefopt.errors import RewardError

__all__ = [
    "CallableReward",
    "CallPlan",
    "CombinedReward",
    "call_plan",
    "call_score",
    "callable_name",
    "check_scores",
    "reference_name",
]

Columns = Mapping[str, Sequence[Any]]
_BUILT_IN = ("prompts", "completions")


def callable_name(fn: Any) -> str:
    """The short name TRL logs a function under (`rewards/<name>/mean`): `__name__` (through
    `functools.partial`), or the class name of a callable object."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return str(getattr(fn, "__name__", type(fn).__name__))


def reference_name(fn: Any) -> str:
    """`module:qualname` of a function (or of a callable object's class), the name errors give."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    target = fn if hasattr(fn, "__qualname__") else type(fn)
    return f"{getattr(target, '__module__', '?')}:{getattr(target, '__qualname__', type(fn).__name__)}"


def _excerpt(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) else str(value)
    return repr(text[:limit] + "…" if len(text) > limit else text)


def _row(i: int, prompts: Sequence[Any], completions: Sequence[str]) -> str:
    return f"row {i} (prompt {_excerpt(prompts[i])}, completion {_excerpt(completions[i])})"


@dataclass(frozen=True)
class CallPlan:
    """How a function is called: `positional` (`f(prompts, completions, **named columns)`) or by keyword;
    `columns`: the column names it takes (None: all, it has `**kwargs`); `required`: those without a default."""

    positional: bool
    takes_prompts: bool
    columns: frozenset[str] | None
    required: tuple[str, ...]


def call_plan(fn: Any, where: str) -> CallPlan:
    """Read `fn`'s signature into a `CallPlan` (a callable without one is called positionally).

    Raises:
        RewardError: an async function, or a signature that takes neither `completions` by keyword nor
            (prompts, completions) positionally.
    """
    if inspect.iscoroutinefunction(fn):
        raise RewardError(
            f"reward function {where} is async; prefopt calls reward functions synchronously: wrap it, "
            "e.g. def f(**kwargs): return asyncio.run(your_function(**kwargs))"
        )
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some built-ins have none
        return CallPlan(positional=True, takes_prompts=True, columns=frozenset(), required=())
    params = signature.parameters.values()
    var_keyword = any(p.kind is p.VAR_KEYWORD for p in params)
    named = {p.name: p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if "completions" in named or var_keyword:
        extra = {n: p for n, p in named.items() if n not in _BUILT_IN}
        required = tuple(n for n, p in extra.items() if p.default is p.empty)
        columns = None if var_keyword else frozenset(extra)
        return CallPlan(False, "prompts" in named or var_keyword, columns, required)
    try:
        signature.bind(*_BUILT_IN)
    except TypeError:
        raise RewardError(
            f"reward function {where}({', '.join(signature.parameters)}) takes neither `completions` by keyword "
            "nor (prompts, completions); write it as TRL does: def f(prompts, completions, **kwargs) -> list[float]"
        ) from None
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][:2]
    extra = {n: p for n, p in named.items() if p not in positional}
    return CallPlan(True, True, frozenset(extra), tuple(n for n, p in extra.items() if p.default is p.empty))


def _arguments(
    plan: CallPlan, where: str, prompts: list[Any], completions: list[str], columns: Columns
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    missing = [name for name in plan.required if name not in columns]
    if missing:
        have = ", ".join(columns) or "none"
        raise RewardError(
            f"reward function {where} needs `{missing[0]}`, which is not a column of the prompt rows (columns: "
            f"{have}); give each prompt row a {missing[0]!r} field (a .jsonl prompts file, or prompts="
            f"[{{'prompt': ..., {missing[0]!r}: ...}}]) or give the parameter a default"
        )
    picked = {k: list(v) for k, v in columns.items() if plan.columns is None or k in plan.columns}
    if plan.positional:
        return (prompts, completions), picked
    built_in = {"prompts": prompts} if plan.takes_prompts else {}
    return (), {**built_in, "completions": completions, **picked}


def call_score(reward: Any, prompts: Sequence[Any], completions: Sequence[str], columns: Columns) -> Any:
    """`reward.score(prompts, completions, **the columns its signature takes)`: a reward object (gold reward,
    reward model, your own class) gets the columns it names, all of them with `**columns`, else none."""
    plan = call_plan(reward.score, reference_name(reward))
    picked = {k: list(v) for k, v in columns.items() if plan.columns is None or k in plan.columns}
    return reward.score(list(prompts), list(completions), **picked)


def check_scores(scores: Any, count: int, *, where: str, completions: Sequence[str] | None = None) -> Tensor:
    """`scores` as a float32 CPU tensor [count], or a `RewardError` (wrong type, shape or a non-finite value).

    Args:
        scores: what a reward function returned (tensor, array, list of numbers).
        count: how many completions were scored; where: the caller, for the message.
        completions: the scored texts, quoted in the message for the first bad row.
    """
    try:
        values = torch.as_tensor(scores.detach().cpu() if isinstance(scores, Tensor) else scores, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError) as err:
        raise RewardError(
            f"{where}: the reward function returned {type(scores).__name__}, which is not a sequence "
            f"of numbers ({err}); return one float per completion"
        ) from None
    if values.dim() == 2 and values.shape[1] == 1:
        values = values[:, 0]  # a (B, 1) head output
    if values.shape != (count,):
        raise RewardError(
            f"{where}: the reward function returned shape {tuple(values.shape)} for {count} completions; "
            f"return one float per completion, shape ({count},)"
        )
    bad = (~torch.isfinite(values)).nonzero().flatten()
    if len(bad):
        row = int(bad[0])
        text = f" (completion {completions[row][:80]!r})" if completions is not None else ""
        raise RewardError(
            f"{where}: reward {float(values[row])} at row {row}{text} is not finite; "
            f"{len(bad)} of {count} rewards are non-finite. Fix the reward function"
        )
    return values


def _scalar_tensor(value: Any) -> bool:
    return isinstance(value, Tensor) and value.numel() == 1


def _values_or_none(out: Any, where: str, prompts: list[Any], completions: list[str]) -> Tensor:
    """What a function returned as float32 [S], NaN where it returned None; anything else is a `RewardError`."""
    count = len(completions)
    if isinstance(out, np.ndarray) and out.dtype == object:  # e.g. np.array([1.0, None]): read as the list
        out = out.tolist()
    if isinstance(out, (Tensor, np.ndarray)):
        try:
            array = out.detach().cpu() if isinstance(out, Tensor) else torch.from_numpy(out.astype(np.float64))
        except (TypeError, ValueError) as err:
            raise RewardError(
                f"reward function {where} returned an array of {out.dtype} ({err}); return a list of floats "
                "(None: not applicable), one per completion"
            ) from None
        values = array.to(torch.float32)
        values = values[:, 0] if values.dim() == 2 and values.shape[1] == 1 else values
        if values.shape != (count,):
            raise RewardError(
                f"reward function {where} returned shape {tuple(values.shape)} for {count} completions; "
                "return one float (or None) per completion, in order"
            )
        given = torch.ones(count, dtype=torch.bool)
    elif isinstance(out, Sequence) and not isinstance(out, (str, bytes)):
        if len(out) != count:
            raise RewardError(
                f"reward function {where} returned {len(out)} values for {count} completions; return one "
                "float (or None) per completion, in order"
            )
        for i, value in enumerate(out):
            if value is not None and not isinstance(value, numbers.Real) and not _scalar_tensor(value):
                raise RewardError(
                    f"reward function {where} returned {value!r} ({type(value).__name__}) at "
                    f"{_row(i, prompts, completions)}; return floats (None: not applicable)"
                )
        given = torch.tensor([value is not None for value in out], dtype=torch.bool)
        values = torch.tensor([float("nan") if v is None else float(v) for v in out], dtype=torch.float32)
    else:
        raise RewardError(
            f"reward function {where} returned {type(out).__name__}, not a list; return a list of {count} "
            "floats (None: not applicable), one per completion"
        )
    bad = (given & ~torch.isfinite(values)).nonzero().flatten()
    if len(bad):
        i = int(bad[0])
        raise RewardError(
            f"reward function {where} returned {float(values[i])} at {_row(i, prompts, completions)}; "
            f"{len(bad)} of {count} values are not finite. Return finite floats (None: not applicable)"
        )
    return values


@dataclass(frozen=True)
class CallableReward:
    """A Python callable as a `RewardFunction` (module docstring: how it is called, what it may return).

    Args:
        fn: `fn(prompts, completions, **columns) -> S floats (or None)`; a list, a NumPy array or a tensor.
        name: its metric name, `rewards/<name>/mean` (default: the function's `__name__`, as TRL logs it).
    """

    fn: Callable[..., Any]
    name: str = ""
    plan: CallPlan = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.fn, type) or not callable(self.fn):
            what = "a class" if isinstance(self.fn, type) else f"a {type(self.fn).__name__}, not callable"
            raise RewardError(
                f"reward {reference_name(self.fn)} is {what}; give a function "
                "f(prompts, completions, **kwargs) -> list[float] (or an instance with .score)"
            )
        object.__setattr__(self, "name", self.name or callable_name(self.fn))
        object.__setattr__(self, "plan", call_plan(self.fn, self.where))

    @property
    def where(self) -> str:
        """The function as `module:qualname`."""
        return reference_name(self.fn)

    def values(self, prompts: Sequence[Any], completions: Sequence[str], **columns: Sequence[Any]) -> Tensor:
        """float32 [S] of `completions[s]` given `prompts[s]`; NaN where the function returned None."""
        prompts, completions = list(prompts), list(completions)
        if len(prompts) != len(completions):
            raise RewardError(
                f"reward function {self.where}: {len(prompts)} prompts but {len(completions)} completions; "
                "row i of each is one (prompt, completion) pair"
            )
        args, kwargs = _arguments(self.plan, self.where, prompts, completions, columns)
        try:
            with torch.no_grad():
                out = self.fn(*args, **kwargs)
        except RewardError:
            raise
        except Exception as err:
            rows = f"rows 0–{len(completions) - 1}" if len(completions) > 1 else "row 0"
            raise RewardError(
                f"reward function {self.where} raised {type(err).__name__}: {err} while scoring {rows} (first: "
                f"{_row(0, prompts, completions)}); fix the function (the original exception is chained as the cause)"
            ) from err
        return _values_or_none(out, self.where, prompts, completions)

    def score(self, prompts: Sequence[Any], completions: Sequence[str], **columns: Sequence[Any]) -> Tensor:
        """Rewards float32 [S]; a None is an error here (alone, a function must score every completion)."""
        return self.score_parts(prompts, completions, **columns)[0]

    def score_parts(
        self, prompts: Sequence[Any], completions: Sequence[str], **columns: Sequence[Any]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """(rewards [S], {name: the same [S]}), as `CombinedReward.score_parts` gives them."""
        values = self.values(prompts, completions, **columns)
        missing = torch.isnan(values).nonzero().flatten()
        if len(missing):
            raise RewardError(
                f"reward function {self.where} returned None at {_row(int(missing[0]), list(prompts), completions)}; "
                "None means 'not applicable' beside other reward functions (combine_rewards); alone, a "
                "function must score every completion"
            )
        return values, {self.name: values}


@dataclass(frozen=True)
class CombinedReward:
    """Several reward functions, weighted: reward = Σ_f w_f · r_f over the functions that scored the row (a None
    skipped: TRL's `reward_weights` and nan-sum). Build it with `prefopt.online.combine_rewards`.

    Attributes:
        parts: `RewardFunction`s (`CallableReward` for Python callables); weights: one finite float each;
        names: one distinct name each, logged as `rewards/<name>/mean` and `rewards/<name>/std`.
    """

    parts: tuple[Any, ...]
    weights: tuple[float, ...]
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.parts or not len(self.parts) == len(self.weights) == len(self.names):
            raise RewardError(
                f"combine_rewards: {len(self.parts)} reward functions, {len(self.weights)} weights and "
                f"{len(self.names)} names; give at least one function and one weight per function"
            )
        if len(set(self.names)) != len(self.names):
            raise RewardError(f"combine_rewards: the names {list(self.names)} repeat; give each function its own")

    def score(self, prompts: Sequence[Any], completions: Sequence[str], **columns: Sequence[Any]) -> Tensor:
        """Weighted rewards float32 [S] (class docstring)."""
        return self.score_parts(prompts, completions, **columns)[0]

    def score_parts(
        self, prompts: Sequence[Any], completions: Sequence[str], **columns: Sequence[Any]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """(weighted rewards [S], {name: that function's rewards [S], NaN where it returned None})."""
        prompts, completions = list(prompts), list(completions)
        per: dict[str, Tensor] = {}
        for name, part in zip(self.names, self.parts):
            if isinstance(part, CallableReward):
                per[name] = part.values(prompts, completions, **columns)
            else:
                out = call_score(part, prompts, completions, columns)
                per[name] = check_scores(out, len(completions), where=f"reward {name}", completions=completions)
        table = torch.stack(list(per.values()))  # [F, S]
        unscored = torch.isnan(table).all(0).nonzero().flatten()
        if len(unscored):
            raise RewardError(
                f"every reward function ({', '.join(self.names)}) returned None at "
                f"{_row(int(unscored[0]), prompts, completions)}; each completion needs a score from at least "
                "one of them (TRL warns and gives it zero advantage; prefopt stops)"
            )
        weights = torch.tensor(self.weights, dtype=torch.float32).unsqueeze(1)  # [F, 1]
        return (table * weights).nansum(0), per
