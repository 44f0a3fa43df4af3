"""The board and the run summary read entry schema 2: main_score ranks, class_names key the
per-class views, an axis gets a sweep table and plot, and the leaderboard stays untangled."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from ocbench.benchmark.entry import entry_from_dict, write_entry
from ocbench.leaderboard import build_board, collect_entries
from ocbench.leaderboard.plots import plan_plots
from ocbench.leaderboard.summary import format_run_table, format_sweep_table
from ocbench.leaderboard.tables import build_tables

from board_examples import example_entry_dict, example_entry_dict_v1

LEADERBOARD = Path(__file__).resolve().parent.parent / "ocbench" / "leaderboard"
FOLDS = [0.70, 0.72, 0.69, 0.71, 0.73]
AXIS = {"name": "k", "values": [5, 10, 20], "main": 10}


def _board(tmp_path, *dicts, **kwargs):
    folder = tmp_path / "entries"
    for d in dicts:
        write_entry(d, folder)
    return build_tables(collect_entries(folder).entries, include_reported=False, **kwargs)


def test_tables_never_mix_main_scores(tmp_path):
    board = _board(
        tmp_path,
        example_entry_dict("model-a", val_folds=FOLDS),
        example_entry_dict("model-b", main_metric="macro_f1_all"),
    )
    assert len(board.tables) == 2
    labels = sorted(t.score_label for t in board.tables)
    assert labels == ["val macro-F1", "val macro-F1 (all classes)"]
    for table in board.tables:
        (row,) = table.computed_rows
        entry = row.entry.entry
        assert row.score.mean == pytest.approx(entry.main.mean)  # ranked by the entry's own main score
        assert row.test.mean == pytest.approx(entry.score("test").mean)


def test_ranked_and_test_columns_use_the_main_metric(tmp_path):
    d = example_entry_dict("model-a", val_folds=FOLDS, test_folds=[0.5, 0.52, 0.51, 0.49, 0.5])
    board = _board(tmp_path, d)
    (row,) = board.tables[0].computed_rows
    assert row.score.per_fold == tuple(d["scores"]["val"]["macro_f1"]["values"])
    assert row.test.mean == pytest.approx(0.504)
    out = tmp_path / "board"
    build_board([tmp_path / "entries"], out, include_reported=False, plots=False)
    md = (out / "LEADERBOARD.md").read_text()
    assert "val macro-F1 (mean ± std, n)" in md and "test macro-F1 (mean ± std, n)" in md
    assert "0.710 ± 0.016 (n=5)" in md and "0.504 ± 0.011 (n=5)" in md


def test_per_class_views_use_the_entries_class_names(tmp_path):
    classes = ("alpha", "beta", "gamma")
    board = _board(
        tmp_path,
        example_entry_dict("model-a", class_names=classes, val_folds=FOLDS),
        example_entry_dict("model-b", class_names=classes),
    )
    table = board.tables[0]
    assert table.class_names == classes
    out = tmp_path / "board"
    build_board([tmp_path / "entries"], out, include_reported=False, plots=False)
    header = (out / "leaderboard.csv").read_text().splitlines()[0].split(",")
    assert [c for c in header if c.startswith("per_class_f1_")] == [f"per_class_f1_{c}" for c in classes]
    md = (out / "LEADERBOARD.md").read_text()
    assert "| alpha " in md and "nucleoplasm" not in md


def test_axis_entry_is_ranked_at_its_main_point_with_a_sweep(tmp_path):
    board = _board(
        tmp_path,
        example_entry_dict("model-a", task="sc-knn", val_folds=FOLDS, axis=AXIS),
        example_entry_dict("model-b", task="sc-knn", axis=AXIS),
    )
    table = board.tables[0]
    assert table.axis_name == "k" and table.axis_values == (5.0, 10.0, 20.0)
    top = table.computed_rows[0]
    assert top.backbone == "model-a" and top.score.mean == pytest.approx(0.71)
    assert dict(top.axis_points)[5.0].mean == pytest.approx(0.69)
    assert "ranked at k=10" in top.notes
    assert any(p.kind == "axis" for p in plan_plots(board))

    out = tmp_path / "board"
    report = build_board([tmp_path / "entries"], out, include_reported=False)
    md = (out / "LEADERBOARD.md").read_text()
    assert "### val macro-F1 per k" in md and "k=5" in md and "k=20" in md
    assert "0.710 ± 0.016 \\*" in md  # the ranked value is marked
    html = (out / "index.html").read_text()
    assert f'id="{table.id}-axis"' in html
    assert f'<figure data-plot="axis__{table.id}.png"><img src="data:image/png;base64,' in html  # inlined
    assert (out / "plots" / f"axis__{table.id}.png").read_bytes()[:4] == b"\x89PNG"
    assert report.n_tables == 1


def test_run_summary_prints_the_main_score():
    new = entry_from_dict(example_entry_dict("model-a", val_folds=FOLDS, test_folds=[0.5] * 5))
    old = entry_from_dict(example_entry_dict_v1("model-b"))
    knn = entry_from_dict(example_entry_dict("model-c", task="sc-knn", axis=AXIS))

    text = format_run_table([new])
    assert "val macro-F1" in text and "test macro-F1" in text
    assert "0.710 ± 0.016 (n=5)" in text and "0.500 ± 0.000 (n=5)" in text
    assert "val macro-F1 (all classes)" in format_run_table([old])
    mixed = format_run_table([new, old])  # two main scores: each cell names its metric
    assert "main score" in mixed and "val macro-F1 (all classes) 0.620" in mixed
    assert "at k=10" in format_run_table([knn])

    sweep = format_sweep_table("model", [entry_from_dict(example_entry_dict("m", val_folds=[v] * 5)) for v in (0.2, 0.6, 0.4)])
    shown = [float(line.split("±")[0].split()[-1]) if "±" in line else None for line in sweep.splitlines() if line.startswith("m ")]
    assert [round(v, 1) for v in shown if v is not None] == [0.6, 0.4, 0.2]


# ---------------------------------------------------------------------------------------------
# untangled
# ---------------------------------------------------------------------------------------------
def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every import in a file, module-level or inside functions."""
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, [a.name for a in node.names]))
    return out


def test_leaderboard_import_graph_has_no_cycle_and_no_heavy_imports():
    modules = {p.stem: p for p in LEADERBOARD.glob("*.py") if p.stem != "__init__"}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph[name] = set()
        for module, names in _imports(path):
            top = module.split(".")[0]
            assert top not in ("torch", "timm", "torchvision"), f"{name} imports {module}"
            assert not module.startswith(("ocbench.backbones", "ocbench.tasks", "ocbench.benchmark.runner")), f"{name} imports {module}"
            if module.startswith("ocbench.leaderboard."):
                graph[name].add(module.rsplit(".", 1)[1])
                private = [n for n in names if n.startswith("_")]
                assert not private, f"{name} imports private helpers {private} of {module}"
            if name != "examples":  # the example factory makes OpenCell-like entries
                assert module != "ocbench.data.compartments", f"{name} imports the OpenCell compartments"

    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack, node, nxt]))
            if nxt not in state:
                visit(nxt, [*stack, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert "grouping" in graph and "tables" not in graph["collect"] and "tables" not in graph["summary"]
    assert not graph["summary"] & {"render", "html", "tables", "build"}
