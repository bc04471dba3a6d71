"""The training loops never name a loss: what differs between losses is read from their declarations
(`LossSpec`: kind, reference, `state`, `batch_inputs`, `online_defaults`, `accepts_pair_loss`, inputs).

Scanned with ast (docstrings and comments left out, nothing imported from the scanned files): every string
constant (f-string parts included) and every identifier (names, attributes, functions, classes, arguments,
keywords, names bound by imports; not the module paths imported from) of prefopt/train/ and prefopt/online/.
A string that holds a registered loss name as a word, or an identifier whose `_`-separated parts contain one
(`kto_reference_point`, `state["bco"]`), fails.
`ALLOWED` lists the few places that hold a name as data rather than dispatch, each with its reason.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import prefopt

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("prefopt/train", "prefopt/online")

# (file, loss name) → why the name may appear there. Anything else is an error.
ALLOWED: dict[tuple[str, str], str] = {
    ("prefopt/train/config.py", "dpo"): "TrainConfig.loss's default value (a setting, not dispatch)",
    ("prefopt/online/config.py", "rloo"): "OnlineConfig.algorithm's default value (a setting, not dispatch)",
    ("prefopt/online/reward_config.py", "bradley_terry"): "RewardModelConfig.loss's default value",
    ("prefopt/online/reward_config.py", "sft"): "`sft_config`, the synthetic task's SFT stage (a setting of the "
    "task that trains the reference policy), not the `sft` loss",
    ("prefopt/online/best_of_n_reference.py", "best_of_n"): "best-of-N sampling measured as an inference-time "
    "baseline (prefopt.eval.bon_baseline), not the loss",
    **{
        ("prefopt/train/presets.py", name): "the published optimiser settings, keyed by the loss they were "
        "published for (PRESETS; user-facing `--preset NAME`)"
        for name in (
            "dpo",
            "cdpo",
            "ipo",
            "robust_dpo",
            "kto",
            "bco",
            "apo_zero",
            "apo_down",
            "nca",
            "sppo_hard",
            "slic",
            "cpo",
            "simpo",
            "orpo",
        )
    },
}


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                out.add(id(first.value))
    return out


def _identifiers(node: ast.AST) -> Iterator[str]:
    if isinstance(node, ast.Name):
        yield node.id
    elif isinstance(node, ast.Attribute):
        yield node.attr
    elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        yield node.name
    elif isinstance(node, ast.arg):
        yield node.arg
    elif isinstance(node, ast.keyword) and node.arg is not None:
        yield node.arg
    elif isinstance(node, ast.alias):  # the bound name; module paths name files (a loss family's), not dispatch
        yield node.asname or node.name.split(".")[0]


def _names_in_identifier(identifier: str, names: list[list[str]]) -> list[str]:
    parts = [p for p in identifier.lower().split("_") if p]
    return ["_".join(n) for n in names if any(parts[i : i + len(n)] == n for i in range(len(parts) - len(n) + 1))]


def loss_names_used(path: Path, losses: list[str]) -> list[tuple[int, str, str]]:
    """(line, loss name, where) for every string constant or identifier of `path` that names a loss."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = _docstrings(tree)
    split = [n.split("_") for n in losses]
    words = re.compile(
        r"(?<![A-Za-z0-9_])(" + "|".join(sorted(map(re.escape, losses), key=len, reverse=True)) + r")(?![A-Za-z0-9_])"
    )
    found = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            found += [(line, m, f"string {node.value[:60]!r}") for m in words.findall(node.value)]
        for identifier in _identifiers(node):
            found += [(line, m, f"identifier {identifier}") for m in _names_in_identifier(identifier, split)]
    return found


def test_loops_never_name_a_loss() -> None:
    losses = prefopt.list_losses()
    found = []
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            found += [
                f"{rel}:{line}: {name} ({where})"
                for line, name, where in loss_names_used(path, losses)
                if (rel, name) not in ALLOWED
            ]
    assert found == [], (
        "the loops name losses; declare what differs on the LossSpec instead "
        "(docs/architecture.md, 'The loss contract'):\n" + "\n".join(sorted(set(found)))
    )


def test_the_scan_finds_what_it_should(tmp_path) -> None:
    """The checker itself: dispatch by string, loss-named identifiers, attributes and import aliases are found
    (a name as one `_`-part of an identifier counts: `spec.dpo_like`); docstrings, module paths and words that
    merely contain a name's letters ("grpos", `spec.kl`) are not."""
    source = tmp_path / "loop.py"
    source.write_text(
        '"""Trains kto and dpo (a docstring may say so)."""\n'
        "import prefopt.losses.unpaired as bco_module\n"
        "from prefopt.losses.best_of_n import best_worst_pairs\n"
        "def step(spec, state):\n"
        '    """Also here: bco."""\n'
        '    if spec.name == "kto":\n'
        '        return state["bco"], kto_reference_point(), spec.online_dpo, f"{spec} ppo!"\n'
        '    return "ipo_sum is not ipo", "dpop", "grpos", spec.kl, spec.dpo_like\n'
    )
    found = sorted((line, name) for line, name, _ in loss_names_used(source, prefopt.list_losses()))
    assert found == [
        (2, "bco"),
        (6, "kto"),
        (7, "bco"),
        (7, "dpo"),
        (7, "kto"),
        (7, "online_dpo"),
        (7, "ppo"),
        (8, "dpo"),
        (8, "dpop"),
        (8, "ipo"),
        (8, "ipo_sum"),
    ]
