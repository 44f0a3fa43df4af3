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
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable, Sequence

import numpy as np
import pandas as pd

from ocbench import paths
from ocbench._io import atomic_path, atomic_write, json_sha256, sha256_bytes, sha256_file, slug
from ocbench.data.content import listing_version
from ocbench.errors import ConfigError, DataError
from ocbench.registry import Registry

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

#: Bump when the mask files or the cell table change meaning: old ones are no longer reused.
CELLS_FORMAT = 1

#: What ``--cell-labels FILE`` reads (also in ``ocbench data cells --help``).
CELL_LABELS_FORMAT = """\
Expert cell labels: a UTF-8 CSV file with a header row and one row per reviewed cell.
Identify each cell either by its cell id (as in the cell table that `ocbench data cells` writes):
    cell_id,labels
    OC-FOV_..._FID00030311#c0007,nucleoplasm;cytoplasmic
or by its FOV and a point inside the cell (pixel row y and column x of the FOV image; the cell
whose mask contains the point is taken, so the file does not depend on the segmentation backend):
    fov_id,y,x,labels
    OC-FOV_..._FID00030311,212.5,388,nucleoplasm
labels: the cell's compartments, separated by ';', from the dataset's class names. A cell id or a
point listed twice, an unknown FOV, cell id or class is an error. A point outside every cell mask, or a point
whose mask also holds another listed point (the segmentation merged cells the expert told apart),
is left out and counted in the summary. Only the listed cells are evaluated.""".strip()

_LABEL_SEP = ";"


# =============================================================================================
# Crop geometry
# =============================================================================================


