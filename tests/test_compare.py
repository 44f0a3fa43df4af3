"""`ocbench compare` and the board's intervals on entries with kept predictions (simulated)."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from ocbench.cli import cli
from ocbench.leaderboard import build_board
from ocbench.leaderboard.collect import collect_entries
from ocbench.leaderboard.compare import compare_entries
from ocbench.benchmark.entry import write_entry
from ocbench.leaderboard.tables import build_tables

from board_examples import example_entry_dict, write_example_with_predictions
from cli_assertions import one_line_error

N_PROTEINS, FOVS, C = 120, 4, 6
PREVALENCE = np.array([0.35, 0.25, 0.2, 0.15, 0.1, 0.3])


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(rng.random((N_PROTEINS, C)) < PREVALENCE, FOVS, axis=0)
    hard = np.repeat(rng.random((N_PROTEINS, C)) < 0.25, FOVS, axis=0)  # shared by a protein's FOVs
    return y, hard, np.repeat([f"ENSG{i:05d}" for i in range(N_PROTEINS)], FOVS)


def _folds(y, hard, seed, extra=0.0):
    """5 fold models' test predictions: errors where the protein is hard, plus `extra` item noise."""
    rng = np.random.default_rng(seed)
    error = np.where(hard, 0.6, 0.05) + extra
    return np.stack([np.where(rng.random(y.shape) < error, ~y, y) for _ in range(5)])


@pytest.fixture()
def pair(tmp_path):
    y, hard, groups = _problem()
    folder = tmp_path / "entries"
    good = write_example_with_predictions(folder, "model-good", y, _folds(y, hard, 1), groups,
                                          val_folds=[0.80, 0.82, 0.79, 0.81, 0.80])
    seed2 = write_example_with_predictions(folder, "model-good-seed2", y, _folds(y, hard, 2), groups,
                                           val_folds=[0.795, 0.822, 0.792, 0.805, 0.801])
    worse = write_example_with_predictions(folder, "model-worse", y, _folds(y, hard, 3, extra=0.06), groups,
                                           val_folds=[0.74, 0.77, 0.75, 0.76, 0.74])
    return folder, good, seed2, worse


def test_compare_separates_a_real_difference(pair):
    _, good, _, worse = pair
    result = compare_entries(good, worse)
    d = result.bootstrap.difference
    assert 0.03 < d.estimate < 0.12 and d.low > 0
    assert result.t_test.p_value < 0.05
    assert result.verdict.startswith("A is better than B at the 95% level")
    assert "protein bootstrap" in result.text and f"{N_PROTEINS} proteins" in result.text


def test_compare_does_not_separate_runs_differing_only_in_seed(pair):
    _, good, seed2, _ = pair
    result = compare_entries(good, seed2)
    assert not result.bootstrap.separable
    assert result.verdict.startswith("cannot tell A and B apart")


def test_compare_cli_prints_the_verdict_and_refuses_other_splits(pair, tmp_path):
    _, good, _, worse = pair
    ok = CliRunner().invoke(cli, ["compare", str(good), str(worse)])
    assert ok.exit_code == 0, ok.output
    assert "difference A - B" in ok.output and "verdict: A is better" in ok.output
    other = write_entry(example_entry_dict("model-x", split_sha256="f" * 64), tmp_path / "other")
    one_line_error(CliRunner().invoke(cli, ["compare", str(good), str(other)]), "different splits")
    one_line_error(CliRunner().invoke(cli, ["compare", str(good), str(tmp_path / "missing.json")]), "missing.json")


def test_altered_predictions_file_is_named(pair):
    folder, good, _, worse = pair
    npz = folder / json.loads(good.read_text())["predictions"]["file"]
    npz.write_bytes(npz.read_bytes()[:-10] + b"0123456789")
    one_line_error(CliRunner().invoke(cli, ["compare", str(good), str(worse)]), "sha256 does not match")


