"""The CellProfiler baseline: per-cell measurements from cp-measure, the field's standard profile.

The measurements are CellProfiler's own (the ``cp-measure`` package reimplements its Measure*
modules as functions; ``pip install 'ocbench[cellprofiler]'``), taken per cell on a label image:

- object (from the mask alone): size and shape (area, perimeter, axes, eccentricity, solidity,
  form factor, radii, normalised and Hu moments, inertia tensor, ...) and the Feret diameters;
- per channel: intensity (integrated, mean, std, min, max, quartiles, MAD, mass displacement and
  the same on the object's edge), Haralick texture (13 features in 4 directions at a distance of
  :data:`TEXTURE_SCALE` px, 256 grey levels), granularity (a spectrum of
  :data:`GRANULARITY_LENGTH` steps on the image subsampled by :data:`GRANULARITY_SUBSAMPLE`) and
  radial distribution (:data:`RADIAL_BINS` rings: fraction, mean fraction, coefficient of variation);
- between the first two channels: Pearson correlation and slope, Manders and rank-weighted
  colocalization coefficients.

Left out, to keep a 64 px demo under a few minutes on two cores: Zernike shape and radial Zernike
moments, Costes colocalization (a threshold search per cell), and positions (centres, bounding
boxes, raw spatial and central moments), which say where a cell lies, not what it is.

Which cells. Input: model input (N, C, H, W) of raw counts (the card's intensity ``raw``). An image
with at least :data:`CROP_ZERO_FRACTION` of its pixels zero in every channel is a cell crop as the
single-cell track cuts it (everything outside the cell's own mask is zero; real and synthetic
microscopy never records an exact zero): its nonzero pixels are the one cell. Any other image is a
field of view: it is segmented into cells with the single-cell track's classical backend
(:class:`ocbench.data.cells.ClassicalBackend`, default settings, on the same counts), and its
profile is the median and the median absolute deviation of each measurement over its cells, as
image-based profiling aggregates cells per well. A crop's profile is its cell's measurements (MAD
0). The last feature is the number of cells. Before measuring, each channel is stretched to [0, 1]
between 0 and its 99.9th percentile over the measured cells' pixels (CellProfiler's
RescaleIntensity: the grey-level quantisation of the texture then spans the cells' range).

A measurement that is not finite for a cell (texture of a cell too small for the scale, a radial
ring without pixels) is missing: the median and MAD skip it, and a feature missing on every cell
of an image is 0. Constant features are left in (the card's robust standardisation then centres
them to 0). Features are computed in float64 per image, so they do not depend on the batch.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable

import numpy as np
import torch

from ocbench.errors import ConfigError

#: Bump when any feature's definition changes (part of the backbone "revision", with cp-measure's version).
CELLPROFILER_VERSION = 1

TEXTURE_SCALE = 3
TEXTURE_GRAY_LEVELS = 16
GRANULARITY_SUBSAMPLE = 0.5
GRANULARITY_LENGTH = 8
RADIAL_BINS = 4
#: Share of all-channel-zero pixels from which an image is read as a masked cell crop.
CROP_ZERO_FRACTION = 0.01
#: Upper percentile of the cells' pixels that each channel is stretched to.
STRETCH_PERCENTILE = 99.9
#: A crop is measured on its cell's bounding box with this margin (px): faster, and independent of where the cell lies.
_CROP_MARGIN = 8

#: Measurement names that say where an object lies (or are undefined by construction), not what it is.
_LEFT_OUT_PREFIXES = ("Center_", "BoundingBoxMinimum_", "BoundingBoxMaximum_", "SpatialMoment_", "CentralMoment_", "Location_")
_LEFT_OUT = {"NormalizedMoment_0_0", "NormalizedMoment_0_1", "NormalizedMoment_1_0"}

INSTALL_HINT = "pip install 'ocbench[cellprofiler]'"


def cp_measure_version() -> str:
    """The installed cp-measure's version; a one-line ConfigError naming the install command if absent."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        import cp_measure  # noqa: F401

        return version("cp_measure")
    except (ImportError, PackageNotFoundError):
        raise ConfigError(
            f"the cellprofiler backbone needs the Python package cp-measure, which is not installed; run: {INSTALL_HINT}"
        ) from None


