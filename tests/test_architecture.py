"""The layers of docs/architecture.md, enforced on the source (ast only: nothing is imported).

Every import is scanned, those inside functions included. A module may import its own layer or a lower one
(`LAYERS`, bottom to top, the same table as docs/architecture.md's "Layers"); the import graph between
modules has no cycle (package `__init__` re-exports included); imports inside functions are kept for heavy
optional dependencies only (`HEAVY`), each marked with a `# heavy: ...` comment on its line or the line above,
so that `import prefopt` stays light (tests/test_package.py) and every other dependency shows at the top.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "prefopt"
ARCHITECTURE = ROOT / "docs" / "architecture.md"

# Bottom to top. A module belongs to the layer of its longest listed prefix (`prefopt` itself: the package
# root, which re-exports the loss API). Command-line modules (a name part ending in "cli", cli_settings,
# __main__) are the "cli" layer wherever they live.
LAYERS: dict[str, tuple[str, ...]] = {
    "contracts": (
        "prefopt.errors",
        "prefopt.batch",
        "prefopt.reward_function",
        "prefopt.threads",
        "prefopt.atomic",
        "prefopt.memory",
        "prefopt.hf_compat",
        "prefopt.progress",
        "prefopt.settings",
    ),
    "kernels": ("prefopt.kernels",),
    "preflight": ("prefopt.preflight",),
    "sampling": ("prefopt.sampling",),
    "data": ("prefopt.data",),
    "engine": ("prefopt.engine",),
    "registry": ("prefopt.registry", "prefopt.loss_inputs", "prefopt.loss_state"),
    "rl": ("prefopt.rl",),
    "losses": ("prefopt.losses", "prefopt", "prefopt.trl_config"),
    "loss call": ("prefopt.loss_call",),
    "eval": ("prefopt.eval",),
    "train": ("prefopt.train",),
    "online": ("prefopt.online",),
    "front ends": ("prefopt.compare", "prefopt.reproduce"),
    "cli": ("prefopt.cli", "prefopt.__main__"),
}
ORDER = {name: i for i, name in enumerate(LAYERS)}

# Dependencies that may be imported inside a function (slow to import, or optional extras): the top-level
# package, or a dotted prefix for one heavy corner of a light package.
HEAVY = (
    "transformers",
    "datasets",
    "peft",
    "bitsandbytes",
    "triton",
    "vllm",
    "matplotlib",
    "scipy",
    "accelerate",
    "huggingface_hub",
    "tokenizers",
    "pyarrow",
    "wandb",
    "torch.utils.tensorboard",
    "rouge_score",  # the `lexical` extra (prefopt.online.lexical_rewards)
    "sacrebleu",
    "nltk",
)
HEAVY_MARK = re.compile(r"#\s*heavy\b")


def is_cli(module: str) -> bool:
    """A command-line module: argparse and YAML live there, and the library never imports it."""
    return any(part.endswith("cli") or part in ("cli_settings", "__main__") for part in module.split(".")[1:])


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = modules()


def layer_of(module: str) -> str | None:
    if is_cli(module):
        return "cli"
    if module == "prefopt":
        return "losses"
    best = None
    for layer, prefixes in LAYERS.items():
        for prefix in prefixes:
            if prefix != "prefopt" and (module == prefix or module.startswith(prefix + ".")):
                if best is None or len(prefix) > len(best[1]):
                    best = (layer, prefix)
    return best[0] if best else None


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported name: a prefopt module, or a dotted third-party name
    line: int
    in_function: bool
    marked_heavy: bool

    @property
    def internal(self) -> bool:
        return self.target == "prefopt" or self.target.startswith("prefopt.")

    def __str__(self) -> str:
        where = "inside a function" if self.in_function else "at module level"
        return f"{self.module} imports {self.target} ({MODULES[self.module].relative_to(ROOT)}:{self.line}, {where})"


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    keep = len(base) - node.level + (1 if MODULES[module].name == "__init__.py" else 0)
    return ".".join(base[:keep] + ([node.module] if node.module else []))


def _internal(name: str) -> str:
    """The prefopt module a dotted name lives in (`prefopt.data.TokenBatch` → `prefopt.data`)."""
    while name not in MODULES and "." in name:
        name = name.rpartition(".")[0]
    return name


def scan(module: str) -> Iterator[Import]:
    path = MODULES[module]
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    tree = ast.parse(text)
    in_function = {
        id(n)
        for f in ast.walk(tree)
        if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for n in ast.walk(f)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            names = [f"{target}.{a.name}" if target.startswith("prefopt") else target for a in node.names]
        else:
            continue
        marked = any(HEAVY_MARK.search(lines[i]) for i in (node.lineno - 2, node.lineno - 1) if 0 <= i < len(lines))
        targets = [_internal(n) if n == "prefopt" or n.startswith("prefopt.") else n for n in names]
        for target in dict.fromkeys(targets):
            if target != module:
                yield Import(module, target, node.lineno, id(node) in in_function, marked)


IMPORTS = [imp for module in MODULES for imp in scan(module)]


def test_every_module_has_a_layer() -> None:
    assert [m for m in MODULES if layer_of(m) is None] == []


def test_no_import_goes_up_a_layer() -> None:
    """A module imports its own layer or lower: an arrow up the table is an error."""
    upward = [
        f"{imp}: layer {layer_of(imp.module)!r} may not import layer {layer_of(imp.target)!r}"
        for imp in IMPORTS
        if imp.internal and ORDER.get(layer_of(imp.target), -1) > ORDER.get(layer_of(imp.module), len(ORDER))
    ]
    assert upward == [], "imports against the layer order (docs/architecture.md):\n" + "\n".join(upward)


class _Tarjan:
    """Tarjan's strongly connected components, iterative: `run` each unvisited root, then read `out`."""

    def __init__(self, graph: dict[str, set[str]]) -> None:
        self.graph = graph
        self.index: dict[str, int] = {}
        self.low: dict[str, int] = {}
        self.stack: list[str] = []
        self.on_stack: set[str] = set()
        self.out: list[list[str]] = []

    def visit(self, node: str) -> tuple[str, Iterator[str]]:
        """Number `node`, push it, and return its work item (the node, its successors left to explore)."""
        self.index[node] = self.low[node] = len(self.index)
        self.stack.append(node)
        self.on_stack.add(node)
        return node, iter(sorted(self.graph[node]))

    def run(self, root: str) -> None:
        work = [self.visit(root)]
        while work:
            node, edges = work[-1]
            nxt = self.unvisited(node, edges)
            if nxt is not None:
                work.append(self.visit(nxt))
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                self.low[parent] = min(self.low[parent], self.low[node])
            if self.low[node] == self.index[node]:
                self.pop_component(node)

    def unvisited(self, node: str, edges: Iterator[str]) -> str | None:
        """The next successor of `node` not yet numbered (None when done); ones on the stack lower its low."""
        for nxt in edges:
            if nxt not in self.index:
                return nxt
            if nxt in self.on_stack:
                self.low[node] = min(self.low[node], self.index[nxt])
        return None

    def pop_component(self, node: str) -> None:
        """Pop the component rooted at `node`; keep it when it has more than one node."""
        component = []
        while True:
            member = self.stack.pop()
            self.on_stack.discard(member)
            component.append(member)
            if member == node:
                break
        if len(component) > 1:
            self.out.append(sorted(component))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    tarjan = _Tarjan(graph)
    for root in graph:
        if root not in tarjan.index:
            tarjan.run(root)
    return tarjan.out


