"""OpenCellDataset: walking the raw layout, joining labels, the manifest, lazy reads, bad input."""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile

import ocbench.data.opencell as opencell
from ocbench.data.annotations import GRADE_COLUMNS, LABEL_COLUMNS
from ocbench.data.compartments import CHANNELS, COMPARTMENTS
from ocbench.data.layout import FovName
from ocbench.data.opencell import MANIFEST_NAME, OpenCellDataset, format_info, read_fov
from ocbench.errors import ConfigError, DataError

from cli_assertions import one_line_message

# OpenCell's own public files (annotation table, cell-line table, nucleus frames; not ours to
# redistribute): read from OCBENCH_OPENCELL_SAMPLES, else from the folder kept beside the checkout.
OPENCELL_SAMPLES = Path(
    os.environ.get("OCBENCH_OPENCELL_SAMPLES") or Path(__file__).resolve().parents[2] / "shared" / "data" / "opencell"
)
SAMPLES_HINT = "set OCBENCH_OPENCELL_SAMPLES to a folder that holds it to run this test"
NUCLEUS, PROTEIN = 0, 1  # positions in the raw proj file

ANNOTATIONS = """ensg_id,target_name,annotation_name,annotation_grade
ENSG00000127837,AAMP,cytoplasmic,3
ENSG00000127837,AAMP,nucleoplasm,1
ENSG00000189060,H1-0,chromatin,2
ENSG00000111678,C12orf57,membrane,1
ENSG00000000001,NOIMAGES,golgi,3
"""


def sample_file(name: str) -> Path:
    path = OPENCELL_SAMPLES / name
    if not path.exists():
        pytest.skip(f"needs OpenCell's public file {name}: {SAMPLES_HINT}")
    return path


def write_fov(root: Path, gene: str, ensg: str, cid: int, fid: int, image: np.ndarray | None = None) -> Path:
    fov = FovName(gene, ensg, cid, fid)
    path = root / fov.relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    if image is None:  # nucleus channel = 1000 + fid, protein channel = 7 + fid: easy to tell apart
        image = np.stack([np.full((16, 24), 1000 + fid), np.full((16, 24), 7 + fid)]).astype(np.uint16)
    tifffile.imwrite(path, image)
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "opencell"
    (root).mkdir()
    (root / "annotations.csv").write_text(ANNOTATIONS)
    for fid in (1, 2):
        write_fov(root, "AAMP", "ENSG00000127837", 5, fid)
        write_fov(root, "H1-0", "ENSG00000189060", 975, fid)
    write_fov(root, "C12orf57", "ENSG00000111678", 1866, 3)
    write_fov(root, "UNLABELLED", "ENSG00000999999", 7, 4)  # images but no annotations
    return root


def dataset(root, *args, **kwargs) -> OpenCellDataset:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean layout must not warn
        return OpenCellDataset(root, *args, **kwargs)




# -- manifest and labels ----------------------------------------------------------------------


def test_manifest_columns_order_labels_and_paths(root):
    ds = dataset(root)
    m = ds.manifest
    ids = ["fov_id", "gene", "ensg", "cid", "fid", "path", "joined_by"]
    assert list(m.columns) == [*ids, *LABEL_COLUMNS, *GRADE_COLUMNS]
    assert len(ds) == 5 and list(m.index) == list(range(5))
    assert ds.fov_ids == sorted(ds.fov_ids) and ds.fov_ids[0] == "OC-FOV_AAMP_ENSG00000127837_CID000005_FID00000001"
    assert m.loc[0, "path"] == (
        "microscopy/raw/AAMP_ENSG00000127837/OC-FOV_AAMP_ENSG00000127837_CID000005_FID00000001_proj.tif"
    )
    assert set(m["gene"]) == {"AAMP", "H1-0", "C12orf57"}  # UNLABELLED is excluded
    assert set(m["joined_by"]) == {"ensg"}
    assert ds.labels.dtype == np.uint8 and ds.labels.shape == (5, 17)
    aamp = m.index[m["gene"] == "AAMP"][0]
    assert ds.labels[aamp].tolist() == [int(c in ("cytoplasmic", "nucleoplasm")) for c in COMPARTMENTS]
    assert m.loc[aamp, "grade_nucleoplasm"] == 1 and m.loc[aamp, "grade_cytoplasmic"] == 3


