"""Rendering one demo FOV: the two channels as a microscope camera would record them.

:func:`render_fov` draws a FOV's cell layout (:mod:`ocbench.data.demo_field`), a textured
Hoechst channel and the protein channel (the protein's compartment patterns from
:mod:`ocbench.data.demo_patterns`, weighted by grade, with per-cell expression and per-FOV
brightness), then blurs them and adds illumination, shot and read noise into uint16 counts.
:func:`write_fov` writes one FOV as OpenCell's ``.tif`` and returns its synthetic expert rows.
Every FOV has its own seed, so FOVs can be rendered in any order or process.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from ocbench.data.compartments import RAW_CHANNEL_INDEX
from ocbench.data.demo_config import DemoConfig, DemoProtein
from ocbench.data.demo_field import Field, build_field
from ocbench.data.demo_patterns import BRIGHTNESS, PATTERNS, smooth_noise
from ocbench.data.layout import FovName

#: Cells listed per eligible FOV in the synthetic expert file.
_EXPERT_CELLS_PER_FOV = 2

#: Pattern strength per annotation grade (3 prominent, 2 less pronounced, 1 weak). Weak labels
#: still count as positives (min_grade 1), so they stay visible.
_GRADE_WEIGHT = {3: 1.0, 2: 0.85, 1: 0.7}
#: Faint diffuse fill of every cell (fraction of the pattern's peak), drawn per FOV.
_DIFFUSE_RANGE = (0.02, 0.06)
#: Cell-to-cell expression spread (sigma of a lognormal).
_CELL_EXPRESSION_SIGMA = 0.25


def _hoechst_signal(f: Field, rng: np.random.Generator) -> np.ndarray:
    """Clean Hoechst signal above background: textured nuclei, dark nucleoli, bright mitoses."""
    fine = smooth_noise(rng, f.size, 0.8 * f.scale)
    coarse = smooth_noise(rng, f.size, 2.5 * f.scale)
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


def _render(protein: DemoProtein, fov_index: int, config: DemoConfig) -> tuple[np.ndarray, Field]:
    """The FOV image and the cell layout it was drawn from."""
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 0xF0F, protein.index, fov_index]))
    protein_rng = np.random.default_rng(np.random.SeedSequence([config.seed, 0x9E0, protein.index]))
    f = build_field(rng, config.size, config.cell_radius, config.cell_density)
    hoechst = _hoechst_signal(f, rng)

    # Protein: sum of its compartment patterns (weighted by grade) plus a faint diffuse fill,
    # scaled by the protein's expression level, this FOV's brightness and each cell's expression.
    pattern = np.zeros((f.size, f.size), np.float32)
    for compartment, grade in sorted(protein.labels.items()):
        part = PATTERNS[compartment](f, rng, hoechst).astype(np.float32)
        peak = float(part.max())
        if peak > 0:
            pattern += _GRADE_WEIGHT[grade] * BRIGHTNESS.get(compartment, 1.0) * part / peak
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


def _expert_records(protein: DemoProtein, fov_id: str, f: Field, config: DemoConfig) -> list[dict]:
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


def write_fov(tmp: Path, protein: DemoProtein, fov_index: int, name: FovName, config: DemoConfig) -> list[dict]:
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

