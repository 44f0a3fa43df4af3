"""The cell layout of one synthetic field of view.

:func:`build_field` places a few irregular cells (packed so that some touch), each with an
elliptic nucleus and a few nucleoli, and precomputes the per-pixel maps that the compartment
patterns draw from (cell labels, soft nucleus and nucleoli masks, distances to outlines and to
cell-cell contacts), returned as one :class:`Field`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi


@dataclass
class Cell:
    center: np.ndarray  # (y, x)
    radius: float
    harmonics: np.ndarray  # (k, amplitude, phase) rows for the outline
    nucleus_center: np.ndarray
    nucleus_axes: tuple[float, float]
    nucleus_angle: float
    mitotic: bool


@dataclass
class Field:
    """Geometry of one FOV plus per-pixel maps every pattern needs."""

    size: int
    scale: float
    cells: list[Cell]
    labels: np.ndarray  # int32, 0 background, k+1 cell k
    nucleus: np.ndarray  # bool
    nucleus_soft: np.ndarray  # float32 in [0, 1]
    nucleus_edge_dist: np.ndarray  # float32 px, signed distance to own nucleus edge (<0 inside)
    edge_dist: np.ndarray  # float32 px, distance to the nearest cell outline pixel
    contact_dist: np.ndarray  # float32 px, distance to the nearest cell-cell contact pixel
    nucleoli: list[list[tuple[float, float, float]]]  # per cell: (y, x, radius)
    nucleoli_soft: np.ndarray  # float32 in [0, 1]

    @property
    def cell(self) -> np.ndarray:
        return self.labels > 0

    @property
    def cytoplasm(self) -> np.ndarray:
        return self.cell & ~self.nucleus


def outline_radius(cell: Cell, theta: np.ndarray) -> np.ndarray:
    r = np.ones_like(theta)
    for k, amplitude, phase in cell.harmonics:
        r += amplitude * np.cos(k * theta + phase)
    return cell.radius * r


def _place_cells(rng: np.random.Generator, size: int, cell_radius: float, density: float = 1.0) -> list[Cell]:
    # HEK293T grow in dense clumps: pack cells so that many touch; centres may lie just outside the
    # frame so that cells are cut at the edges like in a real crop.
    coverage = rng.uniform(0.75, 1.0) * density
    n_target = max(1, round(coverage * size * size / (math.pi * cell_radius**2)))
    min_dist = 1.3 * cell_radius
    margin = 0.3 * cell_radius
    centers = np.zeros((0, 2))
    for _ in range(60 * n_target):
        if len(centers) >= n_target:
            break
        candidate = rng.uniform(-margin, size + margin, size=2)
        if not len(centers) or np.hypot(*(centers - candidate).T).min() >= min_dist:
            centers = np.vstack([centers, candidate])
    cells = []
    for center in centers:
        radius = cell_radius * rng.uniform(0.85, 1.2)
        harmonics = np.array([(k, rng.uniform(0.0, 0.09), rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4)])
        mitotic = rng.random() < 0.06
        ratio = rng.uniform(0.5, 0.62) * (0.72 if mitotic else 1.0)
        eccentricity = rng.uniform(0.0, 0.2)
        axes = (radius * ratio * (1 + eccentricity), radius * ratio * (1 - eccentricity))
        offset = rng.normal(0, 0.08 * radius, size=2)
        cells.append(
            Cell(
                center=center,
                radius=radius,
                harmonics=harmonics,
                nucleus_center=center + offset,
                nucleus_axes=axes,
                nucleus_angle=rng.uniform(0, np.pi),
                mitotic=mitotic,
            )
        )
    return cells


def bbox(center: np.ndarray, reach: float, size: int) -> tuple[slice, slice] | None:
    y0, x0 = (max(0, int(math.floor(c - reach))) for c in center)
    y1, x1 = (min(size, int(math.ceil(c + reach)) + 1) for c in center)
    if y0 >= y1 or x0 >= x1:
        return None
    return slice(y0, y1), slice(x0, x1)


def build_field(rng: np.random.Generator, size: int, cell_radius: float, density: float = 1.0) -> Field:
    """Place the cells of one FOV and compute the maps the patterns need (draws from ``rng``)."""
    scale = cell_radius / 17.0
    cells = _place_cells(rng, size, cell_radius, density)
    labels, nucleus_rho, nucleus_mean_axis = _paint_cells(cells, size)
    cell_mask = labels > 0
    outline, contact = _outlines(labels)
    nucleus_edge_dist, nucleus, nucleus_soft = _nucleus_maps(cell_mask, outline, nucleus_rho, nucleus_mean_axis)
    nucleoli, nucleoli_soft = _draw_nucleoli(rng, cells, size, scale)
    nucleoli_soft *= nucleus
    return Field(
        size=size,
        scale=scale,
        cells=cells,
        labels=labels,
        nucleus=nucleus,
        nucleus_soft=nucleus_soft.astype(np.float32),
        nucleus_edge_dist=nucleus_edge_dist,
        edge_dist=_distance_to(outline),
        contact_dist=_distance_to(contact),
        nucleoli=nucleoli,
        nucleoli_soft=nucleoli_soft,
    )


def _paint_cells(cells: list[Cell], size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cell labels (0 background, k+1 cell k) and, per pixel, the normalized radius in its own
    cell's nucleus ellipse and that nucleus's mean half-axis (px)."""
    labels = np.zeros((size, size), np.int32)
    best = np.full((size, size), np.inf, np.float32)  # normalized distance to the nearest centre
    nucleus_rho = np.full((size, size), np.inf, np.float32)
    nucleus_mean_axis = np.zeros((size, size), np.float32)
    for k, cell in enumerate(cells):
        box = bbox(cell.center, 1.45 * cell.radius, size)
        if box is None:
            continue
        yy, xx = np.mgrid[box]
        dy, dx = yy - cell.center[0], xx - cell.center[1]
        rho = np.hypot(dy, dx) / outline_radius(cell, np.arctan2(dy, dx))
        take = (rho < 1.0) & (rho < best[box])  # touching cells split along the equal-distance line
        labels[box][take] = k + 1
        best[box][take] = rho[take]
        # Nucleus: an ellipse with its own normalized radius.
        ny, nx = yy - cell.nucleus_center[0], xx - cell.nucleus_center[1]
        cos, sin = math.cos(cell.nucleus_angle), math.sin(cell.nucleus_angle)
        u, v = (ny * cos + nx * sin) / cell.nucleus_axes[0], (-ny * sin + nx * cos) / cell.nucleus_axes[1]
        nrho = np.hypot(u, v).astype(np.float32)
        nucleus_rho[box][take] = nrho[take]
        nucleus_mean_axis[box][take] = 0.5 * sum(cell.nucleus_axes)
    return labels, nucleus_rho, nucleus_mean_axis