def test_no_import_cycle_between_modules() -> None:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for imp in IMPORTS:
        if imp.internal:
            graph[imp.module].add(imp.target)
    cycles = [" <-> ".join(c) for c in _cycles(graph)]
    assert cycles == [], "import cycles:\n" + "\n".join(cycles)


def test_no_import_cycle_between_library_packages() -> None:
    """The top-level packages of the library (prefopt.X, CLI modules left out) form no cycle either."""

    def top(module: str) -> str:
        return ".".join(module.split(".")[:2])

    graph: dict[str, set[str]] = {}
    for imp in IMPORTS:
        if (
            imp.internal
            and "prefopt" not in (imp.module, imp.target)
            and not is_cli(imp.module)
            and top(imp.module) != top(imp.target)
        ):
            graph.setdefault(top(imp.module), set()).add(top(imp.target))
            graph.setdefault(top(imp.target), set())
    cycles = [" <-> ".join(c) for c in _cycles(graph)]
    assert cycles == [], "package cycles:\n" + "\n".join(cycles)


def _heavy(name: str) -> bool:
    return any(name == h or name.startswith(h + ".") for h in HEAVY)


# Optional extras (not installed with prefopt): a prefopt module that imports one at its top (the Triton kernels)
# is that dependency's wrapper, so it may be deferred like the dependency itself.
OPTIONAL_EXTRAS = ("triton", "vllm", "bitsandbytes", "wandb")
HEAVY_MODULES = {
    imp.module
    for imp in IMPORTS
    if not imp.internal
    and not imp.in_function
    and any(imp.target == h or imp.target.startswith(h + ".") for h in OPTIONAL_EXTRAS)
}


def test_imports_inside_functions_are_heavy_dependencies_only() -> None:
    """Imports inside functions hide the layers: only heavy optional dependencies are deferred, and say so."""
    bad = []
    for imp in IMPORTS:
        if not imp.in_function:
            continue
        heavy = imp.target in HEAVY_MODULES if imp.internal else _heavy(imp.target)
        if not heavy:
            bad.append(f"{imp}: import it at the top of the module")
        elif not imp.marked_heavy:
            bad.append(f"{imp}: mark a deferred heavy import with `# heavy: loaded on first use`")
    assert bad == [], "imports inside functions:\n" + "\n".join(bad)


def test_architecture_md_declares_the_same_layers() -> None:
    """docs/architecture.md's layer table lists LAYERS in this order with these modules."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| layer")]
    declared = {}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        declared[cells[0].strip("*")] = tuple(re.findall(r"`(prefopt[\w.]*)`", cells[1]))
    assert list(declared) == list(LAYERS)
    assert declared == LAYERS


def _named_in(text: str) -> set[str]:
    """Module paths a text names: in full (`prefopt/eval/stats.py`, a package by its folder `prefopt/eval/`), or by
    file name on a line that names their folder (`prefopt/eval/`: ..., `stats.py`, ...)."""
    named = set(re.findall(r"`(prefopt/[\w/]*(?:\.py)?)`", text))
    for line in text.splitlines():
        folders = re.findall(r"`(prefopt/(?:[\w]+/)*)`", line)
        files = re.findall(r"`([\w]+\.py)`", line)
        named |= {folder + name for folder in folders for name in files}
    return named


def test_architecture_md_names_every_module() -> None:
    """Every module is named in docs/architecture.md: by its path (a package by its folder), or by its file
    name on a line that names its folder."""
    named = _named_in(ARCHITECTURE.read_text(encoding="utf-8"))
    missing = []
    for path in MODULES.values():
        rel = path.relative_to(ROOT).as_posix()
        if rel.endswith("/__init__.py"):
            rel = rel[: -len("__init__.py")]
        if rel not in named:
            missing.append(rel)
    assert missing == [], "modules docs/architecture.md does not name:\n" + "\n".join(missing)
