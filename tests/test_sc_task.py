"""sc-knn end to end on a small demo, offline: segmentation, crops, cached embeddings, k-NN, entry."""

import numpy as np
import pytest

pytest.importorskip("skimage", reason="the demo's cells are segmented with scikit-image (pip install 'ocbench[cells]')")

from demo_data import labelled_demo  # noqa: E402
from ocbench.benchmark.entry import load_entry  # noqa: E402
from ocbench.benchmark.runner import RunOptions, RunSpec, run_grid  # noqa: E402
from ocbench.data import cells as C  # noqa: E402
from ocbench.data.cards import open_dataset  # noqa: E402
from ocbench.data.demo import EXPERT_CELL_LABELS_FILE  # noqa: E402
from ocbench.tasks import get_task_class  # noqa: E402
from ocbench.tasks.sc_knn import EVAL_SET  # noqa: E402

SMALL = ("crop_size=48", "ks=1,3,10", "main_k=10")


@pytest.fixture(scope="module")
def demo_dataset(module_cache, tmp_path_factory):
    return open_dataset(str(labelled_demo(tmp_path_factory.mktemp("data") / "demo", proteins=8, fovs_per_protein=2, size=96)))


def test_sc_knn_runs_offline_end_to_end_and_writes_an_entry(demo_dataset, module_cache, tmp_path):
    import ocbench.tasks.sc_knn  # noqa: F401  (registers sc-knn and sc-knn-fov)

    assert get_task_class("sc-knn").name == "sc-knn"
    options = RunOptions(output_dir=tmp_path / "results", device="cpu", progress=False)
    specs = [RunSpec(backbone="classical-stats", task=task, overrides=SMALL) for task in ("sc-knn", "sc-knn-fov")]
    outcomes = run_grid(specs, demo_dataset, options)
    entries = [load_entry(o.path) for o in outcomes]  # schema-valid entries
    for entry, outcome in zip(entries, outcomes):
        assert entry.main_score.eval_set == EVAL_SET and entry.main_score.metric == "macro_f1"
        assert entry.axis is not None and entry.axis.name == "k" and entry.axis.main == 10
        assert [p.value for p in entry.axis.points] == [1, 3, 10]
        assert entry.axis.point(10).scores == entry.scores
        assert 0 <= entry.main.mean <= 1 and entry.main.n == 1
        assert entry.dataset.synthetic and entry.protocol_version == "sc-knn/1"
        assert entry.off_protocol  # smaller crops and ks than the protocol's
        assert "big_aggregates" not in entry.per_class[EVAL_SET]["f1"]  # its FOVs are not evaluated
        assert outcome.details["labels"] == "weak" and outcome.details["segmentation"].startswith("classical")
        assert outcome.details["n_cells"] >= 40
    assert entries[0].task_config["exclude"] == "self" and entries[1].task_config["exclude"] == "fov"
    # The crops were embedded once: the second task found them in the cache.
    assert [o.details["item_embeddings"][0]["cache_hit"] for o in outcomes] == [False, True]
    # The self track flatters: cells of one FOV share weak labels and look alike.
    assert entries[0].main.mean >= entries[1].main.mean


def test_cells_table_contact_sheet_and_export_on_the_demo(demo_dataset, module_cache, tmp_path):
    from ocbench.backbones.adapters import parse_channels
    from ocbench.backbones.cards import get_card
    from ocbench.benchmark.embeddings import extract_embeddings

    table = C.prepare_cells(demo_dataset, "classical", crop=C.CropSettings(48, 2.0))
    assert table.meta["n_fovs"] == 16 and len(table) >= 100
    per_fov = table.cells.groupby("fov_id").size()
    assert per_fov.min() >= 4  # the demo draws 8-10 cells per 96 px field
    summary = C.format_cells_summary(table)
    assert "cells per FOV" in summary and "evaluation cells per class" in summary
    sheet = C.write_contact_sheet(tmp_path / "cells.png", demo_dataset, table, n=6)
    assert sheet.stat().st_size > 1000
    evaluation = C.evaluation_set(demo_dataset, table)
    card = get_card("classical-stats")
    embeddings = extract_embeddings(evaluation.crops, card, parse_channels(None, card), device="cpu", progress=False)
    path = C.export_cell_embeddings(tmp_path / "cells.npz", evaluation, embeddings)
    with np.load(path) as z:
        assert z["features"].shape == (len(evaluation), card.feature_dim)
        assert z["ids"].tolist() == evaluation.ids and z["labels"].shape == (len(evaluation), 17)
        # groups: each cell's protein (what grouped splits and intervals go by); fovs: its FOV
        protein_of_fov = dict(zip(demo_dataset.fov_ids, demo_dataset.manifest[demo_dataset.card.group_column].astype(str)))
        assert z["fovs"].tolist() == [str(f) for f in evaluation.groups] and set(z["fovs"]) <= set(demo_dataset.fov_ids)
        assert z["groups"].tolist() == [protein_of_fov[f] for f in z["fovs"]]
        assert len(set(z["groups"])) < len(set(z["fovs"]))  # 2 FOVs per protein


def test_cells_command_and_expert_labels_on_the_demo(demo_dataset, module_cache, tmp_path):
    from ocbench.tasks.sc_knn import ScKnn

    text = C.cells_command(demo_dataset, crop=C.CropSettings(48, 2.0), contact_sheet=tmp_path / "sheet.png", progress=False)
    assert "masks" in text and "contact sheet:" in text and (tmp_path / "sheet.png").is_file()
    task, _ = ScKnn().with_overrides(["crop_size=48", "ks=1,3", "main_k=3"])
    table, weak = task.evaluation_cells(demo_dataset)
    # The demo lists cells it drew itself (a point in each nucleus): segmentation must find them all.
    expert_file = demo_dataset.root / EXPERT_CELL_LABELS_FILE
    listed = expert_file.read_text().count("\n") - 1
    assert listed >= len(set(weak.groups))  # about 2 per evaluated FOV
    text = C.cells_command(demo_dataset, crop=C.CropSettings(48, 2.0), cell_labels=expert_file, progress=False)
    assert f"expert labels ({EXPERT_CELL_LABELS_FILE})" in text
    task, _ = task.with_overrides([f"cell_labels={expert_file}"])
    _, expert = task.evaluation_cells(demo_dataset)
    assert expert.source == f"expert:{EXPERT_CELL_LABELS_FILE}" and len(expert) == listed
    assert set(expert.groups) <= set(weak.groups)  # the FOVs the paper's selection keeps
    # Expert labels are the protein's grade-3 compartments: the weak labels of the same cells.
    position = {cid: i for i, cid in enumerate(weak.ids)}
    common = [i for i, c in enumerate(expert.ids) if c in position]
    assert len(common) >= 0.8 * len(expert)
    np.testing.assert_array_equal(expert.labels[common], weak.labels[[position[expert.ids[i]] for i in common]])
    rng = np.random.default_rng(0)
    result = task.run(rng.normal(size=(len(expert), 8)), expert.labels, expert.groups, class_names=demo_dataset.card.class_names)
    assert result.axis["main"] == 3


def test_touched_fov_file_with_the_same_bytes_keeps_its_mask(demo_dataset, module_cache):
    import os

    first = C.prepare_cells(demo_dataset, "classical", crop=C.CropSettings(48, 2.0))
    path = demo_dataset.path(0)
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # copied or touched: new mtime, same bytes
    again = C.prepare_cells(demo_dataset, "classical", crop=C.CropSettings(48, 2.0))
    assert again.meta["n_fovs_segmented_now"] == 0 and again.path == first.path
