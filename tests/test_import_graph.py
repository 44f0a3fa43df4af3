"""The package's import graph: no cycles between modules, no import that reaches up the layers.

Layers (README "Architecture", DESIGN.md), each standing only on the ones below it:

    cli/, api.py        the edge: names resolved into objects here (api is the CLI for Python callers)
    leaderboard/        reads entry JSON: benchmark.entry only, never torch, timm or backbones
    benchmark/          runner, cache, splits, entry schema
    tasks/  backbones/  protocols; model cards, loaders, adapters (backbones never import tasks)
    data/               dataset cards, OpenCell reader, demo data
    base modules        errors, _io, _lock, _cores, registry, summaries, stats, chance, predictions, paths, reported: standard library
                        and each other only

Imports inside functions count too: a call cycle through a lazy import is still a knot.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import ocbench

ROOT = Path(ocbench.__file__).resolve().parent
BASE = {"ocbench", "ocbench.errors", "ocbench._io", "ocbench._lock", "ocbench._cores", "ocbench.registry", "ocbench.summaries",
        "ocbench.stats", "ocbench.predictions", "ocbench.paths", "ocbench.reported", "ocbench.chance"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in ROOT.rglob("*.py")}


def _imports(name: str) -> set[str]:
    """ocbench modules that ``name`` imports (at any depth of its code)."""
    tree = ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from ocbench.x import y`: y may itself be a module
            targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target.startswith("ocbench") and target != name:
                found.add(target)
    return found


GRAPH = {name: _imports(name) for name in MODULES}


CLI = {"ocbench.cli", "ocbench.__main__", "ocbench.api"}  # the Python API stands beside the CLI
PACKAGES = {"data", "backbones", "tasks", "benchmark", "leaderboard"}  # a module's layer is its package's


def _layer(name: str) -> str | None:
    """The layer of module ``name``; None for a module nobody has placed yet."""
    if name in BASE:
        return "base"
    if name in CLI or name.startswith("ocbench.cli."):  # the cli/ package's command modules
        return "cli"
    package = name.split(".")[1] if "." in name else ""
    return package if package in PACKAGES else None


ALLOWED = {
    "base": {"base"},
    "data": {"base", "data"},
    "backbones": {"base", "data", "backbones"},
    "tasks": {"base", "data", "backbones", "tasks"},
    "benchmark": {"base", "data", "backbones", "tasks", "benchmark"},
    "leaderboard": {"base", "leaderboard"},  # plus benchmark.entry and the dataset cards, below
    "cli": {"base", "data", "backbones", "tasks", "benchmark", "leaderboard", "cli"},
}
LEADERBOARD_MAY_READ = {"ocbench.benchmark.entry", "ocbench.data", "ocbench.data.cards"}
#: OpenCell's constants live in its dataset card: nothing above data/ reads them directly.
OPENCELL_CONSTANTS = "ocbench.data.compartments"


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            # a package __init__ re-exporting its own modules is not a knot between modules
            if len([m for m in component if MODULES[m].name != "__init__.py"]) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return out


def test_graph_sees_the_package():
    assert "ocbench.benchmark.runner" in GRAPH and "ocbench.benchmark.entry" in GRAPH["ocbench.leaderboard.collect"]


def test_every_module_has_a_layer():
    unplaced = sorted(name for name in MODULES if _layer(name) not in ALLOWED)
    assert not unplaced, f"place {', '.join(unplaced)} in BASE, CLI or a layer package (see this file's docstring)"


TEST_HELPERS = {p.stem for p in Path(__file__).resolve().parent.glob("*.py")} | {"tests", "conftest"}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_imports_from_tests(name):
    """Test fixtures (board_examples, demo_data, ...) live in tests/, which a wheel does not ship."""
    tree = ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))
    bad = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            bad |= {a.name for a in node.names if a.name.split(".")[0] in TEST_HELPERS}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in TEST_HELPERS:
                bad.add(node.module)
    assert not bad, f"{name} imports {', '.join(sorted(bad))} from tests/; move what it needs into ocbench/"


def test_no_import_cycles_between_modules():
    assert _cycles() == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_import_reaches_up_the_layers(name):
    layer = _layer(name)
    bad = []
    for target in sorted(GRAPH[name]):
        if _layer(target) in ALLOWED.get(layer, set()):
            continue
        if layer == "leaderboard" and target in LEADERBOARD_MAY_READ:
            continue
        bad.append(f"{target} ({_layer(target)})")
    assert not bad, f"{name} ({layer}) imports {', '.join(bad)}"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if _layer(n) in ("backbones", "tasks", "benchmark", "leaderboard")))
def test_only_the_data_layer_reads_opencell_constants(name):
    assert OPENCELL_CONSTANTS not in GRAPH[name], (
        f"{name} imports {OPENCELL_CONSTANTS}; take channel and class names from the dataset card"
    )


def test_leaderboard_and_entry_schema_import_without_torch():
    code = (
        "import sys, ocbench.leaderboard.build, ocbench.leaderboard.summary, ocbench.benchmark.entry, "
        "ocbench.cli; print(sorted(m for m in ('torch', 'timm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_architecture_registry_imports_without_torch():
    """``backbones.archs`` is read by the loader and by `backbones import`; its built-in families
    import their code (torch, timm) only when a card of theirs is built."""
    code = (
        "import sys, ocbench.backbones.archs as a; a.ARCHS.names(); "
        "print(sorted(m for m in ('torch', 'timm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
