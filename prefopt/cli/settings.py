"""What every `prefopt` command does with its settings: a YAML file of config fields, NAME=VALUE pairs, seed
lists, and the one line a mistake prints.

Each command merges, later winning: the config's defaults ← `--config FILE.yaml` ← its flags; repeatable
`--set [LOSS.]HPARAM=VALUE` pairs go into the loss's hyper-parameter mapping. Values are read as JSON where
they parse (`0.1`, `1e-5`, `true`, `[1, 2]`) and kept as strings otherwise; the config's `from_dict` then
reads each one as its field's type (`prefopt.settings`: `lr: 1e-5` is a number, `resume: "no"` an error).

Any mistake ends a command with one line on stderr, `prefopt <command>: <message>`, and exit code 2: `fail`
prints it, `user_errors` are what the library raises for a mistake once the run has started
(`prefopt.cli.command` holds the skeleton that calls them).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from prefopt.errors import USER_ERRORS, SettingsError
from prefopt.losses.combine import is_combination, parse_combination

__all__ = [
    "check_resume_folder",
    "data_files_notice",
    "deprecation_note",
    "fail",
    "join_rewards",
    "main_process",
    "merge_pairs",
    "parse_assignments",
    "parse_hparams",
    "parse_seeds",
    "parse_sweeps",
    "parse_value",
    "read_settings_file",
    "user_errors",
]


def main_process() -> bool:
    """True outside torchrun / accelerate launch, and on rank 0 under them: the process that prints."""
    return int(os.environ.get("RANK", "0")) == 0


def deprecation_note(command: str, old: str, new: str) -> None:
    """Say once, on stderr, that `old` is an old spelling of `new` kept for one more release."""
    if main_process():
        print(
            f"prefopt {command}: {old} is deprecated and will be removed in the next release; use {new}",
            file=sys.stderr,
            flush=True,
        )


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
    if not enabled or not main_process():
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


def join_rewards(values: dict[str, Any]) -> dict[str, Any]:
    """`--reward` given several times (a list) as the one comma-separated string the configs read
    (`prefopt.online.reward_spec`); `values` changed in place and returned."""
    if isinstance(values.get("reward"), list):
        values["reward"] = ",".join(values["reward"])
    return values


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
        raise SettingsError(
            f"--resume: {output_dir} does not exist, so there is no run to resume; give the run's "
            "folder with --out, or drop --resume to start a fresh run"
        )


def read_settings_file(path: str | Path, what: str) -> dict[str, Any]:
    """The mapping of `what` settings (e.g. "TrainConfig") in a YAML file, read with `yaml.safe_load` (no
    Python tags). A missing or unreadable file, bad YAML or anything but a mapping is a one-line
    `SettingsError` naming the file."""
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
        return (
            f"{where}the tag {name} is not allowed; a settings file holds plain values (numbers, text, "
            "true/false, lists and mappings)"
        )
    context = getattr(err, "context", None)
    return f"not valid YAML at {where}{problem}" + (f" ({context})" if context and context != problem else "")


def user_errors() -> tuple[type[Exception], ...]:
    """The errors a command reports as one line and exit code 2 instead of a traceback: bad settings, bad data,
    a run folder that does not fit the run, a refused launch, a diverged run (each message names the fix)."""
    return USER_ERRORS


# LOSS.HPARAM=V[,V...] of `compare --set`: LOSS a loss name or a combination's spelling ("dpo:0.8+sft:1", whose
# weights may hold dots), HPARAM a name or a combination's PART.NAME (both start with a letter).
_SWEEP = re.compile(r"([A-Za-z0-9_]+|[A-Za-z0-9_.:+-]+?)\.((?:[A-Za-z_]\w*\.)?[A-Za-z_]\w*)=(.+)")


def parse_sweeps(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """`["dpo.beta=0.05,0.1", "kto.desirable_weight=1.33"]` → {"dpo": {"beta": [0.05, 0.1]}, ...}; a combination
    of losses takes its shared or its parts' hyper-parameters: `dpo:0.8+sft:1.beta=0.1`, `….dpo.beta=0.1`."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        match = _SWEEP.fullmatch(item.strip())
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


def parse_hparams(items: Sequence[str], losses: Mapping[str, str], flag: str = "--set") -> dict[str, dict[str, Any]]:
    """`--set` pairs of one run → {config field: {hparam: value}}.

    `losses` maps each loss of the run to the config field of its hyper-parameters, the run's own loss first
    (e.g. {"online_dpo": "loss_hparams", "ipo": "pair_loss_hparams"}). `HPARAM=VALUE` is a hyper-parameter of
    the run's loss; `LOSS.HPARAM=VALUE` one of the loss named, which must be one of `losses` or a part of one
    that is a combination ("dpo:0.8+sft:1": `dpo.beta=0.2` stays `dpo.beta`, the combination's name for it).
    """
    run_loss, run_field = next(iter(losses.items()))
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        name, sep, text = item.partition("=")
        loss, dot, hparam = name.rpartition(".")
        if not sep or not hparam or (dot and not loss):
            raise SettingsError(
                f"{flag} {item!r}: write NAME=VALUE or LOSS.NAME=VALUE, e.g. {flag} beta=0.1 "
                f"(NAME=VALUE sets a hyper-parameter of {run_loss})"
            )
        combination = _combination_of(losses, loss) if dot and loss not in losses else None
        if combination is not None:
            out.setdefault(losses[combination], {})[name] = parse_value(text)
            continue
        if dot and loss not in losses:
            raise SettingsError(
                f"{flag} {item!r}: {loss} is not a loss of this run ({', '.join(losses)}{_parts_text(losses)}); "
                f"write {flag} {hparam}={text} for {run_loss}"
            )
        field = losses[loss] if dot else run_field
        out.setdefault(field, {})[hparam] = parse_value(text)
    return out


def _combination_of(losses: Mapping[str, str], part: str) -> str | None:
    """The loss of the run that is a combination with `part` among its parts ("dpo:0.8+sft:1" for dpo), if any."""
    return next((loss for loss in losses if is_combination(loss) and part in dict(_parsed(loss))), None)


def _parts_text(losses: Mapping[str, str]) -> str:
    """ ", whose parts are dpo, sft" for a run whose losses include combinations ("" otherwise)."""
    parts = [name for loss in losses if is_combination(loss) for name, _ in _parsed(loss)]
    return f", whose parts are {', '.join(parts)}" if parts else ""


def _parsed(loss: str) -> tuple[tuple[str, float], ...]:
    try:
        return parse_combination(loss)
    except ValueError:  # a misspelt combination: the config names the mistake
        return ()


def parse_seeds(text: str, flag: str = "--seeds") -> tuple[int, ...]:
    """`0,1,2` → (0, 1, 2): distinct seeds ≥ 0, comma-separated."""
    try:
        seeds = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise SettingsError(f"{flag} {text!r}: give the seeds as comma-separated integers, e.g. {flag} 0,1,2") from None
    if any(seed < 0 for seed in seeds) or len(set(seeds)) != len(seeds):
        raise SettingsError(f"{flag} {text!r}: seeds are distinct integers ≥ 0, e.g. {flag} 0,1,2")
    return seeds
