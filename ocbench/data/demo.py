"""A synthetic OpenCell look-alike, so every command can run offline.

The demo is written in the exact public raw layout (real ``.tif`` files, CYX uint16, channel 0
Hoechst, channel 1 protein, OpenCell file names) plus a flat annotation table, so it goes through
the same reader as the real data. Each field of view shows a few cells (irregular blobs, packed so
that some touch) with a textured nucleus. The protein channel is a mix of compartment patterns,
one per label of the protein, weighted by the label's grade, on top of a faint diffuse background,
with per-cell expression, per-FOV brightness and shot/read noise: classes are learnable but not
trivially so.

Its size is set by what the benchmark needs at the protocol's own settings (no overrides):

- 230 labelled proteins with main labels spread evenly over the 17 classes, so that every class
  has positives in the test part (about 23 proteins on the protein track) and in each of the 5
  folds of both split tracks (by FOV and by protein);
- 5 FOVs per protein (OpenCell has 4-6), 1,160 FOVs: between 512 and 1,024 training FOVs per
  fold, so one probe epoch is two batches of 512 and the protocol's 300 epochs give the MLP probe
  600 optimizer steps. With 3 FOVs per protein (one batch per epoch, 300 steps) the MLP stayed
  undertrained and scored below predicting every class (macro-F1 0.19 against 0.25);
- 64 px fields (cells of radius 13 px, about 6 per field): writing and embedding stay a few
  seconds. Demo pixels are about 3x larger than OpenCell's 0.2 um.

The demo also writes a synthetic expert cell-label file (:data:`EXPERT_CELL_LABELS_FILE`) for
the single-cell task's ``cell_labels`` option.

Everything is deterministic from ``DemoConfig.seed``.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import ndimage as ndi

from ocbench import paths
from ocbench._io import atomic_dir, read_json_or_none
from ocbench.data.cards import DEMO_MARKER
from ocbench.data.compartments import COMPARTMENTS, RAW_CHANNEL_INDEX
from ocbench.data.layout import FovName
from ocbench.errors import ConfigError, DataError

#: Bumped whenever the generator's output changes, so ``ensure_demo`` rewrites stale demos.
DEMO_FORMAT = "ocbench-demo/3"

#: Written at the demo root; marks a folder that ``write_demo`` may replace (and, for
#: ``recorded_name``, a synthetic dataset).
MARKER_FILE = DEMO_MARKER

ANNOTATIONS_FILE = "annotations.csv"

#: A stand-in for the paper's expert-labelled cells (``--cell-labels``), written from the
#: generator's own cell layout: a point inside each listed cell (its nucleus centre) and the
#: protein's grade-3 compartments. Synthetic: it exercises the expert path, it is not an expert.
EXPERT_CELL_LABELS_FILE = "synthetic_expert_cell_labels.csv"

#: Cells listed per eligible FOV in the synthetic expert file.
_EXPERT_CELLS_PER_FOV = 2

#: Pattern strength per annotation grade (3 prominent, 2 less pronounced, 1 weak). Weak labels
#: still count as positives (min_grade 1), so they stay visible.
_GRADE_WEIGHT = {3: 1.0, 2: 0.85, 1: 0.7}

#: How often a protein has 1, 2 or 3 labels (about 2.4 on average; OpenCell has 2.1). Each class
#: is then positive in about 14% of the FOVs: a probe trained at the protocol's learning rate for
#: 300 steps gets enough positives of every class to learn from.
_LABEL_COUNT_P = (0.1, 0.4, 0.5)
#: Faint diffuse fill of every cell (fraction of the pattern's peak), drawn per FOV.
_DIFFUSE_RANGE = (0.02, 0.06)
#: Cell-to-cell expression spread (sigma of a lognormal).
_CELL_EXPRESSION_SIGMA = 0.25



@dataclass(frozen=True)
class DemoConfig:
    """What ``ocbench data demo`` writes.

    ``proteins`` counts protein folders (with images); the last ``unlabelled_proteins`` of them get
    no annotation rows. ``annotation_only_proteins`` extra proteins have annotation rows but no
    images, and ``name_joined_proteins`` labelled proteins carry a different ENSG id in the
    annotation table than in their file names (as 36 real targets do), so the reader must join
    them by name. All of them give ``ocbench data info`` something to count.
    """

    proteins: int = 232
    fovs_per_protein: int = 5
    size: int = 64
    seed: int = 0
    cell_radius: float = 13.0
    unlabelled_proteins: int = 2
    annotation_only_proteins: int = 1
    name_joined_proteins: int = 1
    #: When above ``fovs_per_protein``, each protein gets a count drawn uniformly from
    #: ``fovs_per_protein..fovs_per_protein_max`` (OpenCell has 4-6 per protein); 0 = all equal.
    fovs_per_protein_max: int = 0
    #: Fraction of the demo's packing density: 1 packs cells so most touch (the demo's dense
    #: clumps); below 1 leaves gaps, as in OpenCell's fields (about 23 cells per 600 px FOV).
    cell_density: float = 1.0

    def __post_init__(self) -> None:
        checks = [
            (self.proteins >= 1, "proteins must be >= 1"),
            (self.fovs_per_protein >= 1, "fovs_per_protein must be >= 1"),
            (32 <= self.size <= 4096, "size must be between 32 and 4096 pixels"),
            (4.0 <= self.cell_radius <= self.size, "cell_radius must be between 4 px and the image size"),
            (0 <= self.unlabelled_proteins < self.proteins, "unlabelled_proteins must be >= 0 and < proteins"),
            (self.annotation_only_proteins >= 0, "annotation_only_proteins must be >= 0"),
            (
                0 <= self.name_joined_proteins <= self.proteins - self.unlabelled_proteins,
                "name_joined_proteins must be between 0 and the number of labelled proteins",
            ),
            (self.seed >= 0, "seed must be >= 0"),
            (
                self.fovs_per_protein_max == 0 or self.fovs_per_protein <= self.fovs_per_protein_max <= 16,
                "fovs_per_protein_max must be 0 or between fovs_per_protein and 16",
            ),
            (0.05 <= self.cell_density <= 1.0, "cell_density must be between 0.05 and 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"demo config: {message} (got {self})")

    @property
    def labelled_proteins(self) -> int:
        return self.proteins - self.unlabelled_proteins

    def fov_count(self, protein_index: int) -> int:
        """How many FOVs protein ``protein_index`` gets (its own draw, so independent of the others)."""
        if self.fovs_per_protein_max <= self.fovs_per_protein:
            return self.fovs_per_protein
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0xF0C, protein_index]))
        return int(rng.integers(self.fovs_per_protein, self.fovs_per_protein_max + 1))

    @property
    def n_fovs(self) -> int:
        """Number of image files written."""
        return sum(self.fov_count(index) for index in range(self.proteins))


@dataclass(frozen=True)
class DemoProtein:
    """One synthetic target: names, ids and its labels as {compartment: grade}."""

    index: int
    gene: str
    ensg: str
    annotation_ensg: str
    cid: int
    labels: dict[str, int] = field(default_factory=dict)
    has_images: bool = True

    def fov_names(self, fovs_per_protein: int) -> list[FovName]:
        # FIDs are unique over the whole demo, like OpenCell's.
        return [
            FovName(gene=self.gene, ensg=self.ensg, cid=self.cid, fid=10_000 + 16 * self.index + j)
            for j in range(fovs_per_protein)
        ]


#: OpenCell's real size, for :func:`scaled_config`: proteins with images, FOV size (px), cell
#: diameter (px at 0.2 um) and FOVs per protein (4-6, about 6,550 FOVs in all; OpenCell has ~6,800).
OPENCELL_PROTEINS = 1310
OPENCELL_FOV_SIZE = 600
OPENCELL_CELL_DIAMETER = 80.0
OPENCELL_FOVS_PER_PROTEIN = (4, 6)
#: Packing density that gives about 23 cells per 600 px FOV (OpenCell: ~157k cells in ~6,800 FOVs).
_OPENCELL_CELL_DENSITY = 0.38


def scaled_config(fraction: float, seed: int = 0, size: int = OPENCELL_FOV_SIZE) -> DemoConfig:
    """A demo at ``fraction`` of OpenCell's real size: ``round(fraction * 1,310)`` proteins (at least
    the 17 classes' worth, so main labels still cover every class), 4-6 FOVs each, 600 px fields
    with cells about 80 px across. ``fraction=1`` is about 6,550 FOVs, 150k cells and 9 GB.

    A smaller ``size`` shrinks the cells with the field (same cells per FOV): a quick look only."""
    if not (0 < fraction <= 1):
        raise ConfigError(f"demo scale must be a fraction in (0, 1], like 1/16 or 0.25 (got {fraction})")
    proteins = max(len(COMPARTMENTS) + 2, round(fraction * OPENCELL_PROTEINS))
    low, high = OPENCELL_FOVS_PER_PROTEIN
    return DemoConfig(
        proteins=proteins,
        fovs_per_protein=low,
        fovs_per_protein_max=high,
        size=size,
        cell_radius=OPENCELL_CELL_DIAMETER / 2 * size / OPENCELL_FOV_SIZE,
        cell_density=_OPENCELL_CELL_DENSITY,
        seed=seed,
    )


def parse_fraction(text: str) -> float:
    """``"1/16"``, ``"0.0625"`` or ``"1"`` as a float; a ConfigError names the bad text."""
    try:
        if "/" in text:
            numerator, denominator = text.split("/", 1)
            value = float(numerator) / float(denominator)
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"demo scale: expected a fraction like 1/16 or 0.25, got {text!r}") from None
    if not (0 < value <= 1):
        raise ConfigError(f"demo scale must be in (0, 1], like 1/16 or 0.25 (got {text!r})")
    return value


# --------------------------------------------------------------------------------------------
# Proteins and labels
# --------------------------------------------------------------------------------------------


def _gene_name(index: int) -> str:
    # Mostly DEMO<n>; every few proteins a name shaped like the awkward real ones (C12orf57,
    # H1-0, HLA-A, antisense -AS1) so the file name parser meets lower case and dashes.
    special = index % 9
    if special == 2:
        return f"C{index % 22 + 1}orf{40 + index}"
    if special == 5:
        return f"H1-{index}"
    if special == 7:
        return f"DEMO{index + 1}-as1"
    return f"DEMO{index + 1}"


def _ensg(index: int, offset: int = 0) -> str:
    # "ENSG9..." is not a real Ensembl id range: nobody mistakes these for real genes.
    return f"ENSG9{offset + index + 1:010d}"


def _draw_labels(rng: np.random.Generator, n_labelled: int) -> list[dict[str, int]]:
    """1-3 graded labels per protein; main labels cycle through the compartments evenly."""
    n_classes = len(COMPARTMENTS)
    # Main labels: every class equally often (rounds of a shuffled vocabulary), so the rare real
    # classes still have enough proteins for every fold and test part of both split tracks.
    # Extra labels are drawn uniformly too: a balanced demo, unlike OpenCell (where cytoplasmic
    # and nucleoplasm dominate), so that macro-F1 over 17 classes reflects every pattern.
    rounds = -(-n_labelled // n_classes)
    main = [str(c) for _ in range(rounds) for c in rng.permutation(COMPARTMENTS)][:n_labelled]
    main = [str(c) for c in rng.permutation(main)]

    labels = []
    for primary in main:
        grades = {primary: 3 if rng.random() < 0.85 else 2}
        n_labels = int(rng.choice([1, 2, 3], p=_LABEL_COUNT_P))
        while len(grades) < n_labels:
            extra = str(rng.choice(COMPARTMENTS))
            if extra not in grades:
                grades[extra] = int(rng.choice([3, 2, 1], p=[0.3, 0.4, 0.3]))
        labels.append(grades)
    return labels


def demo_proteins(config: DemoConfig) -> list[DemoProtein]:
    """The proteins (with their labels) that ``write_demo`` writes for this config."""
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 0x1ABE1]))
    # Proteins with images get the class coverage; annotation-only ones are drawn on their own.
    all_labels = _draw_labels(rng, config.labelled_proteins) + _draw_labels(rng, config.annotation_only_proteins)
    proteins = []
    n_total = config.proteins + config.annotation_only_proteins
    for index in range(n_total):
        has_images = index < config.proteins
        labelled = index < config.labelled_proteins or not has_images
        labels = all_labels.pop(0) if labelled else {}
        # The first labelled proteins with images are the name-joined ones.
        name_joined = has_images and index < config.name_joined_proteins
        proteins.append(
            DemoProtein(
                index=index,
                gene=_gene_name(index),
                ensg=_ensg(index),
                annotation_ensg=_ensg(index, offset=500_000_000) if name_joined else _ensg(index),
                cid=100 + index,
                labels=labels,
                has_images=has_images,
            )
        )
    return proteins


# --------------------------------------------------------------------------------------------
# Cell geometry
# --------------------------------------------------------------------------------------------


@dataclass
class _Cell:
    center: np.ndarray  # (y, x)
    radius: float
    harmonics: np.ndarray  # (k, amplitude, phase) rows for the outline
    nucleus_center: np.ndarray
    nucleus_axes: tuple[float, float]
    nucleus_angle: float
    mitotic: bool


@dataclass
class _Field:
    """Geometry of one FOV plus per-pixel maps every pattern needs."""

    size: int
    scale: float
    cells: list[_Cell]
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


def _outline_radius(cell: _Cell, theta: np.ndarray) -> np.ndarray:
    r = np.ones_like(theta)
    for k, amplitude, phase in cell.harmonics:
        r += amplitude * np.cos(k * theta + phase)
    return cell.radius * r


def _place_cells(rng: np.random.Generator, size: int, cell_radius: float, density: float = 1.0) -> list[_Cell]:
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
            _Cell(
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


def _bbox(center: np.ndarray, reach: float, size: int) -> tuple[slice, slice] | None:
    y0, x0 = (max(0, int(math.floor(c - reach))) for c in center)
    y1, x1 = (min(size, int(math.ceil(c + reach)) + 1) for c in center)
    if y0 >= y1 or x0 >= x1:
        return None
    return slice(y0, y1), slice(x0, x1)


def _build_field(rng: np.random.Generator, size: int, cell_radius: float, density: float = 1.0) -> _Field:
    scale = cell_radius / 17.0
    cells = _place_cells(rng, size, cell_radius, density)
    labels = np.zeros((size, size), np.int32)
    best = np.full((size, size), np.inf, np.float32)  # normalized distance to the nearest centre
    nucleus_rho = np.full((size, size), np.inf, np.float32)
    nucleus_mean_axis = np.zeros((size, size), np.float32)
    for k, cell in enumerate(cells):
        box = _bbox(cell.center, 1.45 * cell.radius, size)
        if box is None:
            continue
        yy, xx = np.mgrid[box]
        dy, dx = yy - cell.center[0], xx - cell.center[1]
        rho = np.hypot(dy, dx) / _outline_radius(cell, np.arctan2(dy, dx))
        take = (rho < 1.0) & (rho < best[box])  # touching cells split along the equal-distance line
        labels[box][take] = k + 1
        best[box][take] = rho[take]
        # Nucleus: an ellipse with its own normalized radius.
        ny, nx = yy - cell.nucleus_center[0], xx - cell.nucleus_center[1]
        cos, sin = math.cos(cell.nucleus_angle), math.sin(cell.nucleus_angle)
        u, v = (ny * cos + nx * sin) / cell.nucleus_axes[0], (-ny * sin + nx * cos) / cell.nucleus_axes[1]
        nrho = np.hypot(u, v).astype(np.float32)
        own = take
        nucleus_rho[box][own] = nrho[own]
        nucleus_mean_axis[box][own] = 0.5 * sum(cell.nucleus_axes)

    # Outline pixels: a 4-neighbour has another label (the frame edge is not an outline).
    cell_mask = labels > 0
    padded = np.pad(labels, 1, mode="edge")
    neighbours = [padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]]
    outline = np.zeros_like(cell_mask)
    contact = np.zeros_like(cell_mask)
    for other in neighbours:
        differs = cell_mask & (other != labels)
        outline |= differs
        contact |= differs & (other > 0)
    edge_dist = ndi.distance_transform_edt(~outline).astype(np.float32) if outline.any() else np.full(
        (size, size), np.inf, np.float32
    )
    contact_dist = ndi.distance_transform_edt(~contact).astype(np.float32) if contact.any() else np.full(
        (size, size), np.inf, np.float32
    )

    # Pixels in a nucleus: inside the ellipse and not on the cell outline.
    interior = cell_mask & ~outline
    nucleus_edge_dist = np.full((size, size), np.inf, np.float32)
    nucleus_edge_dist[cell_mask] = (nucleus_rho[cell_mask] - 1.0) * nucleus_mean_axis[cell_mask]
    nucleus = (nucleus_edge_dist < 0) & interior
    nucleus_soft = np.clip(0.5 - nucleus_edge_dist, 0.0, 1.0) * interior

    # Nucleoli: 1-3 discs inside each nucleus.
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
                box = _bbox(np.array([y, x]), radius + 2, size)
                if box is not None:
                    d = np.hypot(yy[box] - y, xx[box] - x)
                    nucleoli_soft[box] = np.maximum(nucleoli_soft[box], np.clip(radius + 0.5 - d, 0, 1))
        nucleoli.append(spots)
    nucleoli_soft *= nucleus
    return _Field(
        size=size,
        scale=scale,
        cells=cells,
        labels=labels,
        nucleus=nucleus,
        nucleus_soft=nucleus_soft.astype(np.float32),
        nucleus_edge_dist=nucleus_edge_dist,
        edge_dist=edge_dist,
        contact_dist=contact_dist,
        nucleoli=nucleoli,
        nucleoli_soft=nucleoli_soft,
    )


# --------------------------------------------------------------------------------------------
# Drawing helpers
# --------------------------------------------------------------------------------------------


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
    rng: np.random.Generator, f: _Field, mask: np.ndarray, counts: tuple[int, int]
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


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Smooth random texture with zero mean and unit standard deviation."""
    field_ = ndi.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), sigma)
    return (field_ - field_.mean()) / (field_.std() + 1e-6)