def revision() -> str:
    """What the features depend on besides the card: this module's version, cp-measure's and the
    version of the segmentation that cuts FOVs into cells (so the embedding cache follows them)."""
    from ocbench.data.cells import ClassicalBackend

    return f"cellprofiler-v{CELLPROFILER_VERSION}-cp_measure{cp_measure_version()}-classical-v{ClassicalBackend.version}"


def _measurements() -> tuple[list[tuple[str, Callable]], list[tuple[str, Callable]], list[tuple[str, Callable]]]:
    """(object, per-channel, cross-channel) measurement functions: ``fn(labels, pixels...) -> {name: per-label values}``."""
    cp_measure_version()
    from cp_measure.bulk import get_core_measurements, get_correlation_measurements

    core = get_core_measurements()
    corr = get_correlation_measurements()
    objects = [
        ("SizeShape", lambda labels: core["sizeshape"](labels, None)),
        ("Feret", lambda labels: core["feret"](labels, None)),
    ]
    per_channel = [
        ("Intensity", lambda labels, pixels: core["intensity"](labels, pixels)),
        ("Texture", lambda labels, pixels: core["texture"](labels, pixels, scale=TEXTURE_SCALE, gray_levels=TEXTURE_GRAY_LEVELS)),
        ("Granularity", lambda labels, pixels: core["granularity"](
            labels, pixels, subsample_size=GRANULARITY_SUBSAMPLE, image_sample_size=GRANULARITY_SUBSAMPLE,
            granular_spectrum_length=GRANULARITY_LENGTH)),
        ("RadialDistribution", lambda labels, pixels: core["radial_distribution"](labels, pixels, bin_count=RADIAL_BINS)),
    ]
    cross = [
        ("Pearson", lambda labels, a, b: corr["pearson"](a, b, labels)),
        ("Manders", lambda labels, a, b: corr["manders_fold"](a, b, labels)),
        ("RWC", lambda labels, a, b: corr["rwc"](a, b, labels)),
    ]
    return objects, per_channel, cross


def _kept(name: str) -> bool:
    return not name.startswith(_LEFT_OUT_PREFIXES) and name not in _LEFT_OUT


def _columns(result: dict[str, Any], n_cells: int) -> tuple[list[str], list[np.ndarray]]:
    names, values = [], []
    for name, value in result.items():
        if not _kept(name):
            continue
        column = np.asarray(value, dtype=np.float64).reshape(-1)
        if column.shape[0] != n_cells:
            raise RuntimeError(f"cp-measure's {name} gave {column.shape[0]} values for {n_cells} cells")
        names.append(name)
        values.append(column)
    return names, values


def measure_cells(labels: np.ndarray, channels: np.ndarray, channel_names: tuple[str, ...]) -> tuple[list[str], np.ndarray]:
    """Per-cell measurements: (names, (n_cells, D) float64, non-finite values as NaN).

    ``labels`` (H, W) int, cells numbered 1..n; ``channels`` (C, H, W) float in [0, 1].
    """
    labels = np.ascontiguousarray(labels, dtype=np.int32)
    n_cells = int(labels.max())
    objects, per_channel, cross = _measurements()
    names: list[str] = []
    values: list[np.ndarray] = []

    def add(prefix: str, result: dict[str, Any]) -> None:
        column_names, columns = _columns(result, n_cells)
        names.extend(f"{prefix}.{name}" for name in column_names)
        values.extend(columns)

    import warnings

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # 0/0 of empty rings and the like: NaN, handled below
        for what, fn in objects:
            add(f"object.{what}", fn(labels))
        pixels = [np.ascontiguousarray(c, dtype=np.float64) for c in channels]
        for channel, image in zip(channel_names, pixels):
            for what, fn in per_channel:
                add(f"{channel}.{what}", fn(labels, image))
        if len(pixels) >= 2:
            for what, fn in cross:
                add(f"{channel_names[0]}~{channel_names[1]}.{what}", fn(labels, pixels[0], pixels[1]))
    table = np.stack(values, axis=1) if values else np.zeros((n_cells, 0))
    table[~np.isfinite(table)] = np.nan
    return names, table


