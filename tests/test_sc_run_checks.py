"""Single-cell runs and the runner's reuse check: a changed expert labels file is
another run, NaN/inf points are one-line errors, "no cells to evaluate" names the real filter and
option, and deleted fine-tuned weights are said to be missing (not "other weights")."""

import hashlib
import json
import shutil

import pytest
from cli_assertions import one_line_message
from demo_data import labelled_demo
from click.testing import CliRunner

from ocbench.benchmark.entry import load_entry
from ocbench.cli import cli
from ocbench.data import cells as C
from ocbench.data.cards import open_dataset
from ocbench.data.demo import EXPERT_CELL_LABELS_FILE, DemoConfig, write_demo
from ocbench.errors import DataError

SMALL = ["--set", "crop_size=48", "--set", "ks=1,3", "--set", "main_k=3"]


@pytest.fixture(scope="module")
def demo(module_cache, tmp_path_factory):
    pytest.importorskip("skimage", reason="the demo's cells are segmented with scikit-image (pip install 'ocbench[cells]')")
    return open_dataset(str(labelled_demo(tmp_path_factory.mktemp("data") / "demo", proteins=8, fovs_per_protein=2, size=96)))


def error_line(result, *fragments):
    """Exit code 2, no traceback, one `error:` line (after any progress lines) naming each fragment."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0], result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def sc_run(demo, out, *args):
    return CliRunner().invoke(cli, ["run", "--dataset", str(demo.root), "--backbone", "classical-stats", "--task", "sc-knn",
                                    "--output", str(out), "--threads", "1", *SMALL, *args])


# -- 1: the entry records the expert file's sha256; other contents are another run ---------------------
def test_changed_expert_labels_file_is_refused_not_skipped(demo, tmp_path):
    expert = tmp_path / "expert.csv"
    shutil.copy(demo.root / EXPERT_CELL_LABELS_FILE, expert)
    out = tmp_path / "res"
    first = sc_run(demo, out, "--set", f"cell_labels={expert}")
    assert first.exit_code == 0, first.output
    [path] = out.glob("*__sc-knn__paper.json")
    entry = load_entry(path)
    assert entry.task_config["cell_labels_sha256"] == hashlib.sha256(expert.read_bytes()).hexdigest()
    again = sc_run(demo, out, "--set", f"cell_labels={expert}")
    assert again.exit_code == 0 and "skipped (exists)" in again.output  # same contents: the same run
    # Same path, other labels (every cell golgi): not "skipped (exists)" with the old score.
    lines = expert.read_text().splitlines()
    expert.write_text("\n".join([lines[0], *(",".join(line.split(",")[:-1] + ["golgi"]) for line in lines[1:])]) + "\n")
    error_line(sc_run(demo, out, "--set", f"cell_labels={expert}"),
               "cell_labels file", str(expert), "--overwrite", "--output DIR")
    replaced = sc_run(demo, out, "--set", f"cell_labels={expert}", "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    new = load_entry(path)
    assert new.task_config["cell_labels_sha256"] == hashlib.sha256(expert.read_bytes()).hexdigest()
    assert new.class_names == entry.class_names and set(new.per_class["loo"]["f1"]) == {"golgi"}
    # An entry from before the sha256 was recorded cannot be vouched for: refused too.
    data = json.loads(path.read_text())
    del data["task_config"]["cell_labels_sha256"]
    path.write_text(json.dumps(data))
    error_line(sc_run(demo, out, "--set", f"cell_labels={expert}"), "cell_labels file", "no sha256 recorded")


# -- 2: NaN/inf coordinates ----------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["nan", "inf", "-Infinity"])
def test_nan_or_inf_point_is_a_one_line_error(demo, tmp_path, value):
    fov = demo.fov_ids[0]
    bad = tmp_path / f"{value}.csv"
    bad.write_text(f"fov_id,y,x,labels\n{fov},{value},41,golgi\n")
    table, _ = _weak(demo)
    with pytest.raises(DataError) as info:
        C.read_cell_labels(bad, table)
    one_line_message(info, str(bad), "line 2", "finite")
    result = CliRunner().invoke(cli, ["data", "cells", "--dataset", str(demo.root), "--backend", "classical",
                                      "--set", "crop_size=48", "--cell-labels", str(bad),
                                      "--contact-sheet", str(tmp_path / "c.png")])
    error_line(result, bad.name, "line 2", "finite")


def _weak(demo):
    from ocbench.tasks.sc_knn import ScKnn

    task, _ = ScKnn().with_overrides(["crop_size=48"])
    return task.evaluation_cells(demo)


# -- 5: "no cells to evaluate" says which filter and which option ---------------------------------------
def test_no_cells_to_evaluate_names_the_actual_filter_and_the_run_option(demo, tmp_path):
    every = ",".join(demo.card.class_names)
    result = sc_run(demo, tmp_path / "none", "--set", f"omit_fovs_with={every}", "--set", "label_grade=2")
    message = error_line(result, "no cells to evaluate", "grade >= 2", "omit_fovs_with", "label_grade",
                         "--set cell_labels=FILE")
    assert "--cell-labels" not in message and "grade-3" not in message
    assert f"none of the {len(demo)} FOVs" in message


# -- 4: deleted fine-tuned weights ---------------------------------------------------------------------
def test_deleted_finetuned_weights_are_named_missing_not_other(module_cache, tmp_path):
    from ocbench.backbones.weights_folder import folder_for

    root = write_demo(module_cache / "demo-ft", DemoConfig(proteins=40, size=48))
    settings = ["epochs=1", "batch_size=8", "out_dim=32", "head_hidden_dim=32", "head_bottleneck_dim=16",
                "global_crop_size=32", "local_crop_size=16", "local_crops=2", "warmup_epochs=1",
                "warmup_teacher_temp_epochs=1", "fraction=0.3", "probe_epochs=5"]
    args = ["run", "--backbone", "tiny-vit-random", "--task", "finetune", "--dataset", str(root),
            "--output", str(tmp_path / "res"), "--threads", "1", *[a for s in settings for a in ("--set", s)]]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    [path] = (tmp_path / "res").glob("*.json")
    folder = folder_for(load_entry(path).backbone.name)
    assert (folder / "model.safetensors").is_file()
    folder.rename(tmp_path / "moved")  # as if the cache had been cleaned
    result = CliRunner().invoke(cli, args)
    error_line(result, str(folder), "missing", "--overwrite")
    assert "other weights" not in result.stderr
    (tmp_path / "moved").rename(folder)  # restored: the same run again
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0 and "skipped (exists)" in again.output
