"""Markdown (tabulate, GitHub style) and CSV (pandas) renderings of a board.

Both are deterministic functions of the board (no dates, no machine paths), so a committed board
can be checked for being up to date by rebuilding it. Every text that comes from an entry is
escaped for Markdown (:func:`~ocbench.leaderboard.formatting.md_escape`) and made inert for
spreadsheets in the CSV (:func:`~ocbench.leaderboard.formatting.csv_safe`). The CSV's columns are
built in :mod:`~ocbench.leaderboard.board_csv`; :func:`board_dataframe` is importable from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ocbench.leaderboard.board_csv import board_dataframe  # the CSV rendering, importable from here too
from ocbench.leaderboard.formatting import (
    CHANNEL_LEGEND,
    fmt_axis_value,
    fmt_score,
    md_escape,
)
from ocbench.leaderboard.plots import PlotSpec
from ocbench.leaderboard.ranking import Score
from ocbench.leaderboard.tables import Board, Row, SeedRow, SeedTable, Table, best_per_class, reference_note
from ocbench.reported import PAPER

__all__ = [
    "Column",
    "columns_of",
    "cell",
    "axis_columns",
    "axis_cell",
    "render_markdown",
    "board_dataframe",
    "INTRO",
    "REPORTED_NOTE",
    "SYNTHETIC_BANNER",
    "TITLE",
]

TITLE = "OpenCell benchmark leaderboard"
#: The two sentences every reader sees first; the rest of the reading guide (INTRO) is folded.
LEAD = (
    "Pretrained vision backbones ranked on protein localization in OpenCell microscopy; each table "
    "compares only like with like, opens with what its numbers settle, and shows every score with "
    "its 95% confidence interval beside it. Rows sharing a rank cannot be told apart."
)
INTRO = (
    "Each table ranks its rows by its task's main score, named in the table's header. For the FOV "
    "probes (protocol fov-probe/2) that is the validation macro-F1 over the classes with at least one "
    "positive in the evaluated fold (threshold 0.5 on sigmoid outputs), as the Dino4Cells evaluation "
    "the paper builds on computes it; tables of entries written by ocbench 0.1 (protocol fov-probe/1) "
    "rank by the macro-F1 over all 17 compartments, a class without positives scoring 0 (\"macro-F1 "
    "(all classes)\"). Scores are mean ± std (sample std, ddof 1) over n cross-validation folds; the "
    "test column scores each fold's model on the held-out test set; single-cell tables (sc-knn) score one "
    "leave-one-out pass over every evaluated cell instead: one number per row, no folds and no test set. "
    "Where an entry kept its per-item "
    "predictions, the interval column gives the 95% confidence interval of the evaluated set's score by "
    "cluster bootstrap over proteins (whole proteins resampled, all their images kept: images of one "
    "protein are not independent evidence); entries that kept none are shown without an interval. "
    "Rows marked \"not zero-shot\" use a backbone trained on the evaluated data or its labels. Each table holds only entries "
    "with the same task, main score, split track, dataset version, split file, protocol version and "
    "protocol deviations; anything else goes to its own table."
)
REPORTED_NOTE = (
    f"Rows marked *reported* are the numbers published in {PAPER}, computed on the paper's own split "
    "by its own code. They are shown for reference, never mixed into the computed rows' ranks unless "
    "the board is built with `rank_reported=True`."
)
SYNTHETIC_BANNER = (
    "Tables marked *synthetic data* hold results on the generated demo dataset: they show that the "
    "pipeline runs, and say nothing about how a backbone does on real cells."
)


@dataclass(frozen=True)
class Column:
    id: str
    header: str
    numeric: bool


def columns_of(table: Table) -> list[Column]:
    if table.kind == "knn":
        n_k = max((len(r.per_k) for r in table.rows), default=0)
        return [
            Column("backbone", "backbone", False),
            Column("channels", "channels", False),
            *[Column(f"k{i + 1}", f"k#{i + 1}", True) for i in range(n_k)],
            Column("notes", "notes", False),
        ]
    if table.group is None:  # the paper's numbers alone: no test column, no paper column
        ranked = any(r.rank is not None for r in table.rows)
        return [
            *([Column("rank", "rank", True)] if ranked else []),
            Column("backbone", "backbone", False),
            Column("channels", "channels", False),
            Column("score", f"{table.score_label} (mean ± std, n)", True),
            Column("notes", "notes", False),
        ]
    has_test = any(r.test is not None for r in table.rows)
    has_paper = any(r.reported is not None for r in table.rows)  # none on demo or other data
    return [
        Column("rank", "rank (tie group)", True),
        Column("backbone", "backbone", False),
        Column("channels", "channels", False),
        Column("score", f"{table.score_label} (mean ± std, n)", True),
        # the interval right beside the ranked score: how sure is the first thing a reader sees
        *([Column("interval", table.interval_label, True)] if table.interval_label else []),
        *([Column("test", f"{table.test_label} (mean ± std, n)", True)] if has_test else []),
        *([Column("vs_baseline", table.vs_baseline_label, True)] if table.vs_baseline_label else []),
        *([Column("paper", "paper reported", True)] if has_paper else []),
        *([Column("cost", COST_HEADER, True)] if any(_cost(r) for r in table.rows) else []),
        Column("notes", "notes", False),
    ]


#: What the "vs best baseline" column is (under every table that has one).
VS_BASELINE_NOTE = (
    "vs best baseline: the row's score minus that of the table's best baseline (an untrained network, classical or "
    "CellProfiler features: cards with role baseline) on the same items, with its paired 95% interval (a protein "
    "bootstrap of both on the same resampled proteins; the corrected t-test over folds where only fold scores exist). "
    "Where the interval includes 0 (marked) the backbone is not shown to beat the baseline."
)

#: What the cost column holds: so users can weigh a score against the compute it takes.
COST_HEADER = "extraction cost (device-s per 1k embedded images)"


def _cost(row: Row) -> tuple[float, str] | None:
    """Device-seconds per 1,000 items of the row's extraction, and on what, when the entry recorded it."""
    e = row.entry.entry if row.entry else None
    if e is None or e.timings.device_seconds_per_1000 is None:
        return None
    t = e.timings
    where = t.extraction_device or e.environment.device
    if e.environment.precision != "fp32":
        where += f", {e.environment.precision}"
    if (t.extraction_processes or 1) > 1:
        where += f", {t.extraction_processes} processes"
    return t.device_seconds_per_1000, where


