"""Intervals and paired comparisons (ocbench.stats) on simulated problems with a known truth."""

import math

import numpy as np
import pytest

from ocbench import stats
from ocbench.tasks.metrics import multilabel_scores

PREVALENCE = np.array([0.35, 0.25, 0.2, 0.15, 0.1, 0.3])
HARD_SHARE, HARD_ERROR, EASY_ERROR = 0.25, 0.7, 0.05


def _draw(rng, n_proteins, fovs=4, hard_share=HARD_SHARE, hard=None):
    """A test set with protein-level correlation: labels are per protein, and whether a protein is
    hard to recognise (per class) is shared by all its FOVs, as with real proteins."""
    y_protein = rng.random((n_proteins, PREVALENCE.size)) < PREVALENCE
    if hard is None:
        hard = rng.random(y_protein.shape) < hard_share
    error = np.repeat(np.where(hard, HARD_ERROR, EASY_ERROR), fovs, axis=0)
    y = np.repeat(y_protein, fovs, axis=0)
    pred = np.where(rng.random(y.shape) < error, ~y, y)
    return y, pred, np.repeat(np.arange(n_proteins), fovs), hard


def _true_score(hard_share=HARD_SHARE):
    """The population macro-F1 of the simulation (every class present), from expected counts."""
    e = hard_share * HARD_ERROR + (1 - hard_share) * EASY_ERROR
    tp, fn, fp = PREVALENCE * (1 - e), PREVALENCE * e, (1 - PREVALENCE) * e
    return float(np.mean(2 * tp / (2 * tp + fp + fn)))


def test_macro_f1_from_counts_is_the_entries_metric():
    rng = np.random.default_rng(3)
    y = rng.random((40, 7)) < 0.2
    y[:, 6] = False  # a class absent from the evaluated set is left out of the mean
    p = rng.random((40, 7)) < 0.3
    assert stats.macro_f1(y, p) == pytest.approx(multilabel_scores(y, p)["macro_f1"], abs=1e-12)
    assert math.isnan(stats.macro_f1(np.zeros((3, 2)), np.ones((3, 2))))  # nothing to score


def test_cluster_bootstrap_covers_the_truth_and_the_item_bootstrap_does_not():
    truth = _true_score()
    rng = np.random.default_rng(1)
    n_sets, covered_cluster, covered_item = 200, 0, 0
    for i in range(n_sets):
        y, p, groups, _ = _draw(rng, 100)
        cluster = stats.bootstrap_interval(y, p, groups, n_resamples=400, seed=i)
        item = stats.bootstrap_interval(y, p, np.arange(len(groups)), n_resamples=400, seed=i, group_name="FOV")
        covered_cluster += cluster.low <= truth <= cluster.high
        covered_item += item.low <= truth <= item.high
        assert cluster.n_groups == 100 and item.n_groups == 400 and cluster.n_resamples == 400
    assert 0.90 <= covered_cluster / n_sets <= 0.98
    # FOVs of one protein are not independent: resampling them one by one gives too narrow intervals
    assert covered_item / n_sets < 0.85
    assert covered_item < covered_cluster - 20


def test_interval_says_what_it_is_and_is_reproducible():
    rng = np.random.default_rng(0)
    y, p, groups, _ = _draw(rng, 131)
    a = stats.bootstrap_interval(y, p, groups, n_resamples=300, seed=7)
    b = stats.bootstrap_interval(y, p, groups, n_resamples=300, seed=7)
    assert a == b
    assert a.low < a.estimate < a.high
    assert a.estimate == pytest.approx(stats.macro_f1(y, p))
    text = a.describe()
    assert text.startswith(f"{a.estimate:.3f} [{a.low:.3f}, {a.high:.3f}] 95% CI, protein bootstrap, 131 proteins")


def test_repeated_models_score_the_mean_over_repeats():
    rng = np.random.default_rng(2)
    y, p1, groups, hard = _draw(rng, 50)
    _, p2, _, _ = _draw(np.random.default_rng(9), 50, hard=hard)
    p2 = np.where(rng.random(y.shape) < 0.1, ~y, y)
    both = np.stack([p1, p2])
    interval = stats.bootstrap_interval(y, both, groups, n_resamples=200)
    assert interval.estimate == pytest.approx((stats.macro_f1(y, p1) + stats.macro_f1(y, p2)) / 2)


def test_paired_bootstrap_detects_a_real_difference():
    rng = np.random.default_rng(5)
    y, better, groups, hard = _draw(rng, 150)
    # the worse system errs where the better one does, plus on more items: ~0.05 lower macro-F1
    extra = rng.random(y.shape) < 0.07
    worse = np.where(extra, ~better, better)
    result = stats.paired_bootstrap(y, better, worse, groups, n_resamples=1000)
    assert 0.04 < result.difference.estimate < 0.065
    assert result.separable and result.difference.low > 0
    assert result.p_value < 0.05
    assert result.difference.method == "paired cluster bootstrap"


