"""Entries with kept predictions: scores that disagree with them or damaged predictions are refused or lose
their interval, `ocbench compare` reads them, and a board keeps each entry's own predictions."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from ocbench.cli import cli
from ocbench.leaderboard import build_board, collect_entries, validate_entries
from ocbench.leaderboard.tables import build_tables

from board_examples import recompute_aggregates, write_example_with_predictions


def _problem(n_items=40, n_classes=5, repeats=3, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n_items, n_classes)) < 0.4).astype(np.uint8)
    y[np.arange(n_items), rng.integers(0, n_classes, n_items)] = 1
    p = np.where(rng.random((repeats, n_items, n_classes)) < 0.8, y, 1 - y).astype(np.uint8)
    groups = [f"protein{i // 4}" for i in range(n_items)]
    return y, p, groups


def _write(folder, backbone="classical-stats", **kwargs):
    y, p, groups = _problem()
    return write_example_with_predictions(folder, backbone, y, p, groups, n_resamples=200, **kwargs)


def _edit(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_scores_edited_after_the_run_are_refused_because_the_predictions_disagree(tmp_path):
    path = _write(tmp_path / "entries")
    assert validate_entries(tmp_path / "entries") == []

    def inflate(data):  # edited consistently with its per-class rows: only the predictions can tell
        data["per_class_values"]["test"]["f1"] = [[0.9] * len(row) for row in data["per_class_values"]["test"]["f1"]]
        s = recompute_aggregates(data)["scores"]["test"]["macro_f1"]
        s["interval"].update(estimate=0.9, low=0.88, high=0.92)

    _edit(path, inflate)
    problems = validate_entries(tmp_path / "entries")
    assert len(problems) == 1
    assert "recorded as 0.9000" in problems[0] and "kept predictions give" in problems[0]
    collection = collect_entries(tmp_path / "entries")
    assert collection.entries == () and len(collection.problems) == 1  # the board leaves it out


def test_damaged_predictions_hide_the_recorded_interval_and_validate_says_so(tmp_path):
    path = _write(tmp_path / "entries")
    entry = json.loads(path.read_text())
    (tmp_path / "entries" / entry["predictions"]["file"]).write_bytes(b"garbage")
    problems = validate_entries(tmp_path / "entries")
    assert len(problems) == 1 and "sha256 does not match" in problems[0] and "without its interval" in problems[0]
    rows = [r for t in build_tables(collect_entries(tmp_path / "entries").entries).tables for r in t.rows if r.kind == "computed"]
    assert rows
    for row in rows:
        assert all(name != "interval" for name, _ in row.provenance)
        assert "no interval" in row.notes


def test_compare_refuses_an_entry_whose_scores_disagree_with_its_predictions(tmp_path):
    a = _write(tmp_path / "a")
    b = _write(tmp_path / "b", backbone="tiny-vit-random")
    def raise_test_scores(d):  # every per-class test score +0.05, the aggregates with them, no interval
        d["per_class_values"]["test"]["f1"] = [[v + 0.05 for v in row] for row in d["per_class_values"]["test"]["f1"]]
        recompute_aggregates(d)["scores"]["test"]["macro_f1"].pop("interval")

    _edit(b, raise_test_scores)
    result = CliRunner().invoke(cli, ["compare", str(a), str(b)])
    assert result.exit_code == 2, result.output
    assert "kept predictions give" in result.output and "Traceback" not in result.output


def test_compare_names_the_k_each_entry_is_scored_at(tmp_path):
    y, p, groups = _problem()
    a = write_example_with_predictions(tmp_path / "a", "model-a", y, p, groups, n_resamples=200)
    b = write_example_with_predictions(tmp_path / "b", "model-b", y, p[::-1], groups, n_resamples=200)
    for path, k in ((a, 1), (b, 50)):
        def with_axis(data, k=k):
            point = {"value": float(k), "scores": data["scores"]}
            data["axis"] = {"name": "k", "main": float(k), "points": [point]}
        _edit(path, with_axis)
    result = CliRunner().invoke(cli, ["compare", str(a), str(b)])
    assert result.exit_code == 0, result.output
    assert "at k=1" in result.output and "at k=50" in result.output and "two settings" in result.output


def test_two_entries_with_one_key_keep_their_own_predictions_in_the_board(tmp_path):
    y, p, groups = _problem()
    write_example_with_predictions(tmp_path / "a", "classical-stats", y, p, groups, n_resamples=200, overrides={"epochs": 2})
    write_example_with_predictions(tmp_path / "b", "classical-stats", y, p[::-1], groups, n_resamples=200, overrides={"epochs": 3})
    build_board([tmp_path / "a", tmp_path / "b"], tmp_path / "board", plots=False)
    copies = sorted((tmp_path / "board" / "entries").rglob("*.json"))
    assert len(copies) == 2 and len(list((tmp_path / "board" / "entries").rglob("*.predictions.npz"))) == 2
    assert validate_entries(tmp_path / "board" / "entries") == []
    rebuilt = build_tables(collect_entries(tmp_path / "board" / "entries").entries, include_reported=False)
    assert all(r.interval is not None for t in rebuilt.tables for r in t.computed_rows)
