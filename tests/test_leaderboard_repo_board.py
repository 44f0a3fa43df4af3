"""The repository's published board (top-level ``leaderboard/``) is up to date with its entries.

It is rebuilt with ``ocbench leaderboard build leaderboard/entries --out leaderboard`` (the same
as ``build_board(["leaderboard/entries"], "leaderboard")``). Until entries computed on the real
data are added, it holds the paper's reported rows only.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ocbench.leaderboard import build_board
from ocbench.leaderboard.build import BOARD_FILES, REPO_BOARD_COMMAND

BOARD = Path(__file__).resolve().parent.parent / "leaderboard"


def test_committed_board_is_up_to_date(tmp_path):
    assert (BOARD / "entries").is_dir(), f"{BOARD}/entries is missing; run `{REPO_BOARD_COMMAND}`"
    report = build_board([BOARD / "entries"], tmp_path / "board")
    stale = [name for name in BOARD_FILES if (BOARD / name).read_bytes() != (tmp_path / "board" / name).read_bytes()]
    assert not stale, f"leaderboard/ is out of date ({', '.join(stale)}); run `{REPO_BOARD_COMMAND}`"
    assert not report.problems, report.problems

    def listing(folder: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.is_dir() else {}

    assert listing(BOARD / "entries") == listing(tmp_path / "board" / "entries")
    # Plot pixels depend on the matplotlib version; the set of plots must match.
    expected_plots = {p.name for p in (tmp_path / "board" / "plots").glob("*.png")}
    if expected_plots or (BOARD / "plots").is_dir():
        pytest.importorskip("matplotlib")
        assert {p.name for p in (BOARD / "plots").glob("*.png")} == expected_plots


def test_board_shows_every_reported_number():
    from ocbench.reported import REPORTED

    markdown = (BOARD / "LEADERBOARD.md").read_text()
    for result in REPORTED:
        numbers = [f"{v:.3f}" for v in result.per_k] if result.per_k else [f"{result.mean:.3f} ± {result.std:.3f}"]
        for number in numbers:
            assert number in markdown, f"{result} missing from the board"
        if result.note:  # what the paper leaves open travels with the number
            assert result.note in markdown, f"note of {result} missing from the board"
    assert "*(reported)*" in markdown and "not ranked" in markdown