def cell(row: Row, column: Column) -> tuple[str, Any]:
    """``(text, sort value)`` of one cell; the sort value is None for an empty numeric cell."""
    cid = column.id
    if cid == "rank":
        return (str(row.rank), row.rank) if row.rank is not None else ("—", None)
    if cid == "backbone":
        return row.backbone + (" ⚠" if row.warnings else ""), row.backbone
    if cid == "channels":
        return row.channels, row.channels
    if cid == "vs_baseline":
        d = row.vs_baseline
        if d is None:
            return ("—" if row.kind == "computed" and not row.vs_baseline_note else
                    ("best baseline" if row.vs_baseline_note == "the best baseline" else "")), None
        return d.text, d.estimate
    if cid == "score":
        if row.score is None and row.per_k:
            return "per k: " + " ".join(f"{v:.3f}" for v in row.per_k), None
        return fmt_score(row.score), row.score.mean if row.score else None
    if cid == "test":
        return fmt_score(row.test), row.test.mean if row.test else None
    if cid == "interval":
        i = row.interval
        if i is None:
            return ("—" if row.kind == "computed" else ""), None
        return f"{i.estimate:.3f} [{i.low:.3f}, {i.high:.3f}]", i.estimate
    if cid == "paper":
        r = row.reported
        if r is None or r.mean is None:
            return "", None
        return fmt_score(Score(r.mean, r.std, r.n), with_n=False), r.mean
    if cid == "cost":
        cost = _cost(row)
        return (f"{cost[0]:.3g} s ({cost[1]})", cost[0]) if cost else ("", None)
    if cid == "notes":
        return row.notes, row.notes
    if cid.startswith("k") and cid[1:].isdigit():
        i = int(cid[1:]) - 1
        return (f"{row.per_k[i]:.3f}", row.per_k[i]) if i < len(row.per_k) else ("", None)
    raise KeyError(cid)


def axis_columns(table: Table) -> list[Column]:
    """The sweep table of an axis table: one column per axis value."""
    name = table.axis_name or "axis"
    return [
        Column("backbone", "backbone", False),
        Column("channels", "channels", False),
        *[Column(f"a{i}", f"{name}={fmt_axis_value(v)}", True) for i, v in enumerate(table.axis_values)],
    ]


