"""The cell table: one row per mask of every FOV (centroid, area, black fraction, kept, weak labels),
built by :func:`prepare_cells` after segmenting what the mask store lacks."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ocbench._io import atomic_write, json_sha256, sha256_file
from ocbench.data.cells.backends import SegmentationBackend, get_backend
from ocbench.data.cells.geometry import CropSettings, black_fraction
from ocbench.data.cells.labels import _LABEL_SEP, LabelPolicy, _fov_weak_labels, _labels_text
from ocbench.data.cells.masks import (
    CELLS_FORMAT, _dataset_root, _fingerprint, _mask_file, _mask_state, _read_mask, _write_mask, cells_cache_dir, mask_key,
)
from ocbench.errors import ConfigError, DataError


@dataclass
class CellTable:
    """One row per mask of every FOV (see the module docstring), plus what made it.

    ``cells`` columns: cell_id, fov_id, fov_index, protein, group, mask_label, centroid_y,
    centroid_x, area, black_fraction, kept, dropped (why, '' when kept), evaluated (kept and in an
    eligible FOV), labels (weak labels, ';'-separated). ``weak_labels``: (N, C) uint8 in
    ``class_names`` order. ``meta``: dataset, backend, settings, threshold, counts, paths.
    """

    cells: pd.DataFrame
    class_names: tuple[str, ...]
    weak_labels: np.ndarray
    meta: dict[str, Any]
    masks_dir: Path
    path: Path | None = None
    crop: CropSettings = field(default_factory=CropSettings)

    def __len__(self) -> int:
        return len(self.cells)

    @property
    def kept(self) -> np.ndarray:
        return self.cells["kept"].to_numpy(dtype=bool)

    @property
    def evaluated(self) -> np.ndarray:
        return self.cells["evaluated"].to_numpy(dtype=bool)

    @property
    def cell_ids(self) -> list[str]:
        return self.cells["cell_id"].tolist()

    def mask(self, fov_id: str) -> np.ndarray:
        """The label image of one FOV (int32)."""
        return _read_mask(_mask_file(self.masks_dir, fov_id))


#: Cell table columns computed from the masks (then kept, dropped, evaluated, labels).
_GEOMETRY_COLUMNS = (
    "cell_id", "fov_id", "fov_index", "protein", "group", "mask_label", "centroid_y", "centroid_x", "area", "black_fraction",
)


def _cell_id(fov_id: str, label: int) -> str:
    return f"{fov_id}#c{int(label):04d}"


def _cells_of_fov(labels: np.ndarray, crop: CropSettings) -> list[tuple[int, float, float, int, float]]:
    """(mask label, centroid y, centroid x, area, black fraction) of each cell of one label image."""
    flat = labels.ravel()
    n = int(flat.max(initial=0))
    if n == 0:
        return []
    areas = np.bincount(flat, minlength=n + 1)
    order = np.argsort(flat, kind="stable")
    ends = np.cumsum(areas)
    h, w = labels.shape
    out = []
    for lab in range(1, n + 1):
        if areas[lab] == 0:
            continue
        pixels = order[ends[lab - 1] : ends[lab]]
        ys, xs = pixels // w, pixels % w
        cy, cx = float(ys.mean()), float(xs.mean())
        frac = black_fraction((ys, xs), (cy, cx), crop, shape=(h, w))
        out.append((lab, cy, cx, int(areas[lab]), frac))
    return out


def _progress_bar(progress: Any, total: int, desc: str):
    from tqdm.auto import tqdm

    if progress is not None and hasattr(progress, "bar"):
        return progress.bar(total, desc, unit="fov")
    return tqdm(total=total, desc=desc, unit="fov", leave=False, disable=None if progress else True)


def _note(progress: Any, text: str) -> None:
    if progress is not None and hasattr(progress, "note"):
        progress.note(text)
    elif progress:
        print(text, file=sys.stderr, flush=True)


def prepare_cells(
    dataset: Any,
    backend: str | SegmentationBackend = "classical",
    *,
    crop: CropSettings | None = None,
    black_percentile: float = 99.7,
    labels: LabelPolicy | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: Any = None,
    recompute: bool = False,
    workers: int | None = None,
) -> CellTable:
    """Segment every FOV of ``dataset`` (reusing saved masks; resumable) and return the cell table.

    ``backend``: a name (``classical``, ``cellpose``) or a :class:`SegmentationBackend`;
    ``crop``: crop settings (they set the black-pixel fractions); ``black_percentile``: crops whose
    black-pixel fraction is above this percentile of all crops are dropped (100 keeps all);
    ``labels``: the weak-label policy; ``cache_dir``: mask stores (default ``<cache>/cells``);
    ``progress``: a Progress (``.bar``/``.note``), True for a tqdm bar, None/False for silence;
    ``recompute``: segment every FOV again; ``workers``: processes that segment (default: one per
    core for the classical backend, one for Cellpose).
    """
    started = time.perf_counter()
    backend = get_backend(backend)
    crop = crop or CropSettings()
    policy = labels or LabelPolicy()
    if not (isinstance(black_percentile, (int, float)) and 0 < black_percentile <= 100):
        raise ConfigError(f"black_percentile must be in (0, 100], got {black_percentile!r}")
    card = dataset.card
    channel_names = tuple(card.channel_names)
    class_names = tuple(card.class_names)
    backend.check_channels(channel_names)
    backend.check_available()
    n_fovs = len(dataset)
    if n_fovs == 0:
        raise DataError("the dataset has no labelled FOVs to segment; check its annotations file")

    key = mask_key(dataset, backend)
    store = cells_cache_dir(cache_dir) / key
    masks_dir = store / "masks"
    masks_dir.mkdir(parents=True, exist_ok=True)
    info = {"format": CELLS_FORMAT, "backend": backend.identity(),
            "dataset": getattr(dataset, "name", None), "root": _dataset_root(dataset)}
    info_path = store / "store.json"
    if not info_path.is_file():
        with atomic_write(info_path) as fh:
            json.dump(info, fh, indent=1, sort_keys=True)

    fov_ids = list(dataset.ids)
    segmented, changed, seg_time = _segment_missing(dataset, backend, masks_dir, fov_ids, progress, recompute, workers)

    table_identity = {
        "format": CELLS_FORMAT, "mask_key": key, "dataset_version": str(dataset.version), "crop": crop.to_dict(),
        "black_percentile": float(black_percentile), "labels": policy.to_dict(), "fov_ids": json_sha256(fov_ids, default=str),
    }
    table_key = json_sha256(table_identity, default=str)[:16]
    table_path = store / "tables" / f"cells-{table_key}.csv"
    meta_path = table_path.with_suffix(".json")
    if not segmented and not recompute and meta_path.is_file() and table_path.is_file():
        table = _load_table(table_path, meta_path, masks_dir, class_names, crop)
        if table is not None:
            return table

    return _build_table(dataset, backend, crop, policy, float(black_percentile), table_identity, table_path, masks_dir,
                        {"n_fovs_segmented_now": segmented, "n_fovs_changed": len(changed),
                         "segmentation_s": round(seg_time, 3)}, started)


def _segment_missing(
    dataset: Any, backend: SegmentationBackend, masks_dir: Path, fov_ids: list[str], progress: Any, recompute: bool,
    workers: int | None = None,
) -> tuple[int, list[str], float]:
    """Segment the FOVs without a current mask (all with ``recompute``), saving each mask as soon as it
    is done; returns how many were segmented, the FOV ids whose file changed, and the seconds spent.
    ``workers``: processes (see :func:`segmentation_workers`)."""
    n_fovs = len(fov_ids)
    states = ["missing" if recompute else _mask_state(_mask_file(masks_dir, fov_id), dataset, i)
              for i, fov_id in enumerate(fov_ids)]
    changed = [fov_id for fov_id, state in zip(fov_ids, states) if state == "changed"]
    if changed:
        import warnings

        names = ", ".join(changed[:3]) + (", ..." if len(changed) > 3 else "")
        warnings.warn(f"{len(changed)} image file(s) changed since their masks were made in {masks_dir} ({names}); "
                      "segmenting those again", stacklevel=3)
    todo = [i for i, state in enumerate(states) if state != "current"]
    processes = segmentation_workers(backend, len(todo), workers)
    started = time.perf_counter()
    with _progress_bar(progress, n_fovs, f"segment ({backend.name})") as bar:
        bar.update(n_fovs - len(todo))
        job = _SegmentJob(dataset, backend, masks_dir, fov_ids)
        if processes > 1:
            _run_in_processes(job, todo, processes, bar)
        else:
            for i in todo:
                job(i)
                bar.update(1)
    seg_time = time.perf_counter() - started
    if todo:
        how = f", {processes} processes" if processes > 1 else ""
        _note(progress, f"segmented {len(todo)} of {n_fovs} FOVs with {backend.describe()} ({seg_time:.1f} s{how})")
    return len(todo), changed, seg_time


def segmentation_workers(backend: SegmentationBackend, n_fovs: int, workers: int | None) -> int:
    """Processes that segment ``n_fovs`` FOVs: ``workers`` when given, else one per available core
    for backends that allow it (:attr:`SegmentationBackend.one_process_per_core`) and one otherwise;
    never more than the FOVs, and one where processes cannot be forked (they inherit the dataset)."""
    import multiprocessing

    from ocbench._cores import available_cores

    if workers is not None and workers < 1:
        raise ConfigError(f"segmentation workers must be >= 1, got {workers!r}")
    if workers is None:
        workers = available_cores() if backend.one_process_per_core else 1
    if "fork" not in multiprocessing.get_all_start_methods() or sys.platform != "linux":
        return 1
    return max(1, min(workers, n_fovs))


@dataclass
class _SegmentJob:
    """Segment FOV ``i`` and save its mask (in this process or a forked one)."""

    dataset: Any
    backend: SegmentationBackend
    masks_dir: Path
    fov_ids: list[str]

    def __call__(self, i: int) -> None:
        fov_id = self.fov_ids[i]
        image = np.asarray(self.dataset.read(i))
        labels = np.asarray(self.backend.segment(image, tuple(self.dataset.card.channel_names)))
        if labels.shape != image.shape[1:]:
            raise DataError(
                f"segmentation backend {self.backend.name} returned a {labels.shape} mask for FOV {fov_id} of "
                f"shape {image.shape[1:]}"
            )
        meta = {"fov_id": fov_id, "backend": self.backend.identity(),
                "source": _fingerprint(self.dataset, i, image), "format": CELLS_FORMAT}
        _write_mask(_mask_file(self.masks_dir, fov_id), labels, meta)


#: The job of the pool being run: forked workers inherit it instead of receiving the dataset pickled.
_FORKED_JOB: _SegmentJob | None = None


def _segment_in_worker(i: int) -> int:
    assert _FORKED_JOB is not None
    _FORKED_JOB(i)
    return i


def _run_in_processes(job: _SegmentJob, todo: list[int], processes: int, bar: Any) -> None:
    """Segment ``todo`` in forked processes; each mask is saved by the worker that made it, so an
    interrupted run keeps every finished mask. A worker's error is raised here as it was raised."""
    import multiprocessing

    global _FORKED_JOB
    _FORKED_JOB = job
    try:
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            for _ in pool.imap_unordered(_segment_in_worker, todo, chunksize=1):
                bar.update(1)
    finally:
        _FORKED_JOB = None


