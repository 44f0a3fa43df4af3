"""Raw-layout file names: parse and write back, including gene names with '-' and lower case."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from ocbench.data.layout import FovName, fov_filename, parse_fov_filename

# OpenCell's own public files (annotation table, cell-line table, nucleus frames; not ours to
# redistribute): read from OCBENCH_OPENCELL_SAMPLES, else from the folder kept beside the checkout.
OPENCELL_SAMPLES = Path(
    os.environ.get("OCBENCH_OPENCELL_SAMPLES") or Path(__file__).resolve().parents[2] / "shared" / "data" / "opencell"
)
SAMPLES_HINT = "set OCBENCH_OPENCELL_SAMPLES to a folder that holds it to run this test"


@pytest.mark.parametrize(
    ("gene", "ensg"),
    [
        ("CANX", "ENSG00000283777"),
        ("H1-0", "ENSG00000189060"),
        ("HLA-A", "ENSG00000206505"),
        ("C12orf57", "ENSG00000111678"),
    ],
)
def test_parse_round_trip(gene, ensg):
    name = f"OC-FOV_{gene}_{ensg}_CID000367_FID00030311_proj.tif"
    fov = parse_fov_filename(name)
    assert fov == FovName(gene=gene, ensg=ensg, cid=367, fid=30311, kind="proj")
    assert fov.filename == name
    assert fov.fov_id == f"OC-FOV_{gene}_{ensg}_CID000367_FID00030311"
    assert fov.relpath == f"microscopy/raw/{gene}_{ensg}/{name}"
    assert fov_filename(gene, ensg, 367, 30311) == name


def test_parse_takes_the_last_part_of_a_path_and_keeps_the_kind():
    name = "OC-FOV_H1-0_ENSG00000189060_CID000975_FID00000012_stack.tif"
    fov = parse_fov_filename(f"microscopy/raw/H1-0_ENSG00000189060/{name}")
    assert (fov.gene, fov.cid, fov.fid, fov.kind) == ("H1-0", 975, 12, "stack")


@pytest.mark.parametrize(
    "name",
    [
        "FOV_00007_RAW.tif",
        "OC-FOV_CANX_ENSG00000283777_CID00367_FID00030311_proj.tif",  # CID has 5 digits
        "OC-FOV_CANX_ENSG00000283777_CID000367_FID0030311_proj.tif",  # FID has 7 digits
        "OC-FOV_CANX_ENSG00000283777_CID000367_proj.tif",  # no FID
        "OC-FOV_CANX_ENSG00000283777_CID000367_FID00030311_proj.tiff",
        "OC-FOV_CANX_ENSG00000283777_CID000367_FID00030311_proj.tif.part",
        "OC-FOV_CANX_ENSG00000283777_CID000367_FID00030311_mask.tif",  # unknown kind
        "OC-FOV_CANX_283777_CID000367_FID00030311_proj.tif",  # not an ENSG id
        "OC-FOV_MY_GENE_ENSG00000283777_CID000367_FID00030311_proj.tif",  # '_' is the separator
        "OC-FOV__ENSG00000283777_CID000367_FID00030311_proj.tif",  # empty gene
    ],
)
def test_names_outside_the_layout_are_none(name):
    assert parse_fov_filename(name) is None


def test_fov_name_refuses_parts_that_would_not_parse_back():
    with pytest.raises(ValueError, match="'_'"):
        FovName(gene="MY_GENE", ensg="ENSG00000283777", cid=1, fid=1)
    with pytest.raises(ValueError, match="6 digits"):
        FovName(gene="CANX", ensg="ENSG00000283777", cid=10**6, fid=1)
    with pytest.raises(ValueError, match="kind"):
        FovName(gene="CANX", ensg="ENSG00000283777", cid=1, fid=1, kind="mask")


def test_every_real_public_target_name_round_trips():
    table = OPENCELL_SAMPLES / "all-public-targets.csv"
    if not table.is_file():
        pytest.skip(f"needs OpenCell's public cell-line table {table.name}: {SAMPLES_HINT}")
    with open(table, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1310
    for row in rows:
        fov = FovName(row["target_name"], row["ensg_id"], int(row["cell_line_id"]), 1)
        assert parse_fov_filename(fov.filename) == fov
