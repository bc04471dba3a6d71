"""The skeleton every `prefopt` command follows: flag table → settings → validate → run → exit code.

A command is a `Command` subclass. Its flag table (`Option`, `Switch`: one config field per flag, help and
valid values beside it) builds its sub-parser; `settings` turns the parsed flags into what the run takes;
`validate` checks what the run needs from this machine before anything is built; `execute` runs it and
returns the exit code. A mistake on the way, or one of `user_errors()` raised while the run goes, ends the
command with one line on stderr, `prefopt <command>: <message>`, and exit code 2; `CommandParser` does the
same for argparse's own usage mistakes.

`ConfigCommand` is the common case: settings are one config dataclass, merged (later wins) from its
defaults ← `--config FILE.yaml` ← the flags given ← `--set [LOSS.]HPARAM=VALUE`.

An old spelling of a flag stays for one release (`Command.deprecated`): it does what the new one does and
prints one line saying so.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import textwrap
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from prefopt.cli.choices import Choice
from prefopt.cli.settings import (
    check_resume_folder,
    data_files_notice,
    deprecation_note,
    fail,
    main_process,
    merge_pairs,
    parse_hparams,
    read_settings_file,
    user_errors,
)
from prefopt.progress import progress_scope

__all__ = [
    "Command",
    "CommandParser",
    "ConfigCommand",
    "FlagAction",
    "Flags",
    "Option",
    "Switch",
    "finite_float",
    "given_settings",
    "print_result",
]


@dataclass(frozen=True)
class Option:
    """A flag that takes a value for one setting (`field`).

    `choices` are its valid values (a tuple, or a function of none that reads them from a registry when the
    parser is built), `accept` says which values outside them are valid too; `explain` words the error for a
    value outside them (default: `Choice`'s). `repeat`:
    the flag may be given several times and the values form a list.
    """

    field: str
    type: Callable[[str], Any]
    help: str
    choices: Sequence[str] | Callable[[], Sequence[str]] | None = None
    explain: Callable[[str], Callable[[str], str]] | None = None  # where → (value → message)
    accept: Callable[[str], bool] | None = None  # valid values outside `choices` (e.g. a combination of losses)
    metavar: str | None = None
    repeat: bool = False
    required: bool = False
    aliases: tuple[str, ...] = ()  # other spellings shown beside the flag, e.g. ("-k",)


@dataclass(frozen=True)
class Switch:
    """A flag without a value that sets one setting (`field`) to `value`."""

    field: str
    value: Any
    help: str


Flags = Mapping[str, Option | Switch]


def finite_float(text: str) -> float:
    """argparse type of number flags: a finite float (`nan`, `inf` and text are usage mistakes)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


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


class FlagAction(argparse.Action):
    """Store a flag's value (append it, with `repeat`), or `const` for a switch (nargs=0). An old spelling
    (`replaced_by` set) does the same and leaves a deprecation note for the command to print."""

    def __init__(
        self,
        option_strings: Sequence[str],
        dest: str,
        *,
        repeat: bool = False,
        replaced_by: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.repeat = repeat
        self.replaced_by = replaced_by

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        if self.replaced_by is not None:
            notes = [*getattr(namespace, "deprecated_flags", []), (option_string, self.replaced_by)]
            setattr(namespace, "deprecated_flags", list(dict.fromkeys(notes)))
        if self.nargs == 0:
            values = self.const
        if self.repeat:
            values = [*(getattr(namespace, self.dest, None) or []), values]
        setattr(namespace, self.dest, values)


def given_settings(args: argparse.Namespace, flags: Flags) -> dict[str, Any]:
    """The settings the command line gave: the fields of the flag table present in `args` (a flag not given
    is left out, so a YAML file's value stands)."""
    fields = {spec.field for spec in flags.values()}
    return {k: v for k, v in vars(args).items() if k in fields}


class Command(ABC):
    """One `prefopt` command: flag table → settings → validate → run → exit code.

    A subclass sets the class attributes and overrides `settings`, `validate` (optional) and `execute`;
    `add_arguments` adds what is not one setting per flag (positional arguments).
    """

    name: ClassVar[str]  # as typed after `prefopt`, e.g. "train" or "data synth"
    help: ClassVar[str]  # its line in `prefopt --help`
    description: ClassVar[str]  # the paragraph that opens `prefopt NAME --help`
    examples: ClassVar[str] = ""  # shown after the flags
    flags: ClassVar[Flags] = {}
    deprecated: ClassVar[Mapping[str, str]] = {}  # old flag → the flag of the flag table it stands for
    config_name: ClassVar[str] = ""  # the config class that names settings in messages, e.g. "TrainConfig"
    errors: ClassVar[tuple[type[Exception], ...]] = ()  # more errors reported as one line, besides user_errors()

    # ── what a command defines ──────────────────────────────────────────────────────────────────────────

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Arguments outside the flag table."""

    @abstractmethod
    def settings(self, args: argparse.Namespace) -> Any:
        """What the run takes, from the parsed command line; a mistake raises a ValueError naming it."""

    def validate(self, settings: Any) -> None:
        """Check what the run needs from this machine before anything is built (raises SettingsError)."""

    @abstractmethod
    def execute(self, settings: Any, args: argparse.Namespace) -> int:
        """Run the command; returns its exit code."""

    def shows_progress(self, settings: Any) -> bool:
        """Whether the run draws progress output (then it also names the files of a --data folder it reads)."""
        return bool(getattr(settings, "progress", False))

    # ── the skeleton ────────────────────────────────────────────────────────────────────────────────────

    def add_to(self, subparsers: Any) -> argparse.ArgumentParser:
        """Add this command to an argparse sub-command group; its parser's `func` runs it."""
        parser = subparsers.add_parser(self.name.split()[-1], help=self.help, **self._parser_text())
        self.build(parser)
        return parser

    def parser(self) -> CommandParser:
        """A parser of this command alone (`python -m prefopt.train`, tests)."""
        parser = CommandParser(prog=f"prefopt {self.name}", **self._parser_text())
        self.build(parser)
        return parser

    def build(self, parser: argparse.ArgumentParser) -> None:
        """Add the flag table, the old spellings and the command's own arguments to `parser`."""
        for flag, spec in self.flags.items():
            parser.add_argument(*getattr(spec, "aliases", ()), flag, **self._argument(flag, spec))
        for old, new in self.deprecated.items():
            if new in self.flags:
                parser.add_argument(
                    old, **{**self._argument(new, self.flags[new]), "help": argparse.SUPPRESS}, replaced_by=new
                )
        self.add_arguments(parser)
        parser.set_defaults(func=self.run)

    def run(self, args: argparse.Namespace) -> int:
        """settings → validate → execute; a mistake is one line on stderr and exit code 2."""
        for old, new in getattr(args, "deprecated_flags", []):
            deprecation_note(self.name, old, new)
        try:
            settings = self.settings(args)
            self.validate(settings)
        except (ValueError, TypeError, *user_errors(), *self.errors) as err:
            return fail(self.name, err)
        try:
            shows = self.shows_progress(settings)  # the library's data calls draw their bars too, unless --quiet
            with data_files_notice(self.name, shows), progress_scope(shows):
                return self.execute(settings, args)
        except (*user_errors(), *self.errors) as err:
            return fail(self.name, err)

    def main(self, argv: Sequence[str] | None = None) -> int:
        """Parse `argv` (the arguments after `prefopt NAME`) and run; returns the exit code."""
        try:
            args = self.parser().parse_args(argv)
        except SystemExit as stop:  # --help, or a usage mistake (one line printed by CommandParser)
            return stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 2
        return self.run(args)

    def _parser_text(self) -> dict[str, Any]:
        epilog = self.examples.strip("\n")
        if self.deprecated:
            old = ", ".join(f"{o} (use {n})" for o, n in self.deprecated.items())
            epilog += "\n\n" + textwrap.fill(f"Old spellings, accepted until the next release: {old}.", 100)
        return {
            "description": textwrap.fill(self.description, 100),
            "epilog": epilog or None,
            "formatter_class": argparse.RawDescriptionHelpFormatter,
        }

    def _argument(self, flag: str, spec: Option | Switch) -> dict[str, Any]:
        if isinstance(spec, Switch):
            return {
                "dest": spec.field,
                "action": FlagAction,
                "nargs": 0,
                "const": spec.value,
                "default": argparse.SUPPRESS,
                "help": spec.help.replace("%", "%%"),
            }
        kind: Callable[[str], Any] = finite_float if spec.type is float else spec.type
        metavar, help_text = spec.metavar or flag.lstrip("-").upper().replace("-", "_"), spec.help
        choices = spec.choices() if callable(spec.choices) else spec.choices
        if choices is not None:
            where = f"{self.config_name}.{spec.field}" if self.config_name else spec.field
            kind = Choice(choices, where, spec.explain(where) if spec.explain else None, spec.accept)
            if spec.metavar is None:
                metavar = "{" + ",".join(choices) + "}"
            else:  # a long list: in the help text rather than the usage line
                help_text = f"{spec.help}; one of: {', '.join(choices)}"
        return {
            "dest": spec.field,
            "action": FlagAction,
            "type": kind,
            "metavar": metavar,
            "repeat": spec.repeat,
            "required": spec.required,
            "default": argparse.SUPPRESS,
            "help": help_text.replace("%", "%%"),
        }


class ConfigCommand(Command):
    """A command whose settings are one config dataclass: its defaults ← `--config FILE.yaml` ← the flags
    given ← `--set` hyper-parameters; validated by `--resume`'s folder check and the config's `preflight()`.

    `loss_field` is the field `--loss` sets (None: the command has no `--set`); `--set` pairs go to
    `hparam_fields()`. The config class has `from_dict(values, source=...)` and `preflight()`.
    """

    config: ClassVar[Any]
    loss_field: ClassVar[str | None] = "loss"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--config",
            type=Path,
            metavar="FILE.yaml",
            help=f"YAML file of {self.config_name} settings (its field names; flags override it)",
        )
        if self.loss_field is not None:
            parser.add_argument(
                "--set",
                dest="hparams",
                action=FlagAction,
                repeat=True,
                default=[],
                metavar="[LOSS.]HPARAM=VALUE",
                help="a hyper-parameter of the loss, repeatable, e.g. --set beta=0.05 "
                "(`prefopt losses NAME` lists them with their defaults)",
            )
            parser.add_argument(
                "--hparam", dest="hparams", action=FlagAction, repeat=True, replaced_by="--set", help=argparse.SUPPRESS
            )

    def values(self, args: argparse.Namespace) -> dict[str, Any]:
        """The settings before `--set`: the `--config` file's, then the flags given."""
        values: dict[str, Any] = {}
        if getattr(args, "config", None) is not None:
            values.update(read_settings_file(args.config, self.config_name))
        values.update(given_settings(args, self.flags))
        return values

    def hparam_fields(self, values: Mapping[str, Any]) -> dict[str, str]:
        """The run's losses → the field of their hyper-parameters, the run's own loss first."""
        assert self.loss_field is not None
        return {str(values.get(self.loss_field, self.default(self.loss_field))): "loss_hparams"}

    def settings(self, args: argparse.Namespace) -> Any:
        values = self.values(args)
        if self.loss_field is not None:
            for field, pairs in parse_hparams(args.hparams, self.hparam_fields(values)).items():
                merge_pairs(values, field, pairs)
        source = getattr(args, "config", None)
        return self.config.from_dict(values, source=None if source is None else str(source))

    def validate(self, config: Any) -> None:
        check_resume_folder(bool(getattr(config, "resume", False)), config.output_dir)
        config.preflight()

    @classmethod
    def default(cls, field: str) -> Any:
        """The config's default value of `field`."""
        return next(f.default for f in dataclasses.fields(cls.config) if f.name == field)


def print_result(text: str) -> None:
    """Print a run's result once (on rank 0 under torchrun / accelerate launch)."""
    if main_process():
        print(text)
        sys.stdout.flush()