def test_read_maps_channels_by_name(root):
    ds = dataset(root)
    image = ds.read(0)
    assert image.shape == (2, 16, 24) and image.dtype == np.uint16
    assert CHANNELS == ("protein", "nucleus")
    assert int(image[0, 0, 0]) == 7 + 1 and int(image[1, 0, 0]) == 1000 + 1
    channels = ds.read_channels(len(ds) - 1)
    assert set(channels) == {"protein", "nucleus"}
    fid = int(ds.manifest["fid"].iloc[-1])
    assert int(channels["protein"].max()) == 7 + fid and int(channels["nucleus"].min()) == 1000 + fid
    with pytest.raises(IndexError):
        ds.read(len(ds))


def test_manifest_saved_version_is_its_sha256_and_independent_of_location(root, tmp_path):
    ds = dataset(root)
    saved = (root / MANIFEST_NAME).read_bytes()
    assert ds.manifest_path == root / MANIFEST_NAME
    assert ds.manifest_version == hashlib.sha256(saved).hexdigest()
    assert ds.version != ds.manifest_version  # the version covers the images' content too
    assert b"/tmp" not in saved and str(tmp_path).encode() not in saved  # relative paths only
    moved = tmp_path / "elsewhere"
    shutil.copytree(root, moved)
    (moved / MANIFEST_NAME).unlink()
    assert dataset(moved).version == ds.version == dataset(root).version
    assert dataset(root, min_grade=2).version != ds.version  # labels are part of the version
    assert [p.name for p in root.iterdir() if p.name.endswith(".tmp")] == []


def test_min_grade_excludes_proteins_without_strong_annotations(root):
    ds = dataset(root, min_grade=2)
    assert set(ds.manifest["gene"]) == {"AAMP", "H1-0"}  # C12orf57 has only a grade-1 annotation
    aamp = ds.manifest.index[ds.manifest["gene"] == "AAMP"][0]
    assert ds.manifest.loc[aamp, "label_nucleoplasm"] == 0 and ds.manifest.loc[aamp, "grade_nucleoplasm"] == 1
    info = ds.info()
    assert (info.proteins_below_min_grade, info.fovs_below_min_grade) == (1, 1)
    assert info.fovs_unlabelled == 2 and "no annotation of grade >= 2" in format_info(info)
    with pytest.raises(ConfigError):
        OpenCellDataset(root, min_grade=0)


def test_info_counts_and_text(root):
    (root / "microscopy" / "raw" / "notes.txt").write_text("x")
    write_fov(root, "AAMP", "ENSG00000127837", 5, 9).rename(
        root / "microscopy/raw/AAMP_ENSG00000127837/OC-FOV_AAMP_ENSG00000127837_CID000005_FID00000009_stack.tif"
    )
    with pytest.warns(UserWarning, match=r"skipped 1 file.*notes\.txt"):
        ds = OpenCellDataset(root)
    info = ds.info()
    assert (info.files_found, info.names_skipped, info.other_kinds, info.fovs_found) == (8, 1, 1, 6)
    assert (info.fovs_labelled, info.fovs_unlabelled, info.fovs_without_annotations) == (5, 1, 1)
    assert (info.proteins_with_images, info.proteins_labelled, info.proteins_joined_by_ensg) == (4, 3, 3)
    assert info.proteins_with_images_without_annotations == 1 and info.unannotated_examples == ("UNLABELLED",)
    assert (info.proteins_annotated, info.proteins_annotated_without_images) == (4, 1)  # NOIMAGES
    assert info.fovs_per_class["chromatin"] == 2 and info.proteins_per_class["chromatin"] == 1
    assert info.fovs_per_class["cytoplasmic"] == 2 and info.fovs_per_class["golgi"] == 0
    text = format_info(info)
    assert ds.version in text and "with annotations but no images" in text and "notes.txt" in text
    rows = [line.split() for line in text.splitlines()]
    class_lines = {row[0]: row[1:] for row in rows if row and row[0] in COMPARTMENTS}
    assert class_lines["chromatin"] == ["2", "1"] and len(class_lines) == 17


def test_default_annotation_file_names_and_explicit_table(root, tmp_path):
    (root / "annotations.csv").rename(root / "opencell-localization-annotations.csv")
    assert len(dataset(root)) == 5
    other = tmp_path / "mine.csv"
    other.write_text("ensg_id,target_name,annotation_name,annotation_grade\nENSG00000189060,H1-0,er,3\n")
    ds = dataset(root, annotations=other)
    assert set(ds.manifest["gene"]) == {"H1-0"} and ds.info().annotations == str(other)
    (root / "opencell-localization-annotations.csv").unlink()
    with pytest.raises(DataError) as excinfo:
        OpenCellDataset(root)
    one_line_message(excinfo, str(root), "annotations.csv", "--annotations")


# -- joins by name ----------------------------------------------------------------------------


