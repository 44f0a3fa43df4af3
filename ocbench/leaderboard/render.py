"""Markdown (tabulate, GitHub style) and CSV (pandas) renderings of a board.

Both are deterministic functions of the board (no dates, no machine paths), so a committed board
can be checked for being up to date by rebuilding it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ocbench.leaderboard.ranking import Score
from ocbench.reported import PAPER
from ocbench.leaderboard.tables import Board, Row, Table, best_per_compartment

__all__ = ["Column", "columns_of", "cell", "fmt_score", "render_markdown", "board_dataframe", "INTRO"]

INTRO = (
    "Macro-F1 over the 17 OpenCell compartments (threshold 0.5 on sigmoid outputs), as mean ± std "
    "(sample std, ddof 1) over n cross-validation folds; the test column scores each fold's model on "
    "the held-out test set. Each table holds only entries with the same task, split track, dataset "
    "version, split file and protocol version; anything else goes to its own table."
)
REPORTED_NOTE = (
    f"Rows marked *reported* are the numbers published in {PAPER}, computed on the paper's own split "
    "by its own code. They are shown for reference, never mixed into the computed rows' ranks unless "
    "the board is built with `rank_reported=True`."
)


@dataclass(frozen=True)
class Column:
    id: str
    header: str
    numeric: bool


def fmt_score(score: Score | None, *, with_n: bool = True) -> str:
    if score is None:
        return ""
    std = f" ± {score.std:.3f}" if score.std is not None else ""
    n = f" (n={score.n})" if with_n else ""
    return f"{score.mean:.3f}{std}{n}"


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
            Column("val", "CV macro-F1 (mean ± std, n)", True),
            Column("notes", "notes", False),
        ]
    has_paper = any(r.reported is not None for r in table.rows)  # none on demo or other data
    return [
        Column("rank", "rank", True),
        Column("backbone", "backbone", False),
        Column("channels", "channels", False),
        Column("val", "CV macro-F1 (mean ± std, n)", True),
        Column("test", "test macro-F1 (mean ± std, n)", True),
        *([Column("paper", "paper reported", True)] if has_paper else []),
        Column("notes", "notes", False),
    ]


def cell(row: Row, column: Column) -> tuple[str, Any]:
    """``(text, sort value)`` of one cell; the sort value is None for an empty numeric cell."""
    cid = column.id
    if cid == "rank":
        return (str(row.rank), row.rank) if row.rank is not None else ("—", None)
    if cid == "backbone":
        return row.backbone, row.backbone
    if cid == "channels":
        return row.channels, row.channels
    if cid == "val":
        return fmt_score(row.val), row.val.mean if row.val else None
    if cid == "test":
        return fmt_score(row.test), row.test.mean if row.test else None
    if cid == "paper":
        r = row.reported
        if r is None or r.mean is None:
            return "", None
        return fmt_score(Score(r.mean, r.std, r.n), with_n=False), r.mean
    if cid == "notes":
        return row.notes, row.notes
    if cid.startswith("k") and cid[1:].isdigit():
        i = int(cid[1:]) - 1
        return (f"{row.per_k[i]:.3f}", row.per_k[i]) if i < len(row.per_k) else ("", None)
    raise KeyError(cid)


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------
def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    from tabulate import tabulate

    return tabulate(
        [[_md_escape(c) for c in r] for r in rows],
        headers=[_md_escape(h) for h in headers],
        tablefmt="github",
        disable_numparse=True,
    )


def _md_main_table(table: Table) -> str:
    columns = columns_of(table)
    rows = []
    for row in table.rows:
        cells = [cell(row, c)[0] for c in columns]
        if row.kind == "reported":
            cells[[c.id for c in columns].index("backbone")] = f"{row.backbone} *(reported)*"
        rows.append(cells)
    return _md_table([c.header for c in columns], rows)


def _md_per_class(table: Table) -> str:
    comps = table.compartments
    rows = [[r.backbone, r.channels, *[f"{r.per_class_f1[c]:.3f}" if c in r.per_class_f1 else "" for c in comps]] for r in table.computed_rows if r.per_class_f1]
    return _md_table(["backbone", "channels", *comps], rows)


def _md_best(table: Table) -> str:
    rows = []
    for b in best_per_compartment(table):
        rows.append(
            [
                b.compartment,
                "; ".join(r.label for r in b.best),
                f"{b.best_f1:.3f}",
                b.runner_up.label if b.runner_up else "",
                f"{b.runner_up_f1:.3f}" if b.runner_up_f1 is not None else "",
            ]
        )
    return _md_table(["compartment", "best (backbone · channels)", "F1", "runner-up", "F1 "], rows)


def _md_provenance(table: Table) -> str:
    lines = []
    for row in table.computed_rows:
        facts = dict(row.provenance)
        lines.append(
            f"- **{_md_escape(row.label)}**: `{facts['entry'].split(' ')[0]}` · created {facts['created']} · "
            f"weights {facts['weights']} · {facts['software']} · {facts['machine']}"
        )
    return "\n".join(lines)


def render_markdown(board: Board, plot_files: list[str]) -> str:
    parts = ["# OpenCell benchmark leaderboard", "", INTRO, ""]
    if board.include_reported:
        parts += [REPORTED_NOTE, ""]
    n = len(board.entries)
    parts += [
        f"Built by `ocbench leaderboard build` from {n} entr{'y' if n == 1 else 'ies'} "
        f"(fingerprint `{board.fingerprint[:16]}`); the entry files are in `entries/`. "
        "Hover a row of `index.html` for its full provenance.",
        "",
    ]
    if not board.tables:
        parts += ["No entries yet.", ""]
    for table in board.tables:
        parts += [f"## {table.title}", ""]
        parts += [" · ".join(table.details), ""]
        parts += [_md_main_table(table), ""]
        parts += [f"*{table.rule}*", ""]
        if table.compartments:
            parts += ["### Per-class F1 (validation, mean over folds)", "", _md_per_class(table), ""]
            parts += ["### Best backbone per compartment", "", _md_best(table), ""]
        if table.computed_rows:
            parts += ["<details><summary>Provenance of the computed rows</summary>", "", _md_provenance(table), "", "</details>", ""]
    if plot_files:
        parts += ["## Plots", "", "(Written when matplotlib is installed: `pip install 'ocbench[plots]'`.)", ""]
        parts += [f"- [{name}](plots/{name})" for name in plot_files]
        parts += [""]
    return "\n".join(parts).rstrip("\n") + "\n"


# ---------------------------------------------------------------------------------------------
# CSV
# ---------------------------------------------------------------------------------------------
def board_dataframe(board: Board):
    """One line per row of every table (pandas DataFrame), with the numbers unrounded."""
    import pandas as pd

    from ocbench.data.compartments import COMPARTMENTS

    records = []
    for table in board.tables:
        g = table.group
        for row in table.rows:
            e = row.entry.entry if row.entry else None
            rec: dict[str, Any] = {
                "table_id": table.id,
                "table": table.title,
                "task": table.task,
                "track": table.track,
                "protocol_version": g.protocol_version if g else "paper",
                "dataset_name": g.dataset_name if g else "opencell (paper)",
                "dataset_version": g.dataset_version if g else "",
                "split_sha256": g.split_sha256 if g else "",
                "kind": row.kind,
                "rank": row.rank,
                "tied_with_above": row.tied_with_above,
                "backbone": row.backbone,
                "channels": row.channels,
                "channels_strategy": row.strategy,
                "channels_key": e.channels.key if e else "",
                "channel_map": json.dumps(list(row.channel_map)) if row.channel_map else "",
                "val_mean": row.val.mean if row.val else None,
                "val_std": row.val.std if row.val else None,
                "val_n": row.val.n if row.val else None,
                "val_per_fold": json.dumps(list(row.val.per_fold)) if row.val and row.val.per_fold else "",
                "test_mean": row.test.mean if row.test else None,
                "test_std": row.test.std if row.test else None,
                "test_n": row.test.n if row.test else None,
                "paper_mean": row.reported.mean if row.reported else None,
                "paper_std": row.reported.std if row.reported else None,
                "paper_source": row.reported.source if row.reported else (row.source.source if row.source else ""),
                "per_k": json.dumps(list(row.per_k)) if row.per_k else "",
                "off_protocol": e.off_protocol if e else "",
                "overrides": json.dumps(e.overrides, sort_keys=True) if e else "",
                "notes": row.notes,
                "entry_file": f"entries/{row.board_file}" if row.board_file else "",
                "entry_sha256": row.entry.sha256 if row.entry else "",
                "created": e.created if e else "",
                "weights_sha256": (e.backbone.weights_sha256 or "") if e else "",
                "revision": (e.backbone.revision or "") if e else "",
                "ocbench_version": e.environment.ocbench if e else "",
            }
            for comp in COMPARTMENTS:
                rec[f"val_f1_{comp}"] = row.per_class_f1.get(comp)
            records.append(rec)
    columns = list(records[0]) if records else ["table_id", "kind", "backbone"]
    frame = pd.DataFrame.from_records(records, columns=columns)
    for col in ("rank", "val_n", "test_n"):
        if col in frame:
            frame[col] = frame[col].astype("Int64")
    return frame
