"""The `ocbench data` commands end to end, and the CLI's error contract (one line, exit 2)."""

import json

import pytest
import tifffile
from click.testing import CliRunner

from ocbench.cli import cli

from cli_assertions import one_line_error


@pytest.fixture()
def runner(tmp_path, monkeypatch):
    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path / "cache"))
    return CliRunner()


@pytest.fixture()
def demo_root(runner, tmp_path):
    root = tmp_path / "demo"
    result = runner.invoke(cli, ["data", "demo", "--root", str(root), "--proteins", "12", "--size", "64"])
    assert result.exit_code == 0, result.output
    return root




def test_demo_then_info_prints_counts_per_class(runner, demo_root):
    result = runner.invoke(cli, ["data", "info", "--dataset", str(demo_root)])
    assert result.exit_code == 0, result.output
    assert "nucleoplasm" in result.output and "focal_adhesions" in result.output
    assert "joined by target name" in result.output


def test_dataset_demo_is_written_on_first_use(runner, tmp_path):
    result = runner.invoke(cli, ["data", "info", "--dataset", "demo"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cache" / "demo" / "annotations.csv").is_file()


def test_split_writes_a_valid_protein_split(runner, demo_root, tmp_path):
    out = tmp_path / "split.json"
    result = runner.invoke(cli, ["data", "split", "--dataset", str(demo_root), "--track", "protein", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "fold4" in result.output and "test" in result.output
    from ocbench.benchmark.splits import load_split
    from ocbench.data.opencell import OpenCellDataset

    ds = OpenCellDataset(demo_root)
    split = load_split(out, manifest=ds.manifest, dataset_version=ds.manifest_version)  # made for the listing
    ensg = dict(zip(ds.manifest.fov_id, ds.manifest.ensg))
    assert not {ensg[i] for i in split.test} & {ensg[i] for i in split.train_ids}


def test_export_round_trip_via_cli(runner, demo_root, tmp_path):
    out = tmp_path / "hf"
    result = runner.invoke(cli, ["data", "export", "--to", "hf", str(out), "--dataset", str(demo_root)])
    assert result.exit_code == 0, result.output
    import datasets

    assert len(datasets.load_from_disk(str(out))) > 0


def test_missing_root_is_one_line(runner, tmp_path):
    one_line_error(runner.invoke(cli, ["data", "info", "--dataset", str(tmp_path / "nope")]), "nope")


def test_default_real_data_missing_says_how_to_get_it(runner):
    one_line_error(runner.invoke(cli, ["data", "info"]), "ocbench data download opencell")


def test_corrupt_tif_is_one_line_naming_the_file(runner, demo_root):
    from ocbench.data.opencell import OpenCellDataset

    ds = OpenCellDataset(demo_root)
    bad = demo_root / ds.manifest.path[0]
    bad.write_bytes(b"not a tiff at all")
    result = runner.invoke(cli, ["embed", "--backbone", "classical-stats", "--dataset", str(demo_root)])
    one_line_error(result, bad.name)


@pytest.mark.parametrize(
    "table_text, fragment",
    [
        ("ensg_id,target_name,annotation_name\nENSG00000000001,X,er\n", "annotation_grade"),  # missing column
        ("ensg_id,target_name,annotation_name,annotation_grade\nENSG00000000001,X,lysosome,3\n", "lysosome"),
    ],
    ids=["missing-column", "unknown-compartment"],
)
def test_bad_annotation_table_is_one_line(runner, demo_root, tmp_path, table_text, fragment):
    table = tmp_path / "ann.csv"
    table.write_text(table_text)
    one_line_error(
        runner.invoke(cli, ["data", "info", "--dataset", str(demo_root), "--annotations", str(table)]),
        "ann.csv", fragment,
    )


def test_split_file_with_overlap_is_one_line_and_debug_shows_traceback(runner, demo_root, tmp_path):
    out = tmp_path / "split.json"
    assert runner.invoke(cli, ["data", "split", "--dataset", str(demo_root), "--out", str(out)]).exit_code == 0
    doc = json.loads(out.read_text())
    doc["test"].append(doc["folds"][0][0])
    out.write_text(json.dumps(doc))
    args = ["data", "export", "--to", "hf", str(tmp_path / "hf"), "--dataset", str(demo_root), "--split-file", str(out)]
    one_line_error(runner.invoke(cli, args), "split.json")
    assert not (tmp_path / "hf").exists()
    debug = runner.invoke(cli, ["--debug", *args])
    assert debug.exit_code != 0 and debug.exception is not None


def test_wrong_channel_count_is_one_line(runner, demo_root):
    from ocbench.data.opencell import OpenCellDataset

    ds = OpenCellDataset(demo_root)
    bad = demo_root / ds.manifest.path[1]
    tifffile.imwrite(bad, tifffile.imread(bad)[:1])
    result = runner.invoke(cli, ["embed", "--backbone", "classical-stats", "--dataset", str(demo_root)])
    one_line_error(result, bad.name)


def test_data_cells_checks_expert_labels_given_either_way(runner, demo_root, tmp_path):
    pytest.importorskip("skimage", reason="the classical segmentation backend needs scikit-image (pip install 'ocbench[cells]')")
    from ocbench.data.demo import EXPERT_CELL_LABELS_FILE

    expert = demo_root / EXPERT_CELL_LABELS_FILE
    sheet = str(tmp_path / "sheet.png")
    for how in (["--cell-labels", str(expert)], ["--set", f"cell_labels={expert}"]):
        result = runner.invoke(cli, ["data", "cells", "--dataset", str(demo_root), "--contact-sheet", sheet, *how])
        assert result.exit_code == 0, result.output
        assert f"expert labels ({EXPERT_CELL_LABELS_FILE})" in result.output
    # A file named through --set is checked too, not ignored.
    result = runner.invoke(cli, ["data", "cells", "--dataset", str(demo_root), "--contact-sheet", sheet,
                                 "--set", f"cell_labels={tmp_path / 'missing.csv'}"])
    one_line_error(result, "missing.csv")
