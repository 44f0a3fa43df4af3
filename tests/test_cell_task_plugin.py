"""The single-cell task of CONTRIBUTING.md ("A task on single cells") runs, as written there, as a plugin.

The plugin text is read from CONTRIBUTING.md itself, so the documented example cannot rot: it is
written to a file and run with `ocbench run --plugin FILE --task sc-linear` on a small demo.
"""

import re
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("skimage", reason="the demo's cells are segmented with scikit-image (pip install 'ocbench[cells]')")

from demo_data import labelled_demo  # noqa: E402
from ocbench.benchmark.entry import load_entry  # noqa: E402
from ocbench.cli import cli  # noqa: E402
from ocbench.data.cards import open_dataset  # noqa: E402
from ocbench.predictions import load_predictions  # noqa: E402
from ocbench.stats import macro_f1  # noqa: E402
from ocbench.tasks import TASKS, CellSelection  # noqa: E402

CONTRIBUTING = Path(__file__).resolve().parents[1] / "CONTRIBUTING.md"


def _plugin_text() -> str:
    text = CONTRIBUTING.read_text(encoding="utf-8")
    section = text[text.index("### A task on single cells"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_documented_plugin_is_complete_and_short():
    text = _plugin_text()
    assert len(text.splitlines()) < 80
    assert "class ScLinear(CellTask)" in text and '"sc-linear"' in text


def test_the_documented_cell_task_runs_through_ocbench_run(module_cache, tmp_path):
    data = labelled_demo(tmp_path / "demo", proteins=8, fovs_per_protein=2, size=96)
    plugin = tmp_path / "sc_linear.py"
    plugin.write_text(_plugin_text(), encoding="utf-8")
    out = tmp_path / "results"
    try:
        result = CliRunner().invoke(cli, [
            "run", "--plugin", str(plugin), "--dataset", str(data), "--backbone", "classical-stats", "--task", "sc-linear",
            "--set", "crop_size=48", "--device", "cpu", "--output", str(out),
        ])
    finally:  # the plugin's task leaves the registry with the test: later tests see the built-in tasks
        if "sc-linear" in TASKS:
            TASKS.unregister("sc-linear")
        sys.modules.pop("ocbench_plugin_sc_linear", None)
    assert result.exit_code == 0, result.output
    [path] = sorted(out.glob("*.json"))
    entry = load_entry(path)
    assert entry.task == "sc-linear" and entry.protocol_version == "sc-linear/1"
    assert entry.main_score.eval_set == "cv" and entry.main_score.metric == "macro_f1"
    # the cell selection is part of the task's recorded settings, next to its own
    assert {"crop_size", "label_grade", "omit_fovs_with", "cell_labels", "folds", "c"} <= set(entry.task_config)
    assert entry.task_config["crop_size"] == 48 and entry.task_config["omit_fovs_with"] == ["big_aggregates"]

    # every evaluation cell (as the card's cell selection chooses them) is predicted exactly once
    dataset = open_dataset(str(data))
    selection = CellSelection().for_dataset(dataset.card).with_overrides(["crop_size=48"])
    _, evaluation = selection.evaluation_cells(dataset)
    predictions = load_predictions(out / entry.predictions.file)
    assert sorted(predictions.item_ids.tolist()) == sorted(evaluation.ids)
    y_pred = predictions.y_pred.reshape(-1, *predictions.y_true.shape)
    assert y_pred.shape[0] == 1 and np.isin(y_pred, (0, 1)).all()

    # a real score: in [0, 1], and above predicting every class for every cell on the demo's separable cells
    score = entry.main.mean
    assert 0.0 <= score <= 1.0
    assert score == pytest.approx(macro_f1(predictions.y_true, y_pred[0]))
    baseline = macro_f1(predictions.y_true, np.ones_like(predictions.y_true))
    assert score > baseline


def test_sc_knn_keeps_its_settings_in_order_and_holds_the_cell_selection():
    """sc-knn's task_config keys (and their order) are what its entries have always recorded."""
    from ocbench.data.cards import OPENCELL
    from ocbench.tasks.sc_knn import ScKnn

    assert ScKnn.keys() == ["ks", "main_k", "temperature", "threshold", "normalization", "exclude", *CellSelection.keys()]
    assert CellSelection.keys() == ["segmentation", "crop_size", "zoom", "mask_crops", "black_percentile", "label_grade",
                                    "omit_fovs_with", "cell_labels"]
    task = ScKnn().for_dataset(OPENCELL)
    assert task.selection == CellSelection().for_dataset(OPENCELL)  # `data cells` takes the cells sc-knn takes
    assert task.to_dict()["omit_fovs_with"] == ["big_aggregates"] and not task.protocol_deviations()


def test_cell_selection_settings_are_parsed_like_a_tasks():
    from ocbench.errors import ConfigError

    assert CellSelection().with_overrides(["zoom=1.5", "label_grade=2"]).zoom == 1.5
    for bad, message in ((["zoom"], "cell selection: override 'zoom' is not key=value"),
                         (["crop_siz=3"], "did you mean crop_size?"),
                         (["zoom=1", "zoom=2"], "given twice"),
                         (["zoom=big"], "cell selection: bad value for zoom")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            CellSelection().with_overrides(bad)