def _per_cell(f: _Field, counts: tuple[int, int], rng: np.random.Generator) -> list[tuple[int, int]]:
    """(cell index, how many items) for every cell with pixels in the frame."""
    present = np.unique(f.labels[f.labels > 0]) - 1
    return [(int(k), int(rng.integers(counts[0], counts[1] + 1))) for k in present]


# --------------------------------------------------------------------------------------------
# Compartment patterns: each returns a float32 image, roughly 0..1, for one FOV
# --------------------------------------------------------------------------------------------


def _nucleoplasm(f: _Field, rng, hoechst) -> np.ndarray:
    texture = _smooth_noise(rng, f.size, 1.0 * f.scale)
    return f.nucleus_soft * (0.85 + 0.12 * texture) * (1.0 - 0.8 * f.nucleoli_soft)


def _nucleolus_gc(f: _Field, rng, hoechst) -> np.ndarray:
    return ndi.gaussian_filter(f.nucleoli_soft, 0.4 * f.scale) + 0.05 * f.nucleus_soft


def _nucleolus_fc_dfc(f: _Field, rng, hoechst) -> np.ndarray:
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


def _nuclear_membrane(f: _Field, rng, hoechst) -> np.ndarray:
    rim = np.exp(-((f.nucleus_edge_dist + 0.6) / (0.8 * f.scale)) ** 2)
    return rim * f.cell + 0.06 * f.nucleus_soft


