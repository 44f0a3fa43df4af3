"""``build_board``: entries in, a board folder out.

The board folder holds ``LEADERBOARD.md``, ``leaderboard.csv``, ``index.html``, ``plots/*.png``
and ``entries/`` (verbatim copies of the entry files shown, so a published board carries its own
evidence). Every file is written atomically. The Markdown, CSV and HTML are deterministic
functions of the entries, so a committed board can be checked for being up to date by rebuilding
it; the repository's own board is rebuilt with ``ocbench leaderboard build leaderboard/entries
--out leaderboard``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ocbench._io import atomic_dir, atomic_path, atomic_write
from ocbench.leaderboard.collect import collect_entries
from ocbench.leaderboard.html import render_html
from ocbench.leaderboard.plots import plan_plots, write_plots
from ocbench.leaderboard.ranking import ALPHA
from ocbench.leaderboard.render import board_dataframe, render_markdown
from ocbench.leaderboard.tables import Board, build_tables

__all__ = ["BuildReport", "build_board", "BOARD_FILES", "REPO_BOARD_COMMAND"]

#: The table files every board has (plots and entries/ come beside them).
BOARD_FILES = ("LEADERBOARD.md", "leaderboard.csv", "index.html")
REPO_BOARD_COMMAND = "ocbench leaderboard build leaderboard/entries --out leaderboard"

_ENTRIES_README = """\
# Entries

The result entries this board was built from, copied verbatim (one JSON file per backbone,
channel strategy, task and split track; format: `ocbench/leaderboard/entry.schema.json`).
To add one, run the benchmark and open a pull request with the entry file; see CONTRIBUTING.md.
This folder is rewritten by `ocbench leaderboard build`.
"""


@dataclass(frozen=True)
class BuildReport:
    out_dir: Path
    files: tuple[Path, ...]  # every file written
    n_entries: int  # entries shown on the board
    n_tables: int
    problems: tuple[str, ...]  # one line per skipped file (invalid, foreign, duplicate)
    notes: tuple[str, ...]  # e.g. plots skipped
    board: Board

    def summary(self) -> str:
        """What the CLI prints: problems, notes, then one line of totals."""
        lines = [f"skipped: {p}" for p in self.problems]
        lines += [f"note: {n}" for n in self.notes]
        lines.append(
            f"wrote {self.out_dir}: {self.n_entries} entr{'y' if self.n_entries == 1 else 'ies'} in "
            f"{self.n_tables} table{'' if self.n_tables == 1 else 's'} "
            f"({', '.join(BOARD_FILES)}, {sum(1 for f in self.files if f.suffix == '.png')} plots)"
        )
        return "\n".join(lines)


def _readable_by_all(out: Path, files: list[Path]) -> None:
    """Give the board the permissions of a normal file (temp files are created private, 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    for folder in (out / "entries", out / "plots"):
        if folder.is_dir():
            folder.chmod(0o777 & ~mask)
    for path in files:
        if path.is_file():
            path.chmod(0o666 & ~mask)


def build_board(
    sources: Sequence[str | os.PathLike] | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    include_reported: bool = True,
    rank_reported: bool = False,
    alpha: float = ALPHA,
    plots: bool = True,
) -> BuildReport:
    """Collect, validate and rank the entries under ``sources``; write the board into ``out_dir``.

    ``sources``: folders, entry files or ``hf:ORG/NAME`` Hub dataset repos (may be empty: a board
    of the paper's reported rows only). Invalid files are skipped and listed in the report.
    ``include_reported``: add the paper's numbers as marked rows; ``rank_reported``: rank them
    together with the computed rows (interval rule) instead of showing them unranked.
    ``plots=False`` leaves plots out (faster; the Markdown and HTML then list none).
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    collection = collect_entries(list(sources))  # read everything before writing anything
    board = build_tables(collection.entries, include_reported=include_reported, rank_reported=rank_reported, alpha=alpha)
    plans = plan_plots(board) if plots else []
    plot_names = [p.filename for p in plans]
    markdown = render_markdown(board, plot_names)
    page = render_html(board, plot_names)
    frame = board_dataframe(board)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    with atomic_dir(out / "entries") as tmp:
        for loaded in board.entries:
            (tmp / board.entry_files[loaded.sha256]).write_bytes(loaded.raw)
        (tmp / "README.md").write_text(_ENTRIES_README, encoding="utf-8")
    written += sorted((out / "entries").iterdir())

    with atomic_write(out / "LEADERBOARD.md") as fh:
        fh.write(markdown)
    with atomic_path(out / "leaderboard.csv") as tmp_csv:
        frame.to_csv(tmp_csv, index=False, lineterminator="\n")
    with atomic_write(out / "index.html") as fh:
        fh.write(page)
    written += [out / name for name in BOARD_FILES]

    notes: list[str] = []
    if plans:
        try:
            with atomic_dir(out / "plots") as tmp_plots:
                write_plots(board, tmp_plots, plans)
            written += [out / "plots" / name for name in plot_names]
        except ModuleNotFoundError as exc:
            if exc.name != "matplotlib":
                raise
            notes.append("plots skipped: matplotlib is not installed (pip install 'ocbench[plots]')")
    elif (out / "plots").is_dir() and all(p.suffix == ".png" for p in (out / "plots").iterdir()):
        shutil.rmtree(out / "plots")  # plots of an earlier build that no longer apply
    if not include_reported:
        notes.append("reported paper rows left out (include_reported=False)")

    _readable_by_all(out, written)

    return BuildReport(
        out_dir=out,
        files=tuple(written),
        n_entries=len(board.entries),
        n_tables=len(board.tables),
        problems=(*collection.problems, *board.problems),
        notes=tuple(notes),
        board=board,
    )