@dataclass(frozen=True)
class CropSettings:
    """How a cell is cut out: ``size`` px cut around the centroid, zoomed ``zoom`` x about its centre
    to a ``size`` px output; ``mask_outside``: zero the pixels outside the cell's own mask."""

    size: int = 512
    zoom: float = 2.0
    mask_outside: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or not 4 <= self.size <= 4096:
            raise ConfigError(f"crop size must be an integer between 4 and 4096 px, got {self.size!r}")
        if not (isinstance(self.zoom, (int, float)) and math.isfinite(self.zoom) and 0.25 <= self.zoom <= 16):
            raise ConfigError(f"crop zoom must be a number between 0.25 and 16, got {self.zoom!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"size": int(self.size), "zoom": float(self.zoom), "mask_outside": bool(self.mask_outside)}


def crop_positions(center: float, settings: CropSettings) -> np.ndarray:
    """Source coordinates (along one axis) of the ``size`` output pixels of a crop centred at ``center``.

    Output pixel ``u`` shows source position ``center + (u - (size - 1) / 2) / zoom``: the output's
    centre (between the two middle pixels for an even size) is exactly the centroid.
    """
    u = np.arange(settings.size, dtype=np.float64)
    return center + (u - (settings.size - 1) / 2.0) / float(settings.zoom)


def _nearest(positions: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nearest source pixel of each position and whether it lies on the image ([-0.5, n - 0.5))."""
    index = np.floor(positions + 0.5).astype(np.int64)
    valid = (index >= 0) & (index < n)
    return np.clip(index, 0, n - 1), valid


def _linear(positions: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear taps along one axis: (i0, i1, weight of i1, on-image). Positions within half a pixel
    of the border use the border pixel (the image is defined over its pixels' whole extent), and
    positions off the image are padding (0), exactly where :func:`_nearest` says so too."""
    valid = (positions >= -0.5) & (positions < n - 0.5)
    p = np.clip(positions, 0.0, n - 1.0)
    i0 = np.floor(p).astype(np.int64)
    i1 = np.minimum(i0 + 1, n - 1)
    return i0, i1, p - i0, valid


def crop_mask(mask: np.ndarray, centroid: Sequence[float], settings: CropSettings) -> np.ndarray:
    """``mask`` (H, W) bool in crop coordinates (nearest neighbour; False off the image)."""
    h, w = mask.shape
    rows, rows_ok = _nearest(crop_positions(float(centroid[0]), settings), h)
    cols, cols_ok = _nearest(crop_positions(float(centroid[1]), settings), w)
    out = mask[np.ix_(rows, cols)]
    return out & rows_ok[:, None] & cols_ok[None, :]


def crop_cell(
    image: np.ndarray, centroid: Sequence[float], settings: CropSettings, mask: np.ndarray | None = None
) -> np.ndarray:
    """Cut one cell from ``image`` (C, H, W): (C, size, size) uint16, see :class:`CropSettings`.

    ``mask`` (H, W) bool is this cell's mask; it is applied when ``settings.mask_outside``.
    """
    image = np.asarray(image)
    if image.ndim != 3:
        raise DataError(f"crop: expected a (channels, H, W) image, got shape {image.shape}")
    _, h, w = image.shape
    y0, y1, wy, y_ok = _linear(crop_positions(float(centroid[0]), settings), h)
    x0, x1, wx, x_ok = _linear(crop_positions(float(centroid[1]), settings), w)
    img = image.astype(np.float32, copy=False)
    wy = wy.astype(np.float32)[:, None]
    wx = wx.astype(np.float32)[None, :]
    top = img[:, y0][:, :, x0] * (1 - wx) + img[:, y0][:, :, x1] * wx
    bottom = img[:, y1][:, :, x0] * (1 - wx) + img[:, y1][:, :, x1] * wx
    out = top * (1 - wy) + bottom * wy
    keep = y_ok[:, None] & x_ok[None, :]
    if settings.mask_outside:
        if mask is None:
            raise DataError("crop: mask_outside is set but no cell mask was given")
        keep = keep & crop_mask(np.asarray(mask, dtype=bool), centroid, settings)
    out *= keep[None]
    return np.clip(np.rint(out), 0, 65535).astype(np.uint16)


def _axis_counts(center: float, n: int, settings: CropSettings) -> np.ndarray:
    """How many output pixels (along one axis) show each source pixel (0 for unseen ones)."""
    index, valid = _nearest(crop_positions(center, settings), n)
    return np.bincount(index[valid], minlength=n)


def black_fraction(
    mask: np.ndarray | tuple[np.ndarray, np.ndarray],
    centroid: Sequence[float],
    settings: CropSettings,
    shape: tuple[int, int] | None = None,
) -> float:
    """Fraction of the crop's pixels that are black: off the image or (``mask_outside``) not this cell.

    ``mask``: the cell's (H, W) bool mask, or its pixel coordinates ``(ys, xs)`` with ``shape``.
    Computed without cutting the crop: output pixel counts per source row and column multiply.
    """
    if isinstance(mask, tuple):
        ys, xs = mask
        if shape is None:
            raise ValueError("black_fraction: shape is needed with pixel coordinates")
        h, w = shape
    else:
        h, w = mask.shape
        ys, xs = np.nonzero(mask)
    rows = _axis_counts(float(centroid[0]), h, settings)
    cols = _axis_counts(float(centroid[1]), w, settings)
    if settings.mask_outside:
        covered = float(np.dot(rows[ys].astype(np.float64), cols[xs].astype(np.float64)))
    else:
        covered = float(rows.sum()) * float(cols.sum())
    return 1.0 - covered / float(settings.size * settings.size)


# =============================================================================================
# Segmentation backends
# =============================================================================================


def _channel(image: np.ndarray, channel_names: Sequence[str], name: str, backend: str) -> np.ndarray:
    names = list(channel_names)
    if name not in names:
        raise ConfigError(f"segmentation backend {backend}: the dataset has no {name!r} channel (it has {', '.join(names)})")
    return np.asarray(image[names.index(name)])


class SegmentationBackend:
    """One way of turning a FOV into a label image (0 background, 1..n cells).

    Subclasses are frozen dataclasses whose fields are their settings (every field changes the
    masks, so all of them key the mask folder) and set ``name``; ``segment`` gets the FOV as the
    reader returns it (C, H, W) with the dataset card's channel names.
    """

    name: ClassVar[str] = ""
    #: Bump when the algorithm's output changes: saved masks of another version are not reused.
    version: ClassVar[int] = 1
    #: pip extra providing what the backend needs (named in the error when it is missing).
    extra: ClassVar[str | None] = "singlecell"

    def settings(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def identity(self) -> dict[str, Any]:
        """Everything that changes the masks (keys the mask store)."""
        return {"name": self.name, "version": self.version, "settings": self.settings()}

    def describe(self) -> str:
        text = ", ".join(f"{k}={v}" for k, v in self.settings().items())
        return f"{self.name} ({text})" if text else self.name

    def check_available(self) -> None:
        """Import what the backend needs; a one-line ConfigError naming what to install."""

    def check_channels(self, channel_names: Sequence[str]) -> None:
        for name in (getattr(self, "segmentation_channel", None), getattr(self, "nucleus_channel", None)):
            if name is not None and name not in channel_names:
                raise ConfigError(
                    f"segmentation backend {self.name}: the dataset has no {name!r} channel "
                    f"(it has {', '.join(channel_names)}); set segmentation_channel / nucleus_channel"
                )

    def segment(self, image: np.ndarray, channel_names: Sequence[str]) -> np.ndarray:
        raise NotImplementedError


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _need_skimage(what: str) -> None:
    try:
        import skimage  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"{what} needs the Python package scikit-image, which is not installed; run: pip install 'ocbench[cells]' (scikit-image alone)"
        ) from None


@dataclass(frozen=True)
class ClassicalBackend(SegmentationBackend):
    """Nucleus seeds and a watershed (scikit-image), no model download.

    Nuclei: Otsu threshold of the log of the smoothed nucleus channel, touching nuclei split by a
    watershed from one seed per smooth intensity bump (:func:`segment_nuclei`). Cells: from
    each nucleus outwards (watershed on the distance to the nuclei, so touching cells split half
    way) over the protein foreground (Otsu on the log of the protein channel smoothed at a quarter
    nucleus diameter) and the nuclei, at most ``cell_reach`` nucleus diameters beyond the nucleus.
    ``nucleus_diameter`` 0 estimates it per FOV (twice the median of the nuclei's largest inscribed
    radius), like Cellpose's automatic diameter.
    """

    name: ClassVar[str] = "classical"
    version: ClassVar[int] = 2

    nucleus_diameter: float = 0.0
    cell_reach: float = 0.6
    min_nucleus_fraction: float = 0.15
    segmentation_channel: str = "protein"
    nucleus_channel: str = "nucleus"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.nucleus_diameter) and self.nucleus_diameter >= 0):
            raise ConfigError(f"classical segmentation: nucleus_diameter must be >= 0 px (0: estimate), got {self.nucleus_diameter!r}")
        if not (math.isfinite(self.cell_reach) and 0 <= self.cell_reach <= 10):
            raise ConfigError(f"classical segmentation: cell_reach must be in [0, 10] nucleus diameters, got {self.cell_reach!r}")
        if not 0 <= self.min_nucleus_fraction < 1:
            raise ConfigError(f"classical segmentation: min_nucleus_fraction must be in [0, 1), got {self.min_nucleus_fraction!r}")

    def check_available(self) -> None:
        _need_skimage("segmentation backend classical")

    def segment(self, image: np.ndarray, channel_names: Sequence[str]) -> np.ndarray:
        protein = _channel(image, channel_names, self.segmentation_channel, self.name)
        nucleus = _channel(image, channel_names, self.nucleus_channel, self.name)
        return segment_cells_classical(
            protein, nucleus, nucleus_diameter=self.nucleus_diameter, cell_reach=self.cell_reach,
            min_nucleus_fraction=self.min_nucleus_fraction,
        )