def _chromatin(f: _Field, rng, hoechst) -> np.ndarray:
    # Chromatin-bound proteins (histones) look like the DNA stain itself, clumps included.
    norm = hoechst / (np.percentile(hoechst[f.nucleus], 99) if f.nucleus.any() else 1.0)
    return np.clip(norm, 0, None) ** 1.4


def _nuclear_punctae(f: _Field, rng, hoechst) -> np.ndarray:
    points, _ = _sample_in_cells(rng, f, f.nucleus & (f.nucleoli_soft < 0.5), (4, 12))
    dots = _splat(f.size, points[:, 0], points[:, 1], rng.uniform(0.5, 1.0, len(points)), 0.55 * f.scale)
    return dots + 0.12 * f.nucleus_soft


def _membrane(f: _Field, rng, hoechst) -> np.ndarray:
    ring = np.exp(-((f.edge_dist / (0.9 * f.scale)) ** 2)) * f.cell
    return ndi.gaussian_filter(ring, 0.4 * f.scale) + 0.05 * f.cell


def _cell_contact(f: _Field, rng, hoechst) -> np.ndarray:
    contact = np.exp(-((f.contact_dist / (1.0 * f.scale)) ** 2)) * f.cell
    ring = np.exp(-((f.edge_dist / (0.9 * f.scale)) ** 2)) * f.cell
    return contact + 0.2 * ring + 0.04 * f.cell


