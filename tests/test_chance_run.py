"""Chance references and collapse warnings through a real run: entry, CLI printing, board, compare."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import ocbench
from ocbench.backbones.card import BackboneCard
from ocbench.benchmark.entry import load_entry
from ocbench.leaderboard import build_board
from ocbench.leaderboard.compare import compare_entries
from ocbench.leaderboard.summary import format_warnings
from ocbench.predictions import load_predictions
from ocbench.stats import macro_f1
from demo_data import labelled_demo

FAST = ("epochs=3",)


def _card(name: str) -> BackboneCard:
    return BackboneCard(
        name=name, source="memory:unset", arch=name, feature_dim=6, in_chans=3, input_channels=("R", "G", "B"),
        default_channels="imagenet-best", training_datasets=("ImageNet-1k",), supervision="class-label supervised",
        license="MIT",
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("chance")
    patch = pytest.MonkeyPatch()
    patch.setenv("OCBENCH_CACHE", str(root / "cache"))
    data = labelled_demo(root / "demo", proteins=24, fovs_per_protein=3, size=32)
    out = root / "results"

    def constant(x: torch.Tensor) -> np.ndarray:  # every image gets the same features
        return np.ones((x.shape[0], 6), np.float32)

    weights = np.random.default_rng(0).normal(size=(3, 6)).astype(np.float32)

    def pooled(x: torch.Tensor) -> np.ndarray:
        return x.mean(dim=(2, 3)).numpy() @ weights

    entries = {}
    for name, fn in (("flat-a", constant), ("flat-b", constant), ("pooled", pooled)):
        entries[name] = ocbench.evaluate(fn, card=_card(name), task="fov-linear", dataset=str(data), output_dir=out,
                                         overrides=FAST, device="cpu")
    yield out, entries
    patch.undo()


def test_constant_features_carry_a_collapse_warning_and_chance_references(runs):
    out, entries = runs
    flat = load_entry(out / f"{entries['flat-a'].key}.json")
    kinds = {w.kind for w in flat.warnings}
    assert "constant-predictions" in kinds, flat.warnings
    names = [r.name for r in flat.references]
    assert names == ["all-positive", "class-prior", "shuffled-labels"]
    # the probe's shuffled-labels reference retrains one fold model (fold 1's rows, the test set)
    shuffled = flat.references[2].scores
    assert shuffled["val"]["macro_f1"].n == 1 and shuffled["test"]["macro_f1"].n == 1
    assert shuffled["test"]["macro_f1"].interval is not None
    prior = flat.references[1]
    assert prior.draws and max(prior.standard_error.values()) < 0.002
    # the all-positive reference on the kept test items is its closed form, per class 2p / (1 + p)
    kept = load_predictions(out / flat.predictions.file)
    p = kept.y_true.mean(axis=0)
    present = kept.y_true.sum(axis=0) > 0
    assert flat.references[0].scores["test"]["macro_f1"].mean == pytest.approx(float(np.mean((2 * p / (1 + p))[present])))
    assert "constant predictions" in format_warnings([flat])


def test_board_marks_references_warnings_and_the_difference_to_the_best_baseline(runs, tmp_path):
    out, entries = runs
    # the run's own outputs, with "flat-a" declared a baseline the way a card's role says it
    for name in ("flat-a",):
        path = out / f"{entries[name].key}.json"
        data = json.loads(path.read_text())
        data["backbone"]["card"]["role"] = "baseline"
        path.write_text(json.dumps(data))
    report = build_board([out], tmp_path / "board")
    board = report.board
    (table,) = [t for t in board.tables if t.group is not None]
    refs = table.reference_rows
    assert {r.backbone for r in refs} == {"chance: all-positive", "chance: class-prior", "chance: shuffled-labels"}
    assert all(r.rank is None for r in refs)
    flagged = {r.backbone: r for r in table.computed_rows}
    assert flagged["flat-b"].warnings and "warning: constant predictions" in flagged["flat-b"].notes
    pooled = flagged["pooled"]
    assert pooled.vs_baseline is not None and flagged["flat-a"].vs_baseline_note == "the best baseline"
    # the column is the paired difference of the two entries' kept predictions
    pa = load_predictions(out / entries["pooled"].predictions.file)
    pb = load_predictions(out / entries["flat-a"].predictions.file)
    score = lambda p: float(np.mean([macro_f1(p.y_true, r) for r in p.at(None)]))  # noqa: E731
    assert pooled.vs_baseline.estimate == pytest.approx(score(pa) - score(pb))
    assert pooled.vs_baseline.low <= pooled.vs_baseline.estimate <= pooled.vs_baseline.high
    md = (tmp_path / "board" / "LEADERBOARD.md").read_text()
    assert "*(chance reference)*" in md and "vs best baseline" in md and "flat-b ⚠" in md
    csv = (tmp_path / "board" / "leaderboard.csv").read_text()
    assert "vs_best_baseline" in csv and "reference" in csv


def test_compare_says_both_collapsed(runs):
    out, entries = runs
    result = compare_entries(out / f"{entries['flat-a'].key}.json", out / f"{entries['flat-b'].key}.json")
    assert "both entries collapsed" in result.verdict
    assert "warning (A): constant predictions" in result.text


def test_cli_prints_the_warnings(runs):
    from click.testing import CliRunner

    from ocbench.cli import cli

    out, entries = runs
    result = CliRunner().invoke(cli, ["compare", str(out / f"{entries['flat-a'].key}.json"), str(out / f"{entries['pooled'].key}.json")])
    assert result.exit_code == 0, result.output
    assert "warning (A): constant predictions" in result.output and "entry A collapsed" in result.output
