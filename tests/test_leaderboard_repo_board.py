"""The repository's published board (top-level ``leaderboard/``) is up to date with its entries.

It is rebuilt with ``ocbench leaderboard build leaderboard/entries --out leaderboard --allow-empty`` (the same
as ``build_board(["leaderboard/entries"], "leaderboard", allow_empty=True)``; ``--allow-empty``
because the board may hold the paper's reported rows alone), which leaves ``leaderboard/entries``
as it is and links to the entry files there. Until entries computed on the real data are added,
it holds the paper's reported rows only.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ocbench.leaderboard import build_board
from ocbench.leaderboard.build import BOARD_FILES, REPO_BOARD_COMMAND
from ocbench.leaderboard.formatting import md_escape

BOARD = Path(__file__).resolve().parent.parent / "leaderboard"


def test_committed_board_is_up_to_date(tmp_path):
    """Rebuild a copy of leaderboard/ exactly as documented: in place, from its own entries."""
    assert (BOARD / "entries").is_dir(), f"{BOARD}/entries is missing; run `{REPO_BOARD_COMMAND}`"
    copy = tmp_path / "leaderboard"
    shutil.copytree(BOARD, copy)
    report = build_board([copy / "entries"], copy, allow_empty=True)
    stale = [name for name in BOARD_FILES if (BOARD / name).read_bytes() != (copy / name).read_bytes()]
    assert not stale, f"leaderboard/ is out of date ({', '.join(stale)}); run `{REPO_BOARD_COMMAND}`"
    assert not report.problems, report.problems

    def listing(folder: Path) -> dict[str, bytes]:
        return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    assert listing(copy / "entries") == listing(BOARD / "entries")  # the rebuild leaves the entries as they are
    if any("matplotlib is not installed" in note for note in report.notes):
        pytest.skip("matplotlib is not installed: the plots could not be checked")
    # Plot pixels depend on the matplotlib version; what each plot draws (its data, kept in the PNG) must match.
    from ocbench.leaderboard.plots import read_drawn_data

    committed = {p.name: read_drawn_data(p) for p in sorted((BOARD / "plots").glob("*.png"))}
    rebuilt = {p.name: read_drawn_data(p) for p in sorted((copy / "plots").glob("*.png"))}
    assert set(committed) == set(rebuilt), f"leaderboard/plots is out of date; run `{REPO_BOARD_COMMAND}`"
    stale_plots = [name for name in rebuilt if committed[name] != rebuilt[name]]
    assert not stale_plots, f"leaderboard/plots/{', '.join(stale_plots)} out of date; run `{REPO_BOARD_COMMAND}`"


def test_board_shows_every_reported_number():
    from ocbench.reported import REPORTED

    markdown = (BOARD / "LEADERBOARD.md").read_text()
    for result in REPORTED:
        numbers = [f"{v:.3f}" for v in result.per_k] if result.per_k else [f"{result.mean:.3f} ± {result.std:.3f}"]
        for number in numbers:
            assert number in markdown, f"{result} missing from the board"
        if result.note:  # what the paper leaves open travels with the number
            assert md_escape(result.note) in markdown, f"note of {result} missing from the board"
    assert "*(reported)*" in markdown and "not ranked" in markdown