def _cytoplasmic(f: _Field, rng, hoechst) -> np.ndarray:
    texture = _smooth_noise(rng, f.size, 2.0 * f.scale)
    return ndi.gaussian_filter((f.cytoplasm * (0.9 + 0.08 * texture)).astype(np.float32), 0.5 * f.scale)


def _er(f: _Field, rng, hoechst) -> np.ndarray:
    # Reticular network: the zero crossings of band-passed noise, densest around the nucleus, and
    # continuous with the nuclear envelope.
    band = ndi.gaussian_filter(rng.standard_normal((f.size, f.size)).astype(np.float32), 1.0 * f.scale)
    band -= ndi.gaussian_filter(band, 3.0 * f.scale)
    band /= band.std() + 1e-6
    network = np.exp(-((band / 0.35) ** 2))
    near_nucleus = 0.35 + 0.65 * np.exp(-np.clip(f.nucleus_edge_dist, 0, None) / (6.0 * f.scale))
    envelope = np.exp(-((f.nucleus_edge_dist - 0.5) / (0.9 * f.scale)) ** 2) * f.cell
    return network * f.cytoplasm * near_nucleus + 0.5 * envelope


def _golgi(f: _Field, rng, hoechst) -> np.ndarray:
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


def _mitochondria(f: _Field, rng, hoechst) -> np.ndarray:
    # Tubules packed through the cytoplasm (denser than vesicles, which are dots).
    starts, _ = _sample_in_cells(rng, f, f.cytoplasm, (30, 50))
    lengths = rng.uniform(3.0, 6.0, len(starts)) * f.scale
    ys, xs, _ = _segments(starts, rng.uniform(0, np.pi, len(starts)), lengths)
    tubes = _splat(f.size, ys, xs, np.full(len(ys), 0.45), 0.5 * f.scale)
    return tubes * f.cytoplasm + 0.03 * f.cytoplasm


