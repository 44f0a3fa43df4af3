"""Entries written by ocbench 0.1 (schema 1) still validate, upgrade and build the same board.

``tests/data/schema1/`` holds real output of the previous release: ``entries/`` (the demo grid:
2 backbones x 2 probes x 2 split tracks), ``off/`` (an off-protocol entry, ``--set``), and
``board/`` (that release's ``leaderboard.csv`` and ``LEADERBOARD.md`` built from ``entries/``
and ``off/``). The board built from them today must have the same tables, row order, ranks, tie
groups and scores.

Columns renamed since (compared under their new names):

- ``val_mean`` / ``val_std`` / ``val_n`` / ``val_per_fold`` -> ``score_mean`` / ``score_std`` /
  ``score_n`` / ``score_values``: the ranked score is each entry's ``main_score``, which is not
  always a validation score in schema 2 (for these entries it is ``val/macro_f1_all``, the same
  numbers);
- ``val_f1_<compartment>`` -> ``per_class_f1_<compartment>``: keyed by the entry's class names;
- values of ``dataset_name`` (``ocbench-demo`` -> ``demo``: the upgrade renames the demo dataset),
  ``table``/``table_id`` (titles and ids now include the synthetic mark and a digest of the
  larger group key) and ``notes`` (now say "synthetic data", the off-protocol reasons and
  "upgraded from schema 1") are not compared.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from ocbench.benchmark.entry import SCHEMA_VERSION, load_entry
from ocbench.data.compartments import COMPARTMENTS
from ocbench.leaderboard import build_board, collect_entries, validate_entries

DATA = Path(__file__).resolve().parent / "data" / "schema1"
SOURCES = [DATA / "entries", DATA / "off"]

RENAMED = {"val_mean": "score_mean", "val_std": "score_std", "val_n": "score_n", "val_per_fold": "score_values"}
RENAMED.update({f"val_f1_{c}": f"per_class_f1_{c}" for c in COMPARTMENTS})
#: Compared as they are.
SAME = ["kind", "rank", "tied_with_above", "backbone", "channels", "channels_strategy", "channels_key", "task", "track",
        "protocol_version", "dataset_version", "split_sha256", "test_mean", "test_std", "test_n", "paper_mean",
        "paper_std", "paper_source", "per_k", "off_protocol", "overrides", "entry_sha256", "created"]


def _entry_files() -> list[Path]:
    return sorted(p for source in SOURCES for p in source.glob("*.json"))


def test_the_stored_entries_are_schema_1():
    files = _entry_files()
    assert len(files) == 9
    assert {json.loads(p.read_text())["schema_version"] for p in files} == {1}


def test_schema_1_entries_validate_and_upgrade():
    assert validate_entries(SOURCES) == []
    for path in _entry_files():
        raw = json.loads(path.read_text())
        entry = load_entry(path)
        assert entry.schema_version == SCHEMA_VERSION
        assert (entry.main_score.eval_set, entry.main_score.metric) == ("val", "macro_f1_all")
        for part in ("val", "test"):
            old = raw["metrics"]["macro_f1"][part]
            new = entry.scores[part]["macro_f1_all"]
            assert new.values == old["per_fold"] and new.mean == old["mean"] and new.std == old["std"]
        assert entry.class_names == list(COMPARTMENTS)
        assert entry.dataset.name == "demo" and entry.dataset.synthetic
        assert entry.off_protocol == raw["off_protocol"]
        if raw["overrides"]:
            assert entry.off_protocol_reasons
    upgraded = [e.schema_version for e in collect_entries(SOURCES).entries]
    assert len(upgraded) == 9 and set(upgraded) == {1}  # the file version is remembered (shown as a note)


def _table_keys(frame: pd.DataFrame) -> list[list[tuple]]:
    """Rows as identity tuples, grouped by table in board order (table ids themselves differ)."""
    out: list[list[tuple]] = []
    for _, rows in frame.groupby("table_id", sort=False):
        out.append([(r.kind, r.backbone, r.channels, r.channels_key if isinstance(r.channels_key, str) else "", r.paper_source if isinstance(r.paper_source, str) else "")
                    for r in rows.itertuples()])
    return out


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12, abs=1e-12)
    if pd.isna(a) and pd.isna(b):
        return True
    return str(a) == str(b)


def test_board_of_schema_1_entries_equals_the_old_board(tmp_path):
    old = pd.read_csv(DATA / "board" / "leaderboard.csv", keep_default_na=True)
    report = build_board(SOURCES, tmp_path / "board")
    assert not report.problems
    new = pd.read_csv(tmp_path / "board" / "leaderboard.csv", keep_default_na=True)

    assert _table_keys(new) == _table_keys(old)  # same tables, same rows, same order
    assert len(new) == len(old)
    for column in SAME:
        for i, (a, b) in enumerate(zip(old[column], new[column])):
            assert _same(a, b), f"row {i} column {column}: old {a!r}, new {b!r}"
    for old_name, new_name in RENAMED.items():
        if old_name not in old.columns:
            continue
        for i, (a, b) in enumerate(zip(old[old_name], new[new_name])):
            assert _same(a, b), f"row {i} column {old_name} -> {new_name}: old {a!r}, new {b!r}"
    assert set(old["dataset_name"]) - {"opencell (paper)"} == {"ocbench-demo"}
    assert set(new["dataset_name"]) - {"opencell (paper)"} == {"demo"}

    old_md = (DATA / "board" / "LEADERBOARD.md").read_text()
    new_md = (tmp_path / "board" / "LEADERBOARD.md").read_text()
    # one section per table; boards now add one across tables (critical difference: both backbones
    # sit on all four tables)
    assert old_md.count("\n## ") + 1 == new_md.count("\n## ")
    assert "\n## Across tables: critical difference" in new_md
    assert "upgraded from schema 1" in new_md
    # schema-1 entries kept no predictions: shown without intervals, and the board says so
    assert "no interval: entries of schema 1 kept no per-item predictions" in new_md
    assert new["interval_low"].isna().all()