_CELLPOSE_MODELS: dict[tuple[str, bool], Any] = {}


@dataclass(frozen=True)
class CellposeBackend(SegmentationBackend):
    """Cellpose v3 (``cyto3`` by default) as the paper ran it: protein as the segmentation channel,
    nucleus as the second channel, default settings, automatic diameter (``diameter`` 0), on the
    GPU when there is one. Cellpose downloads its weights on first use (kept in ~/.cellpose)."""

    name: ClassVar[str] = "cellpose"

    model: str = "cyto3"
    diameter: float = 0.0
    segmentation_channel: str = "protein"
    nucleus_channel: str = "nucleus"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.diameter) and self.diameter >= 0):
            raise ConfigError(f"cellpose segmentation: diameter must be >= 0 px (0: automatic), got {self.diameter!r}")

    def identity(self) -> dict[str, Any]:
        # The package version too: the same model name may give other masks in another release.
        try:
            import cellpose  # noqa: F401

            package = _cellpose_version()
        except ImportError:
            package = None
        return {**super().identity(), "cellpose": package}

    def check_available(self) -> None:
        try:
            import cellpose  # noqa: F401
        except ImportError:
            raise ConfigError(
                "segmentation backend cellpose needs the Python package cellpose 3.x, which is not installed; "
                "run: pip install 'ocbench[singlecell]' (or use the classical backend)"
            ) from None
        version = _cellpose_version()
        if not version.startswith("3."):
            raise ConfigError(
                f"segmentation backend cellpose needs cellpose 3.x (the paper's cyto3 model; {version} changed the "
                "models); run: pip install 'cellpose>=3,<4'"
            )

    def _load(self):
        self.check_available()
        import torch

        gpu = bool(torch.cuda.is_available())
        key = (self.model, gpu)
        if key not in _CELLPOSE_MODELS:
            from cellpose import models

            try:
                _CELLPOSE_MODELS[key] = models.Cellpose(gpu=gpu, model_type=self.model)
            except Exception as exc:  # urllib/HTTP/OS errors from cellpose's weight download
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise DataError(
                    f"cellpose could not load its {self.model} model ({type(exc).__name__}: {first}); it downloads the "
                    "weights on first use, which needs internet access once (they are kept in ~/.cellpose/models); "
                    "or use the classical backend"
                ) from None
        return _CELLPOSE_MODELS[key]

    def segment(self, image: np.ndarray, channel_names: Sequence[str]) -> np.ndarray:
        model = self._load()
        protein = _channel(image, channel_names, self.segmentation_channel, self.name)
        nucleus = _channel(image, channel_names, self.nucleus_channel, self.name)
        stacked = np.stack([protein, nucleus], axis=-1).astype(np.float32)
        # channels=[1, 2]: segment on the first channel with the second as the nucleus channel.
        result = model.eval(stacked, channels=[1, 2], channel_axis=2, diameter=self.diameter or None)
        return np.asarray(result[0]).astype(np.int32)