def axis_cell(table: Table, row: Row, column: Column) -> tuple[str, Any]:
    if not column.id.startswith("a") or not column.id[1:].isdigit():
        return cell(row, column)
    value = table.axis_values[int(column.id[1:])]
    score = dict(row.axis_points).get(value)
    if score is None:
        return "", None
    mark = " *" if row.axis_main == value else ""
    return fmt_score(score, with_n=False) + mark, score.mean


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------
def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    from tabulate import tabulate

    return tabulate(
        [[md_escape(c) for c in r] for r in rows],
        headers=[md_escape(h) for h in headers],
        tablefmt="github",
        disable_numparse=True,
    )


def _md_main_table(table: Table) -> str:
    """The ranked table; "*(reported)*" is our own Markdown, added after escaping the name."""
    columns = columns_of(table)
    body = []
    for row in table.rows:
        cells = [md_escape(cell(row, c)[0]) for c in columns]
        if row.kind in ("reported", "reference"):
            i = [c.id for c in columns].index("backbone")
            cells[i] += " *(reported)*" if row.kind == "reported" else " *(chance reference)*"
        body.append(cells)
    from tabulate import tabulate

    return tabulate(body, headers=[md_escape(c.header) for c in columns], tablefmt="github", disable_numparse=True)


def _md_axis(table: Table) -> str:
    columns = axis_columns(table)
    rows = [[axis_cell(table, r, c)[0] for c in columns] for r in table.computed_rows if r.axis_points]
    return _md_table([c.header for c in columns], rows)


def _md_per_class(table: Table) -> str:
    names = table.class_names
    rows = [
        [r.backbone, r.channels, *[f"{r.per_class[c]:.3f}" if c in r.per_class else "" for c in names]]
        for r in table.computed_rows
        if r.per_class
    ]
    return _md_table(["backbone", "channels", *names], rows)


def _md_best(table: Table) -> str:
    rows = []
    for b in best_per_class(table):
        rows.append(
            [
                b.class_name,
                b.best.label if b.best else "no clear best",
                f"{b.top_value:.3f}",
                b.runner_up.label if b.runner_up else "",
                f"{b.runner_up_value:.3f}" if b.runner_up_value is not None else "",
                b.note,
            ]
        )
    return _md_table(["class", "best (backbone · channels)", "F1", "runner-up", "F1 ", "why"], rows)


def _md_provenance(table: Table) -> str:
    lines = []
    for row in table.computed_rows:
        facts = dict(row.provenance)
        extra = "".join(f" · {k} {md_escape(facts[k])}" for k in ("off-protocol",) if k in facts)
        lines.append(
            f"- **{md_escape(row.label)}**: {md_escape(facts['entry'].split(' ')[0])} · created {md_escape(facts['created'])} · "
            f"weights {md_escape(facts['weights'])} · {md_escape(facts['software'])} · {md_escape(facts['machine'])}{extra}"
        )
    return "\n".join(lines)


def _md_image(plan: PlotSpec) -> str:
    return f"![{md_escape(plan.title)}](plots/{plan.filename})"


def seed_columns(table: SeedTable) -> list[Column]:
    return [
        Column("backbone", "backbone", False),
        Column("channels", "channels", False),
        Column("n_seeds", "seeds (n)", True),
        Column("mean", f"{table.score_label}: mean over seeds ± seed std", True),
        Column("per_seed", "per seed", False),
        Column("test", "test: mean over seeds", True),
        Column("notes", "notes", False),
    ]


def seed_cell(row: SeedRow, column: Column) -> tuple[str, Any]:
    cid = column.id
    if cid == "backbone":
        return row.backbone, row.backbone
    if cid == "channels":
        return row.channels, row.channels
    if cid == "n_seeds":
        return f"{row.n} ({', '.join(map(str, row.seeds))})", row.n
    if cid == "mean":
        std = f" ± {row.std:.3f}" if row.std is not None else " (1 seed)"
        return f"{row.mean:.3f}{std}", row.mean
    if cid == "per_seed":
        return " ".join(f"{v:.3f}" for v in row.means), None
    if cid == "test":
        return (f"{row.test_mean:.3f}", row.test_mean) if row.test_mean is not None else ("", None)
    if cid == "cost":
        cost = _cost(row)
        return (f"{cost[0]:.3g} s ({cost[1]})", cost[0]) if cost else ("", None)
    if cid == "notes":
        return row.notes, row.notes
    raise KeyError(cid)


