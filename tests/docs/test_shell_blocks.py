"""Every shell block of README.md and docs/*.md is checked: its `prefopt` commands parse with prefopt's own parser.

A shell block is a fence tagged bash, sh, console or shell. In each one, every command line (`\\` continuations
joined, `$ ` prompts and `#` comments dropped, `&&` / `||` / `;` / `|` chains split, `VAR=value` prefixes
skipped) that runs prefopt — `prefopt ...`, `python -m prefopt ...`, `python -m prefopt.train ...`,
`torchrun ... -m prefopt.train ...`, `accelerate launch ... -m prefopt.train ...` — is parsed with
`build_parser().parse_args`, so an unknown flag, a wrong choice or a renamed command fails here with the page
and line.

The commands in CHEAP run for real (in-process, in a temporary folder). Every other block must say why it is
only parsed, with an HTML comment right before its fence:

    <!-- doc-test: syntax-only (a full compare takes minutes) -->

so a new block gets a decision: add its commands to CHEAP, or mark it. Installation lines (pip, venv, git, CI
scripts) are never run; an editable install of prefopt must use `-c constraints.txt`.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGS = {"bash", "sh", "console", "shell"}
FENCE = re.compile(r"^\s*```(\S*)\s*$")
MARKER = re.compile(r"^<!--\s*doc-test:\s*syntax-only\s*\((?P<why>[^)]+)\)\s*-->$")

# Placeholders of the docs are parsed as written (they are strings). Only where a flag with fixed choices holds
# one is it replaced, by a valid value from this table (placeholder -> value).
PLACEHOLDERS: dict[str, str] = {
    "NAME": "dpo",
    "LOSS": "dpo",
    "FORMAT": "json",
    "BACKEND": "auto",
}

# Commands (prefopt's argv, as in the docs) cheap enough to run for real: seconds, CPU, offline. Slow ones
# (a few seconds each on the 2-core CI machine) are marked slow.
CHEAP: dict[str, tuple] = {
    "reproduce": (),
    "train --list-recipes": (),
    "train --recipe simpo-llama3-base --smoke --out runs/smoke/simpo": (pytest.mark.slow,),
    "reproduce ipo-bandits --quick": (pytest.mark.slow,),
    "train-rm --tiny --epochs 6 --batch-size 8 --lr 1e-3 --out runs/rm-tiny": (pytest.mark.slow,),
}

# Lines of a shell block that are not prefopt commands and are never run (installation, CI, benchmarks).
OTHER_PROGRAMS = {"python3", "python", "pip", ".", "source", "bash", "git", "cd"}


@dataclass(frozen=True)
class Block:
    page: str
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    why_syntax_only: str | None

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


@dataclass(frozen=True)
class Command:
    page: str
    line: int  # of the command's first line, 1-based
    words: tuple[str, ...]  # the whole command, env prefixes dropped
    argv: tuple[str, ...] | None  # prefopt's argv, or None when the command does not run prefopt

    @property
    def where(self) -> str:
        return f"{self.page}, line {self.line}"


def read_blocks(text: str, page: str) -> list[Block]:
    """The fenced blocks of `text` (any language; `lang` is "" for an untagged fence)."""
    lines = text.split("\n")
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        end = i + 1
        while end < len(lines) and not re.match(r"^\s*```\s*$", lines[end]):
            end += 1
        before = next((lines[k].strip() for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        marker = MARKER.match(before)
        blocks.append(
            Block(page, i + 1, opening.group(1).lower(), "\n".join(lines[i + 1 : end]), marker and marker["why"])
        )
        i = end + 1
    return blocks


def shell_blocks() -> list[Block]:
    return [
        b
        for page in PAGES
        for b in read_blocks(page.read_text(encoding="utf-8"), str(page.relative_to(ROOT)))
        if b.lang in SHELL_LANGS
    ]


def prefopt_argv(words: list[str]) -> list[str] | None:
    """prefopt's argv in a command, or None when the command does not run prefopt."""
    if not words:
        return None
    if words[0] == "prefopt":
        return words[1:]
    if "-m" in words[:-1] and (words[0] in ("python", "python3", "torchrun") or words[:2] == ["accelerate", "launch"]):
        at = words.index("-m")
        module, rest = words[at + 1], words[at + 2 :]
        if module == "prefopt":
            return rest
        if module == "prefopt.train":  # prefopt/train/__main__.py: `prefopt train ARGS`
            return ["train", *rest]
    return None


