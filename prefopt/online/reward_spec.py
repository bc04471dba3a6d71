"""Rewards named by a string, as the command line (`--reward`) and config files (`reward:`) give them.

    gold                          the synthetic task's gold reward
    runs/rm/final                 the folder of a reward model saved by `prefopt train-rm`
    my_rewards:length_reward      a Python function (or a reward object) `module:attribute`, the module
                                  imported from sys.path or the current folder (as uvicorn reads `app:main`)
    my_rewards:format,gold        several, comma-separated: their weighted sum (`reward_weights`, default 1 each)

`reward_parts` checks a string and imports its functions (a mistake is one `SettingsError` naming the string
and the fix: no such folder, bad spelling, module not found, attribute missing, not callable, a signature
that cannot take a batch); `resolve_reward_parts` gives what `prefopt.online.as_reward_function` turns into
`RewardFunction`s.
"""

from __future__ import annotations

import difflib
import importlib
import math
import os
import re
import sys
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from prefopt.errors import RewardError, SettingsError
from prefopt.online.reward_functions import CallableReward

__all__ = [
    "check_reward_columns",
    "import_reference",
    "is_reference",
    "resolve_reward_parts",
    "reward_folders",
    "reward_parts",
]

_DOTTED = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
REFERENCE = re.compile(rf"(?P<module>{_DOTTED}):(?P<attribute>{_DOTTED})")
_SPELLINGS = (
    "use 'gold' (the synthetic task's reward), the folder of a reward model saved by `prefopt train-rm`, or a "
    "Python function as module:function (e.g. my_rewards:length_reward), several comma-separated"
)


def is_reference(text: str) -> bool:
    """True when `text` reads as `module:attribute` (and is not an existing path)."""
    return REFERENCE.fullmatch(text) is not None and not Path(text).exists()


def _split(text: str, where: str) -> list[str]:
    text = text.strip()
    if text == "gold" or Path(text).exists():
        return [text]
    parts = [part.strip() for part in text.split(",")]
    if not all(parts):
        raise SettingsError(f"{where}={text!r} has an empty entry; {_SPELLINGS}")
    return parts


def _import_module(name: str, text: str, where: str) -> Any:
    """Import `name` with the current folder searched too (after sys.path's own entries, while importing)."""
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.append(cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name is not None and (name == err.name or name.startswith(err.name + ".")):
            raise SettingsError(
                f"{where}={text!r}: no module named {err.name!r} on sys.path or in the current folder ({cwd}); "
                f"check the spelling, run from the folder that holds {err.name.replace('.', '/')}.py, or "
                "install its package"
            ) from None
        raise SettingsError(f"{where}={text!r}: importing {name} failed: {err}; install what it imports") from None
    except Exception as err:
        raise SettingsError(
            f"{where}={text!r}: importing {name} raised {type(err).__name__}: {err}; fix the module"
        ) from err
    finally:
        if added:
            sys.path.remove(cwd)


def import_reference(text: str, where: str) -> Any:
    """The object `module:attribute` names (a function, or an object with `.score`), imported.

    Raises:
        SettingsError: naming `text` and the fix (module not found, no such attribute, not callable, a class).
    """
    match = REFERENCE.fullmatch(text)
    if match is None:
        raise SettingsError(f"{where}={text!r} is not module:function; {_SPELLINGS}")
    module_name, attribute = match["module"], match["attribute"]
    target: Any = _import_module(module_name, text, where)
    for part in attribute.split("."):
        if not hasattr(target, part):
            names = [n for n in dir(target) if not n.startswith("_") and callable(getattr(target, n, None))]
            near = difflib.get_close_matches(part, names, n=3)
            hint = f"did you mean {', '.join(near)}?" if near else f"its callables: {', '.join(names[:12]) or 'none'}"
            raise SettingsError(f"{where}={text!r}: {module_name} has no attribute {attribute!r}; {hint}")
        target = getattr(target, part)
    if isinstance(target, type):
        raise SettingsError(
            f"{where}={text!r} is a class; point at a function, or at an instance made in the module "
            f"(e.g. `reward = {attribute}()` there, then {module_name}:reward)"
        )
    if not callable(getattr(target, "score", None)) and not callable(target):
        raise SettingsError(
            f"{where}={text!r} is a {type(target).__name__}, not callable; point at a function "
            "f(prompts, completions, **kwargs) -> list[float]"
        )
    return target


def _check_weights(weights: Sequence[float] | None, count: int, text: str, where: str) -> None:
    if weights is None:
        return
    if len(weights) != count:
        raise SettingsError(
            f"{where}={text!r} names {count} reward function(s) but reward_weights has {len(weights)} "
            f"({list(weights)}); give one weight per function, in order (--reward-weights 1.0,0.5)"
        )
    bad = [w for w in weights if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w)]
    if bad:
        raise SettingsError(f"reward_weights={list(weights)}: {bad[0]!r} is not a finite number")


def resolve_reward_parts(text: str, where: str = "reward", weights: Sequence[float] | None = None) -> list[Any]:
    """The parts of a reward string: "gold", a folder path, or the imported object of each `module:function`.

    Raises:
        SettingsError: a part that is none of these, or weights that do not match (module docstring).
    """
    parts: list[Any] = []
    for part in _split(text, where):
        if part == "gold" or Path(part).exists():
            parts.append(part)
        elif REFERENCE.fullmatch(part):
            target = import_reference(part, where)
            if not callable(getattr(target, "score", None)):
                try:  # the signature can take a batch (the columns are known only when it scores)
                    CallableReward(target)
                except RewardError as err:
                    raise SettingsError(f"{where}={part!r}: {err}") from None
            parts.append(target)
        elif ":" in part and not Path(part).exists():
            raise SettingsError(f"{where}={part!r} is not module:function (dotted names, one colon); {_SPELLINGS}")
        else:
            raise SettingsError(f"{where}={part!r}: no such folder; {_SPELLINGS}")
    _check_weights(weights, len(parts), text, where)
    return parts


def reward_parts(text: str, where: str = "reward", weights: Sequence[float] | None = None) -> list[str]:
    """The parts of a reward string, each checked (functions imported): `resolve_reward_parts`' checks."""
    resolve_reward_parts(text, where, weights)
    return _split(text, where)


def check_reward_columns(text: str, columns: Collection[str], where: str, source: str) -> None:
    """Refuse a reward string whose functions require a column that the prompts (`source`, e.g. "prompts.jsonl")
    do not have: known before the run starts, not at its first scoring.

    Raises:
        SettingsError: naming the function, the column and the columns there are.
    """
    for part, target in zip(_split(text, where), resolve_reward_parts(text, where)):
        if isinstance(target, str) or callable(getattr(target, "score", None)):
            continue
        missing = [name for name in CallableReward(target).plan.required if name not in columns]
        if missing:
            have = ", ".join(sorted(columns)) or "none"
            raise SettingsError(
                f"{where}={part!r} needs the column {missing[0]!r}, which is not a column of {source} "
                f"(columns: {have}); give each prompt row that field, or the parameter a default"
            )


def reward_folders(text: str) -> list[str]:
    """The reward-model folders a (checked) reward string names."""
    return [part for part in _split(text, "reward") if part != "gold" and Path(part).exists()]
