"""Leaderboard: collecting and validating entries, grouping, honest tie ranks, renderers, publish."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ocbench.benchmark.entry import write_entry
from ocbench.errors import ConfigError, DataError
from ocbench.leaderboard import build_board, collect_entries, publish, validate_entries
from ocbench.leaderboard.formatting import md_escape
from ocbench.leaderboard.ranking import Score, assign_ranks, intervals_overlap, paired_t_test_p, student_t_two_sided_p
from ocbench.leaderboard.channels import resolve_channel_map
from ocbench.leaderboard.tables import build_tables
from ocbench.reported import REPORTED

from board_examples import example_entry_dict

FOLDS = [0.70, 0.72, 0.69, 0.71, 0.73]


def _entries_dir(tmp_path: Path, *dicts) -> Path:
    folder = tmp_path / "entries"
    for d in dicts:
        write_entry(d, folder)
    return folder


def _full_opencell(d: dict, n_items: int = 6120) -> dict:
    """``d`` as if computed on the (full, by default) OpenCell set, so the paper's numbers apply."""
    d["dataset"] = {**d["dataset"], "name": "opencell", "n_items": n_items}
    return d


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (hidden ones included), by relative path."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _computed_rows(board, table_index=0):
    return [r for r in board.tables[table_index].rows if r.kind == "computed"]


# ---------------------------------------------------------------------------------------------
# ranking
# ---------------------------------------------------------------------------------------------
def _diffs_with_t(t: float, sd: float = 0.01) -> list[float]:
    """Five paired differences whose t statistic is exactly ``t`` (df = 4)."""
    z = [k / math.sqrt(2.5) for k in (-2, -1, 0, 1, 2)]  # mean 0, sample sd 1
    mean = t * sd / math.sqrt(5)
    return [mean + sd * v for v in z]


def test_paired_t_test_uses_two_sided_alpha_005_with_4_df():
    base = [0.70, 0.72, 0.69, 0.71, 0.73]
    # the two-sided 5% critical value of t with 4 df is 2.776 (one-sided would be 2.132)
    below = [b - d for b, d in zip(base, _diffs_with_t(2.70))]
    above = [b - d for b, d in zip(base, _diffs_with_t(2.85))]
    assert 0.05 < paired_t_test_p(base, below) < 0.06
    assert 0.04 < paired_t_test_p(base, above) < 0.05
    ranks = assign_ranks([Score(0.71, 0.01, 5, tuple(base)), Score(0.70, 0.01, 5, tuple(below))], paired=True)
    assert [d.rank for d in ranks] == [1, 1]
    ranks = assign_ranks([Score(0.71, 0.01, 5, tuple(base)), Score(0.70, 0.01, 5, tuple(above))], paired=True)
    assert [d.rank for d in ranks] == [1, 2]
    assert "paired t-test" in ranks[1].reason


def test_own_t_distribution_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 4, 9, 30):
        for t in (0.0, 0.3, 1.0, 2.132, 2.776, 4.0, 12.0, -3.5):
            assert student_t_two_sided_p(t, df) == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-9, abs=1e-14)
    a = [0.80, 0.70, 0.90, 0.75, 0.85]
    b = [0.70, 0.78, 0.74, 0.79, 0.69]
    assert paired_t_test_p(a, b) == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-9)


def test_identical_and_constant_shift_folds():
    assert paired_t_test_p(FOLDS, FOLDS) == 1.0
    assert paired_t_test_p(FOLDS, [f - 0.001 for f in FOLDS]) == 0.0  # every fold agrees: separated


def test_interval_rule_when_folds_do_not_pair():
    a, b, c = Score(0.80, 0.01, 5), Score(0.785, 0.006, 5), Score(0.70, 0.01, 5)
    assert intervals_overlap(a, b) and not intervals_overlap(b, c)
    assert [d.rank for d in assign_ranks([a, b, c], paired=True)] == [1, 1, 3]
    assert "intervals overlap" in assign_ranks([a, b], paired=False)[1].reason


