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

This module writes and opens the demo (:func:`write_demo`, :func:`ensure_demo`); the settings and
proteins are in :mod:`ocbench.data.demo_config`, one field's cell layout in
:mod:`ocbench.data.demo_field`, the compartment patterns in :mod:`ocbench.data.demo_patterns` and
the rendering of one FOV in :mod:`ocbench.data.demo_render`. Their public names are importable
from here.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

from ocbench import paths
from ocbench._io import atomic_dir, read_json_or_none
from ocbench.data.cards import DEMO_MARKER
from ocbench.data.demo_config import (
    OPENCELL_CELL_DIAMETER,
    OPENCELL_FOV_SIZE,
    OPENCELL_FOVS_PER_PROTEIN,
    OPENCELL_PROTEINS,
    DemoConfig,
    DemoProtein,
    demo_proteins,
    parse_fraction,
    scaled_config,
)
from ocbench.data.demo_render import _render, render_fov, write_fov  # noqa: F401 - _render: a FOV with its layout, for tests
from ocbench.errors import ConfigError, DataError

__all__ = [
    "ANNOTATIONS_FILE",
    "DEMO_FORMAT",
    "EXPERT_CELL_LABELS_FILE",
    "MARKER_FILE",
    "OPENCELL_CELL_DIAMETER",
    "OPENCELL_FOV_SIZE",
    "OPENCELL_FOVS_PER_PROTEIN",
    "OPENCELL_PROTEINS",
    "DemoConfig",
    "DemoProtein",
    "demo_proteins",
    "ensure_demo",
    "parse_fraction",
    "render_fov",
    "scaled_config",
    "write_demo",
]

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


def _is_replaceable(root: Path) -> bool:
    """Only an empty folder or an earlier demo may be replaced: never a user's own data."""
    if not root.exists():
        return True
    if not root.is_dir():
        return False
    return (root / MARKER_FILE).is_file() or not any(root.iterdir())


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
            done = (write_fov(tmp, protein, j, name, config) for protein, j, name in jobs)
            for rows in tqdm(done, total=len(jobs), desc="demo FOVs", unit="fov", disable=None):
                expert += rows
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # spawn: the workers import only the renderer's modules, whatever the caller has loaded (threads, torch)
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                job_proteins, job_indices, job_names = zip(*jobs)
                done = pool.map(write_fov, [tmp] * len(jobs), job_proteins, job_indices, job_names,
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