def test_board_shows_intervals_and_tie_groups(pair, tmp_path):
    folder, *_ = pair
    write_entry(example_entry_dict("model-old", val_folds=[0.60, 0.61, 0.59, 0.60, 0.62]), folder)  # no predictions
    board = build_tables(collect_entries([folder]).entries, include_reported=False)
    [table] = board.tables
    rows = {r.backbone: r for r in table.computed_rows}
    # the seed-only difference shares the top tie group; the worse model is separated from both
    assert rows["model-good"].rank == rows["model-good-seed2"].rank == 1
    assert rows["model-worse"].rank == 3 and rows["model-old"].rank == 4
    assert "paired protein bootstrap" in rows["model-worse"].rank_reason
    assert rows["model-good"].interval.low < rows["model-good"].test.mean < rows["model-good"].interval.high
    assert rows["model-old"].interval is None and "kept no per-item predictions" in rows["model-old"].notes
    assert "95% CI (protein bootstrap, 120 proteins)" in table.interval_label
    assert "tie group" in table.rule and "corrected resampled t-test" in table.rule

    report = build_board([folder], tmp_path / "board", include_reported=False, plots=False)
    md = (tmp_path / "board" / "LEADERBOARD.md").read_text()
    assert "95% CI (protein bootstrap, 120 proteins)" in md
    assert "—" in md  # the old entry's interval cell
    import pandas as pd

    csv = pd.read_csv(tmp_path / "board" / "leaderboard.csv").set_index("backbone")
    good = rows["model-good"].interval
    assert csv.loc["model-good", "interval_low"] == pytest.approx(good.low)
    assert csv.loc["model-good", "interval_high"] == pytest.approx(good.high)
    assert np.isnan(csv.loc["model-old", "interval_low"])
    html = (tmp_path / "board" / "index.html").read_text()
    assert "95% CI, protein bootstrap, 120 proteins" in html  # the interval cell's tooltip
    copied = json.loads((tmp_path / "board" / "entries" / good_entry_name(report)).read_text())
    assert (tmp_path / "board" / "entries" / copied["predictions"]["file"]).is_file()


def good_entry_name(report):
    return next(v for k, v in report.board.entry_files.items() if v.startswith("model-good__"))


def test_zero_shot_marker_and_filter(tmp_path):
    folder = tmp_path / "entries"
    write_entry(example_entry_dict("hpa-like", not_zero_shot=["trained on OpenCell images (DINO, no labels)"]), folder)
    write_entry(example_entry_dict("imagenet-like", not_zero_shot=[]), folder)
    write_entry(example_entry_dict("unknown-like"), folder)
    rows = {r.backbone: r for r in build_tables(collect_entries([folder]).entries, include_reported=False).tables[0].rows}
    assert "not zero-shot: trained on OpenCell images" in rows["hpa-like"].notes
    assert "not zero-shot" not in rows["imagenet-like"].notes and rows["unknown-like"].not_zero_shot is None
    only = build_tables(collect_entries([folder]).entries, include_reported=False, zero_shot_only=True)
    assert {r.backbone for r in only.tables[0].rows} == {"imagenet-like", "unknown-like"}
    assert only.hidden_not_zero_shot == 1
    result = CliRunner().invoke(cli, ["leaderboard", "build", str(folder), "--out", str(tmp_path / "b"), "--zero-shot-only", "--no-reported"])
    assert result.exit_code == 0, result.output
    assert "hpa-like" not in (tmp_path / "b" / "LEADERBOARD.md").read_text()
    assert "not zero-shot" in result.output