def public_targets() -> dict[str, dict[str, str]]:
    with open(sample_file("all-public-targets.csv"), newline="") as fh:
        return {row["target_name"]: row for row in csv.DictReader(fh)}


def test_join_by_name_recovers_targets_whose_ensg_differs(tmp_path):
    annotations = sample_file("2021-09-29-public-annotations-flat.csv")
    targets = public_targets()
    root = tmp_path / "oc"
    for gene in ("CANX", "HLA-A", "AAMP"):  # CANX and HLA-A: ENSG differs between the two tables
        row = targets[gene]
        write_fov(root, gene, row["ensg_id"], int(row["cell_line_id"]), 1)
    ds = dataset(root, annotations=annotations)
    by_gene = ds.manifest.set_index("gene")
    assert by_gene.loc["CANX", "ensg"] == "ENSG00000283777"  # the file's id is kept
    assert by_gene["joined_by"].to_dict() == {"AAMP": "ensg", "CANX": "name", "HLA-A": "name"}
    assert by_gene.loc["CANX", "label_er"] == 1 and by_gene.loc["CANX", "grade_er"] == 3
    assert by_gene.loc["HLA-A", ["label_membrane", "label_vesicles"]].tolist() == [1, 1]
    info = ds.info()
    assert (info.proteins_joined_by_ensg, info.proteins_joined_by_name) == (1, 2)
    assert (info.fovs_joined_by_ensg, info.fovs_joined_by_name, info.fovs_unlabelled) == (1, 2, 0)
    assert info.proteins_annotated_without_images == 1310 - 3


def test_join_by_name_needs_exactly_one_target_of_that_name(tmp_path):
    root = tmp_path / "oc"
    (root).mkdir()
    (root / "annotations.csv").write_text(
        "ensg_id,target_name,annotation_name,annotation_grade\n"
        "ENSG00000000001,DUP,er,3\nENSG00000000002,DUP,golgi,3\nENSG00000000003,ONE,golgi,3\n"
    )
    write_fov(root, "DUP", "ENSG00000000009", 1, 1)
    write_fov(root, "ONE", "ENSG00000000008", 2, 1)
    info = dataset(root).info()
    assert (info.proteins_joined_by_name, info.proteins_with_images_without_annotations) == (1, 1)


def test_all_real_targets_join_by_ensg_or_name(tmp_path):
    """Every public target, as a folder named from the cell-line table (empty files: only names are read)."""
    annotations = sample_file("2021-09-29-public-annotations-flat.csv")
    root = tmp_path / "oc"
    for gene, row in public_targets().items():
        path = root / FovName(gene, row["ensg_id"], int(row["cell_line_id"]), 1).relpath
        path.parent.mkdir(parents=True)
        path.touch()
    ds = dataset(root, annotations=annotations, write_manifest=False)
    info = ds.info()
    assert (info.proteins_joined_by_ensg, info.proteins_joined_by_name) == (1274, 36)
    assert (info.fovs_labelled, info.fovs_unlabelled, info.proteins_annotated_without_images) == (1310, 0, 0)
    assert (info.proteins_per_class["cytoplasmic"], info.proteins_per_class["mitochondria"]) == (687, 13)
    assert ds.manifest_path is None and not (root / MANIFEST_NAME).exists()


# -- bad input --------------------------------------------------------------------------------


def test_missing_root_and_missing_raw_folder(tmp_path):
    with pytest.raises(DataError) as excinfo:
        OpenCellDataset(tmp_path / "nowhere")
    one_line_message(excinfo, str(tmp_path / "nowhere"), "not found")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as excinfo:
        OpenCellDataset(tmp_path / "empty")
    one_line_message(excinfo, "microscopy/raw")


def test_no_fovs_or_no_labelled_fovs(root, tmp_path):
    bare = tmp_path / "bare"
    (bare / "microscopy" / "raw").mkdir(parents=True)
    (bare / "annotations.csv").write_text(ANNOTATIONS)
    with pytest.raises(DataError, match="no FOV images found"):
        OpenCellDataset(bare)
    other = tmp_path / "other.csv"
    other.write_text("ensg_id,target_name,annotation_name,annotation_grade\nENSG00000000042,ZZZ,er,3\n")
    with pytest.raises(DataError) as excinfo:
        OpenCellDataset(root, annotations=other)
    one_line_message(excinfo, "none of 6 FOV images", str(other), "--annotations")


