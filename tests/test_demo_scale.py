"""The demo at a fraction of OpenCell's real size (``ocbench data demo --scale F``)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from ocbench.data.demo import (
    MARKER_FILE,
    OPENCELL_PROTEINS,
    DemoConfig,
    _render,
    demo_proteins,
    parse_fraction,
    scaled_config,
    write_demo,
)
from ocbench.data.layout import parse_fov_filename
from ocbench.errors import ConfigError


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_fractions_parse_and_bad_ones_are_config_errors():
    assert parse_fraction("1/16") == 1 / 16 and parse_fraction("0.25") == 0.25 and parse_fraction("1") == 1.0
    for bad in ("0", "2", "1/0", "a/b", "-1/4", ""):
        with pytest.raises(ConfigError, match="scale"):
            parse_fraction(bad)


def test_full_scale_is_opencell_sized():
    config = scaled_config(1.0)
    assert config.proteins == OPENCELL_PROTEINS and config.size == 600 and config.cell_radius == 40.0
    counts = Counter(config.fov_count(i) for i in range(config.proteins))
    assert set(counts) == {4, 5, 6}  # OpenCell's 4-6 FOVs per protein
    assert 6300 <= config.n_fovs <= 6800
    # Fractions scale the proteins; the smallest keep every class as some protein's main label.
    assert scaled_config(1 / 4).proteins == round(OPENCELL_PROTEINS / 4)
    assert scaled_config(1 / 256).proteins >= 17


def test_a_600px_fov_has_opencell_like_cells():
    config = scaled_config(1 / 256)
    protein = demo_proteins(config)[0]
    image, field = _render(protein, 0, config)
    assert image.shape == (2, 600, 600) and image.dtype == np.uint16
    in_frame = len(np.unique(field.labels[field.labels > 0]))
    assert 12 <= in_frame <= 40  # OpenCell: ~157k cells in ~6,800 FOVs, about 23 each
    areas = np.bincount(field.labels.ravel())[1:]
    typical_diameter = 2 * np.sqrt(np.median(areas[areas > 0]) / np.pi)
    assert 55 <= typical_diameter <= 95  # about 80 px (edge cells are cut, so a bit below)


def test_scaled_write_varies_fovs_per_protein_and_is_reproducible(tmp_path: Path):
    # The scaled set's rules (protein count, 4-6 FOVs each, sparse cells) at a small image size,
    # so the test writes in about a second.
    config = scaled_config(1 / 256, size=64)
    root = write_demo(tmp_path / "a", config)
    written = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.tif"))
    assert len(written) == config.n_fovs
    per_protein = Counter(parse_fov_filename(path).ensg for path in written)
    expected = {p.ensg: config.fov_count(p.index) for p in demo_proteins(config) if p.has_images}
    assert dict(per_protein) == expected and set(per_protein.values()) > {4} and max(per_protein.values()) <= 6
    assert len({parse_fov_filename(path).fid for path in written}) == len(written)  # FIDs unique
    marker = json.loads((root / MARKER_FILE).read_text())
    assert marker["n_fovs"] == config.n_fovs and marker["config"]["cell_density"] == config.cell_density

    again = write_demo(tmp_path / "b", config)
    assert _digest(again) == _digest(root)
    other = write_demo(tmp_path / "c", dataclasses.replace(config, seed=1))
    assert _digest(other) != _digest(root)
    in_parallel = write_demo(tmp_path / "p", config, workers=2)
    assert _digest(in_parallel) == _digest(root)


def test_default_demo_marker_keeps_its_old_keys(tmp_path: Path):
    # An existing demo cache stays current: the options added for --scale are not recorded at
    # their defaults.
    root = write_demo(tmp_path / "d", DemoConfig(proteins=3, fovs_per_protein=1, size=32, unlabelled_proteins=0,
                                                 annotation_only_proteins=0))
    recorded = json.loads((root / MARKER_FILE).read_text())["config"]
    assert "fovs_per_protein_max" not in recorded and "cell_density" not in recorded


def test_cli_scale_needs_a_root_and_a_valid_fraction(tmp_path: Path):
    from ocbench.cli import cli

    runner = CliRunner()
    result = runner.invoke(cli, ["data", "demo", "--scale", "1/128"])
    assert result.exit_code == 2 and "--root" in result.output
    result = runner.invoke(cli, ["data", "demo", "--root", str(tmp_path / "x"), "--scale", "3"])
    assert result.exit_code == 2 and "scale" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x").exists()
    result = runner.invoke(cli, ["data", "demo", "--root", str(tmp_path / "y"), "--scale", "1/256", "--size", "64"])
    assert result.exit_code == 0, result.output
    n_tifs = len(list((tmp_path / "y").rglob("*.tif")))
    assert n_tifs == scaled_config(1 / 256, size=64).n_fovs
    assert all(tifffile.imread(p).shape == (2, 64, 64) for p in list((tmp_path / "y").rglob("*.tif"))[:3])


def test_a_scaled_demo_folder_sizes_cell_crops_from_its_own_cells(tmp_path: Path):
    """A demo written with --scale/--size draws larger cells than the default demo; its card says
    so, and single-cell crops are sized from it (not from the default demo's 26 px cells)."""
    from ocbench.data.cards import DEMO, resolve_dataset
    from ocbench.tasks.cell_task import CellSelection

    config = dataclasses.replace(scaled_config(parse_fraction("1/1024"), size=300), proteins=3, fovs_per_protein=1,
                                 fovs_per_protein_max=1, unlabelled_proteins=0, annotation_only_proteins=0,
                                 name_joined_proteins=0)
    assert config.cell_radius == pytest.approx(20.0)  # OpenCell's 80 px cells at half the FOV size
    scaled = resolve_dataset(str(write_demo(tmp_path / "scaled", config)))
    assert scaled.name == "demo" and scaled.card.synthetic
    assert scaled.card.cell_diameter_px == pytest.approx(40.0)
    assert CellSelection().for_dataset(scaled.card).crop_size == 256  # 3.2 diameters at zoom 2
    default = resolve_dataset(str(write_demo(tmp_path / "default", DemoConfig(proteins=3, fovs_per_protein=1, size=32, unlabelled_proteins=0, annotation_only_proteins=0))))
    assert default.card is DEMO and CellSelection().for_dataset(default.card).crop_size == 168
