"""What every `prefopt` sub-command does with its settings: a YAML file of config fields, NAME=VALUE pairs.

Each command merges, later winning: the config's defaults ← `--config FILE.yaml` ← its flags; repeatable
`--hparam NAME=VALUE` (and the like) go into a mapping field. Values are read as JSON where they parse
(`0.1`, `1e-5`, `true`, `[1, 2]`) and kept as strings otherwise; the config's `from_dict` then reads each
one as its field's type (`prefopt.settings`: `lr: 1e-5` is a number, `resume: "no"` an error).

Every command follows one skeleton: flags → settings → validate → run, and any mistake ends it with one
line on stderr, `prefopt <command>: <message>`, and exit code 2 (`CommandParser` for argparse's own
mistakes, `fail` for the rest, `user_errors` for what the library raises once the run has started).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from prefopt.settings import SettingsError

# flag → (config field, type or stored constant, help). Options take a value of that type; switches store
# the constant (e.g. "--no-progress": ("progress", False, ...)).
Flags = Mapping[str, tuple[str, Any, str]]

__all__ = ["Flags", "CommandParser", "add_setting_flags", "check_resume_folder", "data_files_notice", "fail", "finite_float",
           "given_settings", "merge_pairs", "parse_value", "parse_assignments", "read_settings_file", "parse_sweeps", "user_errors"]


class CommandParser(argparse.ArgumentParser):
    """An `ArgumentParser` whose usage mistakes (an unknown flag, a value of the wrong type, a missing
    argument) print one line, `prefopt <command>: <message> (see `prefopt <command> --help`)`, and exit 2.

    Sub-command parsers made with `add_subparsers().add_parser` are of this class too; each records its
    prog so that an unrecognised argument is reported by the command it was given to.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.set_defaults(command_prog=self.prog)

    def error(self, message: str) -> Any:  # argparse's hook: it must not return
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            prog = getattr(parsed, "command_prog", self.prog)
            self.exit(2, f"{prog}: unrecognized argument(s) {' '.join(extra)} (see `{prog} --help`)\n")
        return parsed


def fail(command: str, err: BaseException | str) -> int:
    """Print `prefopt <command>: <message>` on stderr as one line (an error's `one_line` form when it has one, as
    `PreferenceDataError` does for row problems; else a multi-line message joined); return 2."""
    text = getattr(err, "one_line", None) or " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    text = text or type(err).__name__
    print(f"prefopt {command}: {text}", file=sys.stderr)
    return 2


