"""The paper's reported numbers as board rows, and the table they get where no comparable
computed table exists.

Reported rows join the tables whose entries are comparable with the paper (full OpenCell set, all
grades), marked "reported" and unranked unless the board ranks them; per-k rows (k-NN) have no
single score and are never ranked.
"""

from __future__ import annotations

from ocbench.leaderboard.board_types import Row, Table
from ocbench.leaderboard.grouping import safe_id
from ocbench.leaderboard.ranking import Score, rank_rule_text
from ocbench.leaderboard.separation import assemble_rows
from ocbench.reported import PAPER, ReportedResult

__all__ = ["reported_row", "reported_table"]


def reported_row(r: ReportedResult) -> Row:
    notes = f"paper {r.source}" + (f"; {r.config_label}" if r.config else "") + (f"; {r.note}" if r.note else "")
    provenance = (
        ("source", f"{PAPER}, {r.source}"),
        ("configuration", f"{r.task}, {r.channels_label}" + (f", {r.config_label}" if r.config else "")),
        (
            "aggregation",
            f"macro-F1 per k (k#1..k#{len(r.per_k)}, increasing; the paper does not print the k values), {r.n} cells"
            if r.per_k
            else f"macro-F1 mean ± std over {r.n} folds of the paper's own by-image split",
        ),
        *((("note", r.note),) if r.note else ()),
    )
    return Row(
        kind="reported",
        backbone=r.backbone,
        channels=r.channels_label,
        strategy=r.strategy,
        channel_map=r.channel_map,
        score=Score(r.mean, r.std, r.n) if r.mean is not None else None,
        notes=notes,
        provenance=provenance,
        per_k=r.per_k,
        source=r,
    )



def reported_table(task: str, track: str, results: list[ReportedResult], *, rank_reported: bool, alpha: float) -> Table:
    rows = [reported_row(r) for r in results]
    knn = any(r.per_k for r in results)
    if knn:
        ordered, ranked = rows, False  # per-k rows: no single score to rank by
        rule = "Macro-F1 for increasing k (the paper does not print the k values); not ranked."
    else:
        ordered, ranked = assemble_rows([], rows, paired=False, rank_reported=rank_reported, alpha=alpha)
        rule = (
            rank_rule_text(paired=False, n_folds=None, alpha=alpha, ranked_reported=True)
            if ranked
            else "The paper's numbers, sorted by mean; not ranked (they were not computed by ocbench)."
        )
    return Table(
        id=f"{safe_id(task)}-{safe_id(track)}-reported",
        title=f"{task} · {track} track · reported by the paper",
        details=(
            f"{PAPER}: numbers as published, computed on the paper's own split by its own code; "
            "no ocbench entry comparable with them (full OpenCell set, all grades) for this task and track yet",
        ),
        task=task,
        track=track,
        kind="knn" if knn else "scores",
        rows=tuple(ordered),
        rule=rule,
        group=None,
        score_label="CV macro-F1",
    )

