"""The per-compartment localization patterns of the demo's protein channel.

Each of the 17 OpenCell compartments has a generator that draws, on one :class:`Field`, a
float32 image of roughly 0..1 (membrane rings, ER network, Golgi cap, nucleoli, punctae, ...):
:data:`PATTERNS` maps a compartment to its generator and :data:`BRIGHTNESS` says how bright a
compartment's peak is beside the others. The small drawing helpers they share come first.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scipy import ndimage as ndi

from ocbench.data.compartments import COMPARTMENTS
from ocbench.data.demo_field import Field, bbox, outline_radius


def _splat(size: int, ys: np.ndarray, xs: np.ndarray, weights: np.ndarray, sigma: float) -> np.ndarray:
    """Point sources at (ys, xs), blurred into spots of width ``sigma``."""
    image = np.zeros((size, size), np.float32)
    yi, xi = np.rint(ys).astype(int), np.rint(xs).astype(int)
    keep = (yi >= 0) & (yi < size) & (xi >= 0) & (xi < size)
    np.add.at(image, (yi[keep], xi[keep]), np.asarray(weights, np.float32)[keep])
    return ndi.gaussian_filter(image, sigma) * (2 * np.pi * sigma**2)  # peak ~ weight


def _segments(
    starts: np.ndarray, angles: np.ndarray, lengths: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points every half pixel along line segments centred on ``starts``, and each point's segment."""
    ys, xs, which = [], [], []
    for i, ((y, x), angle, length) in enumerate(zip(starts, angles, lengths)):
        t = np.arange(-length / 2, length / 2 + 1e-6, 0.5)
        ys.append(y + t * math.sin(angle))
        xs.append(x + t * math.cos(angle))
        which.append(np.full(len(t), i))
    if not ys:
        return np.zeros(0), np.zeros(0), np.zeros(0, int)
    return np.concatenate(ys), np.concatenate(xs), np.concatenate(which)


