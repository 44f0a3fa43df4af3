"""``build_board``: entries in, a board folder out.

The board folder holds ``LEADERBOARD.md``, ``leaderboard.csv``, ``index.html``, ``plots/*.png``
and ``entries/`` (the entry files shown, so a published board carries its own evidence). Every
file is written atomically. The Markdown, CSV and HTML are deterministic functions of the
entries, so a committed board can be checked for being up to date by rebuilding it; the
repository's own board is rebuilt with ``ocbench leaderboard build leaderboard/entries --out
leaderboard``.

The build never deletes or renames a file it did not write itself:

- when ``<out>/entries`` is one of the sources (or lies inside one, or holds one), it is left as
  it is and the board links to the entry files where they are (every shown entry must then lie
  in it); otherwise ``<out>/entries`` gets verbatim copies, and it is replaced only when it is
  absent, empty or marked by an earlier build (:data:`ENTRIES_MARKER`);
- ``<out>/plots`` is likewise replaced (or removed) only when absent, empty or marked
  (:data:`PLOTS_MARKER`).

A folder holding other files stops the build with a :class:`~ocbench.errors.ConfigError` before
anything is written.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ocbench._io import atomic_dir, atomic_path, atomic_write
from ocbench.errors import ConfigError
from ocbench.leaderboard.collect import LoadedEntry, collect_entries, parse_hub_source
from ocbench.leaderboard.html import render_html
from ocbench.leaderboard.plots import plan_plots, write_plots
from ocbench.leaderboard.ranking import ALPHA
from ocbench.leaderboard.render import board_dataframe, render_markdown
from ocbench.leaderboard.tables import Board, build_tables, dedupe_entries

__all__ = ["BuildReport", "build_board", "BOARD_FILES", "REPO_BOARD_COMMAND", "ENTRIES_MARKER", "PLOTS_MARKER"]

#: The table files every board has (plots and entries/ come beside them).
BOARD_FILES = ("LEADERBOARD.md", "leaderboard.csv", "index.html")
REPO_BOARD_COMMAND = "ocbench leaderboard build leaderboard/entries --out leaderboard"

#: Files marking ``<out>/entries`` and ``<out>/plots`` as written by a build (and so replaceable).
ENTRIES_MARKER = ".ocbench-board-entries"
PLOTS_MARKER = ".ocbench-board-plots"
_MARKER_TEXT = "Written by `ocbench leaderboard build`; the next build into this board replaces this folder.\n"

_ENTRIES_README = """\
# Entries

The result entries this board was built from, copied verbatim (one JSON file per backbone,
channel strategy, task and split track; format: `ocbench/leaderboard/entry.schema.json`).
To add one, run the benchmark and open a pull request with the entry file; see CONTRIBUTING.md.
This copy is rewritten by the next `ocbench leaderboard build` into this board.
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


