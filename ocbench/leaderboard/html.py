"""The board as one static HTML page: no external assets, no network, inline CSS, JS and plots
(PNG data URIs), so ``index.html`` alone is the whole board.

Layout: what decides is visible first. Each table opens with a one-sentence headline (does the
best row beat the runner-up, by how much, how sure), then rank, backbone (with its channels and
per-row markers), the ranked score and, right beside it, its 95% interval; the secondary columns
(test, paper, cost, notes) come after and wrap, so at 1,280 px every interval is on screen without
scrolling. Long texts (notes, cost details, provenance) are shortened in the cell and complete in
the tooltip, the row's details and the CSV. The reading guide is folded under the short intro.

Every table sorts by clicking a column header (again to reverse). Each row's provenance is in
its tooltip and in its "details"; the rank rule is printed under each table. Opening the page
with ``#sort=COL`` (``#sort=COL,COL`` to click twice, ``&table=ID`` for one table) sorts on
load, which makes a sorted view linkable and lets tests drive the page in a headless browser.
After sorting, ``<body data-sort-state="TABLE:COL:DIRECTION">`` says what was done.
"""

from __future__ import annotations

import base64
from html import escape
from typing import Mapping, Sequence

from ocbench.leaderboard.formatting import CHANNEL_LEGEND
from ocbench.leaderboard.plots import PlotSpec
from ocbench.leaderboard.render import (
    seed_cell,
    seed_columns,
    INTRO,
    LEAD,
    REPORTED_NOTE,
    SYNTHETIC_BANNER,
    TITLE,
    axis_cell,
    axis_columns,
    cell,
    columns_of,
)
from ocbench.leaderboard.tables import Board, Row, Table, best_per_class

__all__ = ["render_html"]

_CSS = """
:root { --fg:#1d232a; --muted:#5b6670; --line:#d9dee3; --accent:#0b6bcb; --rep:#f6f3ea; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       margin: 0 auto; padding: 1.5rem; max-width: 1400px; }
h1 { font-size: 1.6rem; margin: 0 0 .5rem; } h2 { font-size: 1.2rem; margin: 2rem 0 .3rem; }
h3 { font-size: 1rem; margin: 1.2rem 0 .3rem; }
p { margin: .3rem 0; } .muted, .details, .rule { color: var(--muted); }
.lead { font-size: 1.05em; max-width: 60rem; }
.headline { font-weight: 600; margin: .2rem 0 .4rem; max-width: 70rem; }
.rule { font-style: italic; font-size: .85em; max-width: 70rem; }
details.guide, details.table-details { margin: .4rem 0; max-width: 70rem; }
details.guide > p, details.table-details > p { font-size: .92em; }
nav ul { padding-left: 1.2rem; margin: .3rem 0; }
.wrap { overflow-x: auto; }
table { border-collapse: collapse; margin: .4rem 0; font-variant-numeric: tabular-nums; }
table.board { width: 100%; }
th, td { border-bottom: 1px solid var(--line); padding: .3rem .5rem; text-align: left; vertical-align: top; }
th { background: #eef2f6; font-weight: 600; font-size: .9em; }
table.sortable th[data-col] { cursor: pointer; user-select: none; }
table.sortable th[data-col]::after { content: " \\2195"; color: #9aa5b1; }
th[aria-sort="ascending"]::after { content: " \\25B2" !important; color: var(--accent) !important; }
th[aria-sort="descending"]::after { content: " \\25BC" !important; color: var(--accent) !important; }
td.num { text-align: right; white-space: nowrap; }
table.board th.col-rank { width: 4.5em; }
table.board th.col-score, table.board th.col-interval { min-width: 9em; }
table.board td.col-interval { font-weight: 600; }
table.board td.backbone { min-width: 11em; max-width: 22em; overflow-wrap: anywhere; }
table.board td.backbone .name { font-weight: 600; }
table.board td.backbone .channels { display: block; color: var(--muted); font-size: .85em; }
table.board td.col-test, table.board td.col-paper, table.board td.col-cost { color: #39434c; font-size: .92em; }
table.board td.col-notes { font-size: .85em; color: var(--muted); min-width: 12em; max-width: 24em; overflow-wrap: anywhere; }
table.perclass td:nth-child(-n+2) { white-space: nowrap; }
tr:not(.computed) td { background: var(--rep); font-style: italic; }  /* reported and other reference rows */
.badge, .marker { font-style: normal; font-size: .75em; padding: 0 .35em; border-radius: .6em; margin-left: .3em; white-space: nowrap; }
.badge { background: #e1d7bb; } .marker { background: #e6e0f5; }
details summary { cursor: pointer; color: var(--accent); }
dl.prov { margin: .3rem 0; display: grid; grid-template-columns: max-content auto; gap: .1rem .6rem; font-size: .85em; }
dl.prov dt { color: var(--muted); } dl.prov dd { margin: 0; word-break: break-all; }
.banner { background: #fff4d6; border-left: 4px solid #d9a400; padding: .4rem .7rem; }
.synthetic-tag { font-size: .75em; padding: 0 .4em; border-radius: .6em; background: #ffe08a; margin-left: .4em; }
figure { margin: .6rem 0; } figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: .85em; }
td.unclear { color: var(--muted); font-style: italic; }
"""

