"""Per-class views of a table: each entry's per-class score and the clear best row per class.

The per-class score is the F1 on the entry's main eval set (:data:`PER_CLASS_METRIC`), keyed by
the entry's own ``class_names``; a class's best row is awarded only when a test separates it from
the runner-up (:func:`best_per_class`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ocbench.leaderboard.board_types import Row, Table
from ocbench.leaderboard.ranking import ALPHA, corrected_t_test_p

__all__ = ["PER_CLASS_METRIC", "per_class_metric", "ClassBest", "best_per_class"]

#: The per-class score shown in per-class views (when an entry has it).
PER_CLASS_METRIC = "f1"


def per_class_metric(entry: Any) -> tuple[dict[str, float], dict[str, tuple[float, ...]]]:
    """The entry's per-class F1 on its main eval set: ``({class: mean}, {class: fold values})``.

    Fold values keep only the folds where the class had positives when ``support`` is recorded
    (protocol fov-probe/2 scores a class only where it is present)."""
    eval_set = entry.main_score.eval_set
    means = dict(entry.per_class.get(eval_set, {}).get(PER_CLASS_METRIC, {}))
    rows = entry.per_class_values.get(eval_set, {})
    values, support = rows.get(PER_CLASS_METRIC), rows.get("support")
    folds: dict[str, tuple[float, ...]] = {}
    if values:
        for i, name in enumerate(entry.class_names):
            kept = [
                row[i] for k, row in enumerate(values) if support is None or (k < len(support) and support[k][i] > 0)
            ]
            if kept:
                folds[name] = tuple(kept)
    return means, folds



@dataclass(frozen=True)
class ClassBest:
    class_name: str
    best: Row | None  # None: no clear best
    top: tuple[Row, ...]  # the row(s) with the highest score (several when tied)
    top_value: float
    runner_up: Row | None
    runner_up_value: float | None
    note: str  # why there is no clear best, or how the best was separated

    @property
    def clear(self) -> bool:
        return self.best is not None


_EPS = 1e-12


def best_per_class(table: Table, *, alpha: float = ALPHA) -> list[ClassBest]:
    """For each class, the computed row with the highest score on it, awarded only when it is
    clear: above 0, not tied, and (when both rows have fold values of the class on the same folds)
    separated from the runner-up by the corrected resampled t-test (p < alpha). Needs >= 2 rows."""
    rows = [r for r in table.computed_rows if r.per_class]
    if len(rows) < 2:
        return []
    out = []
    for name in table.class_names:
        scored = sorted(((r.per_class[name], r) for r in rows if name in r.per_class), key=lambda t: (-t[0], t[1].label))
        if len(scored) < 2:
            continue
        top_value = scored[0][0]
        top = tuple(r for v, r in scored if abs(v - top_value) <= _EPS)
        rest = [(v, r) for v, r in scored if abs(v - top_value) > _EPS]
        runner_value, runner = (rest[0] if rest else (None, None))
        best: Row | None = None
        if top_value <= _EPS:
            note = "no clear best: the best score is 0"
        elif len(top) > 1:
            note = f"no clear best: {len(top)} rows tied at {top_value:.3f}"
        else:
            assert runner is not None and runner_value is not None
            a, b = top[0].per_class_folds.get(name), runner.per_class_folds.get(name)
            if a and b and len(a) == len(b) >= 2:
                p = corrected_t_test_p(a, b)
                if p >= alpha:
                    note = f"no clear best: a corrected t-test over {len(a)} folds cannot separate the top two (p = {p:.3g})"
                else:
                    best, note = top[0], f"corrected t-test over {len(a)} folds vs the runner-up: p = {p:.3g}"
            else:
                best, note = top[0], "highest score (no paired folds to test the gap)"
        out.append(ClassBest(name, best, top, top_value, runner, runner_value, note))
    return out