def _readable_by_all(folders: list[Path], files: list[Path]) -> None:
    """Give the board the permissions of a normal file (temp files are created private, 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    for folder in folders:
        if folder.is_dir():
            folder.chmod(0o777 & ~mask)
    for path in files:
        if path.is_file():
            path.chmod(0o666 & ~mask)


def _overlaps_a_source(folder: Path, sources: Sequence[str | os.PathLike]) -> bool:
    """Whether ``folder`` is a local source, lies inside one, or holds one."""
    target = folder.resolve()
    for source in sources:
        if isinstance(source, str) and parse_hub_source(source):
            continue
        src = Path(source).resolve()
        if src == target or src in target.parents or target in src.parents:
            return True
    return False


def _ensure_ours(folder: Path, marker: str, advice: str) -> None:
    """ConfigError unless ``folder`` is absent, empty or marked as written by a build."""
    if not folder.exists() and not folder.is_symlink():
        return
    if folder.is_dir() and not folder.is_symlink() and (not any(folder.iterdir()) or (folder / marker).is_file()):
        return
    raise ConfigError(
        f"{folder}: holds files `ocbench leaderboard build` did not write (no {marker} marker), and the build "
        f"would replace it; {advice}move it away (delete it if an older ocbench wrote it) or build into another "
        "--out folder"
    )


def _entries_in_place(entries_dir: Path, collected: Sequence[LoadedEntry]) -> dict[str, str]:
    """sha256 -> the entry file's path inside ``entries_dir`` (POSIX), for a board that links to
    the entries where they are; ConfigError if a shown entry lies outside it."""
    root = entries_dir.resolve()
    names: dict[str, str] = {}
    for loaded in collected:
        try:
            names.setdefault(loaded.sha256, loaded.path.resolve().relative_to(root).as_posix())
        except ValueError:  # not inside entries_dir
            continue
    outside = [e.name for e in dedupe_entries(list(collected))[0] if e.sha256 not in names]
    if outside:
        more = f" (and {len(outside) - 1} more)" if len(outside) > 1 else ""
        raise ConfigError(
            f"{outside[0]}{more}: lies outside {entries_dir}, which is a source and so is left as it is (the board "
            f"links to the entry files there); copy it into {entries_dir}, or build into another --out folder"
        )
    return names


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
    sources = list(sources)
    out = Path(out_dir)
    collection = collect_entries(sources)  # read everything before writing anything
    in_place = _overlaps_a_source(out / "entries", sources)
    if in_place:
        names = _entries_in_place(out / "entries", collection.entries)
    else:
        names = None
        _ensure_ours(out / "entries", ENTRIES_MARKER, "to show the entries in it, give it as a source; else ")
    board = build_tables(
        collection.entries, include_reported=include_reported, rank_reported=rank_reported, alpha=alpha, entry_files=names
    )
    plans = plan_plots(board) if plots else []
    if plans:
        _ensure_ours(out / "plots", PLOTS_MARKER, "")
    plot_names = [p.filename for p in plans]
    markdown = render_markdown(board, plot_names)
    page = render_html(board, plot_names)
    frame = board_dataframe(board)

    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    folders: list[Path] = []
    notes: list[str] = []

    if in_place:
        notes.append(f"{out / 'entries'} is a source: left as it is; the board links to the entry files there")
    else:
        with atomic_dir(out / "entries") as tmp:
            for loaded in board.entries:
                (tmp / board.entry_files[loaded.sha256]).write_bytes(loaded.raw)
            (tmp / "README.md").write_text(_ENTRIES_README, encoding="utf-8")
            (tmp / ENTRIES_MARKER).write_text(_MARKER_TEXT, encoding="utf-8")
        written += sorted((out / "entries").iterdir())
        folders.append(out / "entries")

    with atomic_write(out / "LEADERBOARD.md") as fh:
        fh.write(markdown)
    with atomic_path(out / "leaderboard.csv") as tmp_csv:
        frame.to_csv(tmp_csv, index=False, lineterminator="\n")
    with atomic_write(out / "index.html") as fh:
        fh.write(page)
    written += [out / name for name in BOARD_FILES]

    if plans:
        try:
            with atomic_dir(out / "plots") as tmp_plots:
                write_plots(board, tmp_plots, plans)
                (tmp_plots / PLOTS_MARKER).write_text(_MARKER_TEXT, encoding="utf-8")
            written += [out / "plots" / name for name in (*plot_names, PLOTS_MARKER)]
            folders.append(out / "plots")
        except ModuleNotFoundError as exc:
            if exc.name != "matplotlib":
                raise
            notes.append("plots skipped: matplotlib is not installed (pip install 'ocbench[plots]')")
    elif (out / "plots" / PLOTS_MARKER).is_file() and not (out / "plots").is_symlink():
        shutil.rmtree(out / "plots")  # plots of an earlier build that no longer apply
    if not include_reported:
        notes.append("reported paper rows left out (include_reported=False)")

    _readable_by_all(folders, written)

    return BuildReport(
        out_dir=out,
        files=tuple(written),
        n_entries=len(board.entries),
        n_tables=len(board.tables),
        problems=(*collection.problems, *board.problems),
        notes=tuple(notes),
        board=board,
    )
