"""``build_board``: entries in, a board folder out.

The board folder holds ``LEADERBOARD.md``, ``leaderboard.csv``, ``index.html``, ``plots/*.png``
and ``entries/`` (the entry files shown, so a published board carries its own evidence). The
Markdown, CSV and HTML are deterministic functions of the entries, so a committed board can be
checked for being up to date by rebuilding it; the repository's own board is rebuilt with
:data:`REPO_BOARD_COMMAND`.

No entries is an error (an empty or mistyped folder must not give an empty board that looks
fine), unless ``allow_empty`` asks for a board of the paper's reported rows alone.

The build never deletes, renames or overwrites a file it did not write itself:

- ``LEADERBOARD.md``, ``leaderboard.csv`` and ``index.html`` are overwritten only when the
  board's manifest (:data:`MANIFEST`, written by every build) lists them, or when they carry the
  stamp of a board built by an earlier ocbench (which wrote no manifest);
- when ``<out>/entries`` is one of the sources (or lies inside one, or holds one), it is left as
  it is and the board links to the entry files where they are (every shown entry must then lie
  in it); otherwise ``<out>/entries`` gets verbatim copies, and it is replaced only when it is
  absent, empty or marked by an earlier build (:data:`ENTRIES_MARKER`);
- ``<out>/plots`` is likewise replaced (or removed) only when absent, empty or marked
  (:data:`PLOTS_MARKER`).

A file or folder it may not replace stops the build with a :class:`~ocbench.errors.ConfigError`
before anything is written.

Everything is first written into one private staging folder inside ``out`` named
``.ocbench-build-<host>-<pid>-<random>.tmp``, then moved into place file by file (each move is
atomic). A build killed before the end leaves that folder behind; the next build into the same
folder removes such folders of its own host whose process is gone, and no others.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ocbench._io import read_json_or_none
from ocbench.errors import ConfigError, DataError
from ocbench.leaderboard.collect import Collection, LoadedEntry, collect_entries, no_entries_message, parse_hub_source
from ocbench.leaderboard.grouping import dedupe_entries
from ocbench.leaderboard.html import render_html
from ocbench.leaderboard.plots import plan_plots, write_plots
from ocbench.leaderboard.ranking import ALPHA
from ocbench.leaderboard.render import board_dataframe, render_markdown
from ocbench.leaderboard.tables import Board, build_tables

__all__ = [
    "BuildReport",
    "build_board",
    "BOARD_FILES",
    "REPO_BOARD_COMMAND",
    "MANIFEST",
    "ENTRIES_MARKER",
    "PLOTS_MARKER",
    "remove_stale_builds",
]

#: The table files every board has (plots and entries/ come beside them).
BOARD_FILES = ("LEADERBOARD.md", "leaderboard.csv", "index.html")
REPO_BOARD_COMMAND = "ocbench leaderboard build leaderboard/entries --out leaderboard --allow-empty"

#: Lists the files a build wrote into the board folder (and so may overwrite next time).
MANIFEST = ".ocbench-board"
#: Files marking ``<out>/entries`` and ``<out>/plots`` as written by a build (and so replaceable).
ENTRIES_MARKER = ".ocbench-board-entries"
PLOTS_MARKER = ".ocbench-board-plots"
_MARKER_TEXT = "Written by `ocbench leaderboard build`; the next build into this board replaces this folder.\n"

#: What identifies each board file written by ocbench 0.1, which wrote no manifest.
_LEGACY_STAMPS = {
    "LEADERBOARD.md": ("Built by `ocbench leaderboard build`",),
    "index.html": ("Built by <code>ocbench leaderboard build</code>",),
    "leaderboard.csv": ("table_id,table,task,track,", "table_id,kind,backbone\n"),  # the second: a board without rows
}

_STAGING_PREFIX = ".ocbench-build-"
_STAGING_NAME = re.compile(r"^\.ocbench-build-(?P<host>[A-Za-z0-9_]+)-(?P<pid>[0-9]+)-[A-Za-z0-9_]+\.tmp$")

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


# ---------------------------------------------------------------------------------------------
# what the build may replace
# ---------------------------------------------------------------------------------------------
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


def _manifest_files(out: Path) -> set[str]:
    data = read_json_or_none(out / MANIFEST, dict) or {}
    try:
        return {str(name) for name in data.get("files", [])}
    except TypeError:  # "files" is not a list
        return set()


def _written_by_old_build(path: Path) -> bool:
    stamps = _LEGACY_STAMPS.get(path.name, ())
    try:
        with path.open("r", encoding="utf-8", errors="replace") as fh:
            head = fh.read(1 << 16)
    except OSError:
        return False
    return any(head.startswith(s) if path.suffix == ".csv" else s in head for s in stamps)


def _ensure_files_ours(out: Path) -> None:
    """ConfigError naming the first board file in ``out`` the build did not write."""
    listed = _manifest_files(out)
    for name in BOARD_FILES:
        path = out / name
        if not path.exists() and not path.is_symlink():
            continue
        if not path.is_symlink() and path.is_file() and (name in listed or _written_by_old_build(path)):
            continue
        raise ConfigError(
            f"{path}: not written by `ocbench leaderboard build` (not listed in {out / MANIFEST}), and the build "
            "would overwrite it; move it away or build into another --out folder"
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


# ---------------------------------------------------------------------------------------------
# staging
# ---------------------------------------------------------------------------------------------
def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname() or "host")[:40] or "host"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive, someone else's; anything else: assume alive
        return True
    return True


def remove_stale_builds(out_dir: str | os.PathLike) -> list[Path]:
    """Remove the staging folders of earlier builds into ``out_dir`` that were killed: only
    folders named by this module's scheme, made on this host, whose process is gone."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    removed = []
    host = _host_tag()
    for child in sorted(out.iterdir()):
        match = _STAGING_NAME.match(child.name)
        if not match or match["host"] != host or child.is_symlink() or not child.is_dir():
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or _process_alive(pid):
            continue
        shutil.rmtree(child, ignore_errors=True)
        removed.append(child)
    return removed


