"""The test tree must never shadow an installed distribution.

pytest's default ("prepend") import mode puts the first folder above each test file that has no
`__init__.py` on `sys.path`. A test package named like a distribution then wins over it: once
transformers began importing the `kernels` distribution, a `tests/kernels/__init__.py` on the path (now
`tests/fused_kernels`) broke `from transformers import LlamaConfig`. Every test folder is therefore a
package under `tests`, so the only top-level name the tree adds is `tests`, and this test fails if any name
it adds is an installed distribution's top-level module or a standard-library module.
"""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _top_level_names() -> dict[str, Path]:
    """The importable names pytest's prepend mode adds for our test files: each file's outermost package
    (or the module itself when its folder is no package)."""
    names: dict[str, Path] = {}
    for path in sorted(TESTS.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        top = path
        while (top.parent / "__init__.py").exists():
            top = top.parent
        name = top.stem if top.is_file() else top.name
        names.setdefault(name, top)
    return names


def test_every_test_folder_is_a_package() -> None:
    missing = [
        str(d.relative_to(TESTS.parent))
        for d in [TESTS, *TESTS.rglob("*")]
        if d.is_dir() and d.name != "__pycache__" and any(d.glob("*.py")) and not (d / "__init__.py").exists()
    ]
    assert not missing, f"add an __init__.py to {missing}: without one, its modules become top-level names"


def test_test_tree_adds_only_the_tests_package() -> None:
    assert set(_top_level_names()) == {"tests"}, _top_level_names()


def test_no_test_name_shadows_a_distribution() -> None:
    """Neither the names the tree adds nor any test folder's own name (in case a folder loses its
    `__init__.py`, or a tool runs pytest with another import mode) is an installed top-level module."""
    installed = importlib.metadata.packages_distributions()
    folders = {d.name for d in TESTS.rglob("*") if d.is_dir() and d.name != "__pycache__"}
    names = set(_top_level_names()) | folders
    clashes = {name: installed[name] for name in names if name in installed}
    clashes |= {name: ["the standard library"] for name in names if name in sys.stdlib_module_names}
    assert not clashes, f"test names shadow installed modules: {clashes}; rename them"


def test_transformers_imports_its_own_dependencies() -> None:
    """The symptom itself: with the test tree on sys.path, transformers still finds the real `kernels`."""
    import importlib.util

    spec = importlib.util.find_spec("kernels")
    if spec is not None:
        assert TESTS not in Path(spec.origin or "").resolve().parents
    from transformers import LlamaConfig  # noqa: F401
