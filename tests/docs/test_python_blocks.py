"""Every ```python block of README.md and docs/*.md runs, and prints what the page says it prints.

One test per page: the page's blocks run in order in one namespace (a block may continue the block above
it on the same page; the page says so), in a fresh temporary working directory, with one torch thread.

Output the page shows is checked where it is cheap to check:

* a top-level expression statement with a trailing comment that shows a value, e.g.
  ``print(out.loss)   # tensor(0.6931)`` or ``gold_reward(...)   # tensor([-0.2635])``: what the
  statement prints (for ``print``) or the value's repr (for any other expression) must match the start of
  the comment, numbers within the precision the comment shows; words after the value in the comment
  (``# 0.7153 [...]   inflated by length``) are commentary;
* lines in ``EXPECTED_LINES`` below must appear in what the page printed (output shown in a comment
  under a loop).

A block that is too expensive to run here has ``<!-- doc-test: skip (reason) -->`` on the line (or lines)
right before it; it does not run and is reported as a skipped test with that reason. Later blocks of
the page must not depend on it.
"""

from __future__ import annotations

import ast
import contextlib
import io
import re
import shutil
import sys
import time
import types
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from prefopt import registry

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

SKIP_MARKER = re.compile(r"<!--\s*doc-test:\s*skip\s*\((?P<reason>[^)]*)\)\s*-->")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")

# Output shown in a comment that does not follow a single expression (e.g. under a `for` loop).
EXPECTED_LINES: dict[str, list[str]] = {
    "docs/evaluation.md": [
        "algo3  θ=2.01 [1.93, 2.11]  elo=1349",
        "algo0  θ=0.00 [0.00, 0.00]  elo=1000",
    ],
}

# Pages whose blocks take more than ~5 s together on two CPU cores.
SLOW_PAGES: set[str] = {"docs/compare.md", "docs/engine.md", "docs/synthetic.md", "docs/trl.md"}

# A block counts as long-running (and its page as slow) above this many seconds.
SLOW_SECONDS = 5.0


@dataclass(frozen=True)
class Block:
    page: str  # path relative to the repository root
    index: int  # position among the page's python blocks, from 0
    line: int  # 1-based line of the first code line in the page
    code: str
    skip_reason: str | None