def _move_into_place(staged: Path, target: Path) -> None:
    if staged.is_dir():
        if target.exists() or target.is_symlink():
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink()
        os.replace(staged, target)
    else:
        os.replace(staged, target)


def _matplotlib_missing() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return True
    return False


# ---------------------------------------------------------------------------------------------
def _copy_predictions(loaded: LoadedEntry, entry_copy: Path) -> None:
    """Copy the entry's predictions file (checked against its sha256) beside its copy in the board,
    so a published board carries what its intervals and comparisons are computed from."""
    from ocbench._io import sha256_file

    ref = loaded.entry.predictions
    if ref is None:
        return
    source = Path(loaded.path).parent / ref.file
    if source.is_file() and sha256_file(source) == ref.sha256:
        shutil.copyfile(source, entry_copy.parent / ref.file)


def _prepare_out(out: Path, sources: Sequence[str | os.PathLike], collection: Collection) -> tuple[bool, dict[str, str] | None]:
    """Check, before anything is written, that the build may write into ``out``; returns whether
    ``out/entries`` is a source (left as it is) and, then, the entries' paths inside it."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder; give --out a folder")
    in_place = _overlaps_a_source(out / "entries", sources)
    if in_place:
        names = _entries_in_place(out / "entries", collection.entries)
    else:
        names = None
        _ensure_ours(out / "entries", ENTRIES_MARKER, "to show the entries in it, give it as a source; else ")
    _ensure_files_ours(out)
    return in_place, names


def _stage_board(staging: Path, board: Board, plans: list, markdown: str, frame: Any, *, in_place: bool) -> None:
    """Write every file of the board into ``staging`` (a failure here leaves the board as it was)."""
    (staging / MANIFEST).write_text(
        json.dumps({"written_by": "ocbench leaderboard build", "files": list(BOARD_FILES)}, indent=2) + "\n",
        encoding="utf-8",
    )
    if not in_place:
        entries_dir = staging / "entries"
        entries_dir.mkdir()
        for loaded in board.entries:
            target = entries_dir / board.entry_files[loaded.sha256]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(loaded.raw)
            _copy_predictions(loaded, target)
        (entries_dir / "README.md").write_text(_ENTRIES_README, encoding="utf-8")
        (entries_dir / ENTRIES_MARKER).write_text(_MARKER_TEXT, encoding="utf-8")
    (staging / "LEADERBOARD.md").write_text(markdown, encoding="utf-8")
    frame.to_csv(staging / "leaderboard.csv", index=False, lineterminator="\n")
    images: dict[str, bytes] = {}
    if plans:
        plots_dir = staging / "plots"
        plots_dir.mkdir()
        write_plots(board, plots_dir, plans)
        (plots_dir / PLOTS_MARKER).write_text(_MARKER_TEXT, encoding="utf-8")
        images = {p.filename: (plots_dir / p.filename).read_bytes() for p in plans}
    # the plots inline (data URIs): index.html alone is the board; plots/ serves the Markdown
    (staging / "index.html").write_text(render_html(board, plans, images), encoding="utf-8")


def _move_staged(staging: Path, out: Path, plans: list, *, in_place: bool) -> list[Path]:
    """Move the staged board into ``out``; the manifest first, so a file moved in is always one it
    lists. Returns the entry files moved, relative to ``out/entries``."""
    entry_files: list[Path] = []
    _move_into_place(staging / MANIFEST, out / MANIFEST)
    if not in_place:
        staged = sorted(p for p in (staging / "entries").rglob("*") if p.is_file())
        entry_files = [p.relative_to(staging / "entries") for p in staged]
        _move_into_place(staging / "entries", out / "entries")
    for name in BOARD_FILES:
        _move_into_place(staging / name, out / name)
    if plans:
        _move_into_place(staging / "plots", out / "plots")
    elif (out / "plots" / PLOTS_MARKER).is_file() and not (out / "plots").is_symlink():
        shutil.rmtree(out / "plots")  # plots of an earlier build that no longer apply
    return entry_files


def build_board(
    sources: Sequence[str | os.PathLike] | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    include_reported: bool = True,
    rank_reported: bool = False,
    alpha: float = ALPHA,
    plots: bool = True,
    allow_empty: bool = False,
    zero_shot_only: bool = False,
) -> BuildReport:
    """Collect, validate and rank the entries under ``sources``; write the board into ``out_dir``.

    ``sources``: folders, entry files or ``hf:ORG/NAME`` Hub dataset repos. Invalid files are
    skipped and listed in the report; no valid entry at all is a DataError unless
    ``allow_empty`` (then the board shows the paper's reported rows only).
    ``include_reported``: add the paper's numbers as marked rows; ``rank_reported``: rank them
    together with the computed rows (interval rule) instead of showing them unranked.
    ``plots=False`` leaves plots out (faster; the Markdown and HTML then show none).
    ``zero_shot_only``: leave out entries whose backbone records why it is not zero-shot.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    sources = list(sources)
    out = Path(out_dir)
    collection = collect_entries(sources)  # read everything before writing anything
    if not collection.entries and not allow_empty:
        raise DataError(
            no_entries_message(sources, collection) + "; to build a board of the paper's reported rows alone, "
            "pass --allow-empty"
        )
    in_place, names = _prepare_out(out, sources, collection)
    board = build_tables(
        collection.entries, include_reported=include_reported, rank_reported=rank_reported, alpha=alpha, entry_files=names,
        zero_shot_only=zero_shot_only,
    )
    notes: list[str] = []
    plans = plan_plots(board) if plots else []
    if plans and _matplotlib_missing():
        plans = []
        notes.append("plots left out: matplotlib is not installed (pip install matplotlib)")
    if plans:
        _ensure_ours(out / "plots", PLOTS_MARKER, "")
    markdown = render_markdown(board, plans)
    frame = board_dataframe(board)

    out.mkdir(parents=True, exist_ok=True)
    stale = remove_stale_builds(out)
    if stale:
        notes.append(f"removed {len(stale)} temporary folder{'s' if len(stale) > 1 else ''} of interrupted builds")
    staging = Path(tempfile.mkdtemp(dir=out, prefix=f"{_STAGING_PREFIX}{_host_tag()}-{os.getpid()}-", suffix=".tmp"))
    try:
        _stage_board(staging, board, plans, markdown, frame, in_place=in_place)
        entry_files = _move_staged(staging, out, plans, in_place=in_place)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    written = [out / "entries" / p for p in entry_files]
    written += [out / name for name in BOARD_FILES]
    if plans:
        written += [out / "plots" / p.filename for p in plans] + [out / "plots" / PLOTS_MARKER]
    if in_place:
        notes.insert(0, f"{out / 'entries'} is a source: left as it is; the board links to the entry files there")
    if not include_reported:
        notes.append("reported paper rows left out (include_reported=False)")
    if board.hidden_not_zero_shot:
        notes.append(f"{board.hidden_not_zero_shot} entries left out: their backbone is not zero-shot (--zero-shot-only)")

    return BuildReport(
        out_dir=out,
        files=tuple(written),
        n_entries=len(board.entries),
        n_tables=len(board.tables),
        problems=(*collection.problems, *board.problems),
        notes=tuple(notes),
        board=board,
    )
