"""No import cycle among the modules of ocbench.backbones (module-level or inside functions).

Each module's source is parsed with ``ast``; every ``import ocbench.x`` / ``from ocbench.x import
y`` anywhere in it (top level, functions, methods) is an edge, except imports under ``if
TYPE_CHECKING:`` (never run). ``from package import name`` is an edge to ``package.name`` when that
is a module, else to ``package``. A package's ``__init__`` is its own node: importing
``ocbench.backbones.card`` is an edge to that module only (as import-linter counts it).
"""

from __future__ import annotations

import ast
from pathlib import Path

import ocbench

PACKAGE_ROOT = Path(ocbench.__file__).resolve().parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE_ROOT.rglob("*.py")}


def _type_checking_block(node: ast.AST) -> bool:
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_modules(path: Path, modules: dict[str, Path], name: str | None = None) -> set[str]:
    """Every ocbench module ``path`` (module ``name``) imports, at any depth of its code."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    this = name or module_name(path)
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def add(name: str) -> None:
        # The deepest known module named by ``name`` (``a.b.c`` may be attribute c of module a.b).
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name and name != this:
            found.add(name)

    def visit(node: ast.AST) -> None:
        if _type_checking_block(node):
            for child in node.orelse:  # the else branch does run
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("ocbench"):
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = this.split(".") if is_package else this.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                package = ".".join(base + ([node.module] if node.module else []))
            else:
                package = node.module or ""
            if package.startswith("ocbench"):
                for alias in node.names:
                    candidate = f"{package}.{alias.name}"
                    add(candidate if candidate in modules else package)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = walk(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = walk(node)
            if cycle:
                return cycle
    return None


def graph_of(prefix: str) -> dict[str, set[str]]:
    modules = all_modules()
    inside = {name: path for name, path in modules.items() if name == prefix or name.startswith(prefix + ".")}
    return {name: {m for m in imported_modules(path, modules) if m in inside} for name, path in inside.items()}


def test_no_import_cycle_among_backbone_modules():
    graph = graph_of("ocbench.backbones")
    assert len(graph) > 10
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_sees_function_level_imports(tmp_path):
    """The checker itself: a function-level import back is a cycle; a TYPE_CHECKING import is not."""
    package = tmp_path / "ocbench_fake"
    package.mkdir()
    a = package / "a.py"
    b = package / "b.py"
    a.write_text("from ocbench.backbones import specs\nimport ocbench.backbones.card\n")
    b.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from ocbench.backbones.cards import get_card\n"
        "def f():\n    from ocbench.backbones.card import BackboneCard\n"
    )
    modules = all_modules()
    assert imported_modules(a, modules, "fake.a") == {"ocbench.backbones.specs", "ocbench.backbones.card"}
    assert imported_modules(b, modules, "fake.b") == {"ocbench.backbones.card"}
    assert find_cycle({"x": {"y"}, "y": {"z"}, "z": {"x"}}) == ["x", "y", "z", "x"]
    assert find_cycle({"x": {"y"}, "y": set()}) is None


def test_leaf_modules_import_nothing_from_the_package():
    modules = all_modules()
    for leaf in ("specs", "weights_folder", "model_card"):
        imported = imported_modules(modules[f"ocbench.backbones.{leaf}"], modules)
        assert not {m for m in imported if m.startswith("ocbench.backbones")}, (leaf, imported)
    dino = imported_modules(modules["ocbench.backbones.dino_import"], modules)
    assert "ocbench.backbones.sources" not in dino
    cards = imported_modules(modules["ocbench.backbones.cards"], modules)
    assert "ocbench.backbones.describe" in cards  # names resolved in cards, text rendered in describe
    describe = imported_modules(modules["ocbench.backbones.describe"], modules)
    assert "ocbench.backbones.cards" not in describe