def test_paired_bootstrap_does_not_separate_runs_that_differ_only_in_seed():
    rng = np.random.default_rng(6)
    y, _, groups, hard = _draw(rng, 150)
    error = np.repeat(np.where(hard, HARD_ERROR, EASY_ERROR), 4, axis=0)
    # same backbone, same proteins hard or easy; only the probe's own randomness (seed) differs
    seed_a = np.where(np.random.default_rng(1).random(y.shape) < error, ~y, y)
    seed_b = np.where(np.random.default_rng(2).random(y.shape) < error, ~y, y)
    result = stats.paired_bootstrap(y, seed_a, seed_b, groups, n_resamples=1000)
    assert not result.separable
    assert result.difference.low < 0 < result.difference.high


def test_corrected_t_test_is_wider_than_the_plain_paired_t_test():
    from scipy import stats as st

    a = [0.81, 0.80, 0.83, 0.82, 0.80]
    b = [0.798, 0.798, 0.815, 0.81, 0.794]
    plain = st.ttest_rel(a, b).pvalue
    corrected = stats.corrected_resampled_t_test(a, b, test_train_ratio=1 / 4)
    d = np.subtract(a, b)
    expected_t = d.mean() / math.sqrt((1 / 5 + 1 / 4) * d.var(ddof=1))
    assert corrected.t == pytest.approx(expected_t)
    assert plain < 0.05 <= corrected.p_value  # plain test "separates"; the corrected one does not
    assert corrected.low < 0 < corrected.high
    same = stats.corrected_resampled_t_test(a, a, test_train_ratio=0.25)
    assert same.p_value == 1.0 and not same.separable


def test_friedman_nemenyi_ranks_and_critical_difference():
    # 3 systems over 6 tables: A always best, B and C swap
    scores = np.array([[0.9, 0.8, 0.7], [0.9, 0.7, 0.8], [0.85, 0.8, 0.75], [0.9, 0.7, 0.8], [0.95, 0.8, 0.7], [0.9, 0.7, 0.8]])
    result = stats.friedman_nemenyi(scores, ["A", "B", "C"])
    assert result.average_ranks == pytest.approx((1.0, 2.5, 2.5))
    # Demšar (2006), table 5: q_0.05 for k = 3 is 2.343
    assert result.critical_difference == pytest.approx(2.343 * math.sqrt(3 * 4 / (6 * 6)), abs=2e-3)
    assert result.p_value < 0.05
    assert (1, 2) in result.cliques and not any(0 in c for c in result.cliques)


def test_friedman_with_two_systems_corrects_for_tied_tables():
    from scipy import stats as st

    # A wins four tables, two are ties; the statistic counts only the untied tables' evidence
    scores = np.array([[0.9, 0.8], [0.7, 0.6], [0.8, 0.8], [0.95, 0.9], [0.6, 0.6], [0.85, 0.8]])
    n, k = scores.shape
    ranks = np.vstack([st.rankdata(-row) for row in scores])
    rank_sums = ranks.sum(axis=0)
    plain = 12.0 / (n * k * (k + 1)) * float(np.sum(rank_sums**2)) - 3.0 * n * (k + 1)
    ties = sum(t**3 - t for row in ranks for t in np.unique(row, return_counts=True)[1])
    corrected = plain / (1.0 - ties / (n * (k**3 - k)))
    result = stats.friedman_nemenyi(scores, ["A", "B"])
    assert result.statistic == pytest.approx(corrected)
    assert result.p_value == pytest.approx(float(st.chi2.sf(corrected, k - 1)))
    assert result.p_value < 0.05 < float(st.chi2.sf(plain, k - 1))  # the correction matters here
    all_tied = stats.friedman_nemenyi(np.full((3, 2), 0.5), ["A", "B"])
    assert all_tied.statistic == 0.0 and all_tied.p_value == 1.0


@pytest.mark.parametrize("wins_losses_ties", [(4, 0, 2), (5, 2, 3), (3, 3, 4), (7, 1, 0)])
def test_friedman_with_two_systems_is_the_sign_test_chi_square(wins_losses_ties):
    """For k = 2 the tie-corrected Friedman chi-square equals the sign test's (W - L)^2 / (W + L),
    W and L the tables A wins and loses (tied tables drop out): an independent form of the same value."""
    from scipy import stats as st

    wins, losses, ties = wins_losses_ties
    scores = np.array([[0.9, 0.8]] * wins + [[0.6, 0.7]] * losses + [[0.5, 0.5]] * ties)
    result = stats.friedman_nemenyi(scores, ["A", "B"])
    sign = (wins - losses) ** 2 / (wins + losses)
    assert result.statistic == pytest.approx(sign)
    assert result.p_value == pytest.approx(float(st.chi2.sf(sign, 1)))