class _DataFilesLine(logging.Handler):
    """Prints the data layer's note of the files read from a --data folder (`prefopt.data.loading.log_folder_reads`)
    as `prefopt <command>: <note>` on stderr; a note of splits already printed is not repeated."""

    def __init__(self, command: str) -> None:
        super().__init__(logging.INFO)
        self.command = command
        self.seen: set[tuple[str, str]] = set()

    def emit(self, record: logging.LogRecord) -> None:
        reads = getattr(record, "prefopt_reads", None)
        keys = {(read.folder, read.split) for read in reads or ()}
        if not keys or keys <= self.seen:
            return
        self.seen |= keys
        print(f"prefopt {self.command}: {record.getMessage()}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def data_files_notice(command: str, enabled: bool) -> Iterator[None]:
    """While a command runs with its progress output on (`enabled`), say on stderr which files of a --data folder
    it reads, one line per source: `prefopt train: data/ → train: train.jsonl (1,007 rows)`. Library calls only
    log that line (logger `prefopt.data.loading`, INFO); under torchrun only rank 0 prints it."""
    if not enabled or int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    logger = logging.getLogger("prefopt.data.loading")
    handler, level = _DataFilesLine(command), logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def finite_float(text: str) -> float:
    """argparse type of number flags: a finite float (`nan`, `inf` and text are usage mistakes)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def add_setting_flags(parser: argparse.ArgumentParser, options: Flags, switches: Flags) -> None:
    """One flag per config field. A flag not given stays out of the parsed namespace (argparse.SUPPRESS), so
    `given_settings` returns only what the command line set and a YAML file's value is not overwritten."""
    for flag, (field, kind, text) in options.items():
        parser.add_argument(flag, dest=field, type=finite_float if kind is float else kind, default=argparse.SUPPRESS,
                            help=text)
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
            raise SettingsError(f"{flag} {item!r}: write NAME=VALUE, e.g. {flag} {example}")
        out[name] = parse_value(text)
    return out


def merge_pairs(values: dict[str, Any], field: str, pairs: Mapping[str, Any]) -> None:
    """`values[field]` (a mapping setting, e.g. loss_hparams from a YAML file) with `pairs` (its flag's
    NAME=VALUE pairs) on top; a value that is not a mapping is left for the config to report by name."""
    base = values.get(field)
    if base is None:
        values[field] = dict(pairs)
    elif isinstance(base, Mapping):
        values[field] = {**base, **pairs}


def check_resume_folder(resume: bool, output_dir: str) -> None:
    """`--resume` needs a run to resume: a folder that does not exist is a mistyped --out, not a fresh start
    (a folder whose run was killed before its first checkpoint starts over, as the library does)."""
    if resume and not Path(output_dir).exists():
        raise SettingsError(f"--resume: {output_dir} does not exist, so there is no run to resume; give the run's "
                            "folder with --out, or drop --resume to start a fresh run")


def read_settings_file(path: str | Path, what: str) -> dict[str, Any]:
    """The mapping of `what` settings (e.g. "TrainConfig") in a YAML file, read with `yaml.safe_load` (no
    Python tags). A missing or unreadable file, bad YAML or anything but a mapping is a one-line
    `SettingsError` naming the file."""
    import yaml

    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SettingsError(f"--config {path}: no such file; give the path of a YAML file of {what} settings") from None
    except IsADirectoryError:
        raise SettingsError(f"--config {path} is a folder; give a YAML file of {what} settings") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SettingsError(f"--config {path} cannot be read: {getattr(err, 'strerror', None) or err}") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SettingsError(f"--config {path}: {_yaml_problem(err)}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise SettingsError(f"--config {path}: expected a mapping of {what} settings, got {type(loaded).__name__}")
    return loaded


def _yaml_problem(err: Exception) -> str:
    """One line for a YAML error: where, and what (a Python tag is named as such: safe_load refuses them)."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    problem = str(getattr(err, "problem", None) or getattr(err, "context", None) or err).splitlines()[0]
    tag = re.search(r"tag '([^']+)'", problem)
    if tag and "constructor" in problem:
        name = tag.group(1).replace("tag:yaml.org,2002:", "!!")
        return (f"{where}the tag {name} is not allowed; a settings file holds plain values (numbers, text, "
                "true/false, lists and mappings)")
    context = getattr(err, "context", None)
    return f"not valid YAML at {where}{problem}" + (f" ({context})" if context and context != problem else "")


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

    return (SettingsError, RunFolderError, PreferenceDataError, TrainDataError, LossInputError, UnknownLossError,
            DistributedSetupError, TrainingDivergedError, OnlineDivergedError)


def parse_sweeps(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """`["dpo.beta=0.05,0.1", "kto.desirable_weight=1.33"]` → {"dpo": {"beta": [0.05, 0.1]}, ...}."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        match = re.fullmatch(r"([A-Za-z0-9_]+)\.([A-Za-z0-9_]+)=(.+)", item.strip())
        if not match:
            raise SettingsError(f"--set {item!r}: expected LOSS.HPARAM=VALUE[,VALUE...], e.g. --set dpo.beta=0.05,0.1")
        loss, key, values = match.groups()
        parsed = [_sweep_value(v) for v in values.split(",")]
        out.setdefault(loss, {})[key] = parsed if len(parsed) > 1 else parsed[0]
    return out


def _sweep_value(text: str) -> Any:
    try:
        return int(text) if re.fullmatch(r"[+-]?\d+", text) else float(text)
    except ValueError:
        return text