def logical_lines(text: str) -> list[tuple[int, str]]:
    """(0-based index of the first line, the line with its `\\` continuations joined)."""
    lines, joined, i = text.split("\n"), [], 0
    while i < len(lines):
        first, logical = i, lines[i]
        while logical.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            logical = logical.rstrip()[:-1] + " " + lines[i]
        i += 1
        joined.append((first, logical.strip()))
    return joined


def split_chain(line: str) -> list[list[str]]:
    """The words of each command of a `&&` / `||` / `;` / `|` chain, `#` comments and `...` dropped."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars="&|;")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    chain: list[list[str]] = [[]]
    for token in lexer:
        if token in ("&&", "||", ";", "|", "&"):
            chain.append([])
        elif token != "...":  # "the other flags" in the docs
            chain[-1].append(token)
    return chain


def commands(block: Block) -> list[Command]:
    """The commands of a shell block, each with prefopt's argv where it runs prefopt."""
    found: list[Command] = []
    for first, logical in logical_lines(block.text):
        if block.lang == "console" and not logical.startswith("$ "):
            continue  # console output
        try:
            chain = split_chain(logical.removeprefix("$ "))
        except ValueError as err:  # unbalanced quotes
            pytest.fail(f"{block.page}, line {block.line + first + 1}: cannot split {logical!r}: {err}")
        for words in chain:
            while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
                words = words[1:]  # PREFOPT_CACHE=x prefopt ...
            if words:
                argv = prefopt_argv(words)
                found.append(
                    Command(block.page, block.line + first + 1, tuple(words), None if argv is None else tuple(argv))
                )
    return found


def parse_error(argv: list[str]) -> str | None:
    """None when `argv` parses with prefopt's parser, else the parser's message."""
    from prefopt.cli import build_parser

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            build_parser().parse_args(argv)
        except SystemExit as stop:
            if stop.code not in (0, None):  # --help / --version exit 0
                return stderr.getvalue().strip() or f"exit {stop.code}"
    return None


def check_parses(argv: list[str]) -> str | None:
    """parse_error, retried with PLACEHOLDERS substituted only where a choice-restricted flag holds one."""
    error = parse_error(argv)
    if error and any(f"'{word}'" in error for word in argv if word in PLACEHOLDERS):  # e.g. "='NAME': use one of"
        return parse_error([PLACEHOLDERS.get(word, word) for word in argv])
    return error


BLOCKS = shell_blocks()
COMMANDS = [c for b in BLOCKS for c in commands(b)]
PREFOPT = [c for c in COMMANDS if c.argv is not None]


def test_the_docs_have_shell_blocks_and_prefopt_commands() -> None:
    assert len(BLOCKS) >= 10 and len(PREFOPT) >= 30, (len(BLOCKS), len(PREFOPT))


@pytest.mark.parametrize("command", PREFOPT, ids=lambda c: f"{c.page}:{c.line}")
def test_prefopt_command_parses(command: Command) -> None:
    error = check_parses(list(command.argv))
    assert error is None, f"{command.where}: `{' '.join(command.words)}` does not parse: {error}"


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.id)
def test_every_shell_block_is_run_or_marked_syntax_only(block: Block) -> None:
    if block.why_syntax_only:
        return
    not_cheap = [c for c in commands(block) if c.argv is None or " ".join(c.argv) not in CHEAP]
    assert not not_cheap, (
        f"{block.id}: {[' '.join(c.words) for c in not_cheap]} are not in CHEAP of {Path(__file__).name}; "
        "add them there if they take seconds, or put `<!-- doc-test: syntax-only (why) -->` before the block"
    )


def test_untagged_fences_hold_no_commands() -> None:
    """A command in a bare ``` fence would escape these checks: tag the fence bash."""
    command = re.compile(r"^(\$ )?([A-Za-z_]+=\S+ )*(prefopt|accelerate launch|torchrun|python3? -m prefopt)(\s|$)")
    output = re.compile(r"^prefopt [\w-]+( [\w-]+)?:")  # prefopt's own messages: `prefopt train: ...`
    bad = [
        f"{b.id}: {line.strip()}"
        for page in PAGES
        for b in read_blocks(page.read_text(encoding="utf-8"), str(page.relative_to(ROOT)))
        if b.lang == ""
        for line in b.text.split("\n")
        if command.match(line.strip()) and not output.match(line.strip())
    ]
    assert not bad, f"untagged fences with commands (tag them ```bash): {bad}"


