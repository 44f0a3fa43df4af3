"""A task's main score may be lower-is-better (issue 26 item 4): the entry records it, the board ranks by it.

``TaskConfig.higher_is_better`` (default True) goes into the entry's ``main_score`` only when it is
False, so entries of every existing task keep their bytes; the board sorts rows, picks the best chance
reference and the best baseline, and reads the paired bootstrap the right way round.
"""

from __future__ import annotations

import json
from pathlib import Path

from ocbench.benchmark.entry import entry_from_dict, entry_to_json, write_entry
from ocbench.leaderboard import collect_entries
from board_examples import example_entry_dict
from ocbench.leaderboard.grouping import GroupKey
from ocbench.leaderboard.summary import best_chance, format_sweep_table
from ocbench.leaderboard.tables import build_tables, reference_note
from ocbench.summaries import summarize
from ocbench.tasks import TaskConfig, get_task

LOW_FOLDS = [0.20, 0.21, 0.19, 0.20, 0.22]  # the better model: lower error
HIGH_FOLDS = [0.50, 0.52, 0.49, 0.51, 0.50]


def _error_entry(backbone: str, folds, *, references=None) -> dict:
    """An entry ranked by a lower-is-better ``error`` on val (beside the usual macro-F1 scores)."""
    d = example_entry_dict(backbone, val_folds=[1 - f for f in folds])
    for part in ("val", "test"):
        d["scores"][part]["error"] = summarize(list(folds))
    d["main_score"] = {"eval_set": "val", "metric": "error", "higher_is_better": False}
    if references is not None:
        d["references"] = references
    return d


def _reference(name: str, error: float) -> dict:
    return {"name": name, "description": f"{name} reference",
            "scores": {"val": {"error": summarize([error])}, "test": {"error": summarize([error])}}}


def _board(tmp_path: Path, *dicts):
    folder = tmp_path / "entries"
    for d in dicts:
        write_entry(d, folder)
    return build_tables(collect_entries(folder).entries, include_reported=False)


def test_the_task_config_defaults_to_higher_is_better():
    assert TaskConfig.higher_is_better is True
    assert get_task("fov-linear").higher_is_better is True


def test_lower_is_better_entries_rank_ascending(tmp_path):
    worse = _error_entry("model-worse", HIGH_FOLDS, references=[_reference("class-prior", 0.7), _reference("shuffled-labels", 0.6)])
    better = _error_entry("model-better", LOW_FOLDS, references=[_reference("class-prior", 0.7), _reference("shuffled-labels", 0.6)])
    board = _board(tmp_path, worse, better)
    [table] = board.tables
    computed = [r for r in table.rows if r.kind == "computed"]
    assert [r.backbone for r in computed] == ["model-better", "model-worse"]
    assert [r.rank for r in computed] == [1, 2]  # the folds do not overlap: separated
    assert computed[0].ranking_value == -computed[0].score.mean and not computed[0].higher_is_better
    # the best chance reference is the lowest error, and the text says "lowest"
    assert table.best_reference.backbone == "chance: shuffled-labels"
    assert any("best chance reference: shuffled-labels 0.600" in d for d in table.details)
    assert any(d.endswith("lower is better") for d in table.details) and "(lower is better)" in table.rule
    assert "the lowest over" in reference_note(table.higher_is_better)
    # the entry JSON records the direction, and it survives a round trip
    loaded = entry_from_dict(better)
    assert loaded.main_score.higher_is_better is False
    assert json.loads(entry_to_json(loaded))["main_score"]["higher_is_better"] is False
    assert best_chance(loaded) == ("shuffled-labels", 0.6)
    assert format_sweep_table("x", [entry_from_dict(worse), loaded]).index("model-better") < \
        format_sweep_table("x", [entry_from_dict(worse), loaded]).index("model-worse")


def test_default_entries_are_unchanged(tmp_path):
    d = example_entry_dict("model-a")
    entry = entry_from_dict(d)
    assert entry.main_score.higher_is_better is True
    text = entry_to_json(entry)
    assert "higher_is_better" not in text  # bytes and keys as before
    assert json.loads(text)["main_score"] == {"eval_set": "val", "metric": "macro_f1"}
    # the table id of a higher-is-better group is the one it had before the field existed
    key = GroupKey.of(entry)
    values = dict(key.__dict__)
    del values["label_mode"], values["higher_is_better"]
    import hashlib

    digest = hashlib.sha256(json.dumps(list(values.values())).encode()).hexdigest()[:8]
    assert key.slug.endswith(digest)
    # higher still ranks first, and the wording says highest
    board = _board(tmp_path, example_entry_dict("model-low", val_folds=[0.3, 0.31, 0.29, 0.3, 0.32]),
                   example_entry_dict("model-high", val_folds=[0.7, 0.71, 0.69, 0.7, 0.72]))
    [table] = board.tables
    assert [r.backbone for r in table.computed_rows] == ["model-high", "model-low"]
    assert table.higher_is_better and "the highest over" in reference_note(table.higher_is_better)
    assert "lower is better" not in table.rule and not any("lower is better" in d for d in table.details)


