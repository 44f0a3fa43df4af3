"""Crop geometry: where a cell's crop samples its FOV, the crop itself and its black-pixel fraction.

A crop is centred at the mask centroid, a ``size`` x ``size`` cut zoomed ``zoom`` x about its centre,
bilinear, zero outside the image (and, with ``mask_outside``, outside the cell's own mask).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ocbench.errors import ConfigError, DataError


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


def crop_mask(mask: np.ndarray, centroid: Sequence[float], settings: CropSettings, label: int | None = None) -> np.ndarray:
    """``mask`` (H, W) bool in crop coordinates (nearest neighbour; False off the image).

    With ``label``, ``mask`` is a label image and the cell is ``mask == label``, compared only at
    the crop's pixels (not over the whole field of view, once per cell)."""
    h, w = mask.shape
    rows, rows_ok = _nearest(crop_positions(float(centroid[0]), settings), h)
    cols, cols_ok = _nearest(crop_positions(float(centroid[1]), settings), w)
    out = mask[np.ix_(rows, cols)]
    if label is not None:
        out = out == label
    return out & rows_ok[:, None] & cols_ok[None, :]


def crop_cell(
    image: np.ndarray,
    centroid: Sequence[float],
    settings: CropSettings,
    mask: np.ndarray | None = None,
    label: int | None = None,
) -> np.ndarray:
    """Cut one cell from ``image`` (C, H, W): (C, size, size) uint16, see :class:`CropSettings`.

    ``mask`` (H, W) bool is this cell's mask, or with ``label`` the FOV's label image (the cell is
    ``mask == label``); it is applied when ``settings.mask_outside``.
    """
    image = np.asarray(image)
    if image.ndim != 3:
        raise DataError(f"crop: expected a (channels, H, W) image, got shape {image.shape}")
    channels, h, w = image.shape
    y0, y1, wy, y_ok = _linear(crop_positions(float(centroid[0]), settings), h)
    x0, x1, wx, x_ok = _linear(crop_positions(float(centroid[1]), settings), w)
    keep = y_ok[:, None] & x_ok[None, :]
    if settings.mask_outside:
        if mask is None:
            raise DataError("crop: mask_outside is set but no cell mask was given")
        mask = np.asarray(mask) if label is not None else np.asarray(mask, dtype=bool)
        keep = keep & crop_mask(mask, centroid, settings, label)
    # Only the rows and columns where some pixel is kept are interpolated (a masked cell fills a
    # small part of its crop); every other pixel is 0 either way.
    kept_rows, kept_cols = np.flatnonzero(keep.any(axis=1)), np.flatnonzero(keep.any(axis=0))
    out = np.zeros((channels, settings.size, settings.size), dtype=np.uint16)
    if kept_rows.size == 0:
        return out
    rows = slice(int(kept_rows[0]), int(kept_rows[-1]) + 1)
    cols = slice(int(kept_cols[0]), int(kept_cols[-1]) + 1)
    y0, y1, wy = y0[rows], y1[rows], wy[rows]
    x0, x1, wx = x0[cols], x1[cols], wx[cols]
    # Only the source window those pixels sample is converted, and the bilinear sum runs along x on
    # that window's rows first, then along y: the same products and sums as tap by tap, fewer of them.
    top_row, left_col = int(y0.min()), int(x0.min())
    window = image[:, top_row:int(y1.max()) + 1, left_col:int(x1.max()) + 1].astype(np.float32)
    y0, y1, x0, x1 = y0 - top_row, y1 - top_row, x0 - left_col, x1 - left_col
    wy = wy.astype(np.float32)[:, None]
    wx = wx.astype(np.float32)[None, :]
    along_x = window[:, :, x0] * (1 - wx) + window[:, :, x1] * wx
    block = along_x[:, y0] * (1 - wy) + along_x[:, y1] * wy
    block *= keep[rows, cols][None]
    out[:, rows, cols] = np.clip(np.rint(block), 0, 65535).astype(np.uint16)
    return out


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