def _cellpose_version() -> str:
    try:
        from importlib.metadata import version

        return version("cellpose")
    except Exception:
        import cellpose

        return str(getattr(cellpose, "__version__", "unknown"))


def _check_backend_class(cls: Any) -> None:
    if not (isinstance(cls, type) and issubclass(cls, SegmentationBackend) and dataclasses.is_dataclass(cls) and cls.name):
        raise ConfigError(f"a segmentation backend must be a SegmentationBackend dataclass with a name, got {cls!r}")


def _register_builtin_backends() -> None:
    SEGMENTATION_BACKENDS.register("classical", ClassicalBackend)
    SEGMENTATION_BACKENDS.register("cellpose", CellposeBackend)


SEGMENTATION_BACKENDS: Registry[type[SegmentationBackend]] = Registry(
    "segmentation backend",
    entry_point_group="ocbench.segmentation",
    check=_check_backend_class,
    on_first_use=_register_builtin_backends,
)


def backend_names() -> list[str]:
    return sorted(SEGMENTATION_BACKENDS.names())


def get_backend(backend: str | SegmentationBackend, **settings: Any) -> SegmentationBackend:
    """A backend object from its name (and settings), or ``backend`` itself."""
    if isinstance(backend, SegmentationBackend):
        if settings:
            return dataclasses.replace(backend, **settings)  # type: ignore[type-var]
        return backend
    cls = SEGMENTATION_BACKENDS.get(str(backend))
    try:
        return cls(**settings)
    except TypeError as exc:
        valid = ", ".join(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
        raise ConfigError(f"segmentation backend {backend}: bad settings {sorted(settings)} ({exc}); valid: {valid}") from None


# -- the classical algorithm ------------------------------------------------------------------


def _log_smooth(image: np.ndarray, sigma: float) -> np.ndarray:
    from scipy import ndimage as ndi

    smooth = ndi.gaussian_filter(np.asarray(image, dtype=np.float32), sigma)
    return np.log1p(np.clip(smooth, 0, None))


def _otsu(values: np.ndarray) -> float | None:
    from skimage.filters import threshold_otsu

    if values.size == 0 or float(values.max()) <= float(values.min()):
        return None
    return float(threshold_otsu(values))


def _foreground(image: np.ndarray, sigma: float) -> np.ndarray:
    log = _log_smooth(image, sigma)
    t = _otsu(log)
    return log > t if t is not None else np.zeros(log.shape, bool)


def estimate_nucleus_diameter(nucleus: np.ndarray) -> float:
    """Typical nucleus diameter (px): twice the median over nuclei (connected components of the
    Otsu mask) of their largest inscribed radius, which clumps of touching nuclei do not inflate.
    0 when no nucleus is found."""
    from scipy import ndimage as ndi

    mask = ndi.binary_fill_holes(_foreground(nucleus, 1.0))
    labels, n = ndi.label(mask)
    if n == 0:
        return 0.0
    edt = ndi.distance_transform_edt(mask)
    radii = ndi.maximum(edt, labels, index=np.arange(1, n + 1))
    radii = np.asarray(radii)[np.asarray(radii) >= 2.0]  # specks are noise, not nuclei
    return float(2.0 * np.median(radii)) if radii.size else 0.0


def segment_nuclei(nucleus: np.ndarray, diameter: float = 0.0, min_fraction: float = 0.15) -> np.ndarray:
    """Label image of the nuclei (int32, 0 background); see :class:`ClassicalBackend`.

    Foreground: Otsu on the log of the lightly smoothed image. Seeds: peaks, at least 0.45
    diameters apart, of the image smoothed at a quarter diameter (one smooth bump per nucleus)
    damped near the mask edge, so that touching nuclei get a seed each even where no dark gap
    separates them at the threshold; the watershed of that landscape splits them.
    """
    _need_skimage("nucleus segmentation")
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    d = float(diameter) or estimate_nucleus_diameter(nucleus)
    if d <= 0:
        return np.zeros(nucleus.shape, np.int32)
    mask = ndi.binary_fill_holes(_foreground(nucleus, max(1.0, d / 30.0)))
    components, n = ndi.label(mask)
    if n == 0:
        return np.zeros(nucleus.shape, np.int32)
    min_area = min_fraction * math.pi * (d / 2.0) ** 2
    areas = np.bincount(components.ravel(), minlength=n + 1)
    mask &= (areas >= min_area)[components]
    components, n = ndi.label(mask)
    if n == 0:
        return np.zeros(nucleus.shape, np.int32)
    blob = ndi.gaussian_filter(np.asarray(nucleus, dtype=np.float32), d / 4.0)
    edt = ndi.distance_transform_edt(mask)
    scale = float(np.percentile(blob[mask], 95)) or 1.0
    landscape = (blob / scale) * np.minimum(edt / (d / 4.0), 1.0)
    peaks = peak_local_max(landscape, min_distance=max(1, int(0.45 * d)), labels=components, exclude_border=False)
    markers = np.zeros(nucleus.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    # A component without a peak (a flat blob) still becomes one nucleus.
    seeded = np.zeros(n + 1, bool)
    seeded[components[markers > 0]] = True
    for comp in np.flatnonzero(~seeded[1:]) + 1:
        where = np.argmax(np.where(components == comp, edt, -1))
        markers.flat[where] = markers.max() + 1
    nuclei = watershed(-landscape, markers, mask=mask)
    return _drop_small(nuclei, 0.5 * min_area)


def _drop_small(labels: np.ndarray, min_area: float) -> np.ndarray:
    """Remove labels smaller than ``min_area`` px and number the rest 1..n (int32)."""
    areas = np.bincount(labels.ravel())
    keep = areas >= min_area
    keep[0] = False
    new_id = np.zeros(areas.size, np.int32)
    new_id[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return new_id[labels]


def segment_cells_classical(
    protein: np.ndarray,
    nucleus: np.ndarray,
    *,
    nucleus_diameter: float = 0.0,
    cell_reach: float = 0.6,
    min_nucleus_fraction: float = 0.15,
) -> np.ndarray:
    """Label image of the cells (int32, 0 background): one cell per nucleus, see :class:`ClassicalBackend`."""
    _need_skimage("cell segmentation")
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    d = float(nucleus_diameter) or estimate_nucleus_diameter(nucleus)
    nuclei = segment_nuclei(nucleus, d, min_nucleus_fraction)
    if nuclei.max() == 0:
        return nuclei
    inside = nuclei > 0
    distance = ndi.distance_transform_edt(~inside)
    region = (_foreground(protein, max(1.0, d / 4.0)) | inside) & (distance <= cell_reach * d)
    region = ndi.binary_fill_holes(region)
    cells = watershed(distance, nuclei, mask=region)
    return cells.astype(np.int32)


# =============================================================================================
# Masks on disk
# =============================================================================================


def cells_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder of mask stores (default ``<ocbench cache>/cells``)."""
    return Path(cache_dir).expanduser() if cache_dir is not None else paths.cache_dir() / "cells"


def _dataset_root(dataset: Any) -> str | None:
    root = getattr(dataset, "root", None)
    if root is None:
        return None
    try:
        return str(Path(root).resolve())
    except OSError:
        return str(root)


def mask_key(dataset: Any, backend: SegmentationBackend) -> str:
    """``<dataset>__<backend>__<hash16>``: the mask store of this dataset, backend and settings."""
    identity = {
        "format": CELLS_FORMAT,
        "dataset": str(getattr(dataset, "name", "dataset")),
        "root": _dataset_root(dataset),
        "backend": backend.identity(),
    }
    return f"{slug(identity['dataset'])}__{slug(backend.name)}__{json_sha256(identity, default=str)[:16]}"


def _mask_file(masks_dir: Path, fov_id: str) -> Path:
    return masks_dir / f"{slug(fov_id)}.npz"


def _source_stat(dataset: Any, i: int) -> dict[str, Any] | None:
    """Size and times of FOV ``i``'s file (None when the dataset has no files, or when its items
    are not one file each: then the pixels' sha256 is the check, since ``path(i)`` would stand for
    one channel file of several)."""
    path_of = getattr(dataset, "path", None)
    if path_of is None or getattr(dataset, "content", None) is None:
        return None
    try:
        st = os.stat(path_of(i))
    except OSError:
        return None
    # ctime too: a tool that restores the mtime after rewriting a file cannot restore it.
    return {"path": str(path_of(i)), "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns),
            "ctime_ns": int(st.st_ctime_ns)}


def _known_sha256(dataset: Any, i: int) -> str | None:
    """FOV ``i``'s file sha256 from the dataset's content record (hashed once, when it was listed),
    while the file's size and times are still those recorded; else None (hash it here)."""
    content = getattr(dataset, "content", None)
    stat = _source_stat(dataset, i)
    if content is None or stat is None or not callable(getattr(content, "record", None)):
        return None
    record = content.record(i)
    return record[3] if list(record[:3]) == [stat["size"], stat["mtime_ns"], stat["ctime_ns"]] else None


def _fingerprint(dataset: Any, i: int, image: np.ndarray) -> dict[str, Any]:
    stat = _source_stat(dataset, i)
    if stat is not None:
        return {**stat, "sha256": _known_sha256(dataset, i) or sha256_file(stat["path"])}
    return {"pixels_sha256": sha256_bytes(np.ascontiguousarray(image).tobytes())}


def _mask_state(path: Path, dataset: Any, i: int) -> str:
    """``current`` (a saved mask of FOV ``i``'s file as it is now), ``changed`` (saved for other
    content of the file) or ``missing`` (none, or damaged)."""
    if not path.is_file():
        return "missing"
    try:
        with np.load(path) as z:
            stored = json.loads(str(z["meta"]))
    except Exception:
        return "missing"  # a damaged file is segmented again
    source = stored.get("source", {})
    known = _known_sha256(dataset, i)
    if known is not None:
        return "current" if source.get("sha256") == known else "changed"
    stat = _source_stat(dataset, i)
    if stat is None:
        same = "pixels_sha256" in source and source["pixels_sha256"] == sha256_bytes(
            np.ascontiguousarray(dataset.read(i)).tobytes()
        )
    elif all(source.get(k) == stat[k] for k in ("size", "mtime_ns", "ctime_ns")):
        same = True
    else:
        same = source.get("size") == stat["size"] and source.get("sha256") == sha256_file(stat["path"])
    return "current" if same else "changed"


def _write_mask(path: Path, labels: np.ndarray, meta: dict[str, Any]) -> None:
    dtype = np.uint16 if int(labels.max(initial=0)) < 65536 else np.int32
    buffer = io.BytesIO()
    np.savez_compressed(buffer, labels=labels.astype(dtype), meta=np.array(json.dumps(meta)))
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def _read_mask(path: Path) -> np.ndarray:
    try:
        with np.load(path) as z:
            return np.asarray(z["labels"]).astype(np.int32)
    except Exception as exc:
        raise DataError(f"cell mask {path} is unreadable ({type(exc).__name__}); delete it and run `ocbench data cells` again") from None


# =============================================================================================
# Labels
# =============================================================================================


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


# =============================================================================================
# The cell table
# =============================================================================================


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
) -> CellTable:
    """Segment every FOV of ``dataset`` (reusing saved masks; resumable) and return the cell table.

    ``backend``: a name (``classical``, ``cellpose``) or a :class:`SegmentationBackend`;
    ``crop``: crop settings (they set the black-pixel fractions); ``black_percentile``: crops whose
    black-pixel fraction is above this percentile of all crops are dropped (100 keeps all);
    ``labels``: the weak-label policy; ``cache_dir``: mask stores (default ``<cache>/cells``);
    ``progress``: a Progress (``.bar``/``.note``), True for a tqdm bar, None/False for silence;
    ``recompute``: segment every FOV again.
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
    states = ["missing" if recompute else _mask_state(_mask_file(masks_dir, fov_id), dataset, i)
              for i, fov_id in enumerate(fov_ids)]
    changed = [fov_id for fov_id, state in zip(fov_ids, states) if state == "changed"]
    if changed:
        import warnings

        names = ", ".join(changed[:3]) + (", ..." if len(changed) > 3 else "")
        warnings.warn(f"{len(changed)} image file(s) changed since their masks were made in {masks_dir} ({names}); "
                      "segmenting those again", stacklevel=2)
    segmented = 0
    seg_time = 0.0
    with _progress_bar(progress, n_fovs, f"segment ({backend.name})") as bar:
        for i, fov_id in enumerate(fov_ids):
            path = _mask_file(masks_dir, fov_id)
            if states[i] != "current":
                t0 = time.perf_counter()
                image = np.asarray(dataset.read(i))
                labels = np.asarray(backend.segment(image, channel_names))
                if labels.shape != image.shape[1:]:
                    raise DataError(
                        f"segmentation backend {backend.name} returned a {labels.shape} mask for FOV {fov_id} of "
                        f"shape {image.shape[1:]}"
                    )
                meta = {"fov_id": fov_id, "backend": backend.identity(),
                        "source": _fingerprint(dataset, i, image), "format": CELLS_FORMAT}
                _write_mask(path, labels, meta)
                segmented += 1
                seg_time += time.perf_counter() - t0
            bar.update(1)
    if segmented:
        _note(progress, f"segmented {segmented} of {n_fovs} FOVs with {backend.describe()} ({seg_time:.1f} s)")

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
        "n_fovs_segmented_now": segmented,
        "n_fovs_changed": len(changed),
        "n_masks": int(len(cells)),
        "n_dropped": int(over.sum()),
        "n_evaluated": int(cells["evaluated"].sum()),
        "n_fovs_eligible": int(eligible_fov.sum()),
        "fovs_not_eligible": {reason: why_fov.count(reason) for reason in sorted(set(why_fov) - {""})},
        "segmentation_s": round(seg_time, 3),
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


# =============================================================================================
# Crops as a dataset-like object
# =============================================================================================


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
        mask = labels == self._label[i] if self.table.crop.mask_outside else None
        return crop_cell(image, self._centroid[i], self.table.crop, mask)


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


def read_cell_labels(path: str | os.PathLike, table: CellTable) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Read an expert label file (:data:`CELL_LABELS_FORMAT`): table rows, labels (n, C) uint8 and
    how many listed points were left out (``outside_every_mask``, ``in_a_merged_cell``)."""
    path = Path(path).expanduser()
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise DataError(f"{path}: cannot read the cell labels file ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line}: not UTF-8 text (byte {exc.object[exc.start]:#04x}); "
                        "save the cell labels file as UTF-8 CSV") from None
    source = _CountedLines(text)
    reader = csv.DictReader(source)
    try:
        header = [h.strip() for h in (reader.fieldnames or [])]
    except csv.Error as exc:
        raise _csv_problem(path, source, exc) from None
    reader.fieldnames = header
    by_id = "cell_id" in header
    by_point = {"fov_id", "y", "x"} <= set(header)
    if "labels" not in header or not (by_id or by_point):
        raise DataError(
            f"{path}: expected the columns cell_id,labels or fov_id,y,x,labels (got {','.join(header) or 'no header'}); "
            "see `ocbench data cells --help` for the format"
        )
    class_names = list(table.class_names)
    class_index = {c: j for j, c in enumerate(class_names)}
    cells = table.cells
    row_of_id = {cid: r for r, cid in enumerate(cells["cell_id"])}
    fov_rows: dict[str, list[int]] = {}
    for r, fov in enumerate(cells["fov_id"]):
        fov_rows.setdefault(fov, []).append(r)
    masks: dict[str, np.ndarray] = {}
    listed: dict[int, tuple[int, np.ndarray, bool]] = {}  # table row -> (line, labels, listed by point)
    merged: set[int] = set()
    points: dict[tuple[str, int, int], int] = {}  # (FOV, pixel row, column) -> line, of the listed points
    skipped = {"outside_every_mask": 0, "in_a_merged_cell": 0}
    lines = 0
    for line_no, record in _csv_records(path, reader, source):
        lines += 1
        where = f"{path}: line {line_no}"
        names = [n.strip() for n in (record.get("labels") or "").split(_LABEL_SEP) if n.strip()]
        if not names:
            raise DataError(f"{where}: no labels; leave cells without a confirmed label out of the file")
        bad = [n for n in names if n not in class_index]
        if bad:
            raise DataError(f"{where}: unknown class(es) {bad}; valid: {', '.join(class_names)}")
        vector = np.zeros(len(class_names), np.uint8)
        vector[[class_index[n] for n in names]] = 1
        if by_id and (record.get("cell_id") or "").strip():
            cid = record["cell_id"].strip()
            if cid not in row_of_id:
                raise DataError(f"{where}: unknown cell id {cid!r} (not in the cell table of this segmentation)")
            r = row_of_id[cid]
            if r in listed:
                raise DataError(f"{where}: cell {cid} is already listed on line {listed[r][0]}")
            listed[r] = (line_no, vector, False)
        elif by_point:
            fov = (record.get("fov_id") or "").strip()
            if fov not in fov_rows:
                raise DataError(f"{where}: FOV {fov!r} has no cells in this dataset's cell table")
            try:
                y, x = float(record["y"]), float(record["x"])
            except (TypeError, ValueError):
                y = x = math.nan
            if not (math.isfinite(y) and math.isfinite(x)):  # float() also takes "nan" and "inf"
                raise DataError(
                    f"{where}: y and x must be finite numbers (the cell's pixel row and column, e.g. 41.5), "
                    f"got {record.get('y')!r}, {record.get('x')!r}; fix the point or leave the line out"
                )
            if fov not in masks:
                masks[fov] = table.mask(fov)
            mask = masks[fov]
            yi, xi = int(math.floor(y + 0.5)), int(math.floor(x + 0.5))
            if (fov, yi, xi) in points:  # the same point again is a copy, not a second cell
                raise DataError(f"{where}: duplicate of line {points[fov, yi, xi]} (the same point of FOV {fov}); list each cell once")
            points[fov, yi, xi] = line_no
            label = int(mask[yi, xi]) if 0 <= yi < mask.shape[0] and 0 <= xi < mask.shape[1] else 0
            match = [r for r in fov_rows[fov] if int(cells.at[r, "mask_label"]) == label] if label else []
            if not match:
                skipped["outside_every_mask"] += 1
                continue
            r = match[0]
            if r in listed:
                if not listed[r][2]:
                    raise DataError(f"{where}: cell {cells.at[r, 'cell_id']} is already listed by id on line {listed[r][0]}")
                merged.add(r)  # two reviewed cells in one mask: neither label can be trusted for it
                skipped["in_a_merged_cell"] += 1
                continue
            listed[r] = (line_no, vector, True)
        else:
            raise DataError(f"{where}: no cell_id and no fov_id,y,x given")
    skipped["in_a_merged_cell"] += len(merged)
    rows = sorted(r for r in listed if r not in merged)  # table order: cells of one FOV stay together
    if not rows:
        raise DataError(
            f"{path}: none of the {lines} listed cells matched this segmentation "
            f"({skipped['outside_every_mask']} points outside every cell mask, {skipped['in_a_merged_cell']} in merged cells)"
            if lines else f"{path}: no cells listed"
        )
    return np.asarray(rows, dtype=np.int64), np.stack([listed[r][1] for r in rows]), skipped


class _CountedLines:
    """The lines of a text for a CSV reader, counting how many it has taken (the line a row ends
    on, or the one it failed on: csv's own ``line_num`` lags by one on some errors)."""

    def __init__(self, text: str):
        self._lines = iter(io.StringIO(text))
        self.line = 0

    def __iter__(self) -> "_CountedLines":
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        self.line += 1
        return line


def _csv_problem(path: Path, source: _CountedLines, exc: csv.Error) -> DataError:
    """A malformed CSV row (e.g. a field over csv's size limit) as one line naming it."""
    text = str(exc)
    if "field larger than field limit" in text:
        text = f"a field is longer than {csv.field_size_limit():,} characters (csv's limit); is this a cell labels file?"
    return DataError(f"{path}: line {source.line}: not a readable CSV row ({text}); see `ocbench data cells --help` for the format")


def _csv_records(path: Path, reader: Any, source: _CountedLines) -> Iterable[tuple[int, dict]]:
    """``(line number, row)`` of a CSV reader over ``source``; a malformed row is a one-line DataError naming its line."""
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise _csv_problem(path, source, exc) from None
        yield source.line, record


def write_cell_labels(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> Path:
    """Write a cell labels file; each record has ``cell_id`` or ``fov_id, y, x``, and ``labels``
    (a list of class names or a ';'-separated string). The demo writes its synthetic expert file with it."""
    records = list(records)
    by_id = all("cell_id" in r for r in records)
    columns = ["cell_id", "labels"] if by_id else ["fov_id", "y", "x", "labels"]
    path = Path(path)
    with atomic_write(path) as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(columns)
        for r in records:
            labels = r["labels"] if isinstance(r["labels"], str) else _LABEL_SEP.join(r["labels"])
            writer.writerow([r["cell_id"], labels] if by_id else [r["fov_id"], f"{float(r['y']):.2f}", f"{float(r['x']):.2f}", labels])
    return path


# =============================================================================================
# Summary, contact sheet, export
# =============================================================================================


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


def export_embeddings(
    path: str | os.PathLike,
    features: np.ndarray,
    ids: Sequence[str],
    labels: np.ndarray,
    groups: Sequence[str],
    class_names: Sequence[str],
    fovs: Sequence[str] | None = None,
) -> Path:
    """Write embeddings for use outside ocbench: ``.npz`` (arrays ``features`` (N, D) float32,
    ``ids`` (N,), ``labels`` (N, C) uint8 0/1, ``groups`` (N,: the protein, or the dataset card's
    group, that grouped splits and intervals go by), ``fovs`` (N,: the FOV each item comes from;
    ``ids`` when not given) and ``class_names`` (C,), strings as unicode arrays: ``np.load(path)``
    needs no pickle) or ``.parquet`` (one row per item: id, group, fov, one column per class, then
    ``f0000``...)."""
    path = Path(path).expanduser()
    x = np.asarray(features, dtype=np.float32)
    y = np.asarray(labels)
    n = len(ids)
    if x.ndim != 2 or x.shape[0] != n:
        raise DataError(f"export: features of shape {x.shape} for {n} ids")
    if y.shape != (n, len(class_names)) or not np.isin(y, (0, 1)).all():
        raise DataError(f"export: labels must be ({n}, {len(class_names)}) 0/1, got {y.shape}")
    fovs = list(ids) if fovs is None else list(fovs)
    if len(groups) != n or len(fovs) != n:
        raise DataError(f"export: {len(groups)} groups and {len(fovs)} FOVs for {n} ids")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer, features=x, ids=np.asarray(list(ids), dtype=str), labels=y.astype(np.uint8),
            groups=np.asarray([str(g) for g in groups], dtype=str), fovs=np.asarray([str(f) for f in fovs], dtype=str),
            class_names=np.asarray(list(class_names), dtype=str),
        )
        with atomic_path(path) as tmp:
            tmp.write_bytes(buffer.getvalue())
    elif suffix == ".parquet":
        frame = pd.DataFrame({"id": list(ids), "group": [str(g) for g in groups], "fov": [str(f) for f in fovs]})
        frame = pd.concat(
            [frame, pd.DataFrame(y.astype(np.uint8), columns=list(class_names)),
             pd.DataFrame(x, columns=[f"f{j:04d}" for j in range(x.shape[1])])], axis=1,
        )
        try:
            with atomic_path(path) as tmp:
                frame.to_parquet(tmp, index=False)
        except ImportError:
            raise ConfigError("writing .parquet needs pyarrow, which is not installed; pip install pyarrow, or export to .npz") from None
    else:
        raise ConfigError(f"{path}: export format must be .npz or .parquet (from the file name)")
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
) -> str:
    """What ``ocbench data cells`` does: segment (resuming), build the table, check an expert file,
    draw the contact sheet; returns the summary to print."""
    table = prepare_cells(
        dataset, backend, crop=crop, black_percentile=black_percentile, labels=labels, cache_dir=cache_dir,
        progress=progress, recompute=recompute,
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
