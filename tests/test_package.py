"""Package-level checks: every module imports, the CLI lists the registry, and docs/losses.md is fresh."""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import prefopt
from prefopt.cli import main
from prefopt.losses import catalog

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(
    m.name for m in pkgutil.walk_packages(prefopt.__path__, prefix="prefopt.") if not m.name.endswith("__main__")
)


# Modules that import an optional extra at the top; without it they skip (the README's install has no Triton).
OPTIONAL = {"prefopt.kernels.triton_function": "triton", "prefopt.kernels.triton_kernels": "triton"}


@pytest.mark.parametrize("module", MODULES)
def test_every_module_imports(module: str) -> None:
    if module in OPTIONAL and importlib.util.find_spec(OPTIONAL[module]) is None:
        pytest.skip(f"{module} needs the optional {OPTIONAL[module]!r} package (pip install -e '.[triton]')")
    importlib.import_module(module)


def test_optional_modules_are_the_ones_that_need_an_extra() -> None:
    """OPTIONAL lists exactly the modules that import an extra at module level, so the skip above hides nothing."""
    import ast

    for module in MODULES:
        path = ROOT / (module.replace(".", "/") + ".py")
        if not path.exists():
            path = ROOT / module.replace(".", "/") / "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
        top |= {node.module.split(".")[0] for node in tree.body if isinstance(node, ast.ImportFrom) and node.module}
        assert ("triton" in top) == (module in OPTIONAL), module


def test_import_prefopt_is_light() -> None:
    """`import prefopt` must not import transformers, datasets or triton (they load on first use)."""
    code = "import sys, prefopt; print(sorted(m for m in ('transformers', 'datasets', 'triton') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_py_typed_marker_ships() -> None:
    assert (ROOT / "prefopt" / "py.typed").exists()


def test_cli_lists_every_loss(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["losses"]) == 0
    text = capsys.readouterr().out
    for name in prefopt.list_losses():
        spec = prefopt.loss_spec(name)
        line = next(ln for ln in text.splitlines() if ln.split()[:1] == [name])
        assert spec.kind in line and ("yes" if spec.needs_reference else "no") in line
        for h in spec.hparams:
            assert f"{h.name}={h.default!r}" in line
    assert f"{len(prefopt.list_losses())} losses" in text


def test_cli_shows_one_loss_and_rejects_unknown(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["losses", "dpo"]) == 0
    out = capsys.readouterr().out
    assert "−log σ(β·Δ)" in out and "Rafailov" in out
    assert main(["losses", "dop"]) == 2
    err = capsys.readouterr().err
    assert "Did you mean" in err and "'dpo'" in err


def test_cli_entry_point_runs_as_module() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "prefopt", "losses", "--format", "json"], capture_output=True, text=True, check=True
    )
    assert '"name": "dpo"' in result.stdout


def test_docs_losses_md_is_generated_and_fresh() -> None:
    path = ROOT / "docs" / "losses.md"
    assert path.read_text(encoding="utf-8") == catalog.render_markdown(), (
        "docs/losses.md is stale: run `python -m prefopt.losses.catalog --write docs/losses.md`"
    )


def test_stated_loss_counts_are_the_registry_size() -> None:
    """README and docs name no count of losses that the registry does not have (they need not name one:
    adding a loss then touches only its module and its test)."""
    import re

    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for count in re.findall(r"(\d+) registered losses", path.read_text(encoding="utf-8")):
            assert int(count) == len(prefopt.list_losses()), f"{path.name} says {count} registered losses"


def test_readme_installs_from_the_constraints_file() -> None:
    """Both README commands install the tested versions, and constraints.txt pins every runtime dependency."""
    import re

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert len(commands) == 2 and all("-c constraints.txt" in c and "torch==2.13.0" in c for c in commands)
    pins = {
        re.sub(r"[-_.]+", "-", line.split("==")[0]).lower()
        for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines()
        if "==" in line and not line.startswith("#")
    }
    for dep in ("transformers", "datasets", "peft", "bitsandbytes", "einops", "scipy", "accelerate", "pytest"):
        assert dep in pins, f"constraints.txt does not pin {dep}: run bash .ci/refresh-constraints"
    assert "torch" not in pins, "torch is pinned on the install line (CPU or CUDA build), not in constraints.txt"