@lru_cache(maxsize=8)
def cell_feature_names(channel_names: tuple[str, ...]) -> tuple[str, ...]:
    """The per-cell measurement names for these channels (measured once on a small synthetic cell)."""
    yy, xx = np.mgrid[:32, :32]
    disk = ((yy - 15.5) ** 2 + (xx - 15.5) ** 2 <= 12**2).astype(np.int32)
    image = np.stack([disk * (0.3 + 0.01 * ((yy + c * xx) % 7)) for c in range(len(channel_names))])
    return tuple(measure_cells(disk, image, channel_names)[0])


def feature_names(channel_names: tuple[str, ...]) -> list[str]:
    """The profile's features: the median of every cell measurement, then their MADs, then the cell count."""
    cells = cell_feature_names(tuple(channel_names))
    return [f"median.{n}" for n in cells] + [f"mad.{n}" for n in cells] + ["cell_count"]


def feature_dim(channel_names: tuple[str, ...]) -> int:
    return len(feature_names(channel_names))


def _stretch(channels: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Each channel divided by its :data:`STRETCH_PERCENTILE` percentile over ``inside``, clipped to [0, 1]."""
    out = np.zeros(channels.shape, dtype=np.float64)
    for c, image in enumerate(channels):
        values = image[inside]
        top = float(np.percentile(values, STRETCH_PERCENTILE)) if values.size else 0.0
        if top > 0:
            out[c] = np.clip(image / top, 0.0, 1.0)
    return out


def _cells_of(image: np.ndarray, channel_names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(labels, image): a masked crop's nonzero pixels are one cell (cut to its bounding box and a
    margin); a FOV is segmented by the single-cell track's classical backend."""
    zero = ~(image != 0).any(axis=0)
    if zero.mean() < CROP_ZERO_FRACTION:
        from ocbench.data.cells import ClassicalBackend

        return ClassicalBackend().segment(image, channel_names), image
    rows, cols = np.nonzero(~zero)
    if not rows.size:
        return np.zeros(zero.shape, np.int32), image
    box = (slice(max(0, rows.min() - _CROP_MARGIN), rows.max() + 1 + _CROP_MARGIN),
           slice(max(0, cols.min() - _CROP_MARGIN), cols.max() + 1 + _CROP_MARGIN))
    return (~zero[box]).astype(np.int32), image[(slice(None), *box)]


def profile_image(image: np.ndarray, channel_names: tuple[str, ...]) -> np.ndarray:
    """One image's profile (see the module): (feature_dim,) float64."""
    n_cell_features = len(cell_feature_names(channel_names))
    labels, image = _cells_of(np.asarray(image, dtype=np.float64), channel_names)
    n_cells = int(labels.max())
    if n_cells == 0:
        return np.zeros(2 * n_cell_features + 1)
    channels = _stretch(image, labels > 0)
    _, table = measure_cells(labels, channels, channel_names)
    if table.shape[1] != n_cell_features:
        raise RuntimeError(f"cp-measure gave {table.shape[1]} measurements per cell, expected {n_cell_features}")
    filled = np.where(np.isnan(table).all(axis=0), 0.0, table)  # missing on every cell: 0 (nanmedian would warn)
    median = np.nanmedian(filled, axis=0)
    mad = np.nanmedian(np.abs(filled - median), axis=0)
    return np.concatenate([median, mad, [float(n_cells)]])


class CellProfilerFeatures(torch.nn.Module):
    """Parameter-free profile extractor: (N, C, H, W) raw counts -> (N, feature_dim) float32."""

    def __init__(self, channel_names: tuple[str, ...]):
        super().__init__()
        cp_measure_version()
        self.channel_names = tuple(channel_names)
        self.dim = feature_dim(self.channel_names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != len(self.channel_names):
            raise ValueError(f"CellProfiler features expect (N, {len(self.channel_names)}, H, W); got {tuple(x.shape)}")
        images = x.detach().to("cpu", torch.float64).numpy()
        rows = [profile_image(image, self.channel_names) for image in images]
        out = np.stack(rows) if rows else np.zeros((0, self.dim))
        return torch.from_numpy(out.astype(np.float32)).to(x.device)
