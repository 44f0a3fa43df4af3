"""Classification scores (multi-label, and single-label as one-hot rows) and their summary over folds (torch-free).

Conventions, fixed here so every entry means the same thing:

- per-class precision, recall and F1 come from scikit-learn with ``zero_division=0``;
- ``macro_f1`` (the main score) is the mean F1 over the classes that have at least one positive
  item in the evaluated set, as the Dino4Cells evaluation the seed paper builds on computes it: a
  class absent from a fold or test part cannot be scored there, and counting it as 0 would cap the
  score by how many rare classes a part happens to lack. Which classes were scored is recorded
  (``support``, the number of positive items per class, in ``per_class_values``);
- ``macro_f1_all`` is the mean over all classes, absent ones scoring 0 (scikit-learn's default
  ``average="macro"``), kept as a secondary score;
- summaries over folds come from :func:`ocbench.summaries.summarize` (mean, std with ``ddof=1``).

Single-label data (dataset card ``label_mode: single``) is scored the same way: labels and
predictions are one-hot rows, so a class's precision, recall and F1 are those of the multi-class
confusion matrix, and ``macro_f1`` is scikit-learn's ``f1_score(average="macro")`` over the argmax
labels restricted to the classes present in the evaluated set (equal to it whenever every class is
present). One definition serves both modes, and so do the bootstrap intervals built on it.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ocbench.chance import LABEL_MODES
from ocbench.errors import ConfigError, DataError
from ocbench.stats import class_counts, macro_f1_all_from_counts, macro_f1_from_counts
from ocbench.summaries import summarize

__all__ = ["MAIN_METRIC", "SCORE_KINDS", "check_label_mode", "multilabel_scores", "cross_validation_metrics"]

MAIN_METRIC = "macro_f1"
#: Per-class scores kept per fold, besides ``support``.
SCORE_KINDS: tuple[str, ...] = ("f1", "precision", "recall")


def check_label_mode(labels: Any, label_mode: str) -> str:
    """``label_mode``, after checking it is known and, for ``single``, that every row of the
    (N, C) 0/1 ``labels`` holds exactly one class (one-line errors otherwise)."""
    if label_mode not in LABEL_MODES:
        raise ConfigError(f"label_mode must be one of {', '.join(LABEL_MODES)}, got {label_mode!r}")
    if label_mode == "single":
        counts = np.asarray(labels).sum(axis=1)
        bad = np.flatnonzero(counts != 1)
        if bad.size:
            raise DataError(f"labels: single-label data needs exactly one class per item; item {int(bad[0])} has "
                            f"{int(counts[bad[0]])} ({bad.size} such items); fix the labels or use label_mode multilabel")
    return label_mode


def _as_binary(name: str, y: Any) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 2:
        raise DataError(f"{name}: expected a 2-D (items x classes) array, got shape {arr.shape}")
    if arr.dtype != bool and not np.isin(arr, (0, 1)).all():
        raise DataError(f"{name}: expected only 0/1 values")
    return arr.astype(np.uint8)


def multilabel_scores(y_true: Any, y_pred: Any) -> dict[str, Any]:
    """Scores of one set of binary predictions.

    Returns ``{"macro_f1", "macro_f1_all", "f1": [per class], "precision", "recall",
    "support": [positives per class]}``.
    """
    from sklearn.metrics import precision_recall_fscore_support

    t = _as_binary("y_true", y_true)
    p = _as_binary("y_pred", y_pred)
    if t.shape != p.shape:
        raise DataError(f"y_pred: shape {p.shape} does not match y_true {t.shape}")
    if t.shape[0] == 0:
        raise DataError("y_true: no items to score")
    precision, recall, f1, support = precision_recall_fscore_support(t, p, average=None, zero_division=0)
    present = support > 0
    if not present.any():
        raise DataError("y_true: no item has a positive label, so no class can be scored")
    counts = class_counts(t, p)
    return {
        # one definition of each macro score, shared with the bootstraps that compare entries (ocbench.stats)
        "macro_f1": float(macro_f1_from_counts(counts)),
        "macro_f1_all": float(macro_f1_all_from_counts(counts)),
        "f1": [float(v) for v in f1],
        "precision": [float(v) for v in precision],
        "recall": [float(v) for v in recall],
        "support": [int(v) for v in support],
    }


def cross_validation_metrics(
    val_scores: Sequence[dict[str, Any]],
    test_scores: Sequence[dict[str, Any]],
    class_names: Sequence[str],
) -> dict[str, Any]:
    """Combine per-fold :func:`multilabel_scores` into the entry's score blocks.

    ``val_scores[k]``: fold ``k``'s model on validation fold ``k``; ``test_scores[k]``: the same
    model on the held-out test set. Returns ``{"scores", "per_class", "per_class_values"}``:
    ``scores[set]`` holds ``macro_f1`` and ``macro_f1_all`` summaries; ``per_class[set][kind]``
    the mean over folds of each class's score, over the folds where the class had positives
    (classes never present are left out); ``per_class_values[set][kind]`` every fold's row.
    """
    names = list(class_names)
    out: dict[str, Any] = {"scores": {}, "per_class": {}, "per_class_values": {}}
    for part, scores in (("val", val_scores), ("test", test_scores)):
        for s in scores:
            if len(s["f1"]) != len(names):
                raise DataError(f"{part} scores have {len(s['f1'])} classes, expected {len(names)}")
        out["scores"][part] = {
            "macro_f1": summarize([s["macro_f1"] for s in scores]),
            "macro_f1_all": summarize([s["macro_f1_all"] for s in scores]),
        }
        support = np.array([s["support"] for s in scores])
        means: dict[str, dict[str, float]] = {}
        for kind in SCORE_KINDS:
            values = np.array([s[kind] for s in scores], dtype=float)
            means[kind] = {
                c: float(values[support[:, i] > 0, i].mean()) for i, c in enumerate(names) if (support[:, i] > 0).any()
            }
        out["per_class"][part] = means
        out["per_class_values"][part] = {
            **{kind: [list(map(float, s[kind])) for s in scores] for kind in SCORE_KINDS},
            "support": [list(map(float, s["support"])) for s in scores],
        }
    return out
