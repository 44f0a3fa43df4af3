"""Per-item predictions of an entry, kept beside it so intervals and comparisons never need the model.

A task returns its predictions on the evaluated items (the held-out test set of the FOV probes,
every evaluation cell of the k-NN) as :class:`Predictions`; the runner writes them next to the
entry as ``<key>.predictions.npz`` (compressed, written atomically) and the entry names the file
and its sha256. The arrays:

- ``item_ids`` (N,) and ``groups`` (N,): item and group ids (the dataset card's group, the protein
  for OpenCell: the unit a bootstrap resamples);
- ``y_true`` (N, C) uint8 0/1 in ``class_names`` order;
- ``y_pred`` (P, R, N, C) uint8 0/1: P points of the entry's axis (k of a k-NN; 1 without an axis)
  times R repeated models scored on the same items (the fold models of cross-validation; 1 when
  one model is evaluated). The score at a point is the mean over its R models.

numpy only (no torch): the leaderboard and ``ocbench compare`` read these files.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ocbench._io import atomic_write, sha256_bytes, sha256_file
from ocbench.errors import DataError

__all__ = [
    "Predictions", "predictions_file_name", "write_predictions", "load_predictions", "load_kept_predictions",
    "scores_disagreement", "FORMAT_VERSION",
]

FORMAT_VERSION = 1


@dataclass(frozen=True, eq=False)
class Predictions:
    eval_set: str
    item_ids: np.ndarray
    groups: np.ndarray
    group_name: str
    y_true: np.ndarray
    y_pred: np.ndarray
    class_names: tuple[str, ...]
    axis_name: str | None = None
    axis_values: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        n, c = self.y_true.shape if self.y_true.ndim == 2 else (-1, -1)
        if n < 1 or c != len(self.class_names):
            raise DataError(f"predictions: y_true must be (items, {len(self.class_names)}), got {self.y_true.shape}")
        if self.y_pred.ndim != 4 or self.y_pred.shape[2:] != (n, c):
            raise DataError(f"predictions: y_pred must be (points, repeats, {n}, {c}), got {self.y_pred.shape}")
        if len(self.item_ids) != n or len(self.groups) != n:
            raise DataError(f"predictions: {len(self.item_ids)} item ids and {len(self.groups)} groups for {n} items")
        points = max(1, len(self.axis_values))
        if self.y_pred.shape[0] != points:
            raise DataError(f"predictions: y_pred has {self.y_pred.shape[0]} axis points, expected {points}")

    @property
    def n_groups(self) -> int:
        return int(np.unique(self.groups.astype(str)).size)

    def at(self, axis_value: float | None = None) -> np.ndarray:
        """(R, N, C) predictions at an axis value (the only point when the entry has no axis)."""
        if not self.axis_values:
            return self.y_pred[0]
        values = [float(v) for v in self.axis_values]
        if axis_value is None or float(axis_value) not in values:
            raise DataError(f"predictions: no {self.axis_name}={axis_value}; the file holds {values}")
        return self.y_pred[values.index(float(axis_value))]

    def same_items(self, other: "Predictions") -> bool:
        return (
            self.y_true.shape == other.y_true.shape
            and np.array_equal(self.item_ids.astype(str), other.item_ids.astype(str))
            and np.array_equal(self.y_true, other.y_true)
        )

    def to_bytes(self) -> bytes:
        """The ``.npz`` bytes: a deflated zip of ``.npy`` arrays, as ``np.savez_compressed`` writes,
        but with fixed time stamps so the same predictions always give the same sha256."""
        import zipfile

        arrays = {
            "format_version": np.array(FORMAT_VERSION),
            "eval_set": np.array(self.eval_set),
            "item_ids": self.item_ids.astype(str),
            "groups": self.groups.astype(str),
            "group_name": np.array(self.group_name),
            "y_true": self.y_true.astype(np.uint8),
            "y_pred": self.y_pred.astype(np.uint8),
            "class_names": np.array(self.class_names, dtype=str),
            "axis_name": np.array(self.axis_name or ""),
            "axis_values": np.array(self.axis_values, dtype=np.float64),
        }
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, array in arrays.items():
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                member = io.BytesIO()
                np.lib.format.write_array(member, np.array(array, order="C"), allow_pickle=False)
                zf.writestr(info, member.getvalue())
        return buf.getvalue()

    @classmethod
    def build(
        cls,
        *,
        eval_set: str,
        item_ids: Sequence[Any],
        groups: Sequence[Any],
        group_name: str,
        y_true: Any,
        y_pred: Any,
        class_names: Sequence[str],
        axis_name: str | None = None,
        axis_values: Sequence[float] = (),
    ) -> "Predictions":
        """From any array-likes; ``y_pred`` may be (N, C), (R, N, C) or (P, R, N, C)."""
        p = np.asarray(y_pred).astype(np.uint8)
        while p.ndim < 4:
            p = p[None]
        return cls(
            eval_set, np.asarray([str(i) for i in item_ids]), np.asarray([str(g) for g in groups]), group_name,
            np.asarray(y_true).astype(np.uint8), p, tuple(class_names), axis_name, tuple(float(v) for v in axis_values),
        )


def predictions_file_name(entry_key: str) -> str:
    return f"{entry_key}.predictions.npz"


def write_predictions(predictions: Predictions, path: str | os.PathLike) -> str:
    """Write atomically (temp file, then rename); return the file's sha256."""
    data = predictions.to_bytes()
    with atomic_write(Path(path), mode="wb", encoding=None) as fh:
        fh.write(data)
    return sha256_bytes(data)


