"""The cells a task scores: :class:`CellCrops` (crops cut when read, what ``RunContext.embed`` takes)
and :func:`evaluation_set` (weak labels, or an expert file's)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ocbench._io import json_sha256
from ocbench.data.cells.expert import read_cell_labels
from ocbench.data.cells.geometry import crop_cell
from ocbench.data.cells.masks import CELLS_FORMAT
from ocbench.data.cells.table import CellTable
from ocbench.data.content import listing_version
from ocbench.errors import DataError


class CellCrops:
    """The crops of some cells of a table, cut when read: what ``RunContext.embed`` embeds.

    ``fov_ids`` are the cell ids (the embedding cache's item ids); ``read(i)`` -> (C, size, size)
    uint16 in the dataset card's channel order; ``path(i)`` is the FOV's file. ``version`` changes
    with the dataset version, the masks (backend and settings), the crop settings and the cells.
    """

    def __init__(self, dataset: Any, table: CellTable, rows: Sequence[int] | np.ndarray | None = None) -> None:
        self.dataset = dataset
        self.table = table
        self.rows = np.arange(len(table)) if rows is None else np.asarray(rows, dtype=np.int64)
        sub = table.cells.iloc[self.rows]
        self._fov_index = sub["fov_index"].to_numpy(dtype=np.int64)
        self._fov_id = sub["fov_id"].tolist()
        self._label = sub["mask_label"].to_numpy(dtype=np.int64)
        self._centroid = sub[["centroid_y", "centroid_x"]].to_numpy(dtype=np.float64)
        self.ids: list[str] = sub["cell_id"].tolist()
        self.card = dataset.card
        self.name: str = dataset.name
        self.version: str = json_sha256(
            # The listing: each crop's FOV file content is checked per item by the embedding cache.
            {"kind": "cell-crops", "format": CELLS_FORMAT, "dataset_version": listing_version(dataset),
             "mask_key": table.meta.get("mask_key"), "table": table.meta.get("table_sha256"),
             "crop": table.crop.to_dict(), "cells": json_sha256(self.ids, default=str)},
            default=str,
        )
        self._cached: tuple[int, np.ndarray, np.ndarray] | None = None

    @property
    def fov_ids(self) -> list[str]:
        return self.ids

    @property
    def parent_ids(self) -> list[str]:
        """The FOV each cell was cut from: image-level splits map to cells through it."""
        return list(self._fov_id)

    @property
    def groups(self) -> np.ndarray:
        """The group (the dataset card's, e.g. the protein) of each cell's FOV."""
        return self.table.cells["group"].astype(str).to_numpy()[self.rows]

    @property
    def labels(self) -> np.ndarray:
        """Each cell's weak labels (its FOV's, see :class:`LabelPolicy`), (N, C) 0/1."""
        return self.table.weak_labels[self.rows]

    @property
    def reader_options(self) -> dict[str, Any]:
        return dict(self.dataset.reader_options)

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"CellCrops(cells={len(self)}, crop={self.table.crop.to_dict()}, version={self.version[:12]})"

    def path(self, i: int) -> Path:
        return Path(self.dataset.path(int(self._fov_index[i])))

    def _fov(self, fov_index: int, fov_id: str) -> tuple[np.ndarray, np.ndarray]:
        # Cells of one FOV are consecutive in the table: keep the last FOV and its mask.
        if self._cached is None or self._cached[0] != fov_index:
            self._cached = (fov_index, np.asarray(self.dataset.read(fov_index)), self.table.mask(fov_id))
        return self._cached[1], self._cached[2]

    def read(self, i: int) -> np.ndarray:
        if not -len(self) <= i < len(self):
            raise IndexError(f"cell index {i} out of range for {len(self)} cells")
        i = int(i) % len(self)
        image, labels = self._fov(int(self._fov_index[i]), self._fov_id[i])
        return crop_cell(image, self._centroid[i], self.table.crop, labels, label=int(self._label[i]))


@dataclass
class EvaluationSet:
    """The cells a single-cell task scores: their crops, labels (n, C) 0/1, groups (their FOV ids)
    and where the labels came from (``weak`` or ``expert:<file name>``)."""

    crops: CellCrops
    labels: np.ndarray
    groups: np.ndarray
    source: str
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def ids(self) -> list[str]:
        return self.crops.ids

    @property
    def protein_groups(self) -> np.ndarray:
        """Each cell's group by the dataset card's group column (the protein on OpenCell)."""
        return self.crops.table.cells["group"].astype(str).to_numpy()[self.crops.rows]

    def __len__(self) -> int:
        return len(self.crops)


def evaluation_set(dataset: Any, table: CellTable, cell_labels: str | os.PathLike | None = None) -> EvaluationSet:
    """The default evaluation cells (kept cells of eligible FOVs, weak labels), or the cells of an
    expert file (:data:`CELL_LABELS_FORMAT`) with its labels."""
    if cell_labels:
        rows, labels, skipped = read_cell_labels(cell_labels, table)
        dropped = int((~table.kept[rows]).sum())
        notes = {"cells_listed": int(len(rows)), "listed_but_dropped_by_filter": dropped,
                 "points_outside_every_mask": skipped["outside_every_mask"],
                 "points_in_merged_cells": skipped["in_a_merged_cell"]}
        source = f"expert:{Path(cell_labels).name}"
    else:
        rows = np.flatnonzero(table.evaluated)
        labels = table.weak_labels[rows]
        notes = {}
        source = "weak"
    if rows.size == 0:  # weak labels only: an expert file without matching cells fails in read_cell_labels
        raise DataError(_no_cells_message(table))
    crops = CellCrops(dataset, table, rows)
    groups = table.cells["fov_id"].to_numpy()[rows]
    return EvaluationSet(crops, np.asarray(labels, dtype=np.uint8), groups, source, notes)


def _no_cells_message(table: CellTable) -> str:
    """Why the weak labels leave no cell, in the terms of the settings that choose them (the same
    ``--set`` keys in ``ocbench run``, ``embed --cells`` and ``data cells``)."""
    meta = table.meta
    policy = meta.get("labels") or {}
    grade, omit = policy.get("grade", 3), list(policy.get("omit_fovs_with") or [])
    named = "/".join(omit) if len(omit) <= 4 else f"any of {len(omit)} classes"
    rule = f"FOVs annotated at grade >= {grade} (label_grade)" + (
        f" and not with {named} (omit_fovs_with)" if omit else ", none omitted (omit_fovs_with)")
    n_fovs, eligible = meta.get("n_fovs", 0), meta.get("n_fovs_eligible", 0)
    if eligible:
        why = f"every cell of the {eligible} such FOVs was dropped by the black-pixel filter (black_percentile)"
    else:
        reasons = meta.get("fovs_not_eligible") or {}
        omitted = sum(n for reason, n in reasons.items() if reason.startswith("annotated"))
        parts = [f"{omitted} annotated with an omitted class"] if omitted else []
        parts += [f"{n_fovs - omitted} without a grade >= {grade} annotation"] if n_fovs - omitted else []
        why = f"none of the {n_fovs} FOVs qualifies ({', '.join(parts)})"
    return (f"no cells to evaluate: weak labels come from kept cells of {rule}, and {why}; change those settings "
            "with --set KEY=VALUE, or give expert labels with --set cell_labels=FILE")