def test_identical_folds_tie_and_separated_rows_do_not(tmp_path):
    folder = _entries_dir(
        tmp_path,
        example_entry_dict("model-a", val_folds=FOLDS),
        example_entry_dict("model-b", val_folds=FOLDS),
        example_entry_dict("model-c", val_folds=[f - 0.2 for f in FOLDS]),
    )
    board = build_tables(collect_entries([folder]).entries, include_reported=False)
    assert len(board.tables) == 1
    rows = {r.backbone: r for r in _computed_rows(board)}
    assert rows["model-a"].rank == rows["model-b"].rank == 1
    assert rows["model-c"].rank == 3 and not rows["model-c"].tied_with_above
    assert "p = 0" in rows["model-c"].rank_reason
    assert "corrected resampled t-test" in board.tables[0].rule and "0.05" in board.tables[0].rule


def test_paired_test_ties_rows_whose_intervals_do_not_overlap(tmp_path):
    # Means differ by more than the stds, but the fold differences flip sign: a paired test
    # cannot separate them, so they share a rank even though the interval rule would not.
    a = [0.80, 0.70, 0.90, 0.75, 0.85]
    b = [0.70, 0.78, 0.74, 0.79, 0.69]
    folder = _entries_dir(tmp_path, example_entry_dict("model-a", val_folds=a), example_entry_dict("model-b", val_folds=b))
    rows = _computed_rows(build_tables(collect_entries(folder).entries, include_reported=False))
    assert [r.rank for r in rows] == [1, 1]


# ---------------------------------------------------------------------------------------------
# collecting and validating
# ---------------------------------------------------------------------------------------------
def test_corrupt_and_foreign_files_are_reported_and_skipped(tmp_path):
    folder = _entries_dir(tmp_path, example_entry_dict("model-a"), example_entry_dict("model-b", val_folds=FOLDS))
    (folder / "corrupt.json").write_text('{"schema_version": 1, "task": ')
    (folder / "foreign.json").write_text(json.dumps({"model": "resnet50", "accuracy": 0.91}))
    bad = example_entry_dict("model-c")
    bad["scores"]["val"]["macro_f1"]["values"][0] = 1.5
    (folder / "sub").mkdir()
    (folder / "sub" / "bad-value.json").write_text(json.dumps(bad))
    (folder / ".hidden.json").write_text("not json")  # editor/temp files are ignored
    (folder / "splits").mkdir()  # ocbench run keeps its split files beside the entries: not problems
    (folder / "splits" / "paper-seed0.json").write_text(json.dumps({"format": "ocbench-split/1", "track": "paper"}))

    problems = validate_entries([folder])
    assert len(problems) == 3
    assert any("corrupt.json: not valid JSON" in p for p in problems)
    assert any("foreign.json: field schema_version: missing" in p for p in problems)
    assert any("sub/bad-value.json: field scores.val.macro_f1: mean 0.62 does not match" in p for p in problems)

    assert collect_entries(folder).ignored == (f"{folder}/splits/paper-seed0.json",)
    report = build_board([folder], tmp_path / "board", include_reported=False, plots=False)
    assert report.n_entries == 2 and len(report.problems) == 3
    assert sorted(r.backbone for r in _computed_rows(report.board)) == ["model-a", "model-b"]
    assert sorted(p.name for p in (tmp_path / "board" / "entries").iterdir()) == [
        ".ocbench-board-entries",
        "README.md",
        "model-a__replicate__fov-mlp__paper.json",
        "model-b__replicate__fov-mlp__paper.json",
    ]
    assert "skipped: " in report.summary() and "2 entries in 1 table" in report.summary()


def test_validate_all_good_and_missing_source(tmp_path):
    folder = _entries_dir(tmp_path, example_entry_dict())
    assert validate_entries([folder]) == []
    assert validate_entries(folder / "classical-stats__replicate__fov-mlp__paper.json") == []
    with pytest.raises(DataError, match="no such entry file or folder"):
        validate_entries([tmp_path / "nope"])


def test_duplicate_key_keeps_newest_and_reports_the_other(tmp_path):
    old = example_entry_dict("model-a", val_folds=FOLDS, created="2025-01-01T00:00:00+00:00")
    new = example_entry_dict("model-a", val_folds=[f - 0.1 for f in FOLDS], created="2025-02-01T00:00:00Z")
    write_entry(old, tmp_path / "run1")
    write_entry(new, tmp_path / "run2")
    problems = validate_entries([tmp_path / "run1", tmp_path / "run2"])
    assert len(problems) == 1 and "run1/model-a__replicate__fov-mlp__paper.json: same key" in problems[0]
    board = build_tables(collect_entries([tmp_path / "run1", tmp_path / "run2"]).entries, include_reported=False)
    (row,) = _computed_rows(board)
    assert row.score.mean == pytest.approx(sum(FOLDS) / 5 - 0.1)


