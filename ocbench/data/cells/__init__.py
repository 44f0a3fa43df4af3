"""Single cells of a dataset: segmentation masks, the cell table, crops cut on the fly, labels.

The paper's single-cell track (the seed paper, section 2.6.2 and appendix B) in four steps:

1. **Segment** every FOV with a backend (:class:`SegmentationBackend`): ``cellpose`` (Cellpose v3
   ``cyto3``, protein as the segmentation channel and nucleus as the second one, automatic
   diameter: the paper's) or ``classical`` (nucleus seeds and a watershed, scikit-image only, no
   model download: the demo and the tests). One compressed label image per FOV is saved under
   ``<cache>/cells/<dataset>__<backend>__<hash>/masks/`` as soon as it is done, so a killed run
   resumes. The folder is keyed by the dataset (name and folder), the backend and its settings;
   each mask records the fingerprint of its FOV file (size, times, sha256), checked against the
   dataset's content record (``dataset.content``, :mod:`ocbench.data.content`), so a changed
   image is segmented again (with a warning counting them) while a relabelled dataset (new
   annotation table, other ``--min-grade``) reuses the masks.
2. **Cell table** (:class:`CellTable`): one row per mask with its cell id, FOV, protein, centroid,
   area, black-pixel fraction, kept/dropped and why, and its weak labels. Saved next to the masks,
   keyed by the dataset version (the labels), the crop settings and the label policy.
3. **Crops** (:func:`crop_cell`), cut when read, never stored (157k crops would be ~160 GB): centre
   at the mask centroid, a ``size`` x ``size`` cut zoomed ``zoom`` x about its centre (the paper: a
   512 px cut, zoom 2, output 512 px, i.e. the central 256 source pixels shown twice as large),
   bilinear, zero outside the image, every channel kept in the dataset card's order. With
   ``mask_outside`` (default) the pixels outside this cell's mask are set to 0: that is what makes
   the paper's over-segmentation filter work (a fragment of a cell leaves most of its crop black).
4. **Over-segmentation filter**: a crop whose black-pixel fraction is above the ``percentile``-th
   percentile of all crops (99.7, the paper's "3 sigma" proxy) is dropped and counted. The fraction
   is computed from the mask geometry (output pixels that are outside the image or, with
   ``mask_outside``, outside this cell), which is the crop's own fraction of zero pixels whenever
   the camera never records an exact 0 inside a cell (true for OpenCell's offset of ~100-400).

Labels. The default evaluation set is the paper's selection as far as it can be made without an
expert: cells of FOVs whose protein has at least one annotation of grade ``label_grade`` (3), with
those grade-3 compartments as their (weak) labels, leaving out FOVs annotated with any of
``omit_fovs_with`` (``big_aggregates``: unreliable segmentation, the paper excludes it). Expert
labels replace them with ``--cell-labels FILE`` (:func:`read_cell_labels`, format in
:data:`CELL_LABELS_FORMAT`); the evaluation is then restricted to the listed cells.

:class:`CellCrops` is the dataset-like object ``RunContext.embed`` takes: ``version`` hashes the
dataset version, mask key, crop settings and the cell ids, so the embedding cache keys crops by all
of them. numpy, scipy and pandas at import; scikit-image, cellpose and matplotlib only when used.

One module per job (this package re-exports their public names):

- :mod:`~ocbench.data.cells.geometry`: crop geometry (:class:`CropSettings`, :func:`crop_cell`);
- :mod:`~ocbench.data.cells.backends`: segmentation backends and their registry;
- :mod:`~ocbench.data.cells.classical`: the classical (scikit-image) segmentation;
- :mod:`~ocbench.data.cells.masks`: the mask store on disk;
- :mod:`~ocbench.data.cells.labels`: the weak-label policy (:class:`LabelPolicy`);
- :mod:`~ocbench.data.cells.table`: the cell table (:func:`prepare_cells`);
- :mod:`~ocbench.data.cells.crops`: the crops a task embeds and the evaluation set;
- :mod:`~ocbench.data.cells.expert`: the expert cell-label file;
- :mod:`~ocbench.data.cells.report`: ``ocbench data cells``'s summary, contact sheet and export.

Which cells a task takes (these settings, as ``--set`` keys) is :class:`ocbench.tasks.cell_task.CellSelection`.
"""

from __future__ import annotations

from ocbench.data.cells.backends import (
    SEGMENTATION_BACKENDS,
    CellposeBackend,
    ClassicalBackend,
    SegmentationBackend,
    _CELLPOSE_MODELS,
    _cellpose_version,
    backend_names,
    get_backend,
)
from ocbench.data.cells.classical import _need_skimage, estimate_nucleus_diameter, segment_cells_classical, segment_nuclei
from ocbench.data.cells.crops import CellCrops, EvaluationSet, evaluation_set
from ocbench.data.cells.expert import CELL_LABELS_FORMAT, read_cell_labels, write_cell_labels
from ocbench.data.cells.geometry import CropSettings, black_fraction, crop_cell, crop_mask, crop_positions
from ocbench.data.cells.labels import LabelPolicy
from ocbench.data.cells.masks import CELLS_FORMAT, cells_cache_dir, mask_key
from ocbench.data.cells.report import cells_command, export_cell_embeddings, format_cells_summary, write_contact_sheet
from ocbench.data.cells.table import CellTable, prepare_cells
from ocbench.data.export import export_embeddings  # FOV-level; re-exported for old imports

__all__ = [
    "CELLS_FORMAT",
    "CELL_LABELS_FORMAT",
    "CropSettings",
    "LabelPolicy",
    "SegmentationBackend",
    "ClassicalBackend",
    "CellposeBackend",
    "SEGMENTATION_BACKENDS",
    "get_backend",
    "backend_names",
    "segment_nuclei",
    "segment_cells_classical",
    "estimate_nucleus_diameter",
    "crop_positions",
    "crop_cell",
    "crop_mask",
    "black_fraction",
    "CellTable",
    "CellCrops",
    "EvaluationSet",
    "prepare_cells",
    "evaluation_set",
    "read_cell_labels",
    "write_cell_labels",
    "format_cells_summary",
    "write_contact_sheet",
    "export_embeddings",
    "export_cell_embeddings",
    "cells_command",
    "cells_cache_dir",
]
