"""How sure are we: intervals and paired comparisons of scores (numpy and scipy only, no torch).

The main score of every classification task is the macro-F1 over the classes present in the
evaluated set (:func:`macro_f1_from_counts`, the one definition; ``ocbench.tasks.metrics`` uses it
for the entries' ``macro_f1``, and :func:`macro_f1_all_from_counts` for their ``macro_f1_all``).
F1 is a ratio of counts, so the score of any multiset of items is a function of the summed
per-class true positive, false positive and false negative counts of those items. That makes
every bootstrap below exact and fast: counts are summed per group once, and a resample is a vector
of group multiplicities (one matrix product per resample batch). :data:`METRICS_FROM_COUNTS` names
every metric computed that way; the bootstraps take one by that name (``macro_f1`` by default).

Why groups: the items of one protein (4-6 FOVs, all cells of those FOVs) share their labels and
most of their look; they are not independent evidence. Resampling items as if they were gives
intervals that are too narrow (``tests/test_stats.py`` shows it on simulated data), so intervals
here resample whole groups (a *cluster bootstrap*): draw as many groups as there are, with
replacement, and keep every item of each drawn group.

- :func:`bootstrap_interval`: percentile interval of a score (mean over repeated models, e.g.
  the 5 fold models scored on one test set) by cluster bootstrap;
- :func:`paired_bootstrap`: the same for the difference of two systems scored on the same items
  (the same resampled groups for both, so what the items share cancels);
- :func:`corrected_resampled_t_test`: Nadeau & Bengio's (2003) t-test of paired cross-validation
  scores, whose variance is inflated by ``n_test / n_train`` because fold models share most of
  their training data (the plain paired t-test over folds rejects far too often);
- :func:`friedman_nemenyi`: average ranks of several systems over several tables, the Friedman
  test and the Nemenyi critical difference (Demšar 2006).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

__all__ = [
    "LEVEL",
    "N_RESAMPLES",
    "SEED",
    "Interval",
    "PairedResult",
    "TTestResult",
    "FriedmanResult",
    "class_counts",
    "group_counts",
    "macro_f1_from_counts",
    "macro_f1_all_from_counts",
    "METRICS_FROM_COUNTS",
    "metric_from_counts",
    "macro_f1",
    "group_codes",
    "resample_weights",
    "bootstrap_interval",
    "paired_bootstrap",
    "bootstrap_distribution",
    "paired_from_distributions",
    "corrected_resampled_t_test",
    "friedman_nemenyi",
    "plural",
    "student_t_two_sided_p",
    "student_t_quantile",
]

#: Confidence level of every interval ocbench reports.
LEVEL = 0.95
#: Resamples of an entry's interval; percentile bounds of a 95% interval settle to ~0.002 there.
N_RESAMPLES = 2000
#: Seed of the resampling (recorded with each interval, so it can be recomputed exactly).
SEED = 0


# ---------------------------------------------------------------------------------------------
# the metric, from counts
# ---------------------------------------------------------------------------------------------
def _binary(name: str, y: Any) -> np.ndarray:
    arr = np.asarray(y)
    if arr.dtype != bool and not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{name}: expected only 0/1 values")
    return arr.astype(bool)


def class_counts(y_true: Any, y_pred: Any) -> np.ndarray:
    """Per-class ``(tp, fp, fn)`` of binary predictions: shape ``(..., 3, C)`` for ``y_pred`` of
    shape ``(..., N, C)`` against ``y_true`` (N, C)."""
    t = _binary("y_true", y_true)
    p = _binary("y_pred", y_pred)
    if p.shape[-2:] != t.shape:
        raise ValueError(f"y_pred: shape {p.shape} does not end in y_true's {t.shape}")
    tp = (p & t).sum(-2)
    fp = (p & ~t).sum(-2)
    fn = (~p & t).sum(-2)
    return np.stack([tp, fp, fn], axis=-2).astype(np.int64)


def group_counts(y_true: Any, y_pred: Any, codes: np.ndarray, n_groups: int) -> np.ndarray:
    """Counts per group: ``(..., G, 3, C)`` for ``y_pred`` (..., N, C); ``codes`` (N,) in [0, G)."""
    t = _binary("y_true", y_true)
    p = _binary("y_pred", y_pred)
    per_item = np.concatenate([p & t, p & ~t, ~p & t], axis=-1).astype(np.float64)  # (..., N, 3C)
    onehot = np.zeros((n_groups, codes.size))
    onehot[codes, np.arange(codes.size)] = 1.0
    summed = np.matmul(onehot, per_item)  # (..., G, 3C): a matrix product, fast for any N
    return np.rint(summed).astype(np.int64).reshape(*summed.shape[:-1], 3, t.shape[-1])


def _class_f1(counts: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(F1 per class, whether the class has a positive item)`` from ``(..., 3, C)`` counts.

    A class's F1 is ``2 tp / (2 tp + fp + fn)``, 0 where that is 0/0 (scikit-learn's, ``zero_division=0``)."""
    c = np.asarray(counts, dtype=np.float64)
    tp, fp, fn = c[..., 0, :], c[..., 1, :], c[..., 2, :]
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return f1, (tp + fn) > 0


