"""The classical segmentation: nucleus seeds and a watershed (scikit-image, no model download)."""

from __future__ import annotations

import math

import numpy as np

from ocbench.errors import ConfigError


def _need_skimage(what: str) -> None:
    try:
        import skimage  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"{what} needs the Python package scikit-image, which is not installed; run: pip install 'ocbench[cells]' (scikit-image alone)"
        ) from None


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
