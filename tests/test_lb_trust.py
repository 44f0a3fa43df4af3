"""Issue 17 on the board: each test failed before its fix (item numbers of the issue)."""

from __future__ import annotations

import csv
import html as htmllib
import os
import re
import socket
import subprocess
import sys

import pytest
from click.testing import CliRunner

from ocbench.benchmark.entry import entry_from_dict, write_entry
from ocbench.errors import ConfigError, DataError
from ocbench.leaderboard import build_board, collect_entries, publish, validate_entries
from ocbench.leaderboard.build import MANIFEST, remove_stale_builds
from ocbench.leaderboard.formatting import WEIGHTS_UNVERIFIED
from ocbench.leaderboard.summary import format_run_table
from ocbench.leaderboard.tables import best_per_class, build_tables

from board_examples import example_entry_dict, recompute_aggregates

FOLDS = [0.70, 0.72, 0.69, 0.71, 0.73]


def _entries(tmp_path, *dicts, name="entries"):
    folder = tmp_path / name
    for d in dicts:
        write_entry(d, folder)
    return folder


# -- 13: the build refuses to overwrite files it did not write ----------------------------------
@pytest.mark.parametrize("name", ["index.html", "LEADERBOARD.md", "leaderboard.csv"])
def test_build_refuses_to_overwrite_a_users_file(tmp_path, name):
    entries = _entries(tmp_path, example_entry_dict("model-a"))
    out = tmp_path / "site"
    out.mkdir()
    (out / name).write_text("my own page\n")
    with pytest.raises(ConfigError, match=rf"site/{name}: not written by `ocbench leaderboard build`"):
        build_board([entries], out, plots=False)
    assert (out / name).read_text() == "my own page\n"
    assert sorted(p.name for p in out.iterdir()) == [name]  # nothing else written either


def test_build_overwrites_its_own_files_and_boards_of_earlier_releases(tmp_path):
    entries = _entries(tmp_path, example_entry_dict("model-a"))
    out = tmp_path / "board"
    build_board([entries], out, plots=False)
    assert (out / MANIFEST).is_file()
    build_board([entries], out, plots=False)  # its own files: replaced
    # a board written by ocbench 0.1 (no manifest) is recognised by its files' stamps
    (out / MANIFEST).unlink()
    build_board([entries], out, plots=False)
    # a file the manifest lists may be replaced; one it does not list may not
    (out / MANIFEST).write_text('{"files": ["LEADERBOARD.md", "leaderboard.csv"]}')
    (out / "index.html").write_text("<p>mine</p>")
    with pytest.raises(ConfigError, match="index.html: not written"):
        build_board([entries], out, plots=False)


# -- 14: no entries is an error ------------------------------------------------------------------
def test_validate_and_build_of_an_empty_folder_are_errors(tmp_path):
    from ocbench.cli import cli

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"empty: no entries found \(0 JSON files\)"):
        validate_entries([empty])
    with pytest.raises(DataError, match="no entries found"):
        build_board([empty], tmp_path / "board", plots=False)
    assert not (tmp_path / "board").exists()
    result = CliRunner().invoke(cli, ["leaderboard", "validate", str(empty)])
    assert result.exit_code == 2 and "all entries valid" not in result.output
    result = CliRunner().invoke(cli, ["leaderboard", "build", str(empty), "--out", str(tmp_path / "board")])
    assert result.exit_code == 2 and "no entries found" in result.output
    # asked for: a board of the paper's reported rows alone
    assert build_board([empty], tmp_path / "board", plots=False, allow_empty=True).n_entries == 0


def test_build_of_an_all_invalid_folder_is_an_error(tmp_path):
    folder = tmp_path / "entries"
    folder.mkdir()
    (folder / "broken.json").write_text("{not json")
    assert len(validate_entries([folder])) == 1  # a problem line (exit 1 in the CLI), not "all valid"
    with pytest.raises(DataError, match=r"no valid entry \(1 JSON file, all invalid; first: .*broken.json: not valid JSON"):
        build_board([folder], tmp_path / "board", plots=False)