def _vesicles(f: _Field, rng, hoechst) -> np.ndarray:
    points, _ = _sample_in_cells(rng, f, f.cytoplasm, (14, 36))
    weights = rng.lognormal(0, 0.4, len(points))
    return _splat(f.size, points[:, 0], points[:, 1], weights, 0.55 * f.scale) + 0.04 * f.cytoplasm


def _centrosome(f: _Field, rng, hoechst) -> np.ndarray:
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


def _cytoskeleton(f: _Field, rng, hoechst) -> np.ndarray:
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


def _big_aggregates(f: _Field, rng, hoechst) -> np.ndarray:
    # A few large, very bright blobs in some cells' cytoplasm.
    centres, _ = _sample_in_cells(rng, f, f.cytoplasm, (0, 2))
    if not len(centres):  # always at least one aggregate in the field
        centres, _ = _sample_in_cells(rng, f, f.cytoplasm if f.cytoplasm.any() else f.cell, (1, 1))
        centres = centres[:1]
    radii = rng.uniform(2.2, 3.8, len(centres)) * f.scale
    image = np.zeros((f.size, f.size), np.float32)
    for (y, x), r in zip(centres, radii):
        box = _bbox(np.array([y, x]), r + 2, f.size)
        if box is not None:
            yy, xx = np.mgrid[box]
            disc = np.clip(r + 0.5 - np.hypot(yy - y, xx - x), 0, 1) * rng.uniform(0.8, 1.0)
            image[box] = np.maximum(image[box], disc)
    return ndi.gaussian_filter(image, 0.6 * f.scale) + 0.05 * f.cytoplasm


