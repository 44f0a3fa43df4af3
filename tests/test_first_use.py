"""A new user's first hour: what they type and read, checked (grid checks, CLI wording, speed)."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from ocbench.cli import cli

from cli_assertions import one_line_error


def invoke(*args):
    return CliRunner().invoke(cli, list(args))


def test_a_grid_whose_cells_share_an_entry_key_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "X"
    result = invoke("run", "--backbone", "classical-stats", "--dataset", "demo", "--task", "fov-linear",
                    "--set", "lr=0.001,0.01", "--output", str(out))
    one_line_error(result, "cells 1 and 2", "classical-stats__", "lr=0.001 vs lr=0.01", "--output")
    # refused before any work: no entry, no embedding
    assert not out.exists()
    assert not any("embeddings" in p.parts for p in (tmp_path / "cache").rglob("*"))


def test_extraction_without_a_terminal_prints_a_line_per_finished_shard_with_a_rate(tmp_path, capsys):
    from test_embeddings import FakeBackbone, FakeDataset, run

    run(FakeDataset(n=10), FakeBackbone(), tmp_path / "emb", progress=True)  # pytest's stderr is no terminal
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("embed fake-net: shard")]
    assert [line.split(" · ")[:2] for line in lines] == [
        ["embed fake-net: shard 1/3", "4/10 items"], ["embed fake-net: shard 2/3", "8/10 items"],
        ["embed fake-net: shard 3/3", "10/10 items"]]
    assert all(line.endswith("items/s") and float(line.split(" · ")[2].split()[0].replace(",", "")) > 0 for line in lines)
    run(FakeDataset(n=10), FakeBackbone(), tmp_path / "emb", progress=False)
    assert "embed fake-net" not in capsys.readouterr().err


def test_tasks_list_and_show_do_not_import_torch():
    code = ("import sys; from click.testing import CliRunner; from ocbench.cli import cli; "
            "r = CliRunner().invoke(cli, ['tasks', 'list']); assert r.exit_code == 0 and 'finetune' in r.output, r.output; "
            "r = CliRunner().invoke(cli, ['tasks', 'show', 'finetune']); assert r.exit_code == 0, r.output; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_every_setting_of_every_task_says_what_it_means():
    from ocbench.tasks import TASKS

    for name in TASKS.names():
        if not TASKS.get(name).__module__.startswith("ocbench."):
            continue  # a task another test registered as a plugin
        result = invoke("tasks", "show", name)
        assert result.exit_code == 0, result.output
        rows = TASKS.get(name).settings_table()
        assert rows and all(meaning.strip() for _, _, _, meaning in rows), (name, [r[0] for r in rows if not r[3].strip()])
        assert all(meaning in result.output for _, _, _, meaning in rows)


def test_backbones_show_says_local_weights_are_present_once_they_are(tmp_path, monkeypatch):
    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path))
    before = invoke("backbones", "show", "opencell-dino-vits8")
    assert before.exit_code == 0 and "needs local weights" in before.output
    folder = tmp_path / "weights" / "opencell-dino-vits8"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"x")
    after = invoke("backbones", "show", "opencell-dino-vits8")
    assert after.exit_code == 0 and "needs local weights" not in after.output
    assert f"local weights present: {folder / 'model.safetensors'}" in after.output


def test_the_scikit_image_hint_names_an_extra_without_cellpose(monkeypatch):
    from pathlib import Path

    import pytest

    from ocbench.data.cells import _need_skimage
    from ocbench.errors import ConfigError
    from ocbench.tasks import get_task_class

    monkeypatch.setitem(sys.modules, "skimage", None)  # import skimage now raises ImportError
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    for check in (get_task_class("sc-knn").check_requirements, lambda: _need_skimage("the classical backend")):
        with pytest.raises(ConfigError) as excinfo:
            check()
        message = str(excinfo.value)
        assert "singlecell" not in message and "pip install 'ocbench[cells]'" in message
    assert '\ncells = ["scikit-image>=0.21"]\n' in pyproject  # the extra named exists and holds no cellpose


def test_finetune_workers_default_to_auto_and_are_bounded_by_the_cores(monkeypatch):
    import ocbench._cores
    from ocbench.tasks.finetune import augmentation_workers

    [option] = [p for p in cli.commands["finetune"].params if p.name == "workers"]
    assert option.default == "auto"
    monkeypatch.setattr(ocbench._cores, "available_cores", lambda: 2)
    assert augmentation_workers(None, "cpu") == 0 and augmentation_workers(None, "cuda:0") == 1
    assert augmentation_workers(4, "cpu") == 2 and augmentation_workers(1, "cpu") == 1 and augmentation_workers(0, "cuda") == 0


def test_per_seed_tables_of_different_settings_have_distinct_headings(tmp_path):
    from ocbench.benchmark.entry import write_entry
    from ocbench.leaderboard import build_board, collect_entries
    from board_examples import example_entry_dict
    from ocbench.leaderboard.tables import build_tables

    folder = tmp_path / "entries"
    folders = [folder / f"settings{i}" for i in range(3)]  # one --output per setting: keys leave settings out
    for out, overrides in zip(folders, ({}, {"epochs": 40}, {"epochs": 50})):
        for seed in (0, 1):
            for backbone in ("model-a", "model-b"):
                write_entry(example_entry_dict(backbone, seed=seed, overrides=overrides,
                                               val_folds=[0.6 + 0.01 * seed] * 4 + [0.61]), out)
    board = build_tables(collect_entries(folders).entries, include_reported=False)
    titles = [t.title for t in board.seed_tables]
    assert len(titles) == 3 and len(set(titles)) == 3, titles
    assert any("epochs=40" in t for t in titles) and any("epochs=50" in t for t in titles)
    build_board(folders, tmp_path / "board")
    markdown = (tmp_path / "board" / "LEADERBOARD.md").read_text()
    assert all(markdown.count(f"## {t}\n") == 1 for t in titles)


def test_single_cell_tables_and_run_summary_speak_of_one_leave_one_out_pass(tmp_path, monkeypatch):
    import pytest

    pytest.importorskip("skimage", reason="the demo's cells are segmented with scikit-image (pip install 'ocbench[cells]')")
    from demo_data import labelled_demo
    from ocbench.benchmark.runner import RunOptions, RunSpec, run_grid
    from ocbench.data.cards import open_dataset
    from ocbench.leaderboard import build_board, collect_entries
    from ocbench.leaderboard.summary import format_run_table
    from ocbench.leaderboard.tables import build_tables

    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path / "cache"))
    dataset = open_dataset(str(labelled_demo(tmp_path / "demo", proteins=8, fovs_per_protein=2, size=96)))
    options = RunOptions(output_dir=tmp_path / "results", device="cpu", progress=False)
    small = ("crop_size=48", "ks=1,3", "main_k=3")
    outcomes = run_grid([RunSpec("classical-stats", task, overrides=small) for task in ("sc-knn", "sc-knn-fov")],
                        dataset, options)
    footer = format_run_table([o.entry for o in outcomes]).split("\n")
    notes = "\n".join(line for line in footer if not line.startswith(("classical", "-", "backbone")))
    assert "over n folds" not in notes and "held-out" not in notes, notes
    assert "loo: one leave-one-out pass over every evaluated item (no folds, no test set)" in notes
    board = build_tables(collect_entries([tmp_path / "results"]).entries, include_reported=False)
    assert len(board.tables) == 2
    for table in board.tables:
        assert "fold" not in table.rule and "t-test" not in table.rule, table.rule
        assert "fold" not in table.per_class_label, table.per_class_label
    build_board(tmp_path / "results", tmp_path / "board", include_reported=False)
    for name in ("LEADERBOARD.md", "index.html"):
        text = (tmp_path / "board" / name).read_text()
        assert "the same 1 " not in text and "over the same" not in text


def test_no_critical_difference_diagram_over_tables_of_the_same_images(tmp_path):
    """The demo's 4 tables (2 probes x 2 split tracks) are the same images: not independent."""
    from ocbench.benchmark.entry import write_entry
    from ocbench.leaderboard import build_board
    from board_examples import example_entry_dict

    folder = tmp_path / "entries"
    for t, (task, track) in enumerate([("fov-mlp", "paper"), ("fov-mlp", "protein"), ("fov-linear", "paper"), ("fov-linear", "protein")]):
        for name, base in (("model-a", 0.80), ("model-b", 0.75 + 0.001 * t), ("model-c", 0.70)):
            write_entry(example_entry_dict(name, task=task, track=track, val_folds=[base, base + 0.01, base - 0.01, base, base]), folder)
    report = build_board([folder], tmp_path / "board", include_reported=False)
    assert report.board.critical_difference is None
    assert "same images" in report.board.critical_difference_skipped
    assert not (tmp_path / "board" / "plots" / "critical_difference.png").exists()
    for name in ("LEADERBOARD.md", "index.html"):
        text = (tmp_path / "board" / name).read_text()
        assert "Friedman test p" not in text and "Not drawn: all 4 tables are over the same images" in text, name


def test_data_path_prints_the_demo_folder_under_the_cache_in_use(tmp_path, monkeypatch):
    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path / "elsewhere"))
    result = invoke("data", "path", "demo")
    assert result.exit_code == 0, result.output
    folder = result.output.strip()
    assert folder.startswith(str(tmp_path / "elsewhere")) and "\n" not in folder
    from pathlib import Path

    from ocbench.data.demo import EXPERT_CELL_LABELS_FILE

    assert (Path(folder) / EXPERT_CELL_LABELS_FILE).is_file()  # what README's --set cell_labels= names
    one_line_error(invoke("data", "path", "no-such-dataset"), "no-such-dataset")


def test_the_same_cell_twice_is_refused_with_its_own_words(tmp_path, monkeypatch):
    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path / "cache"))
    result = invoke("run", "--backbone", "classical-stats", "--dataset", "demo", "--task", "fov-mlp,fov-mlp",
                    "--output", str(tmp_path / "X"))
    one_line_error(result, "cells 1 and 2", "the same cell twice")