def load_predictions(path: str | os.PathLike, sha256: str | None = None) -> Predictions:
    """Read a predictions file; DataError naming the file when it is missing, altered or malformed."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: predictions file not found; keep it beside its entry (ocbench run writes both)")
    if sha256 is not None and sha256_file(path) != sha256:
        raise DataError(f"{path}: sha256 does not match the one its entry records; the file was changed or replaced")
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["format_version"]) != FORMAT_VERSION:
                raise DataError(f"{path}: predictions format {int(z['format_version'])} is not {FORMAT_VERSION}; upgrade ocbench")
            axis_name = str(z["axis_name"]) or None
            return Predictions(
                str(z["eval_set"]), z["item_ids"], z["groups"], str(z["group_name"]), z["y_true"], z["y_pred"],
                tuple(str(c) for c in z["class_names"]), axis_name, tuple(float(v) for v in z["axis_values"]),
            )
    except DataError:
        raise
    except (KeyError, ValueError, OSError) as exc:
        raise DataError(f"{path}: not an ocbench predictions file ({exc})") from None


#: Recorded scores and the scores recomputed from the kept predictions may differ by JSON rounding only.
_AGREEMENT_TOLERANCE = 1e-6


def scores_disagreement(predictions: Predictions, entry: Any) -> str:
    """'' when ``entry``'s recorded main-metric values on the predictions' set are what
    ``predictions`` give (per repeated model, at every axis point), else what differs, in words.

    Only the main metric is checked, and only when per-class counts determine it
    (``ocbench.stats.METRICS_FROM_COUNTS``): the score the paired comparisons of entries compute
    from these predictions."""
    from ocbench.stats import METRICS_FROM_COUNTS, class_counts

    metric = entry.main_score.metric
    score = METRICS_FROM_COUNTS.get(metric)
    if score is None:
        return ""
    points = [(None, entry.scores)] if entry.axis is None else [(p.value, p.scores) for p in entry.axis.points]
    for value, scores in points:
        summary = scores.get(predictions.eval_set, {}).get(metric)
        if summary is None:
            continue
        try:
            y_pred = predictions.at(value)
        except DataError as exc:
            return str(exc)
        given = [float(v) for v in score(class_counts(predictions.y_true, y_pred))]
        recorded = list(summary.values)
        if len(given) != len(recorded) or not all(abs(a - b) <= _AGREEMENT_TOLERANCE for a, b in zip(given, recorded)):
            where = f"{predictions.eval_set} {metric}" + ("" if value is None else f" at {entry.axis.name}={value:g}")
            return (f"{where} is recorded as {', '.join(f'{v:.4f}' for v in recorded)} but its kept predictions give "
                    f"{', '.join(f'{v:.4f}' for v in given)}")
    return ""


def load_kept_predictions(entry: Any, entry_path: str | os.PathLike) -> tuple[Predictions | None, str]:
    """The predictions ``entry`` (read from ``entry_path``) keeps beside it, or None and why not.

    DataError when they load but disagree with the entry's scores: the entry or the file was
    edited, and neither its numbers nor an interval computed from the file can be trusted."""
    ref = entry.predictions
    if ref is None:
        return None, "the task kept no per-item predictions"
    path = Path(entry_path).parent / ref.file
    try:
        predictions = load_predictions(path, ref.sha256)
    except DataError as exc:
        return None, str(exc)
    disagreement = scores_disagreement(predictions, entry)
    if disagreement:
        raise DataError(f"{entry_path}: {disagreement}; the entry or {ref.file} was edited; run `ocbench run` again")
    return predictions, ""
