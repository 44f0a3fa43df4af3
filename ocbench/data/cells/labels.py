"""The weak-label policy: a cell's labels are its FOV's compartments at a grade, some FOVs left out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ocbench.errors import ConfigError

#: Separates class names in the cell table's ``labels`` column and in expert label files.
_LABEL_SEP = ";"


@dataclass(frozen=True)
class LabelPolicy:
    """Weak cell labels from the FOV: the compartments annotated at grade >= ``grade``; FOVs with
    none, or annotated (any grade) with a class in ``omit_fovs_with``, are not evaluated."""

    grade: int = 3
    omit_fovs_with: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"grade": int(self.grade), "omit_fovs_with": list(self.omit_fovs_with)}


def _fov_weak_labels(dataset: Any, policy: LabelPolicy) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per FOV: weak labels (N, C) uint8, eligible (N,) bool, and why each ineligible FOV is out."""
    class_names = list(dataset.card.class_names)
    unknown = sorted(set(policy.omit_fovs_with) - set(class_names))
    if unknown:
        raise ConfigError(f"omit_fovs_with: unknown class(es) {unknown}; the dataset's classes are {', '.join(class_names)}")
    manifest = dataset.manifest
    grade_columns = [f"grade_{c}" for c in class_names]
    if all(c in manifest.columns for c in grade_columns):
        grades = manifest[grade_columns].to_numpy(dtype=np.int64)
    else:  # a dataset without grades: every label counts as the top grade
        grades = np.asarray(dataset.labels, dtype=np.int64) * int(policy.grade)
    weak = (grades >= int(policy.grade)).astype(np.uint8)
    omit_idx = [class_names.index(c) for c in policy.omit_fovs_with]
    omitted = (grades[:, omit_idx] > 0).any(axis=1) if omit_idx else np.zeros(len(grades), bool)
    has_label = weak.any(axis=1)
    eligible = has_label & ~omitted
    why = [
        "" if ok else (f"annotated {'/'.join(c for c in policy.omit_fovs_with if grades[i, class_names.index(c)] > 0)}"
                       if omitted[i] else f"no grade-{policy.grade} annotation")
        for i, ok in enumerate(eligible)
    ]
    weak[omitted] = 0
    return weak, eligible, why


def _labels_text(row: np.ndarray, class_names: Sequence[str]) -> str:
    return _LABEL_SEP.join(c for c, v in zip(class_names, row) if v)