def test_names_not_in_layout_are_skipped_with_a_warning(root):
    raw = root / "microscopy" / "raw"
    (raw / "AAMP_ENSG00000127837" / "OC-FOV_AAMP_ENSG00000127837_CID000005_FID00000003_proj.tif.part").write_bytes(b"")
    (raw / "FOV_00007_RAW.tif").write_bytes(b"")
    with pytest.warns(UserWarning, match="skipped 2 file") as record:
        ds = OpenCellDataset(root)
    assert "FOV_00007_RAW.tif" in str(record[0].message)
    assert len(ds) == 5 and ds.info().names_skipped == 2


def test_duplicate_fov_in_two_folders(root):
    src = next((root / "microscopy" / "raw" / "AAMP_ENSG00000127837").iterdir())
    (root / "microscopy" / "raw" / "copy").mkdir()
    shutil.copy(src, root / "microscopy" / "raw" / "copy" / src.name)
    with pytest.raises(DataError, match="keep one copy"):
        OpenCellDataset(root)


def test_same_cid_fid_under_a_second_protein_is_refused(root):
    # A copy of AAMP's FOV renamed into another protein's folder would count again with that
    # protein's labels: one FOV, two label sets.
    src = next((root / "microscopy" / "raw" / "AAMP_ENSG00000127837").iterdir())
    fov = opencell.parse_fov_filename(src.name)
    copy = FovName("H1-0", "ENSG00000189060", fov.cid, fov.fid)
    (root / copy.relpath).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, root / copy.relpath)
    with pytest.raises(DataError) as excinfo:
        OpenCellDataset(root)
    one_line_message(excinfo, f"CID{fov.cid:06d}_FID{fov.fid:08d}", "another protein", src.name)


def break_first_fov(root: Path, content: bytes | None = None, image: np.ndarray | None = None):
    ds = dataset(root)
    path = ds.path(0)
    if image is not None:
        tifffile.imwrite(path, image, photometric="minisblack")
    if content is not None:
        path.write_bytes(content)
    return ds, str(path)


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"<html>403 Forbidden</html>", "not a TIFF file"), (b"", "not a TIFF file (it is empty)")],
)
def test_not_a_tiff(root, content, expected):
    ds, path = break_first_fov(root, content=content)
    with pytest.raises(DataError) as excinfo:
        ds.read(0)
    one_line_message(excinfo, path, expected)


def test_truncated_tiff_at_any_length(root):
    ds = dataset(root)
    path = ds.path(0)
    whole = path.read_bytes()
    for length in [*range(1, len(whole), 7), len(whole) - 1]:  # cut in the header, tags, pixels, last tag value
        path.write_bytes(whole[:length])
        with pytest.raises(DataError) as excinfo:
            ds.read(0)
        message = one_line_message(excinfo, str(path))
        assert "truncated" in message or "corrupt" in message, message
    path.write_bytes(whole)
    assert ds.read(0).shape == (2, 16, 24)


def test_wrong_dtype(root):
    ds, path = break_first_fov(root, image=np.zeros((2, 16, 24), np.float32))
    with pytest.raises(DataError) as excinfo:
        ds.read(0)
    one_line_message(excinfo, path, "float32", "uint16")


@pytest.mark.parametrize(
    ("shape", "found"), [((3, 16, 24), "3 channels"), ((16, 24), "one channel"), ((4, 2, 16, 24), "4 axes")]
)
def test_wrong_channel_count(root, shape, found):
    ds, path = break_first_fov(root, image=np.zeros(shape, np.uint16))
    with pytest.raises(DataError) as excinfo:
        ds.read(0)
    one_line_message(excinfo, path, found, "expected CYX (2, H, W)")


def test_real_nucleus_frame_given_as_proj_is_rejected(tmp_path):
    frame = sample_file("nuclei/FOV_00007_RAW.tif")
    target = tmp_path / FovName("CANX", "ENSG00000283777", 149, 7).filename
    shutil.copy(frame, target)
    with pytest.raises(DataError) as excinfo:
        read_fov(target)
    one_line_message(excinfo, str(target), "shape 1024x1024 (one channel)", "expected CYX (2, H, W)")


def test_interrupted_manifest_write_leaves_nothing(root, monkeypatch):
    def interrupt(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        OpenCellDataset(root)
    assert sorted(p.name for p in root.iterdir()) == ["annotations.csv", "microscopy"]


def test_unwritable_root_warns_and_still_works(root, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(opencell, "atomic_write", refuse)
    with pytest.warns(UserWarning, match="could not save the manifest"):
        ds = OpenCellDataset(root)
    assert ds.manifest_path is None and len(ds) == 5 and "manifest: not saved" in format_info(ds.info())


def test_importing_the_reader_is_light():
    code = "import sys, ocbench.data.opencell as o; print(sorted({'torch', 'tifffile', 'timm'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