def test_directions_never_share_a_table(tmp_path):
    board = _board(tmp_path, _error_entry("model-err", LOW_FOLDS), example_entry_dict("model-f1"))
    assert len(board.tables) == 2



def test_the_critical_difference_ranks_the_lowest_error_first(tmp_path):
    """Average ranks over tables of a lower-is-better score: the backbone with the lowest error on
    every dataset has rank 1 (each backbone's best row per table is its lowest)."""
    for dataset, version, shift in (("demo", "a" * 64, 0.0), ("other", "b" * 64, 0.05)):
        for backbone, base in (("model-best", 0.2), ("model-mid", 0.3), ("model-worst", 0.4)):
            folds = [base + shift + 0.01 * i for i in range(5)]
            d = example_entry_dict(backbone, val_folds=[1 - f for f in folds], dataset_name=dataset, dataset_version=version)
            for part in ("val", "test"):
                d["scores"][part]["error"] = summarize(folds)
            d["main_score"] = {"eval_set": "val", "metric": "error", "higher_is_better": False}
            write_entry(d, tmp_path / dataset)
    board = build_tables(collect_entries([tmp_path / "demo", tmp_path / "other"]).entries, include_reported=False)
    cd = board.critical_difference
    assert cd is not None and len(cd.tables) == 2
    ranks = dict(zip(cd.result.names, cd.result.average_ranks))
    assert ranks == {"model-best": 1.0, "model-mid": 2.0, "model-worst": 3.0}
    assert cd.text.index("model-best 1.00") < cd.text.index("model-worst 3.00")


def test_compare_calls_the_lower_error_better(tmp_path):
    from ocbench.leaderboard.compare import compare_entries

    better = write_entry(_error_entry("model-better", LOW_FOLDS), tmp_path)
    worse = write_entry(_error_entry("model-worse", HIGH_FOLDS), tmp_path)
    assert compare_entries(better, worse).verdict.startswith("A is better than B at the 95% level")
    assert compare_entries(worse, better).verdict.startswith("B is better than A at the 95% level")

ERROR_TASK_PLUGIN = '''
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ocbench.summaries import summarize
from ocbench.tasks import TaskConfig, TaskResult, register_task


@register_task
@dataclass(frozen=True)
class ToyErrorTask(TaskConfig):
    name: ClassVar[str] = "toy-error"
    protocol_version: ClassVar[str] = "toy-error/1"
    main_score: ClassVar[tuple[str, str]] = ("test", "error")
    higher_is_better: ClassVar[bool] = False
    description: ClassVar[str] = "toy: nearest class mean of the mean protein intensity, scored by its error rate"

    def evaluate(self, context):
        ds = context.dataset
        protein = list(ds.card.channel_names).index("protein")
        x = np.array([ds.read(i)[protein].mean() for i in range(len(ds))])
        y = context.labels.argmax(axis=1)
        test_idx, folds_idx = context.split.indices(ds.fov_ids)
        train = np.concatenate(folds_idx)
        means = {c: x[train][y[train] == c].mean() for c in np.unique(y[train])}
        classes, centers = np.array(list(means)), np.array(list(means.values()))
        pred = classes[np.abs(x[test_idx][:, None] - centers[None, :]).argmin(axis=1)]
        return TaskResult(
            task=self.name, protocol_version=self.protocol_version, config=self.to_dict(),
            scores={"test": {"error": summarize([float((pred != y[test_idx]).mean())])}},
            class_names=context.class_names, seed=context.seed, device="cpu", wall_time_s=0.0,
        )
'''


def test_a_lower_is_better_task_writes_it_into_its_entry(module_cache, tmp_path):
    import sys

    from click.testing import CliRunner

    from ocbench.benchmark.entry import load_entry
    from ocbench.cli import cli
    from ocbench.tasks import TASKS

    plugin = tmp_path / "toy_error_task.py"
    plugin.write_text(ERROR_TASK_PLUGIN)
    out = tmp_path / "res"
    try:
        result = CliRunner().invoke(cli, ["--plugin", str(plugin), "run", "--dataset", "demo", "--backbone", "classical-stats",
                                          "--task", "toy-error", "--output", str(out)])
        assert result.exit_code == 0, result.output
        [path] = sorted(out.glob("*.json"))
        assert json.loads(path.read_text())["main_score"] == {"eval_set": "test", "metric": "error", "higher_is_better": False}
        assert load_entry(path).main_score.higher_is_better is False
        shown = CliRunner().invoke(cli, ["--plugin", str(plugin), "tasks", "show", "toy-error"])
        assert shown.exit_code == 0 and "lower is better" in shown.output
    finally:
        TASKS.unregister("toy-error")
        sys.modules.pop("ocbench_plugin_toy_error_task", None)