def _outlines(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Outline pixels (a 4-neighbour has another label; the frame edge is not an outline) and the
    contact pixels among them (that other label is a cell)."""
    cell_mask = labels > 0
    padded = np.pad(labels, 1, mode="edge")
    neighbours = [padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]]
    outline = np.zeros_like(cell_mask)
    contact = np.zeros_like(cell_mask)
    for other in neighbours:
        differs = cell_mask & (other != labels)
        outline |= differs
        contact |= differs & (other > 0)
    return outline, contact


def _distance_to(mask: np.ndarray) -> np.ndarray:
    """Distance (px, float32) from every pixel to the nearest pixel of ``mask``; inf if it has none."""
    if not mask.any():
        return np.full(mask.shape, np.inf, np.float32)
    return ndi.distance_transform_edt(~mask).astype(np.float32)


def _nucleus_maps(
    cell_mask: np.ndarray, outline: np.ndarray, nucleus_rho: np.ndarray, nucleus_mean_axis: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Signed distance to the own nucleus edge (<0 inside), the nucleus mask (inside the ellipse
    and not on the cell outline) and its soft-edged version."""
    interior = cell_mask & ~outline
    nucleus_edge_dist = np.full(nucleus_rho.shape, np.inf, np.float32)
    nucleus_edge_dist[cell_mask] = (nucleus_rho[cell_mask] - 1.0) * nucleus_mean_axis[cell_mask]
    nucleus = (nucleus_edge_dist < 0) & interior
    nucleus_soft = np.clip(0.5 - nucleus_edge_dist, 0.0, 1.0) * interior
    return nucleus_edge_dist, nucleus, nucleus_soft


def _draw_nucleoli(
    rng: np.random.Generator, cells: list[Cell], size: int, scale: float
) -> tuple[list[list[tuple[float, float, float]]], np.ndarray]:
    """1-3 discs inside each interphase nucleus: per cell (y, x, radius), and their soft mask."""
    nucleoli: list[list[tuple[float, float, float]]] = []
    nucleoli_soft = np.zeros((size, size), np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    for cell in cells:
        spots = []
        if not cell.mitotic:  # condensed chromosomes: no nucleoli
            for _ in range(int(rng.integers(1, 4))):
                angle, reach = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.55) * min(cell.nucleus_axes)
                y = cell.nucleus_center[0] + reach * math.sin(angle)
                x = cell.nucleus_center[1] + reach * math.cos(angle)
                radius = rng.uniform(1.6, 2.6) * scale
                spots.append((y, x, radius))
                box = bbox(np.array([y, x]), radius + 2, size)
                if box is not None:
                    d = np.hypot(yy[box] - y, xx[box] - x)
                    nucleoli_soft[box] = np.maximum(nucleoli_soft[box], np.clip(radius + 0.5 - d, 0, 1))
        nucleoli.append(spots)
    return nucleoli, nucleoli_soft