def test_entries_differing_in_dataset_split_or_protocol_get_separate_tables(tmp_path):
    folder = _entries_dir(
        tmp_path,
        example_entry_dict("model-a", dataset_version="a" * 64),
        example_entry_dict("model-b", dataset_version="a" * 64),
        example_entry_dict("model-a", dataset_version="b" * 64, channels_key="replicate2", spec="replicate"),
        example_entry_dict("model-c", dataset_version="a" * 64, split_sha256="c" * 64),
        example_entry_dict("model-d", dataset_version="a" * 64, protocol_version="fov-probe/1"),
        example_entry_dict("model-e", dataset_version="a" * 64, overrides={"epochs": 5}),
        example_entry_dict("model-f", dataset_version="a" * 64, track="protein"),
    )
    board = build_tables(collect_entries(folder).entries, include_reported=False)
    members = sorted(tuple(sorted(r.backbone for r in t.computed_rows)) for t in board.tables)
    assert members == [("model-a",), ("model-a", "model-b"), ("model-c",), ("model-d",), ("model-e",), ("model-f",)]
    details = [" ".join(t.details) for t in board.tables]
    assert sum("version aaaaaaaaaaaa" in d for d in details) == 5
    assert sum("version bbbbbbbbbbbb" in d for d in details) == 1
    assert any("protocol fov-probe/1" in d for d in details)
    assert any("off-protocol: settings differ from the protocol: epochs=5" in d for d in details)
    assert len({t.id for t in board.tables}) == len(board.tables)


