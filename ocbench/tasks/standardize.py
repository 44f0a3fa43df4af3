"""Robust per-feature standardisation a backbone card may ask for (``feature_standardization``).

Hand-made features (``classical-stats``, CellProfiler measurements) mix magnitudes: an area in
pixels beside a correlation in [-1, 1]. A cosine k-NN on them sees the few largest features only:
every vector points the same way (on the demo the median cosine of a cell to its nearest neighbour
was 0.99998 before this), and neighbours are ranked by rounding. Image-based profiling standardises
each feature robustly first; so does ocbench when the card declares ``robust``:

- centre: the feature's median; scale: its interquartile range / 1.349 (the standard deviation of a
  normal distribution with that IQR), the standard deviation where the IQR is 0 (a feature that is
  mostly one value), 1 where the feature is constant (it is then only centred, and carries nothing);
- fitted on the rows a task may learn from without seeing labels of its evaluated items: each
  fold's training rows for the probes, all evaluated items for the (unsupervised) k-NN.

The probes' own z-score (``standardize``, on by default) is fitted on the same training rows and is
invariant to any per-feature shift and positive rescaling, so there the robust step changes nothing
and is only applied when the probe's z-score is switched off; the entry says which.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["robust_center_scale", "standardize_robust", "neighbour_diagnostics", "NEAR_TIE"]

#: Two similarities closer than this count as a near-tie (the k-NN ranks them by rounding).
NEAR_TIE = 1e-5
_IQR_TO_STD = 1.349


def robust_center_scale(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature (median, robust scale) of ``x`` (N, D), computed in float64 (see the module)."""
    a = np.asarray(x, dtype=np.float64)
    center = np.median(a, axis=0)
    q75, q25 = np.percentile(a, [75, 25], axis=0)
    size = np.maximum(1.0, np.abs(center))
    scale = (q75 - q25) / _IQR_TO_STD
    std = a.std(axis=0)
    scale = np.where(scale > 1e-9 * size, scale, std)
    scale = np.where(scale > 1e-9 * size, scale, 1.0)
    return center, scale


def standardize_robust(x: np.ndarray, fit_rows: np.ndarray | None = None) -> np.ndarray:
    """``x`` standardised with the robust centre and scale of ``x[fit_rows]`` (all rows by default), float32."""
    a = np.asarray(x, dtype=np.float64)
    center, scale = robust_center_scale(a if fit_rows is None else a[fit_rows])
    return ((a - center) / scale).astype(np.float32)


def neighbour_diagnostics(similarities: np.ndarray) -> dict[str, Any]:
    """How well separated each query's nearest neighbours are, from the k-NN's sorted cosine
    similarities (N, k >= 2): the median cosine to the nearest neighbour and the share of queries
    whose first and second neighbours are within :data:`NEAR_TIE` (ranked by rounding)."""
    s = np.asarray(similarities, dtype=np.float64)
    ok = np.isfinite(s[:, :2]).all(axis=1)
    if s.shape[1] < 2 or not ok.any():
        return {}
    first, second = s[ok, 0], s[ok, 1]
    return {
        "nearest_neighbour_cosine_median": float(np.median(first)),
        "near_tie_share": float(np.mean(first - second <= NEAR_TIE)),
        "near_tie_tolerance": NEAR_TIE,
        "queries": int(ok.sum()),
    }