def test_several_seeds_are_aggregated_and_labelled(tmp_path):
    folder = tmp_path / "entries"
    for seed, shift in ((0, 0.0), (1, 0.01), (2, -0.01)):
        write_entry(example_entry_dict("model-a", val_folds=[0.80 + shift, 0.81 + shift, 0.79 + shift, 0.80 + shift, 0.82 + shift], seed=seed), folder)
    write_entry(example_entry_dict("model-b", val_folds=[0.70, 0.71, 0.69, 0.70, 0.72]), folder)  # one seed only
    board = build_tables(collect_entries([folder]).entries, include_reported=False)
    assert len(board.tables) == 3  # one table per split (each seed its own split)
    [seeds] = board.seed_tables
    rows = {r.backbone: r for r in seeds.rows}
    assert rows["model-a"].n == 3 and rows["model-a"].mean == pytest.approx(0.804)
    assert rows["model-a"].std == pytest.approx(0.01)  # std of the per-seed means 0.804, 0.814, 0.794
    assert rows["model-b"].n == 1 and rows["model-b"].std is None and "1 seed" in rows["model-b"].notes
    assert seeds.mixed and "labelled" in seeds.rule
    report = build_board([folder], tmp_path / "board", include_reported=False, plots=False)
    md = (tmp_path / "board" / "LEADERBOARD.md").read_text()
    assert "over seeds" in md and "0.804 ± 0.010" in md and "(1 seed)" in md
    import pandas as pd

    csv = pd.read_csv(tmp_path / "board" / "leaderboard.csv")
    seeds_rows = csv[csv["kind"] == "seeds"].set_index("backbone")
    assert seeds_rows.loc["model-a", "n_seeds"] == 3 and seeds_rows.loc["model-a", "seed_std"] == pytest.approx(0.01)
    assert report.board.seed_tables[0].rows[0].backbone == "model-a"


def test_critical_difference_across_tables(tmp_path):
    folder = tmp_path / "entries"
    # the same task on four different datasets (different images): independent tables
    for t, dataset in enumerate(["data-a", "data-b", "data-c", "data-d"]):
        for name, base in (("model-a", 0.80), ("model-b", 0.75 + 0.001 * t), ("model-c", 0.70)):
            write_entry(example_entry_dict(name, dataset_name=dataset, val_folds=[base, base + 0.01, base - 0.01, base, base]),
                        folder / dataset)
    write_entry(example_entry_dict("model-d", dataset_name="data-a", val_folds=[0.5] * 5), folder / "data-a")  # on one table only
    report = build_board([folder], tmp_path / "board", include_reported=False)
    cd = report.board.critical_difference
    assert cd.result.names == ("model-a", "model-b", "model-c") and cd.result.average_ranks == pytest.approx((1, 2, 3))
    assert cd.result.n_tables == 4 and cd.result.p_value < 0.05
    assert (tmp_path / "board" / "plots" / "critical_difference.png").stat().st_size > 1000
    md = (tmp_path / "board" / "LEADERBOARD.md").read_text()
    assert "critical difference" in md and "critical_difference.png" in md and "Friedman test p" in md


def test_provenance_says_whether_the_backbone_is_zero_shot_and_what_it_saw(tmp_path):
    folder = tmp_path / "entries"
    data = example_entry_dict("hpa-like", not_zero_shot=["trained on OpenCell images"])
    data["backbone"]["card"].update(training_datasets=["HPA", "OpenCell"], supervision="self-supervised (DINO)")
    write_entry(data, folder)
    write_entry(example_entry_dict("old-like"), folder)
    rows = {r.backbone: dict(r.provenance) for r in build_tables(collect_entries([folder]).entries, include_reported=False).tables[0].rows}
    assert rows["hpa-like"]["zero-shot"] == "no: trained on OpenCell images"
    assert rows["hpa-like"]["pretraining"] == "data HPA, OpenCell; supervision self-supervised (DINO)"
    assert rows["old-like"]["zero-shot"] == "unknown (not recorded)" and "pretraining" not in rows["old-like"]


def test_run_summary_prints_the_interval_with_what_it_is(pair):
    from ocbench.benchmark.entry import load_entry
    from ocbench.leaderboard.summary import format_run_table

    _, good, _, _ = pair
    entry = load_entry(good)
    text = format_run_table([entry])
    assert f"interval of {entry.key}: test macro-F1 {entry.test.interval.describe()}" in text
    assert "95% CI, protein bootstrap, 120 proteins" in text
