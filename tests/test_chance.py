"""Chance references (ocbench.chance) and collapse warnings, on small computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from ocbench.chance import (
    CLASS_PRIOR_MAX_STANDARD_ERROR, Repetition, chance_references, class_prior_record, collapse_warnings,
)
from ocbench.stats import macro_f1


def _labels(rng, n, c, rate=0.25):
    y = (rng.random((n, c)) < rate).astype(np.uint8)
    y[0] = 1  # every class present at least once
    return y


def _repetitions(rng, n_classes=6):
    test = _labels(rng, 40, n_classes)
    reps = []
    for _ in range(3):
        reps.append(Repetition(train=_labels(rng, 80, n_classes, 0.3), scored={"val": _labels(rng, 30, n_classes), "test": test}))
    return reps, test


def test_all_positive_equals_its_closed_form_per_class():
    rng = np.random.default_rng(1)
    reps, test = _repetitions(rng)
    groups = [f"p{i // 2}" for i in range(len(test))]
    refs = chance_references(reps, predictions_set="test", groups=groups)
    (ref,) = [r for r in refs if r["name"] == "all-positive"]
    for part in ("val", "test"):
        expected = []
        for rep in reps:
            y = rep.scored[part]
            p = y.mean(axis=0)
            present = y.sum(axis=0) > 0
            expected.append(float(np.mean((2 * p / (1 + p))[present])))
        assert ref["scores"][part]["macro_f1"]["values"] == pytest.approx(expected, abs=1e-12)
    interval = ref["scores"]["test"]["macro_f1"]["interval"]
    assert interval["group"] == "protein" and interval["n_groups"] == 20
    assert interval["low"] <= interval["estimate"] <= interval["high"]


def test_single_label_mode_uses_the_majority_class():
    rng = np.random.default_rng(2)
    classes = rng.choice(4, size=60, p=[0.55, 0.25, 0.15, 0.05])
    y = np.eye(4, dtype=np.uint8)[classes]
    train, test = y[:40], y[40:]
    refs = chance_references([Repetition(train=train, scored={"test": test})], predictions_set=None, groups=None,
                             label_mode="single")
    assert refs[0]["name"] == "majority-class"
    majority = np.zeros_like(test)
    majority[:, int(np.argmax(train.sum(0)))] = 1
    assert refs[0]["scores"]["test"]["macro_f1"]["mean"] == pytest.approx(macro_f1(test, majority))


def test_class_prior_matches_per_item_draws_and_records_its_standard_error():
    rng = np.random.default_rng(3)
    reps, test = _repetitions(rng)
    record = class_prior_record(reps, predictions_set="test", groups=list(range(len(test))), group_name="item", seed=0)
    assert record["draws"] >= 200
    assert all(se < CLASS_PRIOR_MAX_STANDARD_ERROR for se in record["standard_error"].values())
    # independently: draw every item's predictions with the training frequencies
    check = np.random.default_rng(99)
    for part in ("val", "test"):
        per_rep = []
        for rep in reps:
            prior = rep.train.mean(axis=0)
            y = rep.scored[part]
            per_rep.append(np.mean([macro_f1(y, (check.random(y.shape) < prior).astype(np.uint8)) for _ in range(800)]))
        assert record["scores"][part]["macro_f1"]["mean"] == pytest.approx(np.mean(per_rep), abs=0.01)
    interval = record["scores"]["test"]["macro_f1"]["interval"]
    assert interval["low"] < interval["estimate"] < interval["high"]


def test_constant_predictions_are_flagged():
    rng = np.random.default_rng(4)
    y = _labels(rng, 50, 5)
    constant = np.zeros((3, 50, 5), np.uint8)
    constant[:, :, 2] = 1
    warnings = collapse_warnings(y, constant, interval=None, references=[], eval_set="test")
    kinds = [w["kind"] for w in warnings]
    assert kinds == ["constant-predictions", "few-classes-predicted"]
    assert "every model gives every test item the same labels (1 class)" in warnings[0]["message"]
    good = collapse_warnings(y, np.stack([y] * 3), interval={"low": 0.9, "high": 1.0},
                             references=[{"name": "all-positive", "scores": {"test": {"macro_f1": {"mean": 0.4}}}}],
                             eval_set="test")
    assert good == []


def test_an_interval_reaching_the_best_reference_is_flagged():
    rng = np.random.default_rng(5)
    y = _labels(rng, 50, 5)
    refs = [{"name": "all-positive", "scores": {"test": {"macro_f1": {"mean": 0.40, "interval": {"high": 0.45}}}}},
            {"name": "class-prior", "scores": {"test": {"macro_f1": {"mean": 0.30}}}}]
    (w,) = collapse_warnings(y, y[None], interval={"low": 0.44, "high": 0.6}, references=refs, eval_set="test")
    assert w["kind"] == "chance-level" and "all-positive 0.400" in w["message"]
    assert "reaches the best chance reference" in w["message"]


def test_an_interval_wholly_under_the_reference_is_said_to_lie_below_it():
    rng = np.random.default_rng(6)
    y = _labels(rng, 50, 5)
    refs = [{"name": "all-positive", "scores": {"test": {"macro_f1": {"mean": 0.40, "interval": {"high": 0.45}}}}}]
    (w,) = collapse_warnings(y, y[None], interval={"low": 0.02, "high": 0.05}, references=refs, eval_set="test")
    assert w["kind"] == "chance-level" and "[0.020, 0.050] lies below the best chance reference" in w["message"]


def test_a_lower_is_better_score_is_at_chance_when_its_interval_reaches_down_to_the_lowest_reference():
    rng = np.random.default_rng(7)
    y = _labels(rng, 50, 5)
    refs = [{"name": "shuffled", "scores": {"test": {"error": {"mean": 0.50, "interval": {"low": 0.45}}}}},
            {"name": "class-prior", "scores": {"test": {"error": {"mean": 0.60}}}}]
    kwargs = dict(references=refs, eval_set="test", metric="error", higher_is_better=False)
    assert collapse_warnings(y, y[None], interval={"low": 0.10, "high": 0.30}, **kwargs) == []
    (w,) = collapse_warnings(y, y[None], interval={"low": 0.40, "high": 0.46}, **kwargs)
    assert "reaches the best chance reference (shuffled 0.500, down to 0.450)" in w["message"]
    (w,) = collapse_warnings(y, y[None], interval={"low": 0.70, "high": 0.80}, **kwargs)
    assert "lies above the best chance reference" in w["message"]
    # on the default direction the same references would not count (another metric than macro-F1)
    assert collapse_warnings(y, y[None], interval={"low": 0.70, "high": 0.80}, references=refs, eval_set="test") == []