def render_markdown(board: Board, plots: Sequence[PlotSpec] = ()) -> str:
    by_table: dict[str | None, list[PlotSpec]] = {}
    for plan in plots:
        by_table.setdefault(plan.table_id, []).append(plan)
    parts = [f"# {TITLE}", "", LEAD, ""]
    if board.synthetic:
        parts += [f"**{SYNTHETIC_BANNER}**", ""]
    if board.hidden_not_zero_shot:
        parts += [f"Built with `--zero-shot-only`: {board.hidden_not_zero_shot} entries whose backbone is not zero-shot are left out.", ""]
    parts += ["<details><summary>How to read this board</summary>", "", INTRO, ""]
    if board.include_reported:
        parts += [REPORTED_NOTE, ""]
    parts += [CHANNEL_LEGEND, ""]
    n = len(board.entries)
    parts += [
        f"Built by `ocbench leaderboard build` from {n} entr{'y' if n == 1 else 'ies'} "
        f"(fingerprint `{board.fingerprint[:16]}`); the entry files are in `entries/`. "
        "Hover a row of `index.html` for its full provenance.",
        "",
        "</details>",
        "",
    ]
    if not board.tables:
        parts += ["No entries yet.", ""]
    for table in board.tables:
        table_plots = {p.kind: p for p in by_table.get(table.id, [])}
        parts += [f"## {md_escape(table.title)}", ""]
        if table.headline:
            parts += [f"**{md_escape(table.headline)}**", ""]
        parts += [md_escape(" · ".join(table.details)), ""]
        parts += [_md_main_table(table), ""]
        parts += [f"*{md_escape(table.rule)}*", ""]
        if table.reference_rows:
            parts += [f"*{md_escape(reference_note(table.higher_is_better))}*", ""]
        if table.vs_baseline_label:
            parts += [f"*{md_escape(VS_BASELINE_NOTE)}*", ""]
        if "channel_sweep" in table_plots:
            parts += [_md_image(table_plots["channel_sweep"]), ""]
        if any(r.axis_points for r in table.computed_rows):
            parts += [f"### {md_escape(table.score_label)} per {md_escape(table.axis_name or 'axis')}", ""]
            parts += [_md_axis(table), "", "(* marks the value each entry is ranked at.)", ""]
            if "axis" in table_plots:
                parts += [_md_image(table_plots["axis"]), ""]
        if table.class_names:
            parts += [f"### Per-class {md_escape(table.per_class_label)}", "", _md_per_class(table), ""]
            if "per_class" in table_plots:
                parts += [_md_image(table_plots["per_class"]), ""]
            best = best_per_class(table)
            if best:
                parts += ["### Best backbone per class", "", _md_best(table), ""]
        if table.computed_rows:
            parts += ["<details><summary>Provenance of the computed rows</summary>", "", _md_provenance(table), "", "</details>", ""]
    for seeds in board.seed_tables:
        columns = seed_columns(seeds)
        parts += [f"## {md_escape(seeds.title)}", ""]
        parts += [_md_table([c.header for c in columns], [[seed_cell(r, c)[0] for c in columns] for r in seeds.rows]), ""]
        parts += [f"*{md_escape(seeds.rule)}*", ""]
    if board.critical_difference is not None:
        parts += ["## Across tables: critical difference", "", md_escape(board.critical_difference.text), ""]
        cd_plot = next((p for p in by_table.get(None, []) if p.kind == "critical_difference"), None)
        if cd_plot is not None:
            parts += [_md_image(cd_plot), ""]
    elif board.critical_difference_skipped:
        parts += ["## Across tables: critical difference", "", f"Not drawn: {md_escape(board.critical_difference_skipped)}.", ""]
    general = [p for p in by_table.get(None, []) if p.kind != "critical_difference"]
    if general:
        parts += ["## Plots", ""]
        for plan in general:
            parts += [_md_image(plan), ""]
    return "\n".join(parts).rstrip("\n") + "\n"