def macro_f1_from_counts(counts: Any) -> np.ndarray:
    """Macro-F1 over the classes with at least one positive item, from ``(..., 3, C)`` counts.

    Classes with no positive item (``tp + fn == 0``) are left out of the mean, as the Dino4Cells
    evaluation does. NaN where no class has a positive item (nothing can be scored)."""
    f1, present = _class_f1(counts)
    n_present = present.sum(-1)
    total = np.where(present, f1, 0.0).sum(-1)
    return np.divide(total, n_present, out=np.full(total.shape, np.nan), where=n_present > 0)


def macro_f1_all_from_counts(counts: Any) -> np.ndarray:
    """Macro-F1 over every class, from ``(..., 3, C)`` counts: a class with no positive item scores
    0 (scikit-learn's ``average="macro"`` with ``zero_division=0``; the entries' ``macro_f1_all``)."""
    f1, _ = _class_f1(counts)
    return f1.mean(-1)


#: Every metric that is a function of summed per-class ``(tp, fp, fn)`` counts, by its name in
#: entries' scores: what the bootstraps (and the board's paired comparisons) can compute.
METRICS_FROM_COUNTS: dict[str, Callable[[Any], np.ndarray]] = {
    "macro_f1": macro_f1_from_counts,
    "macro_f1_all": macro_f1_all_from_counts,
}


def metric_from_counts(metric: str) -> Callable[[Any], np.ndarray]:
    """The function of ``(..., 3, C)`` counts that computes ``metric``; ValueError for a metric that
    per-class counts do not determine."""
    try:
        return METRICS_FROM_COUNTS[metric]
    except KeyError:
        known = ", ".join(METRICS_FROM_COUNTS)
        raise ValueError(f"metric {metric!r} cannot be computed from per-class counts (only {known})") from None


def macro_f1(y_true: Any, y_pred: Any) -> float:
    """Macro-F1 over present classes of one set of binary predictions (N, C)."""
    return float(macro_f1_from_counts(class_counts(y_true, y_pred)))


# ---------------------------------------------------------------------------------------------
# cluster bootstrap
# ---------------------------------------------------------------------------------------------
def group_codes(groups: Sequence[Any]) -> tuple[np.ndarray, int]:
    """``(codes (N,), number of groups)`` of group labels (any hashable values)."""
    _, codes = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    return codes.astype(np.int64), int(codes.max()) + 1 if codes.size else 0


def resample_weights(n_groups: int, n_resamples: int, seed: int = SEED) -> np.ndarray:
    """How often each group is drawn in each resample: ``(n_resamples, n_groups)``, rows summing
    to ``n_groups`` (draw ``n_groups`` groups with replacement)."""
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, n_groups, size=(n_resamples, n_groups))
    flat = (np.arange(n_resamples)[:, None] * n_groups + drawn).ravel()
    return np.bincount(flat, minlength=n_resamples * n_groups).reshape(n_resamples, n_groups).astype(np.float64)


def plural(name: str, n: int) -> str:
    return name if n == 1 else (name + "es" if name.endswith(("s", "x")) else name + "s")


