"""Ranks with honest ties.

Rows are sorted by their mean score, best first. A row's rank is 1 + the number of rows above it
that are *better at the 95% level* (so rank 1 means no row is surely better; rows sharing a rank
form a tie group; ranks never go down the list). Whether a better row ``a`` separates from ``b``
(:func:`assign_tie_groups` takes the pairwise decision from the caller, see ``tables.py``):

- cross-validation folds on the same split pair up: the corrected resampled t-test (Nadeau &
  Bengio) over the folds, p < alpha (0.05). The plain paired t-test over folds (kept as
  :func:`paired_t_test_p`) is over-confident: fold models share most of their training data;
- per-item predictions kept on the same items: the paired cluster bootstrap (resampling
  proteins) of the difference must exclude 0;
- neither (different splits, reported numbers without folds): mean ± std intervals do not overlap.

:func:`assign_ranks` is the older rule (row above only), kept for callers that have no pairwise
evidence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

from ocbench.stats import student_t_two_sided_p

__all__ = [
    "ALPHA", "Score", "RankDecision", "paired_t_test_p", "corrected_t_test_p", "student_t_two_sided_p",
    "intervals_overlap", "assign_ranks", "assign_tie_groups", "rank_rule_text",
]

ALPHA = 0.05


@dataclass(frozen=True)
class Score:
    """A mean +- std over ``n`` folds; ``per_fold`` when the individual fold scores are known."""

    mean: float
    std: float | None
    n: int
    per_fold: tuple[float, ...] | None = None

    @classmethod
    def of(cls, summary) -> "Score":
        """From an entry's metric summary (``values``, ``mean``, ``std``, ``n``)."""
        return cls(summary.mean, summary.std, summary.n, tuple(summary.values))


@dataclass(frozen=True)
class RankDecision:
    rank: int
    tied_with_above: bool
    reason: str  # why it shares (or does not share) the rank of the row above; "" for the first row


def paired_t_test_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of the paired t-test of ``a`` against ``b`` (same folds, same order).

    Identical fold scores give p = 1 (nothing separates them); a constant non-zero difference gives
    p = 0 (every fold agrees on the order).
    """
    if len(a) != len(b) or len(a) < 2:
        raise ValueError("a paired t-test needs two equally long lists of at least 2 scores")
    n = len(a)
    diffs = [x - y for x, y in zip(a, b)]
    mean = math.fsum(diffs) / n
    var = math.fsum((d - mean) ** 2 for d in diffs) / (n - 1)
    scale = max(1.0, max(abs(x) for x in [*a, *b]))
    if var <= (1e-12 * scale) ** 2:  # no spread in the differences: the t statistic is 0/0 or inf
        return 1.0 if abs(mean) <= 1e-12 * scale else 0.0
    t = mean / math.sqrt(var / n)
    return student_t_two_sided_p(t, n - 1)


def corrected_t_test_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of the corrected resampled t-test (Nadeau & Bengio) of K-fold
    cross-validation scores ``a`` against ``b`` (same folds): ``n_test / n_train = 1 / (K - 1)``."""
    from ocbench.stats import corrected_resampled_t_test

    if len(a) != len(b) or len(a) < 2:
        raise ValueError("a corrected t-test needs two equally long lists of at least 2 scores")
    return corrected_resampled_t_test(a, b, test_train_ratio=1.0 / (len(a) - 1)).p_value


def assign_tie_groups(scores: Sequence[Score], separable: Callable[[int, int], tuple[bool, str]]) -> list[RankDecision]:
    """Ranks for ``scores`` sorted best first: 1 + the number of better rows that ``separable(i, j)``
    (i above j) says are better at the 95% level; never lower than the rank above."""
    decisions: list[RankDecision] = []
    for j in range(len(scores)):
        if j == 0:
            decisions.append(RankDecision(1, False, ""))
            continue
        verdicts = [separable(i, j) for i in range(j)]
        better = sum(1 for ok, _ in verdicts if ok)
        rank = max(decisions[-1].rank, 1 + better)
        above_ok, above_reason = verdicts[-1]
        reason = (
            f"{better} better row{'s' if better != 1 else ''} at the 95% level; vs the row above: {above_reason} "
            f"({'separable' if above_ok else 'not separable'})"
        )
        decisions.append(RankDecision(rank, rank == decisions[-1].rank, reason))
    return decisions


