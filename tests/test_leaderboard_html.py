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
from ocbench.reported import REPORTED

from board_examples import example_entry_dict


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
            attrs["_values"] = []  # each cell's data-value (the backbone cell also shows channels and markers)
        elif tag == "td" and self._row is not None:
            self._cell = []
            self._row[0]["_values"].append(attrs.get("data-value"))
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
    return [attrs["_values"][1] for attrs, _ in rows]


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
    values = [float(cells[2].split(" ")[0]) for _, cells in dom.tables[table_id]]
    assert values == sorted(values, reverse=True)

    dom = _dom(page, f"#sort=score,score{scope}", tmp_path)  # a second click reverses
    assert dom.body_attrs["data-sort-state"] == f"{table_id}:score:ascending"
    values = [float(cells[2].split(" ")[0]) for _, cells in dom.tables[table_id]]
    assert values == sorted(values)
    assert _backbones(dom.tables[table_id])[0] == "model-b"

    dom = _dom(page, f"#sort=test{scope}", tmp_path)  # rows without a test score go last
    test_cells = [cells[3] for _, cells in dom.tables[table_id]]
    assert all(test_cells[:4]) and not any(test_cells[4:])
    assert _backbones(dom.tables[table_id])[:4] == ["model-a", "model-d", "model-c", "model-b"]

    dom = _dom(page, f"#sort=backbone{scope}", tmp_path)  # text columns sort A to Z
    names = _backbones(dom.tables[table_id])
    assert names == sorted(names, key=str.lower)


_MEASURE = r"""
<script>
window.addEventListener('load', function () {
  var width = document.documentElement.clientWidth, out = [];
  document.querySelectorAll('table.board').forEach(function (table) {
    table.querySelectorAll('tbody tr').forEach(function (tr) {
      var td = tr.querySelector('td.col-interval');
      if (!td || !td.textContent.trim() || td.textContent.trim() === '—') { return; }
      var r = td.getBoundingClientRect();
      out.push(table.id + '|' + td.textContent.trim() + '|' + Math.round(r.left) + '|' + Math.round(r.right));
    });
  });
  var pre = document.createElement('pre');
  pre.id = 'measured';
  pre.setAttribute('data-width', width);
  pre.setAttribute('data-scroll', document.documentElement.scrollWidth);
  pre.textContent = out.join('\n');
  document.body.appendChild(pre);
});
</script>
"""


def test_every_interval_is_visible_at_1280_px_without_scrolling(tmp_path):
    """A board with long names, several flags and a notes-heavy row: at 1,280 px each row's 95%
    interval lies inside the window, and the page does not scroll sideways."""
    import re

    from board_examples import write_example_with_predictions
    import numpy as np

    rng = np.random.default_rng(0)
    y = (rng.random((60, 17)) < 0.3).astype(np.uint8)
    names = ["classical-stats", "hpa-fov-vitb8.ft-opencell-f1.0-0123456789abcdef", "imagenet-dino-vitb8", "tiny-vit-random"]
    for i, name in enumerate(names):
        p = np.where(rng.random((5, 60, 17)) < 0.9 - 0.1 * i, y, 1 - y).astype(np.uint8)
        write_example_with_predictions(
            tmp_path / "entries", name, y, p, [f"protein{k // 3}" for k in range(60)], n_resamples=200,
            class_names=[f"class{c}" for c in range(17)], precision="bf16" if i == 1 else "fp32",
            not_zero_shot=["trained on OpenCell images by ocbench finetune, with a long explanation of why"] if i == 1 else [],
            weights_verified=False if i == 2 else None,
        )
    build_board([tmp_path / "entries"], tmp_path / "board", include_reported=False, plots=False)
    page = tmp_path / "board" / "index.html"
    measured = tmp_path / "measured.html"
    measured.write_text(page.read_text().replace("</body>", _MEASURE + "</body>"))
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
               "--window-size=1280,900", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=3000",
               "--dump-dom", measured.resolve().as_uri()]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    found = re.search(r'<pre id="measured" data-width="(\d+)" data-scroll="(\d+)">(.*?)</pre>', result.stdout, re.S)
    assert found, result.stdout[-2000:]
    width, scroll = int(found.group(1)), int(found.group(2))
    cells = [line.split("|") for line in found.group(3).strip().splitlines()]
    assert 1200 <= width <= 1280 and scroll <= width  # no sideways scrolling
    assert len(cells) == len(names)  # every row has an interval
    for table_id, text, left, right in cells:
        assert re.fullmatch(r"0\.\d{3} \[0\.\d{3}, 0\.\d{3}\]", text), text
        assert 0 <= int(left) and int(right) <= width, (text, left, right, width)