@dataclass(frozen=True)
class Interval:
    """A score with its percentile bootstrap interval, and what the interval is."""

    estimate: float
    low: float
    high: float
    level: float = LEVEL
    method: str = "cluster bootstrap"
    group: str = "protein"  # what one resampled unit is
    n_groups: int = 0
    n_resamples: int = N_RESAMPLES
    seed: int = SEED

    def describe(self, digits: int = 3) -> str:
        """``0.822 [0.801, 0.843] 95% CI, protein bootstrap, 131 proteins``."""
        return (
            f"{self.estimate:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}] "
            f"{self.level:.0%} CI, {self.group} bootstrap, {self.n_groups} {plural(self.group, self.n_groups)}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "estimate": self.estimate, "low": self.low, "high": self.high, "level": self.level, "method": self.method,
            "group": self.group, "n_groups": self.n_groups, "n_resamples": self.n_resamples, "seed": self.seed,
        }


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return math.nan, math.nan
    a = (1.0 - level) / 2.0
    low, high = np.quantile(finite, [a, 1.0 - a])
    return float(low), float(high)


def _as_repeats(y_pred: Any, n_classes: int) -> np.ndarray:
    p = np.asarray(y_pred)
    if p.ndim == 2:
        p = p[None]
    if p.ndim != 3 or p.shape[-1] != n_classes:
        raise ValueError(f"y_pred: expected (N, C) or (repeats, N, C) with C = {n_classes}, got {p.shape}")
    return p


def _resampled_scores(counts: np.ndarray, weights: np.ndarray, score: Callable[[Any], np.ndarray]) -> np.ndarray:
    """Mean over repeats of ``score`` per resample: counts (R, G, 3, C), weights (B, G) -> (B,)."""
    r, g, k, c = counts.shape
    summed = np.matmul(weights, counts.reshape(r, g, k * c).astype(np.float64))  # (R, B, 3C)
    return score(summed.reshape(r, -1, k, c)).mean(axis=0)


def _group_counts_and_estimate(y_true: Any, y_pred: Any, groups: Sequence[Any], score: Callable[[Any], np.ndarray]):
    """``(score on all items (mean over repeats), counts per group (R, G, 3, C), number of groups)``:
    what every bootstrap below resamples."""
    t = np.asarray(y_true)
    p = _as_repeats(y_pred, t.shape[1])
    codes, n_groups = group_codes(groups)
    if codes.size != t.shape[0]:
        raise ValueError(f"groups: {codes.size} labels for {t.shape[0]} items")
    counts = group_counts(t, p, codes, n_groups)
    return float(score(counts.sum(1)).mean()), counts, n_groups


def bootstrap_interval(
    y_true: Any,
    y_pred: Any,
    groups: Sequence[Any],
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
    group_name: str = "protein",
    weights: np.ndarray | None = None,
    metric: str = "macro_f1",
) -> Interval:
    """Percentile interval of the score (``metric``, one of :data:`METRICS_FROM_COUNTS`; mean over
    the repeats of ``y_pred``) by resampling whole groups. ``y_pred``: (N, C) or (repeats, N, C),
    e.g. each fold model's predictions on the same test items. Pass ``groups = range(N)`` for the
    (naive) item bootstrap."""
    score = metric_from_counts(metric)
    estimate, counts, n_groups = _group_counts_and_estimate(y_true, y_pred, groups, score)
    w = resample_weights(n_groups, n_resamples, seed) if weights is None else weights
    low, high = _percentiles(_resampled_scores(counts, w, score), level)
    return Interval(estimate, low, high, level, "cluster bootstrap", group_name, n_groups, int(w.shape[0]), seed)


@dataclass(frozen=True)
class PairedResult:
    """``a - b`` on the same items, with its paired cluster-bootstrap interval."""

    difference: Interval
    #: share of resamples where the sign of the difference is not that of the estimate (x2: a
    #: two-sided bootstrap p-value)
    p_value: float

    @property
    def separable(self) -> bool:
        """Whether the interval excludes 0 (the two are separable at its level)."""
        d = self.difference
        return bool(d.low > 0 or d.high < 0)


