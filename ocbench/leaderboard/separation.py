"""Whether one row is better than another, and the ranks that follow: the paired tests
(corrected t-test over folds, paired cluster bootstrap on kept items), tie groups, and the
one-sentence headline of a table.

Rows are ordered by their ranking value (the main score, negated when lower is better); a row
shares the rank of the one above it unless every test the two allow separates them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Iterable

from ocbench.leaderboard.board_types import Row, Table
from ocbench.leaderboard.formatting import metric_label, score_label
from ocbench.leaderboard.ranking import ALPHA, assign_tie_groups, corrected_t_test_p, intervals_overlap

__all__ = [
    "PAIR_RESAMPLES", "Evidence", "paired_evidence", "separable", "headline", "sort_key", "row_distribution",
    "assemble_rows", "no_paired_bootstrap_reason",
]


def sort_key(row: Row) -> tuple:
    return (-row.ranking_value, row.kind != "computed", row.backbone, row.channels, row.notes)


#: Resamples of each pairwise comparison on the board (entries' own intervals use 2,000).
PAIR_RESAMPLES = 1000


def no_paired_bootstrap_reason(metric: str) -> str:
    """'' when rows ranked by ``metric`` can be compared by the paired bootstrap on their kept
    predictions, else why not: the bootstrap recomputes the score from the predictions' per-class
    counts, and another metric's difference must not stand in for the one the table ranks by."""
    from ocbench.stats import METRICS_FROM_COUNTS

    if metric in METRICS_FROM_COUNTS:
        return ""
    return f"no paired bootstrap ({metric_label(metric)} cannot be recomputed from per-item predictions)"


def row_distribution(row: Row, cache: dict | None) -> tuple[float, Any]:
    """The row's bootstrap distribution of its main metric on its kept items (computed once per
    row and board)."""
    from ocbench.stats import bootstrap_distribution

    key = (id(row.predictions), row.main_metric)
    if cache is not None and key in cache:
        return cache[key]
    p = row.predictions
    out = bootstrap_distribution(p.y_true, p.at(row.axis_main), p.groups, n_resamples=PAIR_RESAMPLES, metric=row.main_metric)
    if cache is not None:
        cache[key] = out
    return out


@dataclass(frozen=True)
class Evidence:
    """One test of whether row ``a`` is better than row ``b``: ``better`` at the level asked, in words.
    ``difference``: the paired bootstrap's interval of the difference (None for other tests).
    ``decides``: False for a test that could not be run, said only in words (it neither separates
    nor ties the rows)."""

    better: bool
    text: str
    difference: Any = None  # ocbench.stats.Interval of a - b on the kept items
    decides: bool = True


def paired_evidence(a: Row, b: Row, *, paired: bool, alpha: float = ALPHA, cache: dict | None = None) -> list[Evidence]:
    """Every test the two rows allow: the corrected resampled t-test over paired folds, and the
    paired cluster bootstrap of the difference on the same kept items; without either (and with
    spreads to compare), non-overlapping mean ± std intervals. The bootstrap computes the rows'
    main metric; where predictions cannot give it, an Evidence that does not decide says so."""
    from ocbench.stats import paired_from_distributions

    out: list[Evidence] = []
    sa, sb = a.score, b.score
    if paired and sa and sb and sa.per_fold and sb.per_fold and len(sa.per_fold) == len(sb.per_fold) >= 2:
        p = corrected_t_test_p(sa.per_fold, sb.per_fold)
        out.append(Evidence(p < alpha, f"corrected t-test over {len(sa.per_fold)} folds p = {p:.3g}"))
    pa, pb = a.predictions, b.predictions
    same_items = paired and pa is not None and pb is not None and pa.eval_set == pb.eval_set and pa.same_items(pb)
    why_not = no_paired_bootstrap_reason(a.main_metric) if same_items else ""
    if why_not:
        out.append(Evidence(False, why_not, decides=False))
    elif same_items:
        try:
            result = paired_from_distributions(
                row_distribution(a, cache), row_distribution(b, cache), n_groups=pa.n_groups, level=1 - alpha,
                group_name=pa.group_name,
            )
        except Exception as exc:  # a malformed file must not stop the board; the row says so
            out.append(Evidence(False, f"paired bootstrap not possible ({exc})"))
        else:
            d = result.difference
            # a - b excludes 0 on a's side: above 0, or below it when lower is better
            out.append(Evidence(d.low > 0 if a.higher_is_better else d.high < 0,
                                f"paired {d.group} bootstrap of the {score_label(pa.eval_set, a.main_metric)} difference "
                                f"{d.estimate:+.3f} [{d.low:+.3f}, {d.high:+.3f}]", d))
    return out