def _focal_adhesions(f: _Field, rng, hoechst) -> np.ndarray:
    # Short streaks at the cell periphery, pointing outward.
    ys, xs = [], []
    for k, n in _per_cell(f, (5, 10), rng):
        cell = f.cells[k]
        theta = rng.uniform(0, 2 * np.pi, n)
        reach = _outline_radius(cell, theta) * rng.uniform(0.75, 0.92, n)
        starts = np.stack([cell.center[0] + reach * np.sin(theta), cell.center[1] + reach * np.cos(theta)], 1)
        seg_y, seg_x, _ = _segments(starts, theta, rng.uniform(2.0, 4.0, n) * f.scale)
        ys.append(seg_y)
        xs.append(seg_x)
    if not ys:
        return np.zeros((f.size, f.size), np.float32)
    streaks = _splat(f.size, np.concatenate(ys), np.concatenate(xs), np.full(sum(map(len, ys)), 0.5), 0.45 * f.scale)
    return streaks * f.cell + 0.06 * f.cytoplasm


_PATTERNS: dict[str, Callable[[_Field, np.random.Generator, np.ndarray], np.ndarray]] = {
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
assert set(_PATTERNS) == set(COMPARTMENTS)

#: Peak brightness relative to other compartments (each pattern is scaled to peak 1 first).
_BRIGHTNESS = {"big_aggregates": 2.0, "centrosome": 2.5, "golgi": 1.3, "nucleolus_gc": 1.2, "nucleolus_fc_dfc": 1.6}


# --------------------------------------------------------------------------------------------
# Rendering one FOV
# --------------------------------------------------------------------------------------------


def _hoechst_signal(f: _Field, rng: np.random.Generator) -> np.ndarray:
    """Clean Hoechst signal above background: textured nuclei, dark nucleoli, bright mitoses."""
    fine = _smooth_noise(rng, f.size, 0.8 * f.scale)
    coarse = _smooth_noise(rng, f.size, 2.5 * f.scale)
    mitotic = np.array([False] + [cell.mitotic for cell in f.cells])
    # Real Hoechst nuclei: a few thousand counts, mitotic/apoptotic ones several times brighter.
    level = rng.lognormal(math.log(2300), 0.25, len(f.cells) + 1) * np.where(mitotic, 2.8, 1.0)
    texture_strength = np.where(mitotic, 0.35, 0.14)
    texture = 1.0 + texture_strength[f.labels] * fine + 0.1 * coarse
    signal = (level[f.labels] * texture * f.nucleus_soft * (1.0 - 0.5 * f.nucleoli_soft)).astype(np.float32)
    return np.clip(signal, 0, None)


def _camera(rng: np.random.Generator, signal: np.ndarray, background: float, scale: float) -> np.ndarray:
    """Optics and camera: blur, background with uneven illumination, shot and read noise, uint16."""
    size = signal.shape[0]
    blurred = ndi.gaussian_filter(signal, 0.7 * scale)
    haze = ndi.gaussian_filter(signal, 6.0 * scale) * 0.06  # out-of-focus light
    yy, xx = np.ogrid[0:size, 0:size]  # a column and a row: broadcasting gives the same plane
    yy, xx = yy / size, xx / size
    gy, gx = rng.uniform(-0.06, 0.06, 2)
    illumination = 1.0 + gy * (yy - 0.5) + gx * (xx - 0.5)
    expected = (background + blurred + haze) * illumination
    gain = 1.6  # counts per photo-electron
    counts = rng.poisson(np.clip(expected, 0, None) / gain) * gain + rng.normal(0, 5.0, expected.shape)
    return np.clip(np.rint(counts), 0, 65535).astype(np.uint16)


def render_fov(protein: DemoProtein, fov_index: int, config: DemoConfig) -> np.ndarray:
    """One FOV as the raw file stores it: CYX uint16 (2, size, size), channel 0 Hoechst, 1 protein."""
    return _render(protein, fov_index, config)[0]


def _render(protein: DemoProtein, fov_index: int, config: DemoConfig) -> tuple[np.ndarray, _Field]:
    """The FOV image and the cell layout it was drawn from."""
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 0xF0F, protein.index, fov_index]))
    protein_rng = np.random.default_rng(np.random.SeedSequence([config.seed, 0x9E0, protein.index]))
    f = _build_field(rng, config.size, config.cell_radius, config.cell_density)
    hoechst = _hoechst_signal(f, rng)

    # Protein: sum of its compartment patterns (weighted by grade) plus a faint diffuse fill,
    # scaled by the protein's expression level, this FOV's brightness and each cell's expression.
    pattern = np.zeros((f.size, f.size), np.float32)
    for compartment, grade in sorted(protein.labels.items()):
        part = _PATTERNS[compartment](f, rng, hoechst).astype(np.float32)
        peak = float(part.max())
        if peak > 0:
            pattern += _GRADE_WEIGHT[grade] * _BRIGHTNESS.get(compartment, 1.0) * part / peak
    diffuse = rng.uniform(*_DIFFUSE_RANGE)
    pattern += diffuse * ndi.gaussian_filter(f.cell.astype(np.float32), 1.0 * f.scale)
    cell_expression = np.concatenate([[1.0], rng.lognormal(0, _CELL_EXPRESSION_SIGMA, len(f.cells))]).astype(np.float32)
    expression_map = ndi.gaussian_filter(cell_expression[f.labels], 0.8 * f.scale)
    protein_level = protein_rng.lognormal(math.log(1400), 0.45)  # the same for all FOVs of a protein
    fov_brightness = rng.lognormal(0, 0.3)
    protein_signal = pattern * expression_map * protein_level * fov_brightness

    image = np.empty((2, f.size, f.size), np.uint16)
    image[RAW_CHANNEL_INDEX["nucleus"]] = _camera(rng, hoechst, rng.uniform(230, 280), f.scale)
    image[RAW_CHANNEL_INDEX["protein"]] = _camera(rng, protein_signal, rng.uniform(160, 220), f.scale)
    return image, f