def bootstrap_distribution(
    y_true: Any,
    y_pred: Any,
    groups: Sequence[Any],
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    metric: str = "macro_f1",
) -> tuple[float, np.ndarray]:
    """``(score, score in each resample)`` of ``metric`` with groups resampled as in
    :func:`bootstrap_interval`.

    Two systems scored on the same items (same groups) get the same resamples for the same
    ``n_resamples`` and ``seed``, so the difference of their distributions is the paired bootstrap
    (:func:`paired_from_distributions`); a board computes one distribution per row, not per pair."""
    score = metric_from_counts(metric)
    estimate, counts, n_groups = _group_counts_and_estimate(y_true, y_pred, groups, score)
    return estimate, _resampled_scores(counts, resample_weights(n_groups, n_resamples, seed), score)


def paired_from_distributions(
    a: tuple[float, np.ndarray],
    b: tuple[float, np.ndarray],
    *,
    n_groups: int,
    level: float = LEVEL,
    group_name: str = "protein",
    seed: int = SEED,
) -> PairedResult:
    """The paired bootstrap of ``a - b`` from two :func:`bootstrap_distribution` results computed
    on the same items with the same resamples."""
    (est_a, dist_a), (est_b, dist_b) = a, b
    if dist_a.shape != dist_b.shape:
        raise ValueError("the two distributions come from different numbers of resamples")
    estimate = est_a - est_b
    diffs = dist_a - dist_b
    low, high = _percentiles(diffs, level)
    finite = diffs[np.isfinite(diffs)]
    if estimate == 0 or finite.size == 0:
        p = 1.0
    else:
        p = min(1.0, 2.0 * float(np.mean(np.sign(finite) != np.sign(estimate))))
    interval = Interval(estimate, low, high, level, "paired cluster bootstrap", group_name, n_groups, int(diffs.size), seed)
    return PairedResult(interval, p)


def paired_bootstrap(
    y_true: Any,
    pred_a: Any,
    pred_b: Any,
    groups: Sequence[Any],
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
    group_name: str = "protein",
    metric: str = "macro_f1",
) -> PairedResult:
    """Difference of ``metric`` scores ``a - b`` of two systems on the same items, with a percentile
    interval from resampling groups (the same resampled groups for both systems)."""
    t = np.asarray(y_true)
    pa, pb = _as_repeats(pred_a, t.shape[1]), _as_repeats(pred_b, t.shape[1])
    if pa.shape[1:] != pb.shape[1:]:
        raise ValueError(f"pred_a and pred_b cover different items: {pa.shape} vs {pb.shape}")
    _, n_groups = group_codes(groups)
    a = bootstrap_distribution(t, pa, groups, n_resamples=n_resamples, seed=seed, metric=metric)
    b = bootstrap_distribution(t, pb, groups, n_resamples=n_resamples, seed=seed, metric=metric)
    return paired_from_distributions(a, b, n_groups=n_groups, level=level, group_name=group_name, seed=seed)


# ---------------------------------------------------------------------------------------------
# cross-validation folds
# ---------------------------------------------------------------------------------------------
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

    Own implementation (no scipy): the board ranks with it, and scipy's array-API dispatch looks at
    whatever ``torch`` module is loaded, which a board build must not depend on.
    """
    if math.isinf(t):
        return 0.0
    return _regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))


def student_t_quantile(q: float, df: int) -> float:
    """The ``q`` quantile (q > 0.5) of Student's t with ``df`` degrees of freedom (bisection)."""
    target = 2.0 * (1.0 - q)  # two-sided tail mass at the quantile
    lo, hi = 0.0, 1.0
    while student_t_two_sided_p(hi, df) > target:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if student_t_two_sided_p(mid, df) > target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


@dataclass(frozen=True)
class TTestResult:
    mean_difference: float
    t: float
    df: int
    p_value: float
    low: float  # corrected confidence interval of the mean difference
    high: float
    level: float
    test_train_ratio: float

    @property
    def separable(self) -> bool:
        return self.p_value < 1.0 - self.level