def intervals_overlap(a: Score, b: Score) -> bool:
    """Whether [mean - std, mean + std] of ``a`` and ``b`` overlap (a missing std counts as 0)."""
    return abs(a.mean - b.mean) <= (a.std or 0.0) + (b.std or 0.0)


def _pairs(a: Score, b: Score) -> bool:
    return a.per_fold is not None and b.per_fold is not None and len(a.per_fold) == len(b.per_fold) >= 2


def assign_ranks(scores: Sequence[Score], *, paired: bool, alpha: float = ALPHA) -> list[RankDecision]:
    """Ranks for ``scores`` already sorted best first.

    ``paired``: the rows share one split (same split sha256), so equal-length fold lists pair up.
    """
    decisions: list[RankDecision] = []
    for i, score in enumerate(scores):
        if i == 0:
            decisions.append(RankDecision(1, False, ""))
            continue
        above = scores[i - 1]
        if paired and _pairs(above, score):
            p = paired_t_test_p(above.per_fold, score.per_fold)  # type: ignore[arg-type]
            tied = p >= alpha
            reason = f"paired t-test vs row above: p = {p:.3g} ({'>=' if tied else '<'} {alpha:g})"
        else:
            tied = intervals_overlap(above, score)
            reason = f"mean ± std intervals {'overlap' if tied else 'do not overlap'} with the row above"
        rank = decisions[-1].rank if tied else i + 1
        decisions.append(RankDecision(rank, tied, reason))
    return decisions


def rank_rule_text(
    *,
    paired: bool,
    n_folds: int | None,
    alpha: float = ALPHA,
    ranked_reported: bool = False,
    has_reported: bool = True,
    label: str = "cross-validation macro-F1",
    folds: str = "validation folds",
    predictions: str | None = None,
) -> str:
    """The sentence printed under a table saying how its ranks (tie groups) were decided.

    ``label``: the ranked score (``val macro-F1``); ``folds``: what its repetitions are;
    ``predictions``: what the paired bootstrap compares (``test macro-F1, protein bootstrap``)
    when some rows kept per-item predictions."""
    level = f"{1 - alpha:.0%}"
    order = f"Rows are ranked by mean {label}; rank = 1 + the number of rows better at the {level} level (rows sharing a rank are a tie group)."
    if paired and n_folds is not None and n_folds < 2:  # one pass (leave-one-out k-NN): no folds to pair
        rule = (f" A better row counts when the paired {predictions} {level} interval of the difference excludes 0"
                "; rows without per-item predictions are not separated." if predictions
                else " Rows have no folds and no per-item predictions to compare: none is separated from another.")
    elif paired:
        n = f"{n_folds} " if n_folds else ""
        rule = (
            f" A better row counts when the corrected resampled t-test (Nadeau & Bengio) over the same {n}{folds} "
            f"gives p < {alpha:g}"
        )
        if predictions:
            rule += f" and, where both rows kept per-item predictions, the paired {predictions} {level} interval of the difference excludes 0"
        rule += "; rows without paired folds count when their mean ± std intervals do not overlap."
    else:
        rule = " A better row counts when the mean ± std intervals do not overlap."
    if not has_reported:
        reported = ""
    elif ranked_reported:
        reported = " Reported rows (the paper's numbers, its own split) are ranked by the interval rule alongside."
    else:
        reported = " Reported rows (the paper's numbers) are not ranked."
    return order + rule + reported