def test_editable_installs_of_prefopt_use_the_constraints() -> None:
    installs = [c for c in COMMANDS if c.words[:2] == ("pip", "install") and "-e" in c.words]
    assert installs
    for c in installs:
        assert "-c" in c.words and c.words[c.words.index("-c") + 1] == "constraints.txt", c.where
    assert (ROOT / "constraints.txt").is_file()


def test_scripts_the_blocks_run_exist() -> None:
    for c in COMMANDS:
        if c.argv is None and c.words[0] in ("python", "python3", "bash") and len(c.words) > 1:
            script = c.words[1]
            if not script.startswith("-"):
                assert (ROOT / script).is_file(), f"{c.where}: {script} does not exist"
        else:
            assert c.argv is not None or c.words[0] in OTHER_PROGRAMS, f"{c.where}: unknown program {c.words}"


def test_the_checker_fails_on_a_broken_example() -> None:
    page = (
        "<!-- doc-test: syntax-only (x) -->\n```bash\n"
        "$ PREFOPT_CACHE=c prefopt train --lr 1e-3 \\\n    --bogus 1 && prefopt losse\n```\n"
    )
    (block,) = read_blocks(page, "broken.md")
    found = commands(block)
    assert [c.argv for c in found] == [("train", "--lr", "1e-3", "--bogus", "1"), ("losse",)]
    assert all(check_parses(list(c.argv)) for c in found)
    assert "--bogus" in check_parses(list(found[0].argv))
    assert check_parses(["train", "--optimizer", "adam"])  # a wrong choice
    assert check_parses(["train", "--engine-backend", "BACKEND"]) is None  # a placeholder from the table


@pytest.mark.parametrize("argv", [pytest.param(argv, marks=marks, id=argv) for argv, marks in CHEAP.items()])
def test_cheap_commands_run(argv: str, tmp_path, monkeypatch, capsys) -> None:
    from prefopt.cli import main

    assert argv in {" ".join(c.argv) for c in PREFOPT}, f"{argv!r} is in CHEAP but no page shows it"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("PREFOPT_CACHE", str(tmp_path / "cache"))
    assert main(shlex.split(argv)) == 0, capsys.readouterr()


@pytest.mark.parametrize("name", sorted({c.argv[0] for c in PREFOPT if c.argv and not c.argv[0].startswith("-")}))
def test_help_of_each_documented_command(name: str, capsys) -> None:
    from prefopt.cli import main

    assert main([name, "--help"]) == 0
    assert f"prefopt {name}" in capsys.readouterr().out


CPU_LAUNCH = "accelerate launch --multi_gpu --num_processes 2 -m prefopt.train --cpu --loss dpo"


def test_the_cpu_multiprocess_example_and_the_error_recommend_cpu(monkeypatch) -> None:
    from prefopt.train import TrainConfig
    from prefopt.train.setup import DistributedSetupError, make_accelerator

    launches = [c for c in COMMANDS if c.words[:2] == ("accelerate", "launch") and c.page == "docs/training.md"]
    assert [" ".join(c.words) for c in launches] == [CPU_LAUNCH]
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(DistributedSetupError) as raised:
        make_accelerator(TrainConfig())
    assert "accelerate launch --multi_gpu --num_processes N -m prefopt.train --cpu" in str(raised.value)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_the_cpu_multiprocess_example_runs(tmp_path) -> None:
    """docs/training.md's 2-process CPU launch, on the tiny task (≈13 s)."""
    from tests.train.tiny_task import write_tiny_task

    task = write_tiny_task(tmp_path / "task", pairs=16)
    launch = shlex.split(CPU_LAUNCH)
    launch[0] = str(Path(sys.executable).with_name("accelerate"))
    tiny = ["--data", str(task["paired"]), "--model", str(task["model"]), "--out", str(tmp_path / "run")]
    tiny += ["--batch-size", "4", "--micro-batch-size", "2", "--max-steps", "2", "--preset", "synthetic", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("WORLD_SIZE", None)
    done = subprocess.run(launch + tiny, capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "run" / "result.json").is_file()
