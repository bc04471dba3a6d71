"""What every `prefopt` sub-command does with its settings: a YAML file of config fields, NAME=VALUE pairs.

Each command merges, later winning: the config's defaults ← `--config FILE.yaml` ← its flags; repeatable
`--hparam NAME=VALUE` (and the like) go into a mapping field. Values are read as JSON where they parse
(`0.1`, `1e-5`, `true`, `[1, 2]`) and kept as strings otherwise.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# flag → (config field, type or stored constant, help). Options take a value of that type; switches store
# the constant (e.g. "--no-progress": ("progress", False, ...)).
Flags = Mapping[str, tuple[str, Any, str]]

__all__ = ["Flags", "add_setting_flags", "given_settings", "parse_value", "parse_assignments", "read_settings_file",
           "parse_sweeps", "user_errors"]


def add_setting_flags(parser: argparse.ArgumentParser, options: Flags, switches: Flags) -> None:
    """One flag per config field. A flag not given stays out of the parsed namespace (argparse.SUPPRESS), so
    `given_settings` returns only what the command line set and a YAML file's value is not overwritten."""
    for flag, (field, kind, text) in options.items():
        parser.add_argument(flag, dest=field, type=kind, default=argparse.SUPPRESS, help=text)
    for flag, (field, value, text) in switches.items():
        parser.add_argument(flag, dest=field, action="store_const", const=value, default=argparse.SUPPRESS, help=text)


def given_settings(args: argparse.Namespace, *tables: Flags, extra: Sequence[str] = ()) -> dict[str, Any]:
    """The config fields set on the command line: those of the flag tables (and the `extra` dests) present."""
    fields = {field for table in tables for field, _, _ in table.values()} | set(extra)
    return {k: v for k, v in vars(args).items() if k in fields}


def parse_value(text: str) -> Any:
    """A command-line value: its JSON reading (numbers, booleans, lists, null), else the string itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_assignments(items: Sequence[str] | None, flag: str, example: str = "beta=0.1") -> dict[str, Any]:
    """["beta=0.1", "label=x"] → {"beta": 0.1, "label": "x"}; an item without `=` or a name is a ValueError
    naming `flag` and showing `example`."""
    out: dict[str, Any] = {}
    for item in items or ():
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise ValueError(f"{flag} {item!r}: write NAME=VALUE, e.g. {flag} {example}")
        out[name] = parse_value(text)
    return out


def read_settings_file(path: str | Path, what: str) -> dict[str, Any]:
    """The mapping of `what` settings (e.g. "TrainConfig") in a YAML file; ValueError when it holds anything else."""
    import yaml

    loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a mapping of {what} settings, got {type(loaded).__name__}")
    return loaded


def user_errors() -> tuple[type[Exception], ...]:
    """The errors a command reports as one line and exit code 2 instead of a traceback: bad settings, bad data,
    a run folder that does not fit the run, a refused launch, a diverged run (each message names the fix)."""
    from prefopt.data.validate import PreferenceDataError
    from prefopt.loss_inputs import LossInputError
    from prefopt.online.trainer import OnlineDivergedError
    from prefopt.registry import UnknownLossError
    from prefopt.train.checkpoint import RunFolderError
    from prefopt.train.data import TrainDataError
    from prefopt.train.loop import TrainingDivergedError
    from prefopt.train.setup import DistributedSetupError

    return (RunFolderError, PreferenceDataError, TrainDataError, LossInputError, UnknownLossError,
            DistributedSetupError, TrainingDivergedError, OnlineDivergedError)


def parse_sweeps(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """`["dpo.beta=0.05,0.1", "kto.desirable_weight=1.33"]` → {"dpo": {"beta": [0.05, 0.1]}, ...}."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        match = re.fullmatch(r"([A-Za-z0-9_]+)\.([A-Za-z0-9_]+)=(.+)", item.strip())
        if not match:
            raise ValueError(f"--set {item!r}: expected LOSS.HPARAM=VALUE[,VALUE...], e.g. dpo.beta=0.05,0.1")
        loss, key, values = match.groups()
        parsed = [_sweep_value(v) for v in values.split(",")]
        out.setdefault(loss, {})[key] = parsed if len(parsed) > 1 else parsed[0]
    return out


def _sweep_value(text: str) -> Any:
    try:
        return int(text) if re.fullmatch(r"[+-]?\d+", text) else float(text)
    except ValueError:
        return text