def _expert_records(protein: DemoProtein, fov_id: str, f: _Field, config: DemoConfig) -> list[dict]:
    """Synthetic expert rows for one FOV: up to ``_EXPERT_CELLS_PER_FOV`` interphase cells whose
    nucleus centre lies inside the frame and inside the cell, labelled with the protein's grade-3
    compartments. FOVs the paper's selection leaves out (no grade-3 label, or big aggregates) get none."""
    labels = sorted(c for c, grade in protein.labels.items() if grade == 3)
    if not labels or "big_aggregates" in protein.labels:
        return []
    margin = 0.5 * config.cell_radius  # away from the border, where a cut cell may not be segmented
    records = []
    for k, cell in enumerate(f.cells):
        y, x = (int(round(v)) for v in cell.nucleus_center)
        inside = margin <= y < f.size - margin and margin <= x < f.size - margin
        if cell.mitotic or not inside or f.labels[y, x] != k + 1 or not f.nucleus[y, x]:
            continue
        records.append({"fov_id": fov_id, "y": y, "x": x, "labels": labels})
        if len(records) == _EXPERT_CELLS_PER_FOV:
            break
    return records


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _is_replaceable(root: Path) -> bool:
    """Only an empty folder or an earlier demo may be replaced: never a user's own data."""
    if not root.exists():
        return True
    if not root.is_dir():
        return False
    return (root / MARKER_FILE).is_file() or not any(root.iterdir())