_JS = r"""
(function () {
  function cellValue(td, numeric) {
    var v = td.getAttribute('data-value');
    if (numeric) { return (v === null || v === '') ? null : parseFloat(v); }
    return (v === null ? td.textContent : v).toLowerCase();
  }
  function sortBy(th) {
    var table = th.closest('table');
    var index = Array.prototype.indexOf.call(th.parentNode.children, th);
    var numeric = th.getAttribute('data-type') === 'num';
    var current = th.getAttribute('aria-sort');
    var dir = current === 'ascending' ? 'descending' : current === 'descending' ? 'ascending'
            : (th.getAttribute('data-first') || (numeric ? 'descending' : 'ascending'));
    Array.prototype.forEach.call(table.querySelectorAll('th[data-col]'), function (h) { h.setAttribute('aria-sort', 'none'); });
    th.setAttribute('aria-sort', dir);
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var sign = dir === 'ascending' ? 1 : -1;
    rows.sort(function (a, b) {
      var va = cellValue(a.cells[index], numeric), vb = cellValue(b.cells[index], numeric);
      var tie = (+a.getAttribute('data-order')) - (+b.getAttribute('data-order'));
      if (va === null && vb === null) { return tie; }
      if (va === null) { return 1; }   /* empty cells last, whichever the direction */
      if (vb === null) { return -1; }
      if (va < vb) { return -sign; }
      if (va > vb) { return sign; }
      return tie;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    document.body.setAttribute('data-sort-state', table.id + ':' + th.getAttribute('data-col') + ':' + dir);
  }
  Array.prototype.forEach.call(document.querySelectorAll('table.sortable th[data-col]'), function (th) {
    th.addEventListener('click', function () { sortBy(th); });
    th.addEventListener('keydown', function (e) {
      if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); sortBy(th); }
    });
  });
  var params = new URLSearchParams(window.location.hash.slice(1));
  var only = params.get('table');
  (params.get('sort') || '').split(',').filter(Boolean).forEach(function (col) {
    var scope = only ? 'table.sortable#' + CSS.escape(only) : 'table.sortable';
    Array.prototype.forEach.call(document.querySelectorAll(scope + ' th[data-col="' + CSS.escape(col) + '"]'),
      function (th) { th.click(); });
  });
  document.body.setAttribute('data-ready', '1');
})();
"""


def _attr(text: object) -> str:
    return escape(str(text), quote=True)


def _provenance_text(row: Row) -> str:
    lines = [f"{k}: {v}" for k, v in row.provenance]
    if row.rank_reason:
        lines.append(f"rank: {row.rank_reason}")
    return "\n".join(lines)


def _provenance_details(row: Row) -> str:
    items = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in row.provenance)
    if row.notes:
        items += f"<dt>notes</dt><dd>{escape(row.notes)}</dd>"
    if row.rank_reason:
        items += f"<dt>rank</dt><dd>{escape(row.rank_reason)}</dd>"
    return f'<details class="prov"><summary>details</summary><dl class="prov">{items}</dl></details>' if items else ""


#: Main-table columns shown inside another cell instead of their own: channels under the backbone.
_MERGED = {"channels"}
#: Secondary columns whose cell is shortened (full text in the tooltip, the details and the CSV).
_SHORTENED = {"cost", "notes"}


