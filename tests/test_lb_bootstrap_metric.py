"""The paired bootstrap measures the metric a table ranks by (macro_f1 or macro_f1_all), and says
so; a main metric that per-item predictions cannot give gets no bootstrap, with the reason."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import f1_score

from ocbench import stats
from ocbench.leaderboard.collect import collect_entries
from ocbench.leaderboard.compare import compare_entries
from ocbench.leaderboard.separation import paired_evidence
from ocbench.leaderboard.tables import build_tables
from ocbench.summaries import summarize
from ocbench.tasks.metrics import multilabel_scores

from board_examples import recompute_aggregates, write_example_with_predictions

N_PROTEINS, FOVS, C = 40, 3, 4
ABSENT = C - 1  # a class with no positive item among the evaluated items


def _problem():
    """Labels with class ``ABSENT`` never positive, and two systems' 3 fold models each: A makes
    fewer errors than B, and both also predict the absent class now and then."""
    rng = np.random.default_rng(0)
    y = np.repeat(rng.random((N_PROTEINS, C)) < 0.4, FOVS, axis=0).astype(np.uint8)
    y[:, ABSENT] = 0
    groups = np.repeat([f"ENSG{i:05d}" for i in range(N_PROTEINS)], FOVS)

    def folds(error):
        return np.stack([np.where(rng.random(y.shape) < error, 1 - y, y) for _ in range(3)]).astype(np.uint8)

    return y, folds(0.05), folds(0.25), groups


def _direct(metric, y, folds):
    """``metric`` straight from scikit-learn on all items, mean over the fold models."""
    present = y.sum(0) > 0
    if metric == "macro_f1":
        return float(np.mean([f1_score(y[:, present], p[:, present], average="macro", zero_division=0) for p in folds]))
    return float(np.mean([f1_score(y, p, average="macro", zero_division=0) for p in folds]))


def test_the_problem_tells_the_two_metrics_apart():
    y, a, b, _ = _problem()
    assert not y[:, ABSENT].any() and a[:, :, ABSENT].any() and b[:, :, ABSENT].any()
    gaps = {m: _direct(m, y, a) - _direct(m, y, b) for m in ("macro_f1", "macro_f1_all")}
    assert gaps["macro_f1"] > 0.05 and abs(gaps["macro_f1"] - gaps["macro_f1_all"]) > 0.01


@pytest.mark.parametrize("metric", ["macro_f1", "macro_f1_all"])
def test_the_bootstraps_estimate_is_the_metric_on_all_items(metric):
    y, a, b, groups = _problem()
    # the entries' own scores (ocbench.tasks.metrics) are the same numbers
    assert np.mean([multilabel_scores(y, p)[metric] for p in a]) == pytest.approx(_direct(metric, y, a), abs=1e-12)
    estimate, resampled = stats.bootstrap_distribution(y, a, groups, n_resamples=100, metric=metric)
    assert estimate == pytest.approx(_direct(metric, y, a), abs=1e-12) and resampled.shape == (100,)
    interval = stats.bootstrap_interval(y, a, groups, n_resamples=100, metric=metric)
    assert interval.estimate == pytest.approx(_direct(metric, y, a), abs=1e-12)
    paired = stats.paired_bootstrap(y, a, b, groups, n_resamples=200, metric=metric)
    assert paired.difference.estimate == pytest.approx(_direct(metric, y, a) - _direct(metric, y, b), abs=1e-12)
    assert paired.separable


def test_the_bootstraps_default_to_macro_f1_and_refuse_other_metrics():
    y, a, b, groups = _problem()
    assert stats.bootstrap_distribution(y, a, groups, n_resamples=20)[0] == pytest.approx(_direct("macro_f1", y, a))
    with pytest.raises(ValueError, match="'error' cannot be computed from per-class counts"):
        stats.paired_bootstrap(y, a, b, groups, n_resamples=20, metric="error")


def _edit(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _real_test_scores(y, folds, groups):
    """An edit that records the test scores the kept predictions give (per-class F1 and support of
    each fold model, the aggregates that follow, macro_f1_all's interval), so macro_f1_all differs
    from macro_f1."""
    per_fold = [multilabel_scores(y, p) for p in folds]
    interval = stats.bootstrap_interval(y, folds, groups, n_resamples=100, metric="macro_f1_all").to_dict()

    def change(data):
        data["per_class_values"]["test"] = {
            "f1": [s["f1"] for s in per_fold], "support": [[float(n) for n in s["support"]] for s in per_fold],
        }
        for means in data["per_class"]["test"].values():  # a class never present has no mean
            means.pop(data["class_names"][ABSENT])
        recompute_aggregates(data)["scores"]["test"]["macro_f1_all"]["interval"] = interval

    return change


def _as_baseline(data):
    data["backbone"]["card"]["role"] = "baseline"


def _write_pair(folder, metric):
    """Entries of system A and of system B (a baseline), ranked by ``metric``, with kept predictions."""
    y, a, b, groups = _problem()
    paths = []
    for name, folds, val in (("model-a", a, [0.80, 0.82, 0.81]), ("model-b", b, [0.60, 0.62, 0.61])):
        path = write_example_with_predictions(folder, name, y, folds, groups, n_resamples=100, val_folds=val,
                                              main_metric=metric)
        _edit(path, _real_test_scores(y, folds, groups))
        paths.append(path)
    _edit(paths[1], _as_baseline)
    return y, a, b, paths


def test_a_table_ranked_by_macro_f1_all_reports_the_macro_f1_all_difference(tmp_path):
    y, a, b, (path_a, path_b) = _write_pair(tmp_path / "entries", "macro_f1_all")
    expected = _direct("macro_f1_all", y, a) - _direct("macro_f1_all", y, b)
    other = _direct("macro_f1", y, a) - _direct("macro_f1", y, b)
    collection = collect_entries([tmp_path / "entries"])
    assert collection.problems == ()  # the recorded macro_f1_all agrees with the kept predictions
    [table] = build_tables(collection.entries, include_reported=False).tables
    assert table.group.main_metric == "macro_f1_all" and "paired protein bootstrap" in table.rule
    top, runner = table.computed_rows
    assert (top.backbone, runner.backbone) == ("model-a", "model-b")

    [bootstrap] = [e for e in paired_evidence(top, runner, paired=True) if e.difference is not None]
    assert bootstrap.difference.estimate == pytest.approx(expected, abs=1e-12)
    assert bootstrap.difference.estimate != pytest.approx(other, abs=1e-3)
    assert f"bootstrap of the test macro-F1 (all classes) difference {expected:+.3f}" in runner.rank_reason
    assert table.headline.startswith(f"{top.label} beats the runner-up {runner.label} by {expected:+.3f} test macro-F1 (all classes) [")
    assert runner.role == "baseline" and "bootstrap" in top.vs_baseline.method
    assert top.vs_baseline.estimate == pytest.approx(expected, abs=1e-12)

    result = compare_entries(path_a, path_b)
    assert result.bootstrap.difference.estimate == pytest.approx(expected, abs=1e-12)
    assert f"test macro-F1 (all classes) difference {expected:+.4f}" in result.text


def test_a_recorded_macro_f1_all_that_its_predictions_do_not_give_is_refused(tmp_path):
    _, _, _, (path_a, _) = _write_pair(tmp_path / "entries", "macro_f1_all")

    def inflate(data):  # the absent class scored 0.9: macro_f1 and every check but the predictions' agree
        for row in data["per_class_values"]["test"]["f1"]:
            row[ABSENT] = 0.9
        recompute_aggregates(data)["scores"]["test"]["macro_f1_all"].pop("interval")

    _edit(path_a, inflate)
    collection = collect_entries([tmp_path / "entries"])
    assert len(collection.entries) == 1 and len(collection.problems) == 1
    assert "test macro_f1_all is recorded as" in collection.problems[0] and "kept predictions give" in collection.problems[0]


def _ranked_by_error(data):
    """Rank the entry by a lower-is-better error on val that per-item predictions cannot give."""
    for part in ("val", "test"):
        data["scores"][part]["error"] = summarize([round(1 - v, 6) for v in data["scores"][part]["macro_f1"]["values"]])
    data["main_score"] = {"eval_set": "val", "metric": "error", "higher_is_better": False}


def test_a_main_metric_predictions_cannot_give_gets_no_paired_bootstrap_and_says_why(tmp_path):
    _, _, _, (path_a, path_b) = _write_pair(tmp_path / "entries", "macro_f1")
    for path in (path_a, path_b):
        _edit(path, _ranked_by_error)
    collection = collect_entries([tmp_path / "entries"])
    assert collection.problems == ()
    [table] = build_tables(collection.entries, include_reported=False).tables
    top, runner = table.computed_rows
    assert top.backbone == "model-a"  # the lower error
    why = "no paired bootstrap (error cannot be recomputed from per-item predictions)"
    assert why in runner.rank_reason and "paired protein bootstrap" not in runner.rank_reason
    assert runner.rank == 2 and "corrected t-test over 3 folds" in runner.rank_reason  # the folds still decide
    assert why in table.headline and "macro-F1" not in table.headline
    assert any(d.startswith(why) for d in table.details) and "bootstrap" not in table.rule
    assert top.vs_baseline.method == "corrected t-test over 3 folds of the main score"

    result = compare_entries(path_a, path_b)
    assert result.bootstrap is None and why in result.text


@pytest.mark.parametrize("metric", ["macro_f1", "macro_f1_all", "error"])
def test_an_entrys_own_interval_is_of_its_main_metric(metric):
    from ocbench.benchmark.entry_build import _with_intervals
    from ocbench.predictions import Predictions

    y, a, _, groups = _problem()
    predictions = Predictions("test", np.arange(len(y)).astype(str), groups, "protein", y, a[None],
                              tuple(f"c{i}" for i in range(C)))
    scores = {"test": {metric: {"mean": 0.5}}}
    with_interval, _ = _with_intervals(predictions, scores, None, metric)
    interval = with_interval["test"][metric].get("interval")
    if metric == "error":  # per-item predictions do not give it: no interval rather than macro-F1's
        assert interval is None
    else:
        assert interval["estimate"] == pytest.approx(_direct(metric, y, a), abs=1e-12)