def _write_fov(tmp: Path, protein: DemoProtein, fov_index: int, name: FovName, config: DemoConfig) -> list[dict]:
    """Render and write one FOV; return its synthetic expert rows."""
    import tifffile

    path = tmp / name.relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    image, layout = _render(protein, fov_index, config)
    tifffile.imwrite(
        path,
        image,
        photometric="minisblack",
        metadata={"axes": "CYX"},
        resolution=(50_000.0, 50_000.0),  # 5 px/um, as OpenCell writes it (unit: cm)
        resolutionunit="CENTIMETER",
    )
    return _expert_records(protein, name.fov_id, layout, config)


def write_demo(root: str | Path, config: DemoConfig = DemoConfig(), workers: int = 1) -> Path:
    """Write the synthetic demo dataset to ``root`` (replacing an earlier demo there) and return ``root``.

    All files are written to a temporary folder next to ``root`` that is renamed into place at the
    end, so an error or Ctrl-C leaves nothing behind (and an earlier demo untouched); the hidden
    temporary folder a ``kill -9`` leaves is removed by the next write (``atomic_dir`` cleans the
    stale temps of its target first).

    FOVs are written one at a time (memory stays that of one FOV per worker, whatever the size).
    ``workers`` > 1 renders them in that many processes; every FOV has its own seed, so the bytes
    are the same as with one.
    """
    from tqdm import tqdm

    root = Path(root).expanduser()
    if not _is_replaceable(root):
        raise DataError(
            f"{root}: exists and is not an ocbench demo folder (no {MARKER_FILE}); "
            "choose a new or empty --root for the demo"
        )
    if workers < 1:
        raise ConfigError(f"demo workers must be >= 1 (got {workers})")
    proteins = demo_proteins(config)
    jobs = [
        (protein, j, name)
        for protein in proteins
        if protein.has_images
        for j, name in enumerate(protein.fov_names(config.fov_count(protein.index)))
    ]
    from ocbench.data.cells import write_cell_labels

    expert: list[dict] = []
    with atomic_dir(root) as tmp:
        if workers == 1:
            done = (_write_fov(tmp, protein, j, name, config) for protein, j, name in jobs)
            for rows in tqdm(done, total=len(jobs), desc="demo FOVs", unit="fov", disable=None):
                expert += rows
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # spawn: the workers import only this module, whatever the caller has loaded (threads, torch)
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                job_proteins, job_indices, job_names = zip(*jobs)
                done = pool.map(_write_fov, [tmp] * len(jobs), job_proteins, job_indices, job_names,
                                [config] * len(jobs), chunksize=4)
                for rows in tqdm(done, total=len(jobs), desc="demo FOVs", unit="fov", disable=None):
                    expert += rows  # in job order, as with one worker
        with open(tmp / ANNOTATIONS_FILE, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(["ensg_id", "target_name", "annotation_name", "annotation_grade"])
            for protein in proteins:
                for compartment, grade in sorted(protein.labels.items(), key=lambda kv: (-kv[1], kv[0])):
                    writer.writerow([protein.annotation_ensg, protein.gene, compartment, grade])
        if expert:
            write_cell_labels(tmp / EXPERT_CELL_LABELS_FILE, expert)
        marker = {"format": DEMO_FORMAT, "config": _marker_config(config), "n_fovs": len(jobs)}
        (tmp / MARKER_FILE).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return root


def _marker_config(config: DemoConfig) -> dict:
    """The config as the marker records it. Options added after a demo format was fixed are left
    out at their defaults, so an existing demo (same bytes) stays current."""
    recorded = asdict(config)
    for name in ("fovs_per_protein_max", "cell_density"):
        if recorded[name] == DemoConfig.__dataclass_fields__[name].default:
            del recorded[name]
    return recorded


def _demo_is_current(root: Path, config: DemoConfig) -> bool:
    marker = read_json_or_none(root / MARKER_FILE, dict)
    return (
        marker is not None
        and marker.get("format") == DEMO_FORMAT
        and marker.get("config") == _marker_config(config)
        and (root / ANNOTATIONS_FILE).is_file()
    )


def ensure_demo(root: str | Path | None = None, config: DemoConfig = DemoConfig()) -> Path:
    """The demo folder (default ``paths.demo_root()``), written first if missing or out of date."""
    root = Path(root).expanduser() if root is not None else paths.demo_root()
    if not _demo_is_current(root, config):
        write_demo(root, config)
    return root