def _sample_in_cells(
    rng: np.random.Generator, f: Field, mask: np.ndarray, counts: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Random sub-pixel positions (y, x) in ``mask``: ``counts[0]..counts[1]`` in every cell that
    has mask pixels. Returns the points (n, 2) and the index of each point's cell."""
    ys, xs = np.nonzero(mask & (f.labels > 0))
    if len(ys) == 0:
        return np.zeros((0, 2)), np.zeros(0, int)
    cell_of = f.labels[ys, xs] - 1
    order = np.argsort(cell_of, kind="stable")  # one pass over the frame, not one per cell
    ys, xs, cell_of = ys[order], xs[order], cell_of[order]
    _, first, n_pixels = np.unique(cell_of, return_index=True, return_counts=True)
    n_each = rng.integers(counts[0], counts[1] + 1, size=len(first))
    pick = np.repeat(first, n_each) + (rng.random(n_each.sum()) * np.repeat(n_pixels, n_each)).astype(int)
    points = np.stack([ys[pick], xs[pick]], axis=1) + rng.uniform(-0.5, 0.5, size=(len(pick), 2))
    return points, cell_of[pick]


def smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Smooth random texture with zero mean and unit standard deviation."""
    field_ = ndi.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), sigma)
    return (field_ - field_.mean()) / (field_.std() + 1e-6)


def _per_cell(f: Field, counts: tuple[int, int], rng: np.random.Generator) -> list[tuple[int, int]]:
    """(cell index, how many items) for every cell with pixels in the frame."""
    present = np.unique(f.labels[f.labels > 0]) - 1
    return [(int(k), int(rng.integers(counts[0], counts[1] + 1))) for k in present]


# --------------------------------------------------------------------------------------------
# Compartment patterns: each returns a float32 image, roughly 0..1, for one FOV
# --------------------------------------------------------------------------------------------


def _nucleoplasm(f: Field, rng, hoechst) -> np.ndarray:
    texture = smooth_noise(rng, f.size, 1.0 * f.scale)
    return f.nucleus_soft * (0.85 + 0.12 * texture) * (1.0 - 0.8 * f.nucleoli_soft)


def _nucleolus_gc(f: Field, rng, hoechst) -> np.ndarray:
    return ndi.gaussian_filter(f.nucleoli_soft, 0.4 * f.scale) + 0.05 * f.nucleus_soft


def _nucleolus_fc_dfc(f: Field, rng, hoechst) -> np.ndarray:
    # Several small dots clustered inside each nucleolus (fibrillar centres), not the whole disc.
    ys, xs = [], []
    for spots in f.nucleoli:
        for y, x, radius in spots:
            n = int(rng.integers(3, 7))
            angle, reach = rng.uniform(0, 2 * np.pi, n), rng.uniform(0, 0.75 * radius, n)
            ys.append(y + reach * np.sin(angle))
            xs.append(x + reach * np.cos(angle))
    if not ys:
        return 0.05 * f.nucleus_soft
    ys, xs = np.concatenate(ys), np.concatenate(xs)
    return _splat(f.size, ys, xs, rng.uniform(0.6, 1.0, len(ys)), 0.45 * f.scale) + 0.12 * f.nucleoli_soft


def _nuclear_membrane(f: Field, rng, hoechst) -> np.ndarray:
    rim = np.exp(-((f.nucleus_edge_dist + 0.6) / (0.8 * f.scale)) ** 2)
    return rim * f.cell + 0.06 * f.nucleus_soft


def _chromatin(f: Field, rng, hoechst) -> np.ndarray:
    # Chromatin-bound proteins (histones) look like the DNA stain itself, clumps included.
    norm = hoechst / (np.percentile(hoechst[f.nucleus], 99) if f.nucleus.any() else 1.0)
    return np.clip(norm, 0, None) ** 1.4


def _nuclear_punctae(f: Field, rng, hoechst) -> np.ndarray:
    points, _ = _sample_in_cells(rng, f, f.nucleus & (f.nucleoli_soft < 0.5), (4, 12))
    dots = _splat(f.size, points[:, 0], points[:, 1], rng.uniform(0.5, 1.0, len(points)), 0.55 * f.scale)
    return dots + 0.12 * f.nucleus_soft


def _membrane(f: Field, rng, hoechst) -> np.ndarray:
    ring = np.exp(-((f.edge_dist / (0.9 * f.scale)) ** 2)) * f.cell
    return ndi.gaussian_filter(ring, 0.4 * f.scale) + 0.05 * f.cell


def _cell_contact(f: Field, rng, hoechst) -> np.ndarray:
    contact = np.exp(-((f.contact_dist / (1.0 * f.scale)) ** 2)) * f.cell
    ring = np.exp(-((f.edge_dist / (0.9 * f.scale)) ** 2)) * f.cell
    return contact + 0.2 * ring + 0.04 * f.cell


def _cytoplasmic(f: Field, rng, hoechst) -> np.ndarray:
    texture = smooth_noise(rng, f.size, 2.0 * f.scale)
    return ndi.gaussian_filter((f.cytoplasm * (0.9 + 0.08 * texture)).astype(np.float32), 0.5 * f.scale)


def _er(f: Field, rng, hoechst) -> np.ndarray:
    # Reticular network: the zero crossings of band-passed noise, densest around the nucleus, and
    # continuous with the nuclear envelope.
    band = ndi.gaussian_filter(rng.standard_normal((f.size, f.size)).astype(np.float32), 1.0 * f.scale)
    band -= ndi.gaussian_filter(band, 3.0 * f.scale)
    band /= band.std() + 1e-6
    network = np.exp(-((band / 0.35) ** 2))
    near_nucleus = 0.35 + 0.65 * np.exp(-np.clip(f.nucleus_edge_dist, 0, None) / (6.0 * f.scale))
    envelope = np.exp(-((f.nucleus_edge_dist - 0.5) / (0.9 * f.scale)) ** 2) * f.cell
    return network * f.cytoplasm * near_nucleus + 0.5 * envelope


def _golgi(f: Field, rng, hoechst) -> np.ndarray:
    # A perinuclear cap: a cluster of blobs on one side of the nucleus.
    ys, xs, ws = [], [], []
    for k, n in _per_cell(f, (14, 22), rng):
        cell = f.cells[k]
        direction = rng.uniform(0, 2 * np.pi)
        angles = direction + rng.normal(0, 0.3, n)
        reach = 0.5 * sum(cell.nucleus_axes) + rng.uniform(1.0, 2.5, n) * f.scale
        ys.append(cell.nucleus_center[0] + reach * np.sin(angles))
        xs.append(cell.nucleus_center[1] + reach * np.cos(angles))
        ws.append(rng.uniform(0.6, 1.0, n))
    if not ys:
        return np.zeros((f.size, f.size), np.float32)
    blobs = _splat(f.size, np.concatenate(ys), np.concatenate(xs), np.concatenate(ws), 1.3 * f.scale)
    return blobs * ndi.gaussian_filter(f.cytoplasm.astype(np.float32), 0.6 * f.scale)


def _mitochondria(f: Field, rng, hoechst) -> np.ndarray:
    # Tubules packed through the cytoplasm (denser than vesicles, which are dots).
    starts, _ = _sample_in_cells(rng, f, f.cytoplasm, (30, 50))
    lengths = rng.uniform(3.0, 6.0, len(starts)) * f.scale
    ys, xs, _ = _segments(starts, rng.uniform(0, np.pi, len(starts)), lengths)
    tubes = _splat(f.size, ys, xs, np.full(len(ys), 0.45), 0.5 * f.scale)
    return tubes * f.cytoplasm + 0.03 * f.cytoplasm


def _vesicles(f: Field, rng, hoechst) -> np.ndarray:
    points, _ = _sample_in_cells(rng, f, f.cytoplasm, (14, 36))
    weights = rng.lognormal(0, 0.4, len(points))
    return _splat(f.size, points[:, 0], points[:, 1], weights, 0.55 * f.scale) + 0.04 * f.cytoplasm


def _centrosome(f: Field, rng, hoechst) -> np.ndarray:
    ys, xs = [], []
    for k, _ in _per_cell(f, (1, 1), rng):
        cell = f.cells[k]
        angle = rng.uniform(0, 2 * np.pi)
        reach = 0.5 * sum(cell.nucleus_axes) + 1.8 * f.scale
        y, x = cell.nucleus_center[0] + reach * math.sin(angle), cell.nucleus_center[1] + reach * math.cos(angle)
        ys.append(y)
        xs.append(x)
        if rng.random() < 0.45:  # duplicated centrosome: a close pair
            offset = rng.uniform(0, 2 * np.pi)
            ys.append(y + 1.6 * f.scale * math.sin(offset))
            xs.append(x + 1.6 * f.scale * math.cos(offset))
    dots = _splat(f.size, np.array(ys), np.array(xs), np.ones(len(ys)), 0.6 * f.scale)
    return dots + 0.03 * f.cytoplasm


def _cytoskeleton(f: Field, rng, hoechst) -> np.ndarray:
    # Long thin fibres crossing each cell, kept inside their own cell.
    starts, cell_of = _sample_in_cells(rng, f, f.cell, (6, 12))
    base = rng.uniform(0, np.pi, len(f.cells))  # fibres in a cell tend to run one way
    angles = base[cell_of] + rng.normal(0, 0.5, len(starts))
    radii = np.array([cell.radius for cell in f.cells])
    ys, xs, segment = _segments(starts, angles, 2.2 * radii[cell_of])
    yi, xi = np.clip(np.rint(ys).astype(int), 0, f.size - 1), np.clip(np.rint(xs).astype(int), 0, f.size - 1)
    inside_own_cell = f.labels[yi, xi] == cell_of[segment] + 1
    ys, xs = ys[inside_own_cell], xs[inside_own_cell]
    fibres = _splat(f.size, ys, xs, np.full(len(ys), 0.3), 0.4 * f.scale)
    return fibres * f.cell + 0.05 * f.cell


def _big_aggregates(f: Field, rng, hoechst) -> np.ndarray:
    # A few large, very bright blobs in some cells' cytoplasm.
    centres, _ = _sample_in_cells(rng, f, f.cytoplasm, (0, 2))
    if not len(centres):  # always at least one aggregate in the field
        centres, _ = _sample_in_cells(rng, f, f.cytoplasm if f.cytoplasm.any() else f.cell, (1, 1))
        centres = centres[:1]
    radii = rng.uniform(2.2, 3.8, len(centres)) * f.scale
    image = np.zeros((f.size, f.size), np.float32)
    for (y, x), r in zip(centres, radii):
        box = bbox(np.array([y, x]), r + 2, f.size)
        if box is not None:
            yy, xx = np.mgrid[box]
            disc = np.clip(r + 0.5 - np.hypot(yy - y, xx - x), 0, 1) * rng.uniform(0.8, 1.0)
            image[box] = np.maximum(image[box], disc)
    return ndi.gaussian_filter(image, 0.6 * f.scale) + 0.05 * f.cytoplasm


def _focal_adhesions(f: Field, rng, hoechst) -> np.ndarray:
    # Short streaks at the cell periphery, pointing outward.
    ys, xs = [], []
    for k, n in _per_cell(f, (5, 10), rng):
        cell = f.cells[k]
        theta = rng.uniform(0, 2 * np.pi, n)
        reach = outline_radius(cell, theta) * rng.uniform(0.75, 0.92, n)
        starts = np.stack([cell.center[0] + reach * np.sin(theta), cell.center[1] + reach * np.cos(theta)], 1)
        seg_y, seg_x, _ = _segments(starts, theta, rng.uniform(2.0, 4.0, n) * f.scale)
        ys.append(seg_y)
        xs.append(seg_x)
    if not ys:
        return np.zeros((f.size, f.size), np.float32)
    streaks = _splat(f.size, np.concatenate(ys), np.concatenate(xs), np.full(sum(map(len, ys)), 0.5), 0.45 * f.scale)
    return streaks * f.cell + 0.06 * f.cytoplasm


#: Compartment -> generator(field, rng, Hoechst signal), for the compartments a protein is labelled with.
PATTERNS: dict[str, Callable[[Field, np.random.Generator, np.ndarray], np.ndarray]] = {
    "membrane": _membrane,
    "vesicles": _vesicles,
    "er": _er,
    "golgi": _golgi,
    "mitochondria": _mitochondria,
    "centrosome": _centrosome,
    "cytoskeleton": _cytoskeleton,
    "chromatin": _chromatin,
    "nucleoplasm": _nucleoplasm,
    "nuclear_membrane": _nuclear_membrane,
    "nucleolus_gc": _nucleolus_gc,
    "nucleolus_fc_dfc": _nucleolus_fc_dfc,
    "nuclear_punctae": _nuclear_punctae,
    "big_aggregates": _big_aggregates,
    "cell_contact": _cell_contact,
    "focal_adhesions": _focal_adhesions,
    "cytoplasmic": _cytoplasmic,
}
assert set(PATTERNS) == set(COMPARTMENTS)

#: Peak brightness relative to other compartments (each pattern is scaled to peak 1 first).
BRIGHTNESS = {"big_aggregates": 2.0, "centrosome": 2.5, "golgi": 1.3, "nucleolus_gc": 1.2, "nucleolus_fc_dfc": 1.6}
