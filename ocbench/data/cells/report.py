"""What ``ocbench data cells`` shows: the summary, the contact sheet; the cell embeddings export."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ocbench._io import atomic_path
from ocbench.data.cells.backends import SegmentationBackend
from ocbench.data.cells.crops import EvaluationSet, evaluation_set
from ocbench.data.cells.geometry import CropSettings, crop_cell, crop_mask
from ocbench.data.cells.labels import LabelPolicy
from ocbench.data.cells.table import CellTable, prepare_cells
from ocbench.data.export import export_embeddings
from ocbench.errors import ConfigError, DataError


def format_cells_summary(table: CellTable, *, top: int = 20) -> str:
    """What ``ocbench data cells`` prints: masks, cells per FOV, dropped, evaluation cells per class."""
    cells, meta = table.cells, table.meta
    per_fov = cells.groupby("fov_index").size().reindex(range(int(meta["n_fovs"])), fill_value=0)
    settings = ", ".join(f"{k}={v}" for k, v in meta.get("backend_settings", {}).items())
    lines = [
        f"cells: {meta['n_fovs']:,} FOVs segmented with {meta['backend']} ({settings}) -> {len(cells):,} masks"
        + (f" ({meta['n_fovs_segmented_now']:,} FOVs segmented now, the rest reused)" if meta.get("n_fovs_segmented_now") else " (all reused)"),
        f"cells per FOV: median {int(per_fov.median())}, min {int(per_fov.min())}, max {int(per_fov.max())}"
        + (f"; {int((per_fov == 0).sum())} FOVs without cells" if (per_fov == 0).any() else ""),
        f"dropped: {meta['n_dropped']:,} over-segmented crops (black-pixel fraction above the "
        f"{meta['black_percentile']:g}th percentile, {meta['black_threshold']:.4f}; crop {table.crop.size} px, "
        f"zoom {table.crop.zoom:g}, {'masked' if table.crop.mask_outside else 'unmasked'})",
    ]
    grade = meta["labels"]["grade"]
    omit = "/".join(meta["labels"]["omit_fovs_with"]) or "none"
    lines.append(
        f"evaluation cells (weak labels from grade-{grade} FOVs, FOVs with {omit} left out): "
        f"{meta['n_evaluated']:,} cells in {meta['n_fovs_eligible']:,} FOVs"
    )
    for reason, count in meta.get("fovs_not_eligible", {}).items():
        lines.append(f"  FOVs left out ({reason}): {count:,}")
    evaluated = table.evaluated
    if evaluated.any():
        counts = table.weak_labels[evaluated].sum(axis=0)
        fovs = cells.loc[evaluated, "fov_id"].to_numpy()
        order = np.argsort(-counts, kind="stable")
        lines.append("evaluation cells per class (FOVs):")
        for j in order[:top]:
            if counts[j]:
                n_fov = len(set(fovs[table.weak_labels[evaluated][:, j] > 0]))
                lines.append(f"  {table.class_names[j]:<20} {int(counts[j]):>8,} ({n_fov:,})")
    lines.append(f"masks: {meta['masks_dir']}")
    if table.path is not None:
        lines.append(f"cell table: {table.path}")
    return "\n".join(lines)


def write_contact_sheet(
    path: str | os.PathLike,
    dataset: Any,
    table: CellTable,
    *,
    n: int = 16,
    seed: int = 0,
    rows: Sequence[int] | None = None,
) -> Path:
    """A PNG of ``n`` kept cells (random, one per FOV where possible): each crop unmasked, protein
    in green and nucleus in magenta, with its mask outline in yellow, so a user can see that the
    segmentation and crops are sane."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("the contact sheet needs matplotlib, which is not installed; run: pip install 'ocbench[plots]'") from None
    if rows is None:
        rng = np.random.default_rng(seed)
        kept = np.flatnonzero(table.kept)
        if kept.size == 0:
            raise DataError("no kept cells to show")
        shuffled = rng.permutation(kept)
        fovs = table.cells["fov_index"].to_numpy()[shuffled]
        _, first = np.unique(fovs, return_index=True)  # one cell per FOV first, then the rest
        chosen = list(shuffled[np.sort(first)][:n])
        chosen += [r for r in shuffled if r not in set(chosen)][: n - len(chosen)]
        rows = sorted(chosen)
    rows = list(rows)
    view = dataclasses.replace(table.crop, mask_outside=False)
    channel_names = list(dataset.card.channel_names)
    cols = int(math.ceil(math.sqrt(len(rows))))
    nrows = int(math.ceil(len(rows) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(2.2 * cols, 2.4 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, r in zip(axes.ravel(), rows):
        cell = table.cells.iloc[int(r)]
        image = np.asarray(dataset.read(int(cell["fov_index"])))
        labels = table.mask(str(cell["fov_id"]))
        centroid = (float(cell["centroid_y"]), float(cell["centroid_x"]))
        crop = crop_cell(image, centroid, view).astype(np.float32)
        rgb = np.zeros((*crop.shape[1:], 3), np.float32)
        for name, colour in (("protein", (0, 1, 0)), ("nucleus", (1, 0, 1))):
            if name in channel_names:
                plane = crop[channel_names.index(name)]
                lo, hi = np.percentile(plane, [1, 99.5])
                scaled = np.clip((plane - lo) / max(hi - lo, 1e-6), 0, 1)
                rgb += scaled[..., None] * np.array(colour, np.float32)
        ax.imshow(np.clip(rgb, 0, 1), interpolation="nearest")
        outline = crop_mask(labels == int(cell["mask_label"]), centroid, view)
        if outline.any() and not outline.all():
            ax.contour(outline.astype(float), levels=[0.5], colors="yellow", linewidths=0.8)
        short = str(cell["fov_id"])[-12:]
        ax.set_title(f"{short} c{int(cell['mask_label'])}\n{int(cell['area'])} px, black {cell['black_fraction']:.2f}", fontsize=6)
    fig.suptitle(f"{table.meta.get('dataset')}: {table.meta.get('backend')} masks, crop {table.crop.size} px zoom {table.crop.zoom:g}", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def export_cell_embeddings(path: str | os.PathLike, evaluation: EvaluationSet, embeddings: Any) -> Path:
    """Write the ``embeddings`` of ``evaluation``'s crops with :func:`export_embeddings`: ids are the
    cell ids, groups their proteins (the dataset card's group), fovs their FOV ids."""
    if list(embeddings.fov_ids) != list(evaluation.ids):
        raise DataError("the cell embeddings do not line up with the evaluation cells; rerun with --recompute")
    return export_embeddings(
        path, embeddings.features, evaluation.ids, evaluation.labels, evaluation.protein_groups,
        evaluation.crops.card.class_names, fovs=evaluation.groups,
    )


def cells_command(
    dataset: Any,
    *,
    backend: str | SegmentationBackend = "classical",
    crop: CropSettings | None = None,
    black_percentile: float = 99.7,
    labels: LabelPolicy | None = None,
    cell_labels: str | os.PathLike | None = None,
    contact_sheet: str | os.PathLike | None = None,
    sheet_cells: int = 16,
    progress: Any = True,
    recompute: bool = False,
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
) -> str:
    """What ``ocbench data cells`` does: segment (resuming), build the table, check an expert file,
    draw the contact sheet; returns the summary to print."""
    table = prepare_cells(
        dataset, backend, crop=crop, black_percentile=black_percentile, labels=labels, cache_dir=cache_dir,
        progress=progress, recompute=recompute, workers=workers,
    )
    text = format_cells_summary(table)
    if cell_labels:
        evaluation = evaluation_set(dataset, table, cell_labels)
        notes = evaluation.notes
        dropped = notes["listed_but_dropped_by_filter"]
        left_out = [f"{n} points outside every cell mask" for n in [notes["points_outside_every_mask"]] if n]
        left_out += [f"{n} points in cells the segmentation merged" for n in [notes["points_in_merged_cells"]] if n]
        text += (f"\nexpert labels ({Path(cell_labels).name}): {len(evaluation):,} cells in "
                 f"{len(set(evaluation.groups)):,} FOVs" + (f", {dropped} of them dropped by the filter" if dropped else "")
                 + (f"; left out: {', '.join(left_out)}" if left_out else ""))
    if contact_sheet:
        sheet = write_contact_sheet(contact_sheet, dataset, table, n=sheet_cells)
        text += f"\ncontact sheet: {sheet}"
    return text
