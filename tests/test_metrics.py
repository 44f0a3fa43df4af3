import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_recall_fscore_support

from ocbench.summaries import summarize
from ocbench.tasks.metrics import cross_validation_metrics, multilabel_scores
from ocbench.errors import DataError


def random_predictions(seed: int, n: int = 80, classes: int = 17):
    rng = np.random.default_rng(seed)
    y_true = (rng.random((n, classes)) < 0.2).astype(np.uint8)
    y_pred = (rng.random((n, classes)) < 0.25).astype(np.uint8)
    y_true[:, 3] = 0  # a class without positives...
    y_pred[:, 3] = 0  # ...nor predictions: zero_division=0 makes it score 0, not 1
    return y_true, y_pred


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_equal_scikit_learn(seed):
    y_true, y_pred = random_predictions(seed)
    scores = multilabel_scores(y_true, y_pred)
    # the all-classes variant is scikit-learn's macro average; the main score leaves out class 3,
    # which has no positive item to be scored on
    assert scores["macro_f1_all"] == pytest.approx(f1_score(y_true, y_pred, average="macro", zero_division=0), abs=1e-12)
    present = y_true.sum(axis=0) > 0
    assert scores["macro_f1"] == pytest.approx(
        f1_score(y_true[:, present], y_pred[:, present], average="macro", zero_division=0), abs=1e-12
    )
    assert scores["support"] == [int(v) for v in y_true.sum(axis=0)]
    precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, average=None, zero_division=0)
    np.testing.assert_allclose(scores["f1"], f1)
    np.testing.assert_allclose(scores["precision"], precision)
    np.testing.assert_allclose(scores["recall"], recall)
    assert scores["f1"][3] == 0.0
    assert scores["macro_f1_all"] == pytest.approx(np.mean(scores["f1"]))
    assert scores["macro_f1"] == pytest.approx(np.mean(np.delete(scores["f1"], 3)))


def test_absent_classes_do_not_cap_the_main_score():
    # A test part that lacks 11 of 17 classes, predicted perfectly: the main score is 1, while the
    # all-classes variant (the protocol-1 score) could not exceed 6/17.
    y = np.zeros((30, 17), dtype=np.uint8)
    rng = np.random.default_rng(0)
    y[np.arange(30), rng.integers(0, 6, size=30)] = 1
    y[:6, :6] = np.eye(6, dtype=np.uint8)
    s = multilabel_scores(y, y)
    assert s["macro_f1"] == 1.0
    assert s["macro_f1_all"] == pytest.approx(6 / 17)


def test_no_positive_at_all_is_an_error():
    with pytest.raises(DataError, match="no item has a positive label"):
        multilabel_scores(np.zeros((3, 4)), np.zeros((3, 4)))


def test_perfect_and_hand_computed_scores():
    y = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
    assert multilabel_scores(y, y)["macro_f1"] == 1.0
    pred = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    s = multilabel_scores(y, pred)
    # class 0: tp=1 fp=1 fn=1 -> P=R=F1=0.5; class 1: tp=2 fp=0 fn=0 -> 1.0
    assert s["precision"] == [0.5, 1.0] and s["recall"] == [0.5, 1.0]
    assert s["macro_f1"] == pytest.approx(0.75)


def test_bad_predictions_are_rejected():
    y = np.eye(4, 17, dtype=np.uint8)
    with pytest.raises(DataError, match="shape"):
        multilabel_scores(y, np.zeros((4, 16)))
    with pytest.raises(DataError, match="0/1"):
        multilabel_scores(y, np.full((4, 17), 0.7))
    with pytest.raises(DataError, match="2-D"):
        multilabel_scores(np.zeros(17), np.zeros(17))


def test_summarize_uses_sample_std():
    values = [0.80, 0.82, 0.79, 0.85, 0.81]
    s = summarize(values)
    assert s["values"] == values and s["n"] == 5 and s["ddof"] == 1
    assert s["mean"] == pytest.approx(np.mean(values))
    assert s["std"] == pytest.approx(np.std(values, ddof=1))
    assert s["std"] != pytest.approx(np.std(values, ddof=0))
    assert summarize([0.5])["std"] is None  # undefined with one fold, and JSON has no NaN
    with pytest.raises(ValueError):
        summarize([])
    with pytest.raises(ValueError, match="finite"):
        summarize([0.5, float("nan")])


def test_cross_validation_block_shape():
    names = [f"c{i}" for i in range(17)]
    folds = [random_predictions(seed) for seed in range(5)]
    val = [multilabel_scores(t, p) for t, p in folds]
    test = [multilabel_scores(p, t) for t, p in folds]
    m = cross_validation_metrics(val, test, names)
    assert set(m) == {"scores", "per_class", "per_class_values"}
    for part, scores in (("val", val), ("test", test)):
        assert m["scores"][part]["macro_f1"]["values"] == [s["macro_f1"] for s in scores]
        assert m["scores"][part]["macro_f1_all"]["values"] == [s["macro_f1_all"] for s in scores]
        assert m["scores"][part]["macro_f1"]["n"] == 5
        assert set(m["per_class"][part]) == {"f1", "precision", "recall"}
        # class 3 never has a positive item, so it has no per-class mean
        assert "c3" not in m["per_class"][part]["f1"] and "c4" in m["per_class"][part]["f1"]
        assert m["per_class"][part]["recall"]["c5"] == pytest.approx(np.mean([s["recall"][5] for s in scores]))
        for kind in ("f1", "precision", "recall", "support"):
            assert m["per_class_values"][part][kind] == [s[kind] for s in scores]
    with pytest.raises(DataError, match="classes"):
        cross_validation_metrics(val, test, names[:-1])


def test_metrics_module_does_not_import_torch():
    code = "import sys, ocbench.tasks.metrics; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