def corrected_resampled_t_test(
    a: Sequence[float], b: Sequence[float], *, test_train_ratio: float, level: float = LEVEL
) -> TTestResult:
    """Nadeau & Bengio's corrected resampled t-test of paired scores ``a - b`` over ``J`` folds.

    The variance of the mean difference is ``(1/J + n_test/n_train) * s^2`` instead of ``s^2 / J``:
    fold models share most training items, so their scores are positively correlated and the plain
    paired t-test is over-confident. For K-fold cross-validation ``n_test/n_train = 1/(K-1)``.
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or x.size < 2:
        raise ValueError("a corrected t-test needs two equally long lists of at least 2 fold scores")
    if not test_train_ratio > 0:
        raise ValueError(f"test_train_ratio must be > 0, got {test_train_ratio}")
    d = x - y
    j = d.size
    mean = float(d.mean())
    var = float(d.var(ddof=1))
    se = math.sqrt((1.0 / j + test_train_ratio) * var)
    scale = max(1.0, float(np.abs(np.concatenate([x, y])).max()))
    if se <= 1e-12 * scale:  # no spread: every fold agrees exactly
        t = 0.0 if abs(mean) <= 1e-12 * scale else math.copysign(math.inf, mean)
        p = 1.0 if t == 0.0 else 0.0
        return TTestResult(mean, t, j - 1, p, mean, mean, level, test_train_ratio)
    t = mean / se
    p = student_t_two_sided_p(t, j - 1)
    q = student_t_quantile(0.5 + level / 2.0, j - 1)
    return TTestResult(mean, t, j - 1, p, mean - q * se, mean + q * se, level, test_train_ratio)


# ---------------------------------------------------------------------------------------------
# across tables
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FriedmanResult:
    names: tuple[str, ...]
    average_ranks: tuple[float, ...]  # 1 = best
    n_tables: int
    statistic: float
    p_value: float
    critical_difference: float  # Nemenyi, at ``level``
    level: float = LEVEL
    cliques: tuple[tuple[int, ...], ...] = field(default=())  # maximal runs not separable by the CD


def friedman_nemenyi(scores: Any, names: Sequence[str], *, level: float = LEVEL) -> FriedmanResult:
    """Average ranks of ``k`` systems over ``N`` tables (``scores`` (N, k), higher is better), the
    Friedman test of "all systems rank alike" and the Nemenyi critical difference of average ranks
    ``q * sqrt(k (k + 1) / (6 N))``, ``q`` the studentized range quantile over sqrt(2)."""
    from scipy import stats as st

    s = np.asarray(scores, dtype=float)
    if s.ndim != 2 or s.shape[1] != len(names) or s.shape[1] < 2 or s.shape[0] < 2:
        raise ValueError("friedman_nemenyi needs scores of shape (tables >= 2, systems >= 2) matching names")
    n, k = s.shape
    ranks = np.vstack([st.rankdata(-row) for row in s])  # ties share their mean rank
    avg = ranks.mean(axis=0)
    if k >= 3:
        statistic, p = st.friedmanchisquare(*s.T)
        statistic, p = float(statistic), float(p)
    else:  # two systems (scipy wants three): the chi-square form, corrected for tied tables
        statistic = 12 * n / (k * (k + 1)) * float(np.sum((avg - (k + 1) / 2) ** 2))
        ties = sum(float(t**3 - t) for row in ranks for t in np.unique(row, return_counts=True)[1])
        untied = 1.0 - ties / (n * (k**3 - k))
        statistic = statistic / untied if untied > 0 else math.nan
        p = float(st.chi2.sf(statistic, k - 1)) if untied > 0 else math.nan
    if math.isnan(statistic):  # every table ranks every system alike (all tied)
        statistic, p = 0.0, 1.0
    q = float(st.studentized_range.ppf(level, k, np.inf)) / math.sqrt(2.0)
    cd = q * math.sqrt(k * (k + 1) / (6.0 * n))
    order = np.argsort(avg, kind="stable")
    cliques: list[tuple[int, ...]] = []
    for i in range(k):
        members = tuple(int(order[j]) for j in range(i, k) if avg[order[j]] - avg[order[i]] <= cd + 1e-12)
        if len(members) > 1 and not any(set(members) <= set(c) for c in cliques):
            cliques.append(members)
    return FriedmanResult(tuple(names), tuple(float(v) for v in avg), n, statistic, p, cd, level, tuple(cliques))
