"""The synthetic demo dataset: layout, determinism, class signal, atomic writing."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
import tifffile

from ocbench.data.compartments import COMPARTMENTS, GRADES, RAW_CHANNEL_INDEX
from ocbench.data.demo import (
    ANNOTATIONS_FILE,
    MARKER_FILE,
    DemoConfig,
    DemoProtein,
    demo_proteins,
    ensure_demo,
    render_fov,
    write_demo,
)
from ocbench.data.layout import parse_fov_filename
from ocbench.errors import ConfigError, DataError

SMALL = DemoConfig(proteins=6, fovs_per_protein=2, size=48, seed=1, unlabelled_proteins=1)
TINY = DemoConfig(proteins=3, fovs_per_protein=1, size=32, seed=0, unlabelled_proteins=0, annotation_only_proteins=0)


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _read_annotations(root: Path) -> list[dict[str, str]]:
    with open(root / ANNOTATIONS_FILE, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory) -> Path:
    return write_demo(tmp_path_factory.mktemp("demo") / "root", SMALL)


def test_writes_the_raw_layout_and_a_flat_annotation_table(small_demo: Path):
    proteins = demo_proteins(SMALL)
    with_images = [p for p in proteins if p.has_images]
    expected = {name.relpath for p in with_images for name in p.fov_names(SMALL.fovs_per_protein)}
    written = {p.relative_to(small_demo).as_posix() for p in small_demo.rglob("*.tif")}
    assert written == expected
    assert len(written) == SMALL.proteins * SMALL.fovs_per_protein

    for relpath in sorted(written):
        name = parse_fov_filename(relpath)
        assert name is not None and name.relpath == relpath and name.kind == "proj"
        image = tifffile.imread(small_demo / relpath)
        assert image.shape == (2, SMALL.size, SMALL.size) and image.dtype == np.uint16

    rows = _read_annotations(small_demo)
    assert list(rows[0]) == ["ensg_id", "target_name", "annotation_name", "annotation_grade"]
    assert {r["annotation_name"] for r in rows} <= set(COMPARTMENTS)
    assert {int(r["annotation_grade"]) for r in rows} <= set(GRADES)
    annotated_genes = {r["target_name"] for r in rows}
    # The last protein with images has no annotation rows; the annotation-only one has no folder.
    assert with_images[-1].gene not in annotated_genes
    only_annotated = [p for p in proteins if not p.has_images]
    assert len(only_annotated) == 1 and only_annotated[0].gene in annotated_genes
    assert not (small_demo / "microscopy" / "raw" / f"{only_annotated[0].gene}_{only_annotated[0].ensg}").exists()
    # One protein is listed under another ENSG id than its files, so the reader joins it by name.
    first = with_images[0]
    assert {r["ensg_id"] for r in rows if r["target_name"] == first.gene} == {first.annotation_ensg}
    assert first.annotation_ensg != first.ensg
    assert (small_demo / MARKER_FILE).is_file()


def test_nucleus_and_protein_channels_look_like_opencell(small_demo: Path):
    image = tifffile.imread(next(small_demo.rglob("*.tif")))
    nucleus = image[RAW_CHANNEL_INDEX["nucleus"]].astype(float)
    # Hoechst: background of a few hundred counts, nuclei in the thousands.
    assert 150 < np.percentile(nucleus, 5) < 350
    assert np.percentile(nucleus, 99) > 1500


def test_demo_is_read_by_the_opencell_reader(small_demo: Path):
    from ocbench.data.opencell import OpenCellDataset

    ds = OpenCellDataset(small_demo, write_manifest=False)
    labelled = SMALL.labelled_proteins * SMALL.fovs_per_protein
    assert len(ds) == labelled
    assert (ds.manifest["joined_by"] == "name").sum() == SMALL.name_joined_proteins * SMALL.fovs_per_protein
    assert ds.read(0).shape == (2, SMALL.size, SMALL.size)


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path: Path):
    first = _tree_digest(write_demo(tmp_path / "a", TINY))
    again = _tree_digest(write_demo(tmp_path / "b", TINY))
    other = _tree_digest(write_demo(tmp_path / "c", DemoConfig(**{**TINY.__dict__, "seed": 1})))
    assert first == again
    tifs = [k for k in first if k.endswith(".tif")]
    assert tifs and all(first[k] != other.get(k) for k in tifs)


def test_default_demo_covers_all_classes_with_multi_label_proteins():
    config = DemoConfig()
    proteins = demo_proteins(config)
    imaged = [p for p in proteins if p.has_images]
    labelled = [p for p in imaged if p.labels]
    assert len(imaged) == config.proteins
    assert len(labelled) == config.proteins - config.unlabelled_proteins
    assert {c for p in labelled for c in p.labels} == set(COMPARTMENTS)
    assert all(1 <= len(p.labels) <= 3 and set(p.labels.values()) <= set(GRADES) for p in labelled)
    assert any(len(p.labels) > 1 for p in labelled) and any(len(p.labels) == 1 for p in labelled)
    # Gene names that exercise the parser: lower case and dashes (but never '_').
    genes = [p.gene for p in imaged]
    assert any(g != g.upper() for g in genes) and any("-" in g for g in genes)
    assert not any("_" in g for g in genes)
    assert len({p.ensg for p in proteins}) == len(proteins)


def _in_out_nucleus_ratio(labels: dict[str, int], n_fovs: int = 3) -> float:
    config = DemoConfig(size=64, seed=5)
    protein = DemoProtein(index=0, gene="X", ensg="ENSG90000000001", annotation_ensg="", cid=1, labels=labels)
    ratios = []
    for j in range(n_fovs):
        image = render_fov(protein, j, config).astype(float)
        nucleus, signal = image[RAW_CHANNEL_INDEX["nucleus"]], image[RAW_CHANNEL_INDEX["protein"]]
        in_nucleus = nucleus > 1000
        cells = signal > np.percentile(signal, 25)  # roughly the cells, background excluded
        ratios.append(signal[in_nucleus].mean() / signal[cells & ~in_nucleus].mean())
    return float(np.mean(ratios))


def test_protein_channel_follows_the_labelled_compartment():
    nucleoplasm = _in_out_nucleus_ratio({"nucleoplasm": 3})
    cytoplasmic = _in_out_nucleus_ratio({"cytoplasmic": 3})
    mixed = _in_out_nucleus_ratio({"nucleoplasm": 3, "cytoplasmic": 3})
    assert nucleoplasm > 1.5
    assert cytoplasmic < 0.7
    assert cytoplasmic < mixed < nucleoplasm


def test_chromatin_protein_resembles_the_dna_stain():
    config = DemoConfig(size=64, seed=2)

    def dna_correlation(labels: dict[str, int]) -> float:
        protein = DemoProtein(index=3, gene="X", ensg="ENSG90000000004", annotation_ensg="", cid=1, labels=labels)
        image = render_fov(protein, 0, config).astype(float)
        return float(np.corrcoef(image[0].ravel(), image[1].ravel())[0, 1])

    assert dna_correlation({"chromatin": 3}) > 0.8
    assert dna_correlation({"membrane": 3}) < 0.3


def test_interrupted_write_leaves_nothing(tmp_path: Path, monkeypatch):
    real_imwrite = tifffile.imwrite
    calls = {"n": 0}

    def interrupt_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_imwrite(*args, **kwargs)

    monkeypatch.setattr(tifffile, "imwrite", interrupt_on_third)
    with pytest.raises(KeyboardInterrupt):
        write_demo(tmp_path / "demo", TINY)
    assert calls["n"] == 3
    assert list(tmp_path.iterdir()) == []


def test_interrupted_rewrite_keeps_the_earlier_demo(tmp_path: Path, monkeypatch):
    root = write_demo(tmp_path / "demo", TINY)
    before = _tree_digest(root)

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tifffile, "imwrite", interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_demo(root, DemoConfig(**{**TINY.__dict__, "seed": 9}))
    assert _tree_digest(root) == before
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]


def test_refuses_to_replace_a_folder_that_is_not_a_demo(tmp_path: Path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("keep me")
    with pytest.raises(DataError, match="not an ocbench demo folder"):
        write_demo(tmp_path / "mine", TINY)
    assert (tmp_path / "mine" / "precious.txt").read_text() == "keep me"


def test_ensure_demo_writes_once_under_the_cache(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path / "cache"))
    root = ensure_demo(config=TINY)
    assert root == tmp_path / "cache" / "demo"
    assert any(root.rglob("*.tif"))

    def must_not_write(*args, **kwargs):
        raise AssertionError("ensure_demo rewrote a current demo")

    monkeypatch.setattr("ocbench.data.demo.write_demo", must_not_write)
    assert ensure_demo(config=TINY) == root


def test_bad_config_is_a_config_error():
    with pytest.raises(ConfigError, match="size"):
        DemoConfig(size=8)
    with pytest.raises(ConfigError, match="proteins"):
        DemoConfig(proteins=0)


def test_a_killed_demo_write_is_cleaned_up_by_the_next_one(tmp_path: Path):
    import signal
    import subprocess
    import sys

    script = (
        "import os, signal, sys, tifffile\n"
        "from ocbench.data.demo import DemoConfig, write_demo\n"
        "real = tifffile.imwrite\n"
        "calls = []\n"
        "def imwrite(*a, **k):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 2: os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(*a, **k)\n"
        "tifffile.imwrite = imwrite\n"
        "write_demo(sys.argv[1], DemoConfig(proteins=3, fovs_per_protein=1, size=32, seed=0, "
        "unlabelled_proteins=0, annotation_only_proteins=0))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "demo")], capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # what kill -9 leaves
    write_demo(tmp_path / "demo", TINY)
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]
