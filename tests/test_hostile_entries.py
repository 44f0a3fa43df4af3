"""Damaged or hostile entries on the board (issue 23): each test failed before its fix."""

from __future__ import annotations

import json

import pytest

from ocbench.benchmark.entry import entry_from_dict, write_entry
from ocbench.errors import DataError
from ocbench.leaderboard import validate_entries

from board_examples import example_entry_dict

FOLDS = [0.70, 0.72, 0.69, 0.71, 0.73]


# -- a `created` in the future, and which duplicate is shown --------------------------------------
def test_a_created_in_the_future_is_refused():
    data = example_entry_dict("model-a", created="2099-01-01T00:00:00+00:00")
    with pytest.raises(DataError) as info:
        entry_from_dict(data, source="x.json")
    assert "\n" not in str(info.value) and "x.json" in str(info.value) and "in the future" in str(info.value)


def test_a_duplicate_says_which_entry_is_shown_and_why(tmp_path):
    genuine = example_entry_dict("model-a", val_folds=FOLDS, created="2025-02-01T00:00:00+00:00")
    copy = example_entry_dict("model-a", val_folds=[f - 0.1 for f in FOLDS], created="2025-01-01T00:00:00+00:00")
    write_entry(genuine, tmp_path / "run1")
    write_entry(copy, tmp_path / "run2")
    (problem,) = validate_entries([tmp_path / "run1", tmp_path / "run2"])
    assert problem.startswith(f"{tmp_path / 'run2'}/model-a__replicate__fov-mlp__paper.json: same key")
    assert f"{tmp_path / 'run1'}/model-a__replicate__fov-mlp__paper.json is shown because it is newer" in problem
    assert "2025-02-01T00:00:00+00:00" in problem and "2025-01-01T00:00:00+00:00" in problem
    future = dict(copy, created="2099-01-01T00:00:00+00:00")
    (tmp_path / "run2" / "model-a__replicate__fov-mlp__paper.json").write_text(json.dumps(future))
    problems = validate_entries([tmp_path / "run1", tmp_path / "run2"])
    assert len(problems) == 1 and "in the future" in problems[0] and "run2" in problems[0]


# -- publish --dry-run lists exactly what is uploaded, and where ------------------------------------
def test_publish_dry_run_lists_the_board_files_only_and_the_target_repo(tmp_path):
    from click.testing import CliRunner

    from ocbench.cli import cli
    from ocbench.leaderboard import build_board, publish
    from board_examples import write_example_with_predictions
    import numpy as np

    folder = tmp_path / "entries"
    y = np.eye(3, dtype=np.uint8)[[0, 1, 2, 0, 1, 2]]
    write_example_with_predictions(folder, "model-a", y, y[None], groups=list("aabbcc"), n_resamples=50)
    write_entry(example_entry_dict("model-b", val_folds=FOLDS), folder)
    out = tmp_path / "board"
    build_board([folder], out, include_reported=False, plots=False)
    (out / "entries" / "notes.txt").write_text("my private notes")
    (out / "entries" / "model-a__replicate__fov-mlp__paper.json~").write_text("editor backup")
    (out / "plots").mkdir()
    (out / "plots" / "stale.png").write_bytes(b"\\x89PNG old plot")
    files = publish(out, "org/board", dry_run=True, allow_synthetic=True)
    assert files == [
        "LEADERBOARD.md", "leaderboard.csv", "index.html", "entries/README.md",
        "entries/model-a__replicate__fov-mlp__paper.json", "entries/model-a__replicate__fov-mlp__paper.predictions.npz",
        "entries/model-b__replicate__fov-mlp__paper.json",
    ]
    result = CliRunner().invoke(cli, ["leaderboard", "publish", str(out), "--repo-id", "org/board", "--dry-run",
                                      "--allow-synthetic", "--revision", "staging"])
    assert result.exit_code == 0, result.output
    head, *listed = result.output.splitlines()
    assert "would upload 7 files" in head and "org/board" in head and "branch staging" in head
    assert [line.strip() for line in listed] == files


