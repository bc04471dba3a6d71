"""Settings of the library's config dataclasses: the error a bad one raises, and a mapping read into the fields.

A mapping of settings comes from a YAML file, `NAME=VALUE` pairs or keyword arguments, and YAML 1.1 reads
some values in ways that would pass silently or fail far from their cause: `lr: 1e-5` (no dot) is the
string "1e-5", `resume: "no"` a non-empty (truthy) string. `config_from_dict` turns each value into its
field's declared type and names the field in every error:

    bool            true / false (YAML booleans, or the strings "true" / "false"); anything else is an error
    int             integers, integral floats (1e3) and their strings ("16")
    float           numbers and numeric strings ("1e-5"); NaN and ±inf are errors
    str             text (an integer becomes its digits: `data_split: 2023`)
    X | None        None (YAML null or ~), or an X; non-text fields also take the strings "none" / "null"
    tuple[X, ...]   a list, or a comma-separated string ("q_proj,v_proj"), or one value
    tuple[X, Y]     a list of exactly two values
    Mapping         a mapping; its exponent strings ("1e-5") become numbers

`Settings` is the base of the config dataclasses (`TrainConfig`, `OnlineConfig`, `RewardModelConfig`,
`CompareConfig`): `from_dict` (the mapping read as above, nested configs included), `to_dict` (the
JSON-able settings saved beside a run), and the checks every `__post_init__` shares (`check_int`,
`is_finite_number`).

A leaf module: it imports only `prefopt.errors` (where `SettingsError` lives), so every layer may use it.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

from prefopt.errors import SettingsError

__all__ = [
    "Settings",
    "SettingsError",
    "check_int",
    "config_from_dict",
    "coerce_settings",
    "coerce_value",
    "is_finite_number",
]

T = TypeVar("T")
S = TypeVar("S", bound="Settings")
_INT = re.compile(r"[+-]?\d+")
_EXPONENT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")  # what YAML 1.1 leaves as text: 1e-5, 5E3
_NONE = ("none", "null")
# Names other trainers (transformers, TRL) give to our fields: suggested when an unknown key is one of them.
_ALIASES = {
    "learning_rate": "lr",
    "num_train_epochs": "epochs",
    "output": "output_dir",
    "out": "output_dir",
    "per_device_train_batch_size": "micro_batch_size",
    "train_batch_size": "batch_size",
    "gradient_accumulation_steps": "micro_batch_size",
    "loss_type": "loss",
    "beta": "loss_hparams",
    "model_name_or_path": "model",
    "dataset": "data",
    "revision": "model_revision",
}


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}


def coerce_settings(
    cls: type, values: Mapping[str, Any], *, owner: str | None = None, source: str | None = None
) -> dict[str, Any]:
    """`values` with every value turned into the type of `cls`'s field of that name.

    Args:
        cls: a dataclass; owner: the name used in messages (default `cls.__name__`), e.g. "CompareConfig.train".
        source: where the values come from (a file), named in the message of an unknown key.
    Raises:
        SettingsError: an unknown key (with the nearest field names) or a value of the wrong type.
    """
    owner = owner or cls.__name__
    if not isinstance(values, Mapping):
        raise SettingsError(f"{owner} must be a mapping of setting: value, got {type(values).__name__}")
    types_ = _field_types(cls)
    unknown = [k for k in values if k not in types_]
    if unknown:
        key = str(unknown[0])
        near = [_ALIASES[key]] if _ALIASES.get(key) in types_ else difflib.get_close_matches(key, list(types_), n=3)
        where = f" in {source}" if source else ""
        hint = f"did you mean {', '.join(near)}? " if near else ""
        raise SettingsError(f"{owner}: unknown setting {key!r}{where}; {hint}valid: {', '.join(sorted(types_))}")
    return {k: coerce_value(f"{owner}.{k}", types_[k], v) for k, v in values.items()}


def config_from_dict(cls: type[T], values: Mapping[str, Any], *, source: str | None = None) -> T:
    """A `cls` (a config dataclass) from a mapping of its field names: values coerced by `coerce_settings`,
    then validated by the class's own `__post_init__`."""
    return cls(**coerce_settings(cls, values, source=source))


class Settings:
    """Base of prefopt's config dataclasses (frozen, validated in their own `__post_init__`).

    `NESTED` names the fields that hold another config dataclass (e.g. {"sft_config": SFTConfig}): `from_dict`
    builds them from mappings, `to_dict` writes them as mappings.
    """

    NESTED: ClassVar[Mapping[str, type]] = {}

    @classmethod
    def from_dict(cls: type[S], values: Mapping[str, Any], *, source: str | None = None) -> S:
        """Build from a mapping (e.g. parsed YAML from `source`): each value read as its field's type (see the
        module docstring), nested configs from their mappings; unknown keys and wrong types raise a
        `SettingsError` naming the field, then the class validates itself."""
        values = coerce_settings(cls, values, source=source)
        for name, kind in cls.NESTED.items():
            if isinstance(values.get(name), Mapping):
                values[name] = kind(**coerce_settings(kind, values[name], owner=f"{cls.__name__}.{name}"))
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able settings (saved as config.json beside a run): mappings as dicts, tuples as lists, nested
        configs as mappings; `from_dict(to_dict())` gives the config back."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {k: _plain(v) if isinstance(v, Mapping) else v for k, v in value.items()}
    if isinstance(value, tuple):
        return list(value)
    return value