def _short_cell(row: Row, column_id: str, text: str) -> tuple[str, str]:
    """``(shown, tooltip)`` for a secondary cell: the cost without its device (in the tooltip), the
    notes cut at a word boundary."""
    if column_id == "cost" and " (" in text:
        return text.split(" (", 1)[0], text
    if column_id == "notes" and len(text) > _NOTES_CHARS:
        cut = text[:_NOTES_CHARS].rsplit(" ", 1)[0].rstrip(";,· ")
        return cut + " …", text
    return text, ""


_NOTES_CHARS = 90


def _markers(row: Row) -> str:
    badges = []
    if row.kind != "computed":  # reported (the paper's numbers), or any other kind of reference row
        badges.append(f'<span class="badge">{escape(row.kind)}</span>')
    for label, meaning in row.markers:
        badges.append(f'<span class="marker" title="{_attr(meaning)}">{escape(label)}</span>')
    return "".join(badges)


def _backbone_cell(row: Row) -> str:
    channels = f'<span class="channels">{escape(row.channels)}</span>' if row.channels else ""
    return (f'<td class="txt backbone" data-value="{_attr(row.backbone)}"><span class="name">{escape(row.backbone)}</span>'
            f"{_markers(row)}{channels}</td>")


def _main_table(table: Table) -> str:
    columns = [c for c in columns_of(table) if c.id not in _MERGED]
    head = "".join(
        f'<th data-col="{c.id}" data-type="{"num" if c.numeric else "text"}"'
        + (' data-first="ascending"' if c.id == "rank" else "")
        + f' class="col-{_attr(c.id)}" tabindex="0" aria-sort="none">{escape(c.header)}</th>'
        for c in columns
    )
    body = []
    for order, row in enumerate(table.rows):
        tds = []
        for c in columns:
            if c.id == "backbone":
                tds.append(_backbone_cell(row))
                continue
            text, value = cell(row, c)
            value_attr = "" if value is None else str(value)
            title = ""
            if c.id in _SHORTENED:
                text, tip = _short_cell(row, c.id, text)
                title = f' title="{_attr(tip)}"' if tip else ""
            content = escape(text)
            if c.id == "rank" and row.rank_reason:
                title = f' title="{_attr(row.rank_reason)}"'
            if c.id == "interval":
                tip = row.interval.describe() if row.interval is not None else row.no_interval
                title = f' title="{_attr(tip)}"' if tip else ""
            if c.id == "notes":
                if row.not_zero_shot:
                    title = f' title="{_attr("not zero-shot: " + "; ".join(row.not_zero_shot) + (" · " + row.notes if row.notes else ""))}"'
                content += _provenance_details(row)
            klass = f'{"num" if c.numeric else "txt"} col-{c.id}'
            tds.append(f'<td class="{_attr(klass)}" data-value="{_attr(value_attr)}"{title}>{content}</td>')
        body.append(
            f'<tr class="{row.kind}" data-kind="{row.kind}" data-order="{order}" '
            f'title="{_attr(_provenance_text(row))}">{"".join(tds)}</tr>'
        )
    return (
        f'<div class="wrap"><table class="board sortable" id="{_attr(table.id)}" data-rows="{len(table.rows)}">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


def _simple_table(table_id: str, css: str, columns: list[tuple[str, str, bool]], rows: list[tuple[list[tuple[str, object, str]], str]]) -> str:
    """A sortable table: ``columns`` = (id, header, numeric); each row = ([(text, sort value, class)], title)."""
    head = "".join(
        f'<th data-col="{_attr(cid)}" data-type="{"num" if numeric else "text"}" tabindex="0" aria-sort="none">{escape(header)}</th>'
        for cid, header, numeric in columns
    )
    body = []
    for order, (cells, title) in enumerate(rows):
        tds = "".join(
            f'<td class="{klass}" data-value="{_attr("" if value is None else value)}">{escape(text)}</td>'
            for text, value, klass in cells
        )
        title_attr = f' title="{_attr(title)}"' if title else ""
        body.append(f'<tr data-order="{order}"{title_attr}>{tds}</tr>')
    return (
        f'<div class="wrap"><table class="{css} sortable" id="{_attr(table_id)}">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


def _per_class_table(table: Table) -> str:
    names = table.class_names
    columns = [("backbone", "backbone", False), ("channels", "channels", False)]
    columns += [(f"c{i}", name, True) for i, name in enumerate(names)]
    rows = []
    for row in table.computed_rows:
        if not row.per_class:
            continue
        cells: list[tuple[str, object, str]] = [(row.backbone, row.backbone, "txt"), (row.channels, row.channels, "txt")]
        for name in names:
            v = row.per_class.get(name)
            cells.append(("" if v is None else f"{v:.3f}", v, "num"))
        rows.append((cells, _provenance_text(row)))
    return _simple_table(f"{table.id}-per-class", "perclass", columns, rows)


def _best_table(table: Table) -> str:
    columns = [
        ("class", "class", False),
        ("best", "best (backbone · channels)", False),
        ("best_f1", "F1", True),
        ("runner_up", "runner-up", False),
        ("runner_up_f1", "F1", True),
        ("why", "why", False),
    ]
    rows = []
    for b in best_per_class(table):
        best = b.best.label if b.best else "no clear best"
        runner = b.runner_up.label if b.runner_up else ""
        runner_f1 = "" if b.runner_up_value is None else f"{b.runner_up_value:.3f}"
        cells: list[tuple[str, object, str]] = [
            (b.class_name, b.class_name, "txt"),
            (best, best, "txt" if b.best else "txt unclear"),
            (f"{b.top_value:.3f}", b.top_value, "num"),
            (runner, runner, "txt"),
            (runner_f1, b.runner_up_value, "num"),
            (b.note, b.note, "txt"),
        ]
        rows.append((cells, ""))
    return _simple_table(f"{table.id}-best", "best", columns, rows)


def _axis_table(table: Table) -> str:
    columns = axis_columns(table)
    rows = []
    for row in table.computed_rows:
        if not row.axis_points:
            continue
        cells: list[tuple[str, object, str]] = []
        for c in columns:
            text, value = axis_cell(table, row, c)
            cells.append((text, value, "num" if c.numeric else "txt"))
        rows.append((cells, _provenance_text(row)))
    return _simple_table(f"{table.id}-axis", "axis", [(c.id, c.header, c.numeric) for c in columns], rows)


def _figure(plan: PlotSpec, images: Mapping[str, bytes]) -> str:
    """The plot inline as a PNG data URI (the page needs no other file), or a link to
    ``plots/<file>`` when its bytes were not given."""
    data = images.get(plan.filename)
    src = f"data:image/png;base64,{base64.b64encode(data).decode('ascii')}" if data is not None else f"plots/{plan.filename}"
    return (
        f'<figure data-plot="{_attr(plan.filename)}"><img src="{_attr(src)}" alt="{_attr(plan.title)}" loading="lazy">'
        f"<figcaption>{escape(plan.title)}</figcaption></figure>"
    )


def _code(text: str) -> str:
    """Our own text with `x` pairs as <code>x</code>, everything else escaped."""
    out = escape(text)
    while "`" in out:
        out = out.replace("`", "<code>", 1).replace("`", "</code>", 1)
    return out


def _page_top(board: Board) -> list[str]:
    """The page's head, title, lead, banners, reading guide and table of contents."""
    n = len(board.entries)
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="generator" content="ocbench leaderboard build">',
        f"<title>{escape(TITLE)}</title>",
        f"<style>{_CSS}</style></head>",
        '<body data-sort-state="">',
        f"<h1>{escape(TITLE)}</h1>",
        f'<p class="lead">{escape(LEAD)}</p>',
    ]
    if board.synthetic:
        parts.append(f'<p class="banner" id="synthetic-banner">{escape(SYNTHETIC_BANNER).replace("*synthetic data*", "<em>synthetic data</em>")}</p>')
    if board.hidden_not_zero_shot:
        parts.append(
            f'<p class="muted">Built with <code>--zero-shot-only</code>: {board.hidden_not_zero_shot} entries whose '
            "backbone is not zero-shot are left out.</p>"
        )
    guide = [f"<p>{escape(INTRO)}</p>"]
    if board.include_reported:
        note = escape(REPORTED_NOTE).replace("*reported*", "<em>reported</em>")
        guide.append(f"<p>{note.replace('`rank_reported=True`', '<code>rank_reported=True</code>')}</p>")
    guide.append(f'<p class="legend" id="channel-legend">{_code(CHANNEL_LEGEND)}</p>')
    guide.append(
        f'<p class="muted">Built by <code>ocbench leaderboard build</code> from {n} entr{"y" if n == 1 else "ies"} '
        f"(fingerprint <code>{board.fingerprint[:16]}</code>); entry files in <code>entries/</code>, every column "
        "in <code>leaderboard.csv</code>. Click a column header to sort; hover a row or open its details for provenance.</p>"
    )
    parts.append(f'<details class="guide" id="guide"><summary>How to read this board</summary>{"".join(guide)}</details>')
    if not board.tables:
        parts.append("<p>No entries yet.</p>")
    else:
        links = "".join(f'<li><a href="#{_attr("s-" + t.id)}">{escape(t.title)}</a></li>' for t in board.tables)
        parts.append(f"<nav><ul>{links}</ul></nav>")
    return parts


def _table_section(table: Table, table_plots: Mapping[str, PlotSpec], images: Mapping[str, bytes]) -> list[str]:
    """One table's section: headline, ranked rows, rule, details, its sweep, per-class views and plots."""
    parts = [f'<section id="{_attr("s-" + table.id)}"' + (' data-synthetic="1"' if table.synthetic else "") + ">"]
    tag = '<span class="synthetic-tag">synthetic data</span>' if table.synthetic else ""
    parts.append(f"<h2>{escape(table.title)}{tag}</h2>")
    if table.headline:
        parts.append(f'<p class="headline">{escape(table.headline)}</p>')
    parts.append(_main_table(table))
    parts.append(f'<p class="rule">{escape(table.rule)}</p>')
    parts.append(f'<details class="table-details"><summary>What this table holds</summary>'
                 f'<p class="details">{escape(" · ".join(table.details))}</p></details>')
    if "channel_sweep" in table_plots:
        parts.append(_figure(table_plots["channel_sweep"], images))
    if any(r.axis_points for r in table.computed_rows):
        parts.append(f"<h3>{escape(table.score_label)} per {escape(table.axis_name or 'axis')}</h3>")
        parts.append(_axis_table(table))
        parts.append('<p class="rule">* marks the value each entry is ranked at.</p>')
        if "axis" in table_plots:
            parts.append(_figure(table_plots["axis"], images))
    if table.class_names:
        parts.append(f"<h3>Per-class {escape(table.per_class_label)}</h3>")
        parts.append(_per_class_table(table))
        if "per_class" in table_plots:
            parts.append(_figure(table_plots["per_class"], images))
        if best_per_class(table):
            parts.append("<h3>Best backbone per class</h3>")
            parts.append(_best_table(table))
    parts.append("</section>")
    return parts


def _across_tables(board: Board, general: dict[str, PlotSpec], images: Mapping[str, bytes]) -> list[str]:
    """The critical-difference section (or why none is drawn); takes its plot out of ``general``."""
    parts = []
    if board.critical_difference is not None:
        parts.append('<section id="critical-difference"><h2>Across tables: critical difference</h2>')
        parts.append(f"<p>{escape(board.critical_difference.text)}</p>")
        if "critical_difference" in general:
            parts.append(_figure(general.pop("critical_difference"), images))
        parts.append("</section>")
    elif board.critical_difference_skipped:
        parts.append('<section id="critical-difference"><h2>Across tables: critical difference</h2>')
        parts.append(f'<p class="muted">Not drawn: {escape(board.critical_difference_skipped)}.</p></section>')
    return parts


def render_html(board: Board, plots: Sequence[PlotSpec] = (), images: Mapping[str, bytes] | None = None) -> str:
    """The page; ``images``: PNG bytes by plot file name, inlined as data URIs."""
    images = images or {}
    by_table: dict[str | None, dict[str, PlotSpec]] = {}
    for plan in plots:
        by_table.setdefault(plan.table_id, {})[plan.kind] = plan
    parts = _page_top(board)
    for table in board.tables:
        parts += _table_section(table, by_table.get(table.id, {}), images)
    for seeds in board.seed_tables:
        columns = seed_columns(seeds)
        rows = [([(*seed_cell(r, c), "num" if c.numeric else "txt") for c in columns], r.notes) for r in seeds.rows]
        parts.append(f'<section id="{_attr("s-" + seeds.id)}"><h2>{escape(seeds.title)}</h2>')
        parts.append(_simple_table(seeds.id, "seeds", [(c.id, c.header, c.numeric) for c in columns], rows))
        parts.append(f'<p class="rule">{escape(seeds.rule)}</p></section>')
    general = dict(by_table.get(None, {}))
    parts += _across_tables(board, general, images)
    if general:
        parts.append("<section id=\"plots\"><h2>Plots</h2>" + "".join(_figure(p, images) for p in general.values()) + "</section>")
    parts.append(f"<script>{_JS}</script>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
