"""Ranks with honest ties.

Rows are sorted by their mean score, best first. Going down the list, a row shares the rank of the
row above when the data cannot separate the two:

- when both rows carry fold scores on the same split (the folds pair up), by a two-sided paired
  t-test over the folds: p >= alpha (0.05) means "cannot separate";
- otherwise (different splits, reported numbers without folds) when their mean ± std intervals
  overlap.

Ranks follow the competition convention: after two rows sharing rank 1 comes rank 3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

__all__ = ["ALPHA", "Score", "RankDecision", "paired_t_test_p", "student_t_two_sided_p", "intervals_overlap", "assign_ranks", "rank_rule_text"]

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


def _continued_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz method)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for numerator in (
            m * (b - m) * x / ((a - 1.0 + 2 * m) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 1.0 + 2 * m)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def _regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _continued_fraction(a, b, x) / a
    return 1.0 - front * _continued_fraction(b, a, 1.0 - x) / b


def student_t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom.

    Own implementation (no scipy) so ranking works wherever the board builds.
    """
    if math.isinf(t):
        return 0.0
    return _regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))


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
) -> str:
    """The sentence printed under a table saying how its ranks were decided.

    ``label``: the ranked score (``val macro-F1``); ``folds``: what its repetitions are."""
    order = f"Rows are ranked by mean {label}."
    if paired:
        n = f"{n_folds} " if n_folds else ""
        rule = (
            f" A row shares the rank of the row above when a two-sided paired t-test over the same {n}"
            f"{folds} (same split) cannot separate them (p >= {alpha:g})"
        )
        rule += "; rows without paired folds share a rank when their mean ± std intervals overlap."
    else:
        rule = " A row shares the rank of the row above when their mean ± std intervals overlap."
    if not has_reported:
        reported = ""
    elif ranked_reported:
        reported = " Reported rows (the paper's numbers, its own split) are ranked by the interval rule alongside."
    else:
        reported = " Reported rows (the paper's numbers) are not ranked."
    return order + rule + reported
