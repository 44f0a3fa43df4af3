"""Multi-label classification scores and their cross-validation summary (torch-free).

Conventions, fixed here so every entry means the same thing:

- scores come from scikit-learn with ``zero_division=0``: a class with no positive prediction
  (or no positive example) scores 0, which is what the paper's ``f1_score`` call does;
- macro-F1 is the unweighted mean of the per-class F1 over all label columns (17 compartments);
- aggregates over folds are mean and sample standard deviation (``ddof=1``), with ``n`` the
  number of folds; ``std`` is ``None`` when ``n < 2`` (undefined, and JSON has no NaN).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from ocbench.errors import DataError

__all__ = ["STD_DDOF", "multilabel_scores", "summarize", "cross_validation_metrics"]

STD_DDOF = 1


def _as_binary(name: str, y: Any) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 2:
        raise DataError(f"{name}: expected a 2-D (items x classes) array, got shape {arr.shape}")
    if arr.dtype != bool and not np.isin(arr, (0, 1)).all():
        raise DataError(f"{name}: expected only 0/1 values")
    return arr.astype(np.uint8)


def multilabel_scores(y_true: Any, y_pred: Any) -> dict[str, Any]:
    """Scores of one set of binary predictions.

    Returns ``{"macro_f1": float, "f1": [per class], "precision": [...], "recall": [...]}``.
    """
    from sklearn.metrics import f1_score, precision_recall_fscore_support

    t = _as_binary("y_true", y_true)
    p = _as_binary("y_pred", y_pred)
    if t.shape != p.shape:
        raise DataError(f"y_pred: shape {p.shape} does not match y_true {t.shape}")
    if t.shape[0] == 0:
        raise DataError("y_true: no items to score")
    precision, recall, f1, _ = precision_recall_fscore_support(t, p, average=None, zero_division=0)
    macro = f1_score(t, p, average="macro", zero_division=0)
    return {
        "macro_f1": float(macro),
        "f1": [float(v) for v in f1],
        "precision": [float(v) for v in precision],
        "recall": [float(v) for v in recall],
    }


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """``{"per_fold": [...], "mean", "std" (ddof=1, None if n < 2), "ddof": 1, "n"}``."""
    vals = [float(v) for v in values]
    n = len(vals)
    if n == 0:
        raise DataError("no fold scores to summarize")
    mean = math.fsum(vals) / n
    std = float(np.std(vals, ddof=STD_DDOF)) if n > STD_DDOF else None
    return {"per_fold": vals, "mean": mean, "std": std, "ddof": STD_DDOF, "n": n}


def cross_validation_metrics(
    val_scores: Sequence[dict[str, Any]],
    test_scores: Sequence[dict[str, Any]],
    class_names: Sequence[str],
) -> dict[str, Any]:
    """Combine per-fold :func:`multilabel_scores` into the entry's ``metrics`` block.

    ``val_scores[k]``: fold ``k``'s model on validation fold ``k``; ``test_scores[k]``: the same
    model on the held-out test set. Per-class values in ``per_class`` are means over folds;
    ``per_fold_per_class`` keeps every fold's per-class F1, precision and recall (17 per row).
    """
    names = list(class_names)
    out: dict[str, Any] = {"macro_f1": {}, "per_class": {}, "per_fold_per_class": {}}
    for part, scores in (("val", val_scores), ("test", test_scores)):
        for s in scores:
            if len(s["f1"]) != len(names):
                raise DataError(f"{part} scores have {len(s['f1'])} classes, expected {len(names)}")
        out["macro_f1"][part] = summarize([s["macro_f1"] for s in scores])
        out["per_class"][part] = {
            kind: {c: float(np.mean([s[kind][i] for s in scores])) for i, c in enumerate(names)}
            for kind in ("f1", "precision", "recall")
        }
        out["per_fold_per_class"][part] = {
            kind: [list(s[kind]) for s in scores] for kind in ("f1", "precision", "recall")
        }
    return out