# -- 16: entry text is escaped for Markdown and made inert for spreadsheets ----------------------
def test_markdown_and_csv_do_not_pass_raw_html_or_formulas(tmp_path):
    evil = example_entry_dict(
        "=HYPERLINK(1)",
        spec="<img src=x onerror=alert(1)>|[click](javascript:alert(2))",
        overrides={"note": "<script>alert(3)</script>"},
    )
    evil["backbone"]["arch"] = "<b>bold</b>"
    evil["off_protocol_reasons"] = ["@SUM(1+1) <iframe src=//x>"]
    out = tmp_path / "board"
    build_board([_entries(tmp_path, evil, example_entry_dict("model-b"))], out, include_reported=False, plots=False)
    md = (out / "LEADERBOARD.md").read_text()
    for raw in ("<img", "<script", "<b>", "<iframe"):
        assert raw not in md, raw
    assert not re.search(r"(?<!\\)\]\(javascript:", md)  # no link can form
    assert "&lt;iframe src=//x>" in md and "\\[click\\](javascript:alert(2))" in md
    table_lines = [line for line in md.splitlines() if line.startswith("| 1 ") or line.startswith("| 2 ")]
    assert len(table_lines) == 2 and all(line.count(" | ") == table_lines[0].count(" | ") for line in table_lines)
    html = (out / "index.html").read_text()
    assert "<script>alert(3)" not in html and "<img src=x" not in html

    with (out / "leaderboard.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    row = next(r for r in rows if "HYPERLINK" in r["backbone"])
    assert row["backbone"] == "'=HYPERLINK(1)"
    assert not [v for r in rows for v in r.values() if v[:1] in ("=", "+", "@") or (v[:1] == "-" and not _number(v))]


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# -- 19: plots are shown on the page; score axes start at 0 -------------------------------------
def test_html_shows_the_plots_beside_their_tables(tmp_path):
    pytest.importorskip("matplotlib")
    entries = _entries(
        tmp_path,
        example_entry_dict("model-a", channels_key="map-p1-n2", strategy="map", spec="protein=1,nucleus=2"),
        example_entry_dict("model-a", channels_key="map-p0-n2", strategy="map", spec="protein=0,nucleus=2", val_folds=FOLDS),
    )
    report = build_board([entries], tmp_path / "board")
    table_id = report.board.tables[0].id
    html = (tmp_path / "board" / "index.html").read_text()
    section = html.split(f'<section id="s-{table_id}"', 1)[1].split("</section>", 1)[0]
    assert f'<figure data-plot="channel_sweep__{table_id}.png"><img src="data:image/png;base64,' in section
    assert f'<figure data-plot="per_class_f1__{table_id}.png"><img src="data:image/png;base64,' in section
    assert '<figure data-plot="finetune_fraction.png"><img src="data:image/png;base64,' in html
    md = (tmp_path / "board" / "LEADERBOARD.md").read_text()
    assert f"](plots/channel_sweep__{table_id}.png)" in md and "![" in md


def test_channel_sweep_bars_start_at_zero(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from ocbench.leaderboard import plots

    figures = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.__setitem__(path.name, fig))
    entries = _entries(
        tmp_path,
        example_entry_dict("model-a", channels_key="map-p1-n2", strategy="map", val_folds=[0.80, 0.81, 0.82, 0.80, 0.81]),
        example_entry_dict("model-a", channels_key="map-p0-n2", strategy="map", val_folds=[0.78, 0.79, 0.80, 0.79, 0.78]),
    )
    board = build_tables(collect_entries(entries).entries, include_reported=False)
    plots.write_plots(board, tmp_path)
    sweep = next(fig for name, fig in figures.items() if name.startswith("channel_sweep__"))
    assert all(ax.get_xlim()[0] == 0.0 for ax in sweep.axes if ax.get_title())


# -- 27: best per class only when clear; publish refuses demo and off-protocol entries ---------
def test_best_per_class_awards_nobody_for_a_zero_or_tied_top(tmp_path):
    zero = example_entry_dict("model-a", val_folds=FOLDS)
    zero["per_class"]["val"]["f1"]["membrane"] = 0.0
    for row in zero["per_class_values"]["val"]["f1"]:
        row[0] = 0.0
    other = example_entry_dict("model-b", val_folds=FOLDS)
    other["per_class"]["val"]["f1"]["membrane"] = 0.0
    for row in other["per_class_values"]["val"]["f1"]:
        row[0] = 0.0
    recompute_aggregates(zero), recompute_aggregates(other)  # the fold scores follow their per-class rows
    board = build_tables(collect_entries(_entries(tmp_path, zero, other)).entries, include_reported=False)
    best = {b.class_name: b for b in best_per_class(board.tables[0])}
    assert best["membrane"].best is None and "best score is 0" in best["membrane"].note
    assert best["er"].best is None and "tied" in best["er"].note  # identical scores
    out = tmp_path / "board"
    build_board([tmp_path / "entries"], out, include_reported=False, plots=False)
    md = (out / "LEADERBOARD.md").read_text()
    assert "no clear best" in md and "| membrane " in md


def test_best_per_class_needs_a_separated_top(tmp_path):
    a = example_entry_dict("model-a", val_folds=FOLDS)
    b = example_entry_dict("model-b", val_folds=[f - 0.1 for f in FOLDS])
    # on "er", a is above b on average, but the folds disagree: not separated
    a["per_class_values"]["val"]["f1"] = [[0.8 if i == 2 else v for i, v in enumerate(r)] for r in a["per_class_values"]["val"]["f1"]]
    flip = [0.95, 0.55, 0.90, 0.50, 0.90]  # mean 0.76
    for k, row in enumerate(b["per_class_values"]["val"]["f1"]):
        row[2] = flip[k]
    a["per_class"]["val"]["f1"]["er"] = 0.8
    b["per_class"]["val"]["f1"]["er"] = sum(flip) / 5
    recompute_aggregates(a), recompute_aggregates(b)  # the fold scores follow their per-class rows
    board = build_tables(collect_entries(_entries(tmp_path, a, b)).entries, include_reported=False)
    best = {x.class_name: x for x in best_per_class(board.tables[0])}
    assert best["er"].best is None and "cannot separate" in best["er"].note
    assert best["membrane"].best is not None and best["membrane"].best.backbone == "model-a"


def test_publish_refuses_synthetic_and_off_protocol_entries_unless_allowed(tmp_path):
    demo = _entries(tmp_path, example_entry_dict("model-a"), name="demo")
    build_board([demo], tmp_path / "demo-board", plots=False)
    with pytest.raises(ConfigError, match="synthetic data .*--allow-synthetic"):
        publish(tmp_path / "demo-board", "org/board", dry_run=True)
    assert publish(tmp_path / "demo-board", "org/board", dry_run=True, allow_synthetic=True)

    off = example_entry_dict("model-b", dataset_name="opencell", overrides={"epochs": 5})
    build_board([_entries(tmp_path, off, name="off")], tmp_path / "off-board", plots=False)
    with pytest.raises(ConfigError, match=r"off-protocol .*epochs=5.*--allow-off-protocol"):
        publish(tmp_path / "off-board", "org/board", dry_run=True)
    assert publish(tmp_path / "off-board", "org/board", dry_run=True, allow_off_protocol=True)


# -- 18: demo rows say they are synthetic -------------------------------------------------------
def test_board_and_run_summary_say_demo_rows_are_synthetic(tmp_path):
    out = tmp_path / "board"
    report = build_board([_entries(tmp_path, example_entry_dict("model-a"))], out, plots=False)
    table = report.board.tables[0]
    assert table.synthetic and "synthetic data" in table.title and "synthetic data" in table.computed_rows[0].notes
    md = (out / "LEADERBOARD.md").read_text()
    assert "results on the generated demo dataset" in md
    assert 'id="synthetic-banner"' in (out / "index.html").read_text()
    text = format_run_table([entry_from_dict(example_entry_dict("model-a"))])
    assert "demo (synthetic)" in text and "not how a backbone does on real cells" in text
    real = build_board([_entries(tmp_path, example_entry_dict("model-b", dataset_name="opencell"), name="real")], tmp_path / "real-board")
    assert "synthetic" not in (tmp_path / "real-board" / "LEADERBOARD.md").read_text()
    assert not real.board.synthetic


# -- 5/6/7: precision, unverified weights and off-protocol reasons are shown ---------------------
def test_precision_unverified_weights_and_reasons_are_shown(tmp_path):
    d = example_entry_dict(
        "hpa-fov-vitb8",
        precision="bf16",
        weights_verified=False,
        weights_note="imported from my.pth",
        off_protocol_reasons=["channel map leaves out the protein channel"],
    )
    out = tmp_path / "board"
    report = build_board([_entries(tmp_path, d)], out, include_reported=False, plots=False)
    row = report.board.tables[0].computed_rows[0]
    for text in ("precision bf16", WEIGHTS_UNVERIFIED, "off-protocol: channel map leaves out the protein channel"):
        assert text in row.notes
    assert "imported from my.pth" in dict(row.provenance)["weights"]
    md = (out / "LEADERBOARD.md").read_text()
    html = (out / "index.html").read_text()
    assert WEIGHTS_UNVERIFIED in md and "precision bf16" in md and "leaves out the protein channel" in md
    assert "off-protocol: channel map leaves out the protein channel" in html  # tooltip and details
    assert "off-protocol: channel map leaves out the protein channel" in report.board.tables[0].details[2]
    with (out / "leaderboard.csv").open() as fh:
        (rec,) = list(csv.DictReader(fh))
    assert rec["precision"] == "bf16" and rec["weights_verified"] == "False"
    text = format_run_table([entry_from_dict(d)])
    assert "(off-protocol, bf16)" in text and WEIGHTS_UNVERIFIED in text and "leaves out the protein channel" in text


# -- 22: the legend explains the channel notation -----------------------------------------------
def test_legend_explains_the_channel_notation(tmp_path):
    out = tmp_path / "board"
    build_board([_entries(tmp_path, example_entry_dict("model-a"))], out, plots=False)
    for name in ("LEADERBOARD.md", "index.html"):
        text = htmllib.unescape((out / name).read_text().replace("<code>", "`").replace("</code>", "`"))
        assert "`[1, 2] -> [G, B]`: dataset channel 1 (protein) goes to model input G and channel 2 (nucleus) to input B" in text
        assert "`map-p1-n2` = protein into input 1, nucleus into input 2" in text
        assert "nucleus (Hoechst) as channel 0 and the protein as channel 1" in text  # the TIFF order README gives


# -- 12: stale temp folders of killed builds are removed ----------------------------------------
def test_stale_build_folders_are_removed_and_only_those(tmp_path):
    entries = _entries(tmp_path, example_entry_dict("model-a"))
    out = tmp_path / "board"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = "".join(c if c.isalnum() or c == "_" else "_" for c in socket.gethostname())[:40]
    stale = out / f".ocbench-build-{host}-{dead.pid}-abc123.tmp"
    alive = out / f".ocbench-build-{host}-{os.getppid()}-def456.tmp"  # a build still running
    elsewhere = out / f".ocbench-build-otherhost-{dead.pid}-ghi789.tmp"  # another machine's
    foreign = out / ".ocbench-build-notes"  # not our naming
    legacy = out / ".entries.x1y2z3.tmp"  # atomic_dir's naming: no pid to check
    for folder in (stale, alive, elsewhere, foreign, legacy):
        folder.mkdir()
        (folder / "LEADERBOARD.md").write_text("half")
    report = build_board([entries], out, plots=False)
    assert not stale.exists()
    assert alive.exists() and elsewhere.exists() and foreign.exists() and legacy.exists()
    assert any("interrupted builds" in n for n in report.notes)
    assert remove_stale_builds(out) == []
    assert not [p for p in out.iterdir() if p.name.startswith(".ocbench-build-") and p not in (alive, elsewhere, foreign)]


def test_a_task_name_cannot_inject_a_link_through_the_plot_file_names(tmp_path):
    pytest.importorskip("matplotlib")
    d = example_entry_dict("model-a", task="x)![y](javascript:alert(1)")
    e = example_entry_dict("model-b", task="x)![y](javascript:alert(1)", val_folds=FOLDS)
    report = build_board([_entries(tmp_path, d, e)], tmp_path / "board", include_reported=False)
    table_id = report.board.tables[0].id
    assert re.fullmatch(r"[A-Za-z0-9._-]+", table_id), table_id
    md = (tmp_path / "board" / "LEADERBOARD.md").read_text()
    assert not re.search(r"(?<!\\)\]\(javascript:", md)
    assert all(p.parent == tmp_path / "board" / "plots" for p in (tmp_path / "board" / "plots").rglob("*.png"))
