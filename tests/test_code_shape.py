"""The package's size rule: no module over 600 lines, no function over 80 without a stated reason.

Long modules and functions are where two jobs end up sharing one place; the rule keeps each piece
small enough to read whole. A function may be longer when its docstring says why on a line that
starts with ``Long because:`` (one indivisible thing, e.g. a training step that must mirror a
reference implementation line by line).
"""

import ast
from pathlib import Path

import ocbench

ROOT = Path(ocbench.__file__).resolve().parent
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
REASON = "Long because:"


def _modules():
    return sorted(ROOT.rglob("*.py"))


def _function_lengths(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1  # decorators excluded, docstring included
            docstring = ast.get_docstring(node) or ""
            has_reason = any(line.strip().startswith(REASON) for line in docstring.splitlines())
            yield node.name, node.lineno, length, has_reason


def test_the_rule_sees_the_package():
    # a rule that found no modules or no functions would pass on anything
    modules = _modules()
    assert len(modules) > 50
    assert sum(1 for path in modules for _ in _function_lengths(path)) > 500


def test_no_module_is_over_600_lines():
    too_long = {str(p.relative_to(ROOT.parent)): n for p in _modules()
                if (n := p.read_text(encoding="utf-8").count("\n")) > MAX_MODULE_LINES}
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines (split them by responsibility): {too_long}"


def test_no_function_is_over_80_lines_without_a_reason():
    too_long = [f"{p.relative_to(ROOT.parent)}:{line} {name} ({length} lines)"
                for p in _modules() for name, line, length, has_reason in _function_lengths(p)
                if length > MAX_FUNCTION_LINES and not has_reason]
    assert not too_long, (f"functions over {MAX_FUNCTION_LINES} lines without a '{REASON}' line in the docstring: "
                          + "; ".join(too_long))


def test_a_long_function_is_found_and_a_reason_excuses_it(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    plain = tmp_path / "plain.py"
    plain.write_text(f'def f():\n    """Doc."""\n{body}\n', encoding="utf-8")
    excused = tmp_path / "excused.py"
    excused.write_text(f'def f():\n    """Doc.\n\n    {REASON} one indivisible step.\n    """\n{body}\n', encoding="utf-8")
    [(_, _, length, has_reason)] = list(_function_lengths(plain))
    assert length > MAX_FUNCTION_LINES and not has_reason
    [(_, _, _, has_reason)] = list(_function_lengths(excused))
    assert has_reason
