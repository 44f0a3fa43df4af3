"""Chance reference rows: the scores the labels alone give, shown under a table and never ranked.

Each entry carries its references (all-positive or majority class, class prior, shuffled labels);
a table shows one row per reference, the best of its entries' where they differ.
"""

from __future__ import annotations

from typing import Any, Sequence

from ocbench.leaderboard.board_types import Row
from ocbench.leaderboard.ranking import Score

__all__ = ["REFERENCE_NOTE", "reference_note", "reference_rows"]

#: What the chance reference rows of a table are (under every table that has them).
REFERENCE_NOTE = (
    "Rows named chance: … are references computed from the labels alone on the same split and items, with the same "
    "interval: all-positive (every class predicted; per class F1 = 2p/(1+p), p its share of positives) or the majority "
    "class, the class prior (each class predicted at random with its training frequency; expected over seeded draws), "
    "and shuffled labels through the task's own probe (the highest over the table's entries). They are never ranked; "
    "a row whose interval reaches them learned nothing the labels alone do not give."
)


def reference_note(higher_is_better: bool = True) -> str:
    """:data:`REFERENCE_NOTE` for a table whose main score ranks that way (the best chance is the lowest
    when lower is better)."""
    return REFERENCE_NOTE if higher_is_better else REFERENCE_NOTE.replace("(the highest over", "(the lowest over")



def reference_rows(members: Sequence[Any]) -> list[Row]:
    """One row per chance reference the table's entries carry. References computed from the labels
    alone are the same for every entry of a table (same split and items); shuffled labels go
    through each entry's own features, and the best of them (the highest; the lowest when lower is
    better) is shown."""
    best: dict[str, tuple[float, Any, Any, int]] = {}
    for loaded in members:
        e = loaded.entry
        for ref in e.references:
            summary = ref.scores.get(e.main_score.eval_set, {}).get(e.main_score.metric)
            if summary is None:
                continue
            value = summary.mean if e.main_score.higher_is_better else -summary.mean
            count = best[ref.name][3] + 1 if ref.name in best else 1
            if ref.name not in best or value > best[ref.name][0]:
                best[ref.name] = (value, loaded, ref, count)
            else:
                best[ref.name] = (*best[ref.name][:3], count)
    rows = []
    for name, (_, loaded, ref, count) in best.items():
        e = loaded.entry
        eval_set, metric = e.main_score.eval_set, e.main_score.metric
        main = ref.scores[eval_set][metric]
        test = ref.scores.get("test", {}).get(metric) if eval_set != "test" else None
        interval_set = e.predictions.eval_set if e.predictions is not None else ""
        kept = ref.scores.get(interval_set, {}).get(metric) if interval_set else None
        interval = kept.interval if kept is not None else None
        notes = [ref.description]
        if ref.draws:
            error = max((ref.standard_error or {}).values(), default=None)
            notes.append(f"expected over {ref.draws:,} seeded draws" + (f", standard error {error:.4f}" if error is not None else ""))
        if name == "shuffled-labels":
            best_word = "highest" if e.main_score.higher_is_better else "lowest"
            notes.append(f"{e.task} on {e.backbone.name}'s features" + (f" (the {best_word} of {count} entries)" if count > 1 else ""))
        notes.append("chance reference, not ranked")
        rows.append(Row(
            kind="reference", backbone=f"chance: {name}", channels="—", strategy="", channel_map=None,
            score=Score.of(main), test=Score.of(test) if test is not None else None, notes="; ".join(notes),
            provenance=(("reference", ref.description), ("from entry", e.key)),
            synthetic=bool(e.dataset.synthetic), interval=interval, interval_set=interval_set if interval is not None else "",
            higher_is_better=e.main_score.higher_is_better,
        ))
    return sorted(rows, key=lambda r: (-r.ranking_value, r.backbone))