def _build_table(
    dataset: Any, backend: SegmentationBackend, crop: CropSettings, policy: LabelPolicy, black_percentile: float,
    table_identity: dict[str, Any], table_path: Path, masks_dir: Path, run: dict[str, Any], started: float,
) -> CellTable:
    """The cell table from the saved masks: geometry, the black-pixel filter, weak labels; saved as
    ``table_path`` (CSV) with its meta (JSON, written last). ``run``: this run's segmentation counts."""
    fov_ids = list(dataset.ids)
    n_fovs = len(fov_ids)
    class_names = tuple(dataset.card.class_names)
    meta_path = table_path.with_suffix(".json")
    weak_fov, eligible_fov, why_fov = _fov_weak_labels(dataset, policy)
    manifest = dataset.manifest
    groups = [str(g) for g in dataset.groups]
    proteins = manifest["gene"].astype(str).tolist() if "gene" in manifest.columns else groups
    rows = []
    for i, fov_id in enumerate(fov_ids):
        for lab, cy, cx, area, frac in _cells_of_fov(_read_mask(_mask_file(masks_dir, fov_id)), crop):
            rows.append((_cell_id(fov_id, lab), fov_id, i, proteins[i], groups[i], lab, cy, cx, area, frac))
    if not rows:
        raise DataError(
            f"segmentation ({backend.describe()}) found no cells in {n_fovs} FOVs; check the images or try another backend"
        )
    cells = pd.DataFrame(rows, columns=list(_GEOMETRY_COLUMNS))
    fractions = cells["black_fraction"].to_numpy()
    threshold = float(np.percentile(fractions, black_percentile))
    over = fractions > threshold
    cells["kept"] = ~over
    cells["dropped"] = np.where(over, f"black-pixel fraction above the {black_percentile:g}th percentile ({threshold:.4f})", "")
    fov_index = cells["fov_index"].to_numpy()
    cells["evaluated"] = ~over & eligible_fov[fov_index]
    weak = weak_fov[fov_index]
    cells["labels"] = [_labels_text(r, class_names) for r in weak]
    meta = {
        **table_identity,
        "dataset": getattr(dataset, "name", None),
        "backend": backend.name,
        "backend_settings": backend.settings(),
        "black_threshold": threshold,
        "n_fovs": n_fovs,
        "n_fovs_segmented_now": run["n_fovs_segmented_now"],
        "n_fovs_changed": run["n_fovs_changed"],
        "n_masks": int(len(cells)),
        "n_dropped": int(over.sum()),
        "n_evaluated": int(cells["evaluated"].sum()),
        "n_fovs_eligible": int(eligible_fov.sum()),
        "fovs_not_eligible": {reason: why_fov.count(reason) for reason in sorted(set(why_fov) - {""})},
        "segmentation_s": run["segmentation_s"],
        "build_s": round(time.perf_counter() - started, 3),
        "masks_dir": str(masks_dir),
    }
    with atomic_write(table_path) as fh:
        cells.to_csv(fh, index=False, lineterminator="\n")
    meta["table_sha256"] = sha256_file(table_path)
    with atomic_write(meta_path) as fh:  # written last: the table is complete
        json.dump(meta, fh, indent=1, sort_keys=True)
    return CellTable(cells, class_names, weak.astype(np.uint8), meta, masks_dir, table_path, crop)


def _load_table(table_path: Path, meta_path: Path, masks_dir: Path, class_names, crop) -> CellTable | None:
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("table_sha256") != sha256_file(table_path):
            return None
        cells = pd.read_csv(table_path, keep_default_na=False, dtype={"cell_id": str, "fov_id": str, "protein": str,
                                                                      "group": str, "dropped": str, "labels": str})
    except (OSError, ValueError):
        return None  # rebuilt below
    index = {c: j for j, c in enumerate(class_names)}
    weak = np.zeros((len(cells), len(class_names)), np.uint8)
    for r, text in enumerate(cells["labels"]):
        for name in filter(None, str(text).split(_LABEL_SEP)):
            weak[r, index[name]] = 1
    cells["kept"] = cells["kept"].astype(bool)
    cells["evaluated"] = cells["evaluated"].astype(bool)
    return CellTable(cells, tuple(class_names), weak, {**meta, "n_fovs_segmented_now": 0}, masks_dir, table_path, crop)