def test_hub_source_uses_snapshot_and_falls_back_to_cache(tmp_path, monkeypatch):
    import huggingface_hub

    snapshot = _entries_dir(tmp_path, example_entry_dict("model-a"))
    calls = []

    def fake_snapshot_download(repo_id, *, repo_type, revision, allow_patterns, local_files_only=False):
        calls.append((repo_id, repo_type, revision, local_files_only))
        if not local_files_only:
            raise ConnectionError("offline")
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    collection = collect_entries(["hf:org/board@v2"])
    assert [e.entry.backbone.name for e in collection.entries] == ["model-a"]
    assert collection.entries[0].name == "hf:org/board@v2/model-a__replicate__fov-mlp__paper.json"
    assert calls == [("org/board", "dataset", "v2", False), ("org/board", "dataset", "v2", True)]

    def always_fails(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", always_fails)
    with pytest.raises(DataError, match=r"hf://datasets/org/none: cannot fetch .*no cached copy"):
        collect_entries(["hf://datasets/org/none"])
    with pytest.raises(DataError, match="hf:ORG/NAME"):
        collect_entries(["hf:just-a-name"])


# ---------------------------------------------------------------------------------------------
# reported rows and channel maps
# ---------------------------------------------------------------------------------------------
def test_reported_rows_show_what_the_paper_leaves_open(tmp_path):
    """A reported row's note (e.g. which ImageNet map is assumed) is in its notes cell and provenance."""
    board = build_tables([])
    rows = [r for t in board.tables for r in t.reported_rows]
    assert len(rows) == len(REPORTED)
    noted = [r for r in rows if r.source.note]
    assert {(r.backbone, r.source.task) for r in noted} >= {("imagenet-dino-vits8", "fov-mlp"), ("imagenet-dino-vits8", "finetune")}
    for row in noted:
        assert row.notes.endswith(row.source.note) and ("note", row.source.note) in row.provenance
    plain = next(r for r in rows if r.backbone == "hpa-fov-vitb8" and r.source.task == "fov-mlp" and r.source.natural)
    assert plain.notes == "paper Table 1; appendix D Table 8" and "note" not in dict(plain.provenance)
    md = (build_board([], tmp_path / "board", plots=False, allow_empty=True).out_dir / "LEADERBOARD.md").read_text()
    assert md_escape("the paper does not say which map; [G, B] assumed") in md


@pytest.mark.parametrize(
    "spec, inputs, expected",
    [
        ("natural", ["microtubules", "protein", "nucleus", "er"], (1, 2)),
        ("best-imagenet", ["R", "G", "B"], (1, 2)),
        ("protein:G,nucleus:R", ["R", "G", "B"], (1, 0)),
        ("protein=3,nucleus=0", ["microtubules", "protein", "nucleus", "er"], (3, 0)),
        ("[1, 2] -> [B, G]", ["R", "G", "B"], (2, 1)),
        ("natural", ["R", "G", "B"], None),
        ("imagenet-best", ["R", "G", "B"], (1, 2)),
        ("mystery", ["R", "G", "B"], None),
    ],
)
def test_resolve_channel_map(spec, inputs, expected):
    assert resolve_channel_map("map", spec, spec.replace(" ", ""), {"input_channels": inputs}) == expected


def test_adapter_key_names_the_map():
    assert resolve_channel_map("map", None, "map-p3-n0", {}) == (3, 0)
    assert resolve_channel_map("replicate", "replicate", "replicate", {}) is None


def test_computed_row_shows_the_papers_number_for_its_configuration(tmp_path):
    hpa = _full_opencell(
        example_entry_dict(
            "hpa-fov-vitb8",
            strategy="map",
            channels_key="map-p1-n2",
            spec="protein=1,nucleus=2",
            input_channels=("microtubules", "protein", "nucleus", "er"),
        )
    )
    board = build_tables(collect_entries(_entries_dir(tmp_path, hpa)).entries)
    table = board.tables[0]
    (row,) = table.computed_rows
    assert row.channels == "[1, 2] -> [1, 2] natural"  # the paper's notation, like the reported rows
    assert row.reported is not None and row.reported.mean == 0.822
    assert len(table.reported_rows) == 19 and all(r.rank is None for r in table.reported_rows)
    assert table.rows[0].kind == "computed"  # reported rows come after, unranked
    assert "not ranked" in table.rule
    titles = [t.title for t in board.tables]
    assert "finetune · paper track · reported by the paper" in titles
    assert "sc-knn · paper track · reported by the paper" in titles


def test_rank_reported_mixes_them_in_by_the_interval_rule(tmp_path):
    entry = _full_opencell(example_entry_dict("hpa-fov-vitb8", val_folds=[0.82, 0.83, 0.81, 0.825, 0.815]))
    board = build_tables(collect_entries(_entries_dir(tmp_path, entry)).entries, rank_reported=True)
    table = board.tables[0]
    assert all(r.rank is not None for r in table.rows)
    top = table.rows[:3]
    assert [r.kind for r in top].count("computed") == 1 and top[0].rank == 1
    assert "ranked by the interval rule alongside" in table.rule


def _hpa_natural(**dataset) -> dict:
    entry = example_entry_dict(
        "hpa-fov-vitb8",
        strategy="map",
        channels_key="map-p1-n2",
        spec="protein=1,nucleus=2",
        input_channels=("microtubules", "protein", "nucleus", "er"),
    )
    entry["dataset"] = {**entry["dataset"], **dataset}
    return entry


@pytest.mark.parametrize(
    "dataset, reason",
    [
        ({"name": "opencell", "n_items": 6120}, None),
        ({"name": "opencell", "n_items": 15}, "subset: 15 of ~6120 FOVs"),
        ({"name": "opencell", "n_items": 6120, "min_grade": 3}, "min_grade 3 (paper: all grades)"),
        ({"name": "ocbench-demo", "n_items": 6120}, "not OpenCell (ocbench-demo)"),
    ],
)
def test_papers_numbers_only_beside_comparable_results(tmp_path, dataset, reason):
    from ocbench.leaderboard.summary import format_run_table

    board = build_tables(collect_entries(_entries_dir(tmp_path, _hpa_natural(**dataset))).entries)
    table = board.tables[0]
    (row,) = table.computed_rows
    titles = [t.title for t in board.tables]
    summary = format_run_table([row.entry.entry])
    if reason is None:
        assert row.reported is not None and row.reported.mean == 0.822
        assert table.reported_rows and not any("not shown" in d for d in table.details)
        assert "fov-mlp · paper track · reported by the paper" not in titles
        assert "0.822 ± 0.007" in summary and "n/a" not in summary
    else:
        assert row.reported is None and not table.reported_rows
        assert f"the paper's numbers are not shown here: {reason}" in table.details
        assert "fov-mlp · paper track · reported by the paper" in titles  # the paper's numbers stand apart
        assert f"n/a ({reason})" in summary and "0.822" not in summary


# ---------------------------------------------------------------------------------------------
# renderers and files
# ---------------------------------------------------------------------------------------------
def test_board_files_markdown_csv(tmp_path):
    import pandas as pd

    folder = _entries_dir(
        tmp_path,
        example_entry_dict("model-a", val_folds=FOLDS),
        example_entry_dict("model-b", val_folds=FOLDS),
        example_entry_dict("model-c", val_folds=[f - 0.2 for f in FOLDS]),
    )
    report = build_board([folder], tmp_path / "board")
    out = tmp_path / "board"
    md = (out / "LEADERBOARD.md").read_text()
    assert "| rank " in md and "|--" in md  # tabulate github style
    assert "model-a" in md and "hpa-fov-vitb8 *(reported)*" in md
    assert "corrected resampled t-test" in md and "Per-class F1" in md and "Best backbone per class" in md
    frame = pd.read_csv(out / "leaderboard.csv")
    computed = frame[frame.kind == "computed"].set_index("backbone")
    assert list(computed.loc[["model-a", "model-b", "model-c"], "rank"]) == [1, 1, 3]
    assert computed.loc["model-a", "score_mean"] == pytest.approx(sum(FOLDS) / 5)
    assert json.loads(computed.loc["model-a", "score_values"]) == FOLDS
    assert "per_class_f1_nucleolus_gc" in frame.columns
    reported = frame[frame.kind == "reported"]
    assert len(reported) == len(REPORTED) and reported["rank"].isna().all()
    assert not set(reported.table_id) & set(computed.table_id)  # demo data: the paper's rows stand apart
    assert computed.paper_mean.isna().all()
    html = (out / "index.html").read_text()
    assert "<script>" in html and "<style>" in html
    assert 'src="http' not in html and 'href="http' not in html and "<link" not in html  # no external assets
    assert html.count('data-kind="computed"') == 3
    assert {p.name for p in out.iterdir()} >= {"LEADERBOARD.md", "leaderboard.csv", "index.html", "entries"}
    assert not [p for p in out.rglob("*.tmp")]
    assert report.n_tables == 4  # demo-data fov-mlp, then the paper's fov-mlp, finetune and sc-knn numbers
    assert [t.title.split(" · ")[-1] for t in report.board.tables][1:] == ["reported by the paper"] * 3


def test_outputs_are_deterministic(tmp_path):
    folder = _entries_dir(tmp_path, example_entry_dict("model-a"), example_entry_dict("model-b", val_folds=FOLDS))
    build_board([folder], tmp_path / "one", plots=False)
    build_board([folder], tmp_path / "two", plots=False)
    for name in ("LEADERBOARD.md", "leaderboard.csv", "index.html"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_writes_are_atomic(tmp_path, monkeypatch):
    from ocbench.leaderboard import build as build_mod

    folder = _entries_dir(tmp_path, example_entry_dict("model-a"))
    out = tmp_path / "board"
    build_board([folder], out, plots=False)
    before = {name: (out / name).read_bytes() for name in ("LEADERBOARD.md", "leaderboard.csv", "index.html")}
    write_entry(example_entry_dict("model-b", val_folds=FOLDS), folder)

    real = build_mod.board_dataframe

    class HalfWrittenFrame:
        def __init__(self, frame):
            self.frame = frame

        def to_csv(self, path, **kwargs):
            Path(path).write_text("table_id,kind\nhalf")
            raise OSError("disk full")

    monkeypatch.setattr(build_mod, "board_dataframe", lambda board: HalfWrittenFrame(real(board)))
    with pytest.raises(OSError, match="disk full"):
        build_board([folder], out, plots=False)
    assert (out / "leaderboard.csv").read_bytes() == before["leaderboard.csv"]  # old file intact
    assert (out / "index.html").read_bytes() == before["index.html"]
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_plots_written_or_skipped_with_a_note(tmp_path, monkeypatch):
    folder = _entries_dir(
        tmp_path,
        example_entry_dict("model-a", channels_key="map-p1-n2", strategy="map", spec="protein=1,nucleus=2"),
        example_entry_dict("model-a", channels_key="map-p0-n2", strategy="map", spec="protein=0,nucleus=2", val_folds=FOLDS),
    )
    pytest.importorskip("matplotlib")
    report = build_board([folder], tmp_path / "board")
    plots = sorted(p.name for p in (tmp_path / "board" / "plots").glob("*.png"))
    assert (tmp_path / "board" / "plots" / ".ocbench-board-plots").is_file()
    table_id = report.board.tables[0].id
    assert f"per_class_f1__{table_id}.png" in plots
    assert f"channel_sweep__{table_id}.png" in plots
    assert "finetune_fraction.png" in plots  # the paper's fraction curve (reported rows)
    assert all((tmp_path / "board" / "plots" / p).read_bytes()[:4] == b"\x89PNG" for p in plots)
    assert not report.notes

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the plots extra were not installed
    report = build_board([folder], tmp_path / "board2")
    assert any("matplotlib is not installed" in n for n in report.notes)
    assert (tmp_path / "board2" / "LEADERBOARD.md").exists() and not (tmp_path / "board2" / "plots").exists()


def test_rebuild_from_the_boards_own_entries_leaves_them_untouched(tmp_path):
    """The documented rebuild (`ocbench leaderboard build leaderboard/entries --out leaderboard`)
    deletes, renames and adds nothing in entries/; the board links to the files where they are."""
    out = tmp_path / "leaderboard"
    entries = out / "entries"
    write_entry(example_entry_dict("model-a"), entries).rename(entries / "my-new-entry.json")
    write_entry(example_entry_dict("model-b", val_folds=FOLDS), entries / "sub")
    (entries / "broken.json").write_text('{"schema_version": 1, "task": ')  # reported: fix the file
    (entries / "splits").mkdir()
    (entries / "splits" / "paper-seed0.json").write_text(json.dumps({"format": "ocbench-split/1", "track": "paper"}))
    (entries / "README.md").write_text("our notes\n")
    before = _snapshot(entries)

    for sources in ([entries], [entries], [out], [entries / "my-new-entry.json", entries / "sub"]):
        report = build_board(sources, out, plots=False)
        assert _snapshot(entries) == before
        assert report.n_entries == 2 and not [f for f in report.files if entries in f.parents]
    assert "left as it is" in report.summary()
    assert any("broken.json: not valid JSON" in p for p in build_board([entries], out, plots=False).problems)
    with (out / "leaderboard.csv").open() as fh:
        linked = {r["entry_file"] for r in csv.DictReader(fh) if r["kind"] == "computed"}
    assert linked == {"entries/my-new-entry.json", "entries/sub/model-b__replicate__fov-mlp__paper.json"}
    assert "entries/my-new-entry.json" in (out / "index.html").read_text()

    other = tmp_path / "other"
    write_entry(example_entry_dict("model-c"), other)
    board_before = _snapshot(out)
    with pytest.raises(ConfigError, match=r"other/model-c__replicate__fov-mlp__paper.json: lies outside .*leaderboard/entries"):
        build_board([entries, other], out, plots=False)  # cannot be linked from the board
    assert _snapshot(out) == board_before


def test_build_does_not_replace_an_entries_folder_it_did_not_write(tmp_path):
    """`ocbench demo` keeps its computed entries in <out>/entries and its board in <out>/board:
    building other entries --out <out> is refused instead of wiping them."""
    demo = tmp_path / "ocbench-demo-results"
    write_entry(example_entry_dict("model-a"), demo / "entries")
    build_board([demo / "entries"], demo / "board", plots=False)
    before = _snapshot(demo)
    other = _entries_dir(tmp_path, example_entry_dict("model-z"))
    with pytest.raises(ConfigError, match=r"ocbench-demo-results/entries: holds files .* give it as a source.* another --out folder"):
        build_board([other], demo, plots=False)
    assert _snapshot(demo) == before  # refused before anything was written

    # the board's own copy (marked) is replaced by the next build: stale copies go
    (demo / "entries" / "model-a__replicate__fov-mlp__paper.json").unlink()
    write_entry(example_entry_dict("model-b", val_folds=FOLDS), demo / "entries")
    build_board([demo / "entries"], demo / "board", plots=False)
    assert sorted(p.name for p in (demo / "board" / "entries").glob("*.json")) == ["model-b__replicate__fov-mlp__paper.json"]
    # an empty folder holds nothing to lose
    (tmp_path / "fresh" / "entries").mkdir(parents=True)
    assert build_board([other], tmp_path / "fresh", plots=False).n_entries == 1


def test_build_does_not_replace_a_plots_folder_it_did_not_write(tmp_path):
    out = tmp_path / "results"
    (out / "plots").mkdir(parents=True)
    (out / "plots" / "my-figure.png").write_bytes(b"\x89PNG mine")
    with pytest.raises(ConfigError, match=r"results/plots: holds files"):
        build_board([], out, allow_empty=True)  # the paper's rows alone already make plots
    assert sorted(p.name for p in out.iterdir()) == ["plots"]
    build_board([], out, plots=False, allow_empty=True)  # no plots to write: the folder is left alone
    assert [p.name for p in (out / "plots").iterdir()] == ["my-figure.png"]

    pytest.importorskip("matplotlib")
    board = tmp_path / "board"
    build_board([], board, allow_empty=True)
    assert (board / "plots" / "finetune_fraction.png").is_file()
    build_board([], board, plots=False, allow_empty=True)  # its own plots of an earlier build no longer apply
    assert not (board / "plots").exists()


def test_reported_only_board_when_there_are_no_entries(tmp_path):
    report = build_board([], tmp_path / "board", plots=False, allow_empty=True)
    assert report.n_entries == 0 and report.n_tables == 3
    md = (tmp_path / "board" / "LEADERBOARD.md").read_text()
    assert "fov-mlp · paper track · reported by the paper" in md
    assert "k#5" in md and "0.796" in md  # Table 4 rows
    report = build_board([], tmp_path / "empty", include_reported=False, allow_empty=True)
    assert report.n_tables == 0 and "No entries yet." in (tmp_path / "empty" / "LEADERBOARD.md").read_text()


def test_publish_dry_run_and_upload(tmp_path, monkeypatch):
    import huggingface_hub

    folder = _entries_dir(tmp_path, example_entry_dict("model-a"))
    out = tmp_path / "board"
    build_board([folder], out, include_reported=False, plots=False)
    files = publish(out, "org/ocbench-board", dry_run=True, allow_synthetic=True)
    assert files[:3] == ["LEADERBOARD.md", "leaderboard.csv", "index.html"]
    assert "entries/model-a__replicate__fov-mlp__paper.json" in files and "entries/README.md" in files

    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, repo_type, exist_ok):
            calls["create"] = (repo_id, repo_type, exist_ok)

        def upload_folder(self, **kwargs):
            calls["upload"] = kwargs

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert publish(out, "org/ocbench-board", dry_run=False, token="t", allow_synthetic=True) == files
    assert calls["create"] == ("org/ocbench-board", "dataset", True)
    assert calls["upload"]["allow_patterns"] == files and calls["upload"]["repo_type"] == "dataset"

    with pytest.raises(ConfigError, match="ORG/NAME"):
        publish(out, "not a repo", dry_run=True)
    with pytest.raises(DataError, match="not a built board"):
        publish(tmp_path, "org/x", dry_run=True)
    (out / "entries" / "junk.json").write_text("{}")
    with pytest.raises(DataError, match="1 invalid entry, nothing uploaded"):
        publish(out, "org/x", dry_run=True, allow_synthetic=True)


def test_leaderboard_imports_and_builds_without_torch(tmp_path):
    folder = _entries_dir(tmp_path, example_entry_dict("model-a"), example_entry_dict("model-b", val_folds=FOLDS))
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        sys.modules["timm"] = None
        sys.modules["ocbench.backbones"] = None
        import ocbench.leaderboard
        from ocbench.benchmark.entry import load_entry
        report = ocbench.leaderboard.build_board([{str(folder)!r}], {str(tmp_path / "board")!r}, plots=False)
        assert report.n_entries == 2, report
        assert "corrected t-test" in report.board.tables[0].computed_rows[1].rank_reason
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