# -- compare says when settings or data differ -----------------------------------------------------
def test_compare_names_differing_settings_and_data_fields(tmp_path):
    from ocbench.leaderboard.compare import compare_entries

    a = example_entry_dict("model-a", val_folds=FOLDS, task_config={"epochs": 300, "batch_size": 512})
    b = example_entry_dict("model-b", val_folds=[f - 0.05 for f in FOLDS], task_config={"epochs": 50, "batch_size": 512})
    b["dataset"].update(min_grade=2, annotations_sha256="c" * 64)
    text = compare_entries(write_entry(a, tmp_path), write_entry(b, tmp_path)).text
    (settings,) = [line for line in text.splitlines() if "different settings" in line]
    assert "task_config.epochs (300 vs 50)" in settings and "batch_size" not in settings
    (data,) = [line for line in text.splitlines() if "different data" in line]
    assert "dataset.min_grade (1 vs 2)" in data and "dataset.annotations_sha256" in data and "cccccccccccc..." in data
    same = compare_entries(tmp_path / f"{a['key']}.json", write_entry(dict(a, key=a["key"].replace("model-a", "model-c"),
                                                                             backbone={**a["backbone"], "name": "model-c"}), tmp_path)).text
    assert "different settings" not in same and "different data" not in same


# -- every aggregate agrees with the entry's own per-class and per-fold numbers ---------------------
def _refused(data, *fragments):
    with pytest.raises(DataError) as info:
        entry_from_dict(data, source="edited.json")
    message = str(info.value)
    assert "\n" not in message and message.startswith("edited.json") and "edited after" in message, message
    for fragment in fragments:
        assert fragment in message, message


def test_a_ranking_score_edited_with_its_mean_but_not_its_per_class_rows_is_refused():
    from ocbench.summaries import summarize

    data = example_entry_dict("model-a", val_folds=FOLDS)
    data["scores"]["val"]["macro_f1"] = summarize([0.95] * 5)  # consistent with its own mean and std
    _refused(data, "scores.val.macro_f1 value 0", "per_class_values.val.f1 row 0")
    data = example_entry_dict("model-a", val_folds=FOLDS)
    data["per_class"]["val"]["f1"]["er"] = 0.99
    _refused(data, "per_class.val.f1.er")


def test_a_row_without_readable_predictions_is_marked_unverified_on_every_rendering(tmp_path):
    import csv

    import numpy as np

    from ocbench.leaderboard import build_board
    from board_examples import recompute_aggregates, write_example_with_predictions

    folder = tmp_path / "entries"
    y = np.eye(3, dtype=np.uint8)[[0, 1, 2, 0, 1, 2]]
    checked = write_example_with_predictions(folder, "model-a", y, y[None], groups=list("aabbcc"), n_resamples=50,
                                             val_folds=FOLDS)
    # the attack: test scores raised consistently with their per-class rows, predictions and interval removed
    data = json.loads(write_example_with_predictions(folder, "model-b", y, y[None], groups=list("aabbcc"),
                                                     n_resamples=50, val_folds=FOLDS).read_text())
    data["per_class_values"]["test"]["f1"] = [[min(1.0, v + 0.05) for v in row] for row in data["per_class_values"]["test"]["f1"]]
    recompute_aggregates(data)["scores"]["test"]["macro_f1"].pop("interval")
    (folder / data["predictions"]["file"]).unlink()
    del data["predictions"]
    (folder / f"{data['key']}.json").write_text(json.dumps(data))
    assert validate_entries(folder) == [] and checked.is_file()
    out = tmp_path / "board"
    build_board([folder], out, include_reported=False, plots=False)
    rows = {r["backbone"]: r for r in csv.DictReader((out / "leaderboard.csv").open()) if r["backbone"].startswith("model-")}
    assert rows["model-a"]["unverified"] == "" and "unverified" not in rows["model-a"]["notes"]
    assert rows["model-b"]["unverified"] == "the task kept no per-item predictions"
    assert "unverified, no interval: the task kept no per-item predictions" in rows["model-b"]["notes"]
    for page in ("LEADERBOARD.md", "index.html"):
        text = (out / page).read_text()
        assert text.count("unverified, no interval: the task kept no per-item predictions") >= 1, page