def check_int(where: str, value: Any, *, minimum: int) -> None:
    """Raise a `SettingsError` unless `value` is an integer (not a bool) ≥ `minimum`; `where`, e.g.
    "TrainConfig.steps", names it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SettingsError(f"{where}={value!r} must be an integer ≥ {minimum}")


def is_finite_number(value: Any) -> bool:
    """True for a finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def coerce_value(where: str, kind: Any, value: Any) -> Any:
    """`value` as the type `kind` (a field annotation); `where` (e.g. "TrainConfig.lr") names it in errors."""
    if kind is Any:
        return value
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return _to_union(where, args, value)
    if value is None:
        raise SettingsError(f"{where} cannot be null; give a value ({_type_name(kind)})")
    for scalar, convert in _SCALARS:
        if kind is scalar:
            return convert(where, value)
    if origin is tuple or origin is list or kind in (tuple, list) or origin is Sequence:
        return _to_sequence(where, kind, origin, args, value)
    if origin is Mapping or origin is dict or kind in (dict, Mapping):
        return _to_mapping(where, args, value)
    return value


def _to_union(where: str, args: tuple[Any, ...], value: Any) -> Any:
    """An optional (`X | None`) or union field: None where admitted, else the one non-None type's value."""
    options = [a for a in args if a is not type(None)]
    if value is None:
        if len(options) < len(args):
            return None
        raise SettingsError(f"{where} must be set (it cannot be null)")
    if isinstance(value, str) and value.strip().lower() in _NONE and len(options) < len(args) and str not in options:
        return None
    if len(options) == 1:
        return coerce_value(where, options[0], value)
    return value


def _to_str(where: str, value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise SettingsError(f"{where}={value!r} must be text (a string), got {type(value).__name__}")
    return value


def _to_mapping(where: str, args: tuple[Any, ...], value: Any) -> dict[Any, Any]:
    if not isinstance(value, Mapping):
        raise SettingsError(
            f"{where}={value!r} must be a mapping of name: value (e.g. {{beta: 0.1}}), got {type(value).__name__}"
        )
    inner = args[1] if len(args) == 2 else Any
    if inner is Any:
        return {k: _numbers(v) for k, v in value.items()}
    return {k: coerce_value(f"{where}[{k!r}]", inner, v) for k, v in value.items()}


def _type_name(kind: Any) -> str:
    names = {str: "text", int: "integer", float: "number", bool: "true or false"}
    return names.get(kind) or getattr(kind, "__name__", str(kind))


def _to_bool(where: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise SettingsError(f"{where}={value!r} must be true or false")


def _to_int(where: str, value: Any) -> int:
    if isinstance(value, bool):
        raise SettingsError(f"{where}={value!r} must be an integer, not true/false")
    if isinstance(value, int):
        return value
    number: Any = value
    if isinstance(value, str):
        text = value.strip()
        if _INT.fullmatch(text):
            return int(text)
        try:
            number = float(text)
        except ValueError:
            raise SettingsError(f"{where}={value!r} must be an integer") from None
    if isinstance(number, float) and math.isfinite(number) and number.is_integer():
        return int(number)
    raise SettingsError(f"{where}={value!r} must be an integer")


def _to_float(where: str, value: Any) -> float:
    if isinstance(value, bool):
        raise SettingsError(f"{where}={value!r} must be a number, not true/false")
    number: Any = value
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise SettingsError(f"{where}={value!r} must be a number (e.g. 1e-5)") from None
    if not isinstance(number, (int, float)):
        raise SettingsError(f"{where}={value!r} must be a number, got {type(value).__name__}")
    if not math.isfinite(number):
        raise SettingsError(f"{where}={value!r} must be a finite number")
    return float(number)


def _to_sequence(where: str, kind: Any, origin: Any, args: tuple[Any, ...], value: Any) -> Any:
    if isinstance(value, str):
        items: list[Any] = [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    elif isinstance(value, Mapping):
        raise SettingsError(f"{where} must be a list, got a mapping")
    else:
        items = [value]
    if args and args[-1] is not Ellipsis:  # fixed length, e.g. tuple[float, float]
        if len(items) != len(args):
            raise SettingsError(f"{where}={value!r} must be a list of {len(args)} values")
        out = [coerce_value(f"{where}[{i}]", a, v) for i, (a, v) in enumerate(zip(args, items))]
    else:
        item = args[0] if args else Any
        if item is str and any(not isinstance(v, str) for v in items):
            raise SettingsError(f"{where}={value!r} must be a list of names (text)")
        out = [coerce_value(f"{where}[{i}]", item, v) for i, v in enumerate(items)]
    return list(out) if origin is list or kind is list else tuple(out)


def _numbers(value: Any) -> Any:
    """YAML 1.1's exponent strings ("1e-5") as numbers, inside lists too (a sweep); anything else unchanged."""
    if isinstance(value, str) and _EXPONENT.fullmatch(value.strip()):
        return float(value)
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    return value


# The scalar field types and their converters (`coerce_value`), matched by identity.
_SCALARS: tuple[tuple[type, Callable[[str, Any], Any]], ...] = (
    (bool, _to_bool),
    (int, _to_int),
    (float, _to_float),
    (str, _to_str),
)
