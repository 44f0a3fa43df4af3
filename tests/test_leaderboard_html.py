"""The static HTML board in a real browser (headless Chromium): rows render, sorting works.

The page sorts on load when its URL has ``#sort=COL`` by clicking that column's header (the same
handler a user's click runs) and records the result in ``<body data-sort-state>``; Chromium's
``--dump-dom`` prints the DOM after the page's scripts ran.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from ocbench.benchmark.entry import write_entry
from ocbench.leaderboard import build_board
from ocbench.leaderboard.examples import example_entry_dict
from ocbench.reported import REPORTED


def _find_chromium() -> str | None:
    for name in (os.environ.get("OCBENCH_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


CHROMIUM = _find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless browser test needs Chromium: apt-get install -y chromium (or set OCBENCH_CHROMIUM)",
)


class _Tables(HTMLParser):
    """Collects, per table id, the body rows as (row attributes, [cell texts])."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[tuple[dict, list[str]]]] = {}
        self.body_attrs: dict[str, str] = {}
        self._table: str | None = None
        self._in_body = False
        self._row: tuple[dict, list[str]] | None = None
        self._cell: list[str] | None = None
        self._details_depth = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "body":
            self.body_attrs = attrs
        elif tag == "table" and attrs.get("id"):
            self._table = attrs["id"]
            self.tables[self._table] = []
        elif tag == "tbody" and self._table:
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self._row = (attrs, [])
        elif tag == "td" and self._row is not None:
            self._cell = []
        elif tag == "details":
            self._details_depth += 1

    def handle_endtag(self, tag):
        if tag == "details":
            self._details_depth -= 1
        elif tag == "td" and self._cell is not None and self._row is not None:
            self._row[1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "tbody":
            self._in_body = False
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None and self._details_depth == 0:
            self._cell.append(data)


def _dom(page: Path, fragment: str, tmp_path: Path) -> _Tables:
    profile = tmp_path / f"profile-{abs(hash(fragment))}"
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--dump-dom",
        page.resolve().as_uri() + fragment,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    parser = _Tables()
    parser.feed(result.stdout)
    assert parser.body_attrs.get("data-ready") == "1", "the page's script did not run"
    return parser


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("html-board")
    folds = {"model-a": 0.70, "model-b": 0.50, "model-c": 0.60, "model-d": 0.65}
    for name, base in folds.items():
        entry = example_entry_dict(name, dataset_name="opencell", val_folds=[base + d for d in (0.01, -0.01, 0.02, 0.0, -0.02)])
        entry["dataset"]["n_items"] = 6120  # the full set: the paper's numbers are comparable
        write_entry(entry, tmp / "entries")
    report = build_board([tmp / "entries"], tmp / "board", plots=False)
    table_id = report.board.tables[0].id
    return tmp / "board" / "index.html", table_id


def _backbones(rows):
    return [cells[1].replace("reported", "").strip() for _, cells in rows]


def test_table_renders_all_rows(board, tmp_path):
    page, table_id = board
    dom = _dom(page, "", tmp_path)
    rows = dom.tables[table_id]
    fov_reported = sum(1 for r in REPORTED if r.task == "fov-mlp")
    assert len(rows) == 4 + fov_reported
    assert sum(attrs.get("data-kind") == "computed" for attrs, _ in rows) == 4
    assert sum(attrs.get("data-kind") == "reported" for attrs, _ in rows) == fov_reported
    # initial order: ranked computed rows first, then the reported rows
    assert _backbones(rows)[:4] == ["model-a", "model-d", "model-c", "model-b"]
    assert all("entry: entries/" in attrs["title"] for attrs, _ in rows[:4])  # provenance tooltip
    assert "finetune-paper-reported" in dom.tables and "sc-knn-paper-reported" in dom.tables


def test_clicking_headers_sorts(board, tmp_path):
    page, table_id = board
    scope = f"&table={table_id}"

    dom = _dom(page, f"#sort=score{scope}", tmp_path)  # one click on a score: best first
    assert dom.body_attrs["data-sort-state"] == f"{table_id}:score:descending"
    values = [float(cells[3].split(" ")[0]) for _, cells in dom.tables[table_id]]
    assert values == sorted(values, reverse=True)

    dom = _dom(page, f"#sort=score,score{scope}", tmp_path)  # a second click reverses
    assert dom.body_attrs["data-sort-state"] == f"{table_id}:score:ascending"
    values = [float(cells[3].split(" ")[0]) for _, cells in dom.tables[table_id]]
    assert values == sorted(values)
    assert _backbones(dom.tables[table_id])[0] == "model-b"

    dom = _dom(page, f"#sort=test{scope}", tmp_path)  # rows without a test score go last
    test_cells = [cells[4] for _, cells in dom.tables[table_id]]
    assert all(test_cells[:4]) and not any(test_cells[4:])
    assert _backbones(dom.tables[table_id])[:4] == ["model-a", "model-d", "model-c", "model-b"]

    dom = _dom(page, f"#sort=backbone{scope}", tmp_path)  # text columns sort A to Z
    names = _backbones(dom.tables[table_id])
    assert names == sorted(names, key=str.lower)