def python_blocks(path: Path) -> list[Block]:
    """The ```python blocks of one Markdown file, with the skip marker right above each (if any)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    page = path.relative_to(ROOT).as_posix()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence, info, indent = match["fence"], match["info"].strip(), len(match["indent"])
        start = i + 1
        end = start
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        if info.split()[:1] == ["python"]:
            code = "\n".join(line[indent:] for line in lines[start:end]) + "\n"
            blocks.append(Block(page, len(blocks), start + 1, code, _skip_reason(lines, i)))
        i = end + 1
    return blocks


def _skip_reason(lines: list[str], fence_line: int) -> str | None:
    """The reason of a `<!-- doc-test: skip (reason) -->` marker on the non-blank line above a fence."""
    j = fence_line - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    if j < 0:
        return None
    match = SKIP_MARKER.search(lines[j])
    return match["reason"].strip() if match else None


BLOCKS = {path.relative_to(ROOT).as_posix(): python_blocks(path) for path in PAGES}
PAGES_WITH_BLOCKS = [page for page, blocks in BLOCKS.items() if blocks]
SKIPPED = [block for blocks in BLOCKS.values() for block in blocks if block.skip_reason]


# ---------------------------------------------------------------------------------------------------------
# Comparing shown output with actual output

_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")
_TOKEN = re.compile(rf"{_NUMBER.pattern}|\w+|[^\w\s]")
# A comment shows a value when its first word is a number, True/False/None/nan/inf (after `tensor(` or brackets).
_SHOWS_A_VALUE = re.compile(r"^(?:tensor\()?[\[{(]*\s*(?:[-+]?\.?\d|True\b|False\b|None\b|nan\b|inf\b)")


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


def _number_matches(actual: str, shown: str) -> bool:
    decimals = len(shown.split(".", 1)[1].split("e")[0].split("E")[0]) if "." in shown else 0
    a, s = float(actual), float(shown)
    tolerance = max(10.0**-decimals, 1e-3 * abs(s))
    return abs(a - s) <= tolerance


def output_matches(actual: str, shown: str) -> bool:
    """`actual` (printed text or a repr) matches the start of `shown`, numbers to the shown precision."""
    got, want = _tokens(actual), _tokens(shown)
    if not got or len(got) > len(want):
        return False
    for a, s in zip(got, want):
        a_number, s_number = _NUMBER.fullmatch(a), _NUMBER.fullmatch(s)
        if a_number and s_number:
            if not _number_matches(a, s):
                return False
        elif a != s:
            return False
    return True


def _trailing_comment(source_line: str) -> str | None:
    """The comment at the end of one line of code (None when there is none)."""
    import tokenize

    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source_line + "\n").readline))
    except (tokenize.TokenError, IndentationError):
        return None
    comments = [t.string for t in tokens if t.type == tokenize.COMMENT]
    return comments[-1][1:].strip() if comments else None


def _shown_output(statement: ast.stmt, code_lines: list[str]) -> str | None:
    """What the page claims a top-level expression statement prints or evaluates to, if it claims it."""
    if not isinstance(statement, ast.Expr) or statement.end_lineno is None:
        return None
    comment = _trailing_comment(code_lines[statement.end_lineno - 1])
    if comment is None or not _SHOWS_A_VALUE.match(comment):
        return None
    return comment


def run_block(block: Block, namespace: dict) -> str:
    """Run one block statement by statement in `namespace`; check the output its comments show."""
    filename = f"{block.page}[python block {block.index}, line {block.line}]"
    tree = ast.parse(block.code, filename=filename)
    ast.increment_lineno(tree, block.line - 1)  # tracebacks point at the page's own lines
    code_lines = [""] * (block.line - 1) + block.code.splitlines()
    printed = io.StringIO()
    for statement in tree.body:
        shown = _shown_output(statement, code_lines)
        is_print = (
            isinstance(statement, ast.Expr)
            and isinstance(statement.value, ast.Call)
            and isinstance(statement.value.func, ast.Name)
            and statement.value.func.id == "print"
        )
        stdout = io.StringIO()
        if shown is not None and not is_print:
            expression = ast.Expression(statement.value)
            with contextlib.redirect_stdout(stdout):
                value = eval(compile(expression, filename, "eval"), namespace)  # noqa: S307 - our own docs
            actual = repr(value)
        else:
            module = ast.Module(body=[statement], type_ignores=[])
            with contextlib.redirect_stdout(stdout):
                exec(compile(module, filename, "exec"), namespace)  # noqa: S102 - our own docs
            actual = stdout.getvalue()
        printed.write(stdout.getvalue())
        if shown is not None:
            assert output_matches(actual.strip(), shown), (
                f"{block.page}:{statement.lineno}: the page shows\n    {shown}\nbut the code gives\n"
                f"    {actual.strip()}"
            )
    return printed.getvalue()


# ---------------------------------------------------------------------------------------------------------
# Tests


def _page_param(page: str):
    marks = [pytest.mark.slow] if page in SLOW_PAGES else []
    return pytest.param(page, id=page, marks=marks)


@pytest.fixture
def doc_env(monkeypatch, tmp_path):
    """A fresh cwd, offline Hugging Face libraries, caches under tmp, one torch thread."""
    monkeypatch.chdir(tmp_path)
    # docs/data.md loads the repository's fixtures by their path from the repository root
    shutil.copytree(ROOT / "tests" / "data" / "fixtures", tmp_path / "tests" / "data" / "fixtures")
    module = types.ModuleType("__doc_example__")  # dataclasses and pickle look their module up
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets-cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    # pages that show how to register a loss (architecture.md) must not leave it in the registry
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    try:
        yield tmp_path
    finally:
        torch.set_num_threads(threads)


@pytest.mark.filterwarnings("ignore::prefopt.data.validate.PreferenceDataWarning")
@pytest.mark.parametrize("page", [_page_param(page) for page in PAGES_WITH_BLOCKS])
def test_page_python_blocks_run(page: str, doc_env) -> None:
    namespace = sys.modules["__doc_example__"].__dict__
    printed = io.StringIO()
    timings = []
    for block in BLOCKS[page]:
        if block.skip_reason:
            continue
        start = time.perf_counter()
        printed.write(run_block(block, namespace))
        timings.append((block.index, time.perf_counter() - start))
    for line in EXPECTED_LINES.get(page, []):
        assert line in printed.getvalue(), f"{page} promises {line!r}; its examples printed:\n{printed.getvalue()}"
    total = sum(seconds for _, seconds in timings)
    if total > SLOW_SECONDS and page not in SLOW_PAGES:
        # A report, not an assertion: wall time depends on the machine's load (STYLE: no timed assertions).
        warnings.warn(f"{page}'s examples took {total:.1f} s ({timings}); add it to SLOW_PAGES or make them smaller")


@pytest.mark.parametrize(
    "block", [pytest.param(b, id=f"{b.page}:{b.line}") for b in SKIPPED] or [pytest.param(None, id="none")]
)
def test_skipped_python_blocks_say_why(block: Block | None) -> None:
    if block is None:
        pytest.skip("no python block of the docs is marked doc-test: skip")
    assert block.skip_reason, f"{block.page}:{block.line}: a skip marker needs a reason"
    pytest.skip(f"{block.page}:{block.line} [python block {block.index}]: {block.skip_reason}")


def test_versions_named_in_prose_are_the_constrained_ones() -> None:
    pins = dict(
        line.split("==", 1)
        for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines()
        if "==" in line and not line.startswith("#")
    )
    for path in PAGES:
        for name, version in re.findall(r"\b(transformers|accelerate) (\d+\.\d+(?:\.\d+)?)\b", path.read_text("utf-8")):
            pinned = pins[name]
            assert pinned == version or pinned.startswith(version + "."), (
                f"{path.relative_to(ROOT)} names {name} {version}; constraints.txt pins {name}=={pinned}"
            )


def test_blocks_are_found() -> None:
    assert len(BLOCKS["README.md"]) >= 2
    assert sum(len(blocks) for blocks in BLOCKS.values()) >= 25


@pytest.mark.parametrize(
    ("actual", "shown", "ok"),
    [
        ("tensor(0.6931)", "tensor(0.6931)", True),
        ("tensor(0.69314)", "tensor(0.6931)", True),
        ("tensor(0.7000)", "tensor(0.6931)", False),
        ("0.7153 [0.6986, 0.7297]", "0.7153 [0.6986, 0.7297]   inflated by length", True),
        ("tensor([-0.2635])", "tensor([-0.2635])", True),
        ("tensor([-0.2635, 1.0])", "tensor([-0.2635])", False),
        ("2 [-0.4841, 4.484]", "2 [-0.4841, 4.4840]", True),
        ("", "tensor(1.)", False),
    ],
)
def test_output_matching(actual: str, shown: str, ok: bool) -> None:
    assert output_matches(actual, shown) is ok