def separable(a: Row, b: Row, *, paired: bool, alpha: float = ALPHA, cache: dict | None = None) -> tuple[bool, str]:
    """Whether ``a`` (ranked above) is better than ``b`` at the ``1 - alpha`` level, and why.

    Every test the two rows allow must agree (:func:`paired_evidence`); without either, non-overlapping
    mean ± std intervals. ``cache``: one dict per table, so each row's bootstrap distribution is
    computed once."""
    evidence = paired_evidence(a, b, paired=paired, alpha=alpha, cache=cache)
    tests = [e for e in evidence if e.decides]
    sa, sb = a.score, b.score
    if not tests and paired and sa and sb and min(sa.n, sb.n) < 2:  # one score each (leave-one-out k-NN)
        why = "; ".join(e.text for e in evidence) or "single scores without per-item predictions to compare"
        return False, f"{why}: not separated"
    if not tests and sa and sb:
        overlap = intervals_overlap(sa, sb)
        spreads = Evidence(not overlap, f"mean ± std intervals {'overlap' if overlap else 'do not overlap'}")
        tests.append(spreads)
        evidence.append(spreads)
    return (bool(tests) and all(e.better for e in tests)), "; ".join(e.text for e in evidence)


def headline(table: "Table", *, alpha: float = ALPHA) -> str:
    """One sentence on what the table shows at the top: "A beats B by Δ [CI]" when the best row is
    better than the runner-up at the table's level, else that the top is not separated. Computed rows
    only, from the same paired tests that decide the ranks."""
    rows = [r for r in table.computed_rows if r.score is not None]
    if len(rows) < 2:
        return ""
    rows.sort(key=sort_key)
    top, runner = rows[0], rows[1]
    same_split = table.group is not None
    beaten, _ = separable(top, runner, paired=same_split, alpha=alpha)
    evidence = paired_evidence(top, runner, paired=same_split, alpha=alpha)
    difference = next((e.difference for e in evidence if e.difference is not None), None)
    level = f"{1 - alpha:.0%}"
    delta = f"{top.score.mean - runner.score.mean:+.3f} {table.score_label}"
    if difference is not None:
        delta = (f"{difference.estimate:+.3f} {score_label(top.predictions.eval_set, top.main_metric)} "
                 f"[{difference.low:+.3f}, {difference.high:+.3f}] ({level} CI, paired {difference.group} bootstrap)")
    tests = [e.text for e in evidence if e.difference is None]
    also = f"; {'; '.join(tests)}" if tests else ""
    if beaten:
        return f"{top.label} beats the runner-up {runner.label} by {delta}{also}."
    n_top = sum(1 for r in table.computed_rows if r.rank == top.rank)
    return (f"No separation at the top: {top.label} and {runner.label} differ by {delta}{also}, not enough at the "
            f"{level} level; {n_top} rows share rank {top.rank}.")


def _ranked(rows: Iterable[Row], *, paired: bool, alpha: float) -> list[Row]:
    ordered = sorted(rows, key=sort_key)
    cache: dict = {}
    decisions = assign_tie_groups(
        [r.score for r in ordered],  # type: ignore[misc]
        lambda i, j: separable(
            ordered[i], ordered[j], paired=paired and ordered[i].kind == ordered[j].kind == "computed", alpha=alpha, cache=cache,
        ),
    )
    return [replace(r, rank=d.rank, tied_with_above=d.tied_with_above, rank_reason=d.reason) for r, d in zip(ordered, decisions)]


def assemble_rows(rows_computed: list[Row], rows_reported: list[Row], *, paired: bool, rank_reported: bool, alpha: float) -> tuple[list[Row], bool]:
    """Rows in display order with ranks; returns (rows, reported rows were ranked)."""
    rankable_reported = [r for r in rows_reported if r.score is not None]
    if rank_reported and rankable_reported:
        ranked = _ranked([*rows_computed, *rankable_reported], paired=paired, alpha=alpha)
        rest = [r for r in rows_reported if r.score is None]
        return ranked + rest, True
    ranked = _ranked(rows_computed, paired=paired, alpha=alpha) if rows_computed else []
    return ranked + sorted(rows_reported, key=sort_key), False

