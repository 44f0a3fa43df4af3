"""Collect entry files from folders, single files or a Hugging Face dataset repo, and validate them.

A bad file never stops the others: it becomes one problem line (file, field, what to do) and is
skipped. A source that does not exist at all is an error, since that is a typo, not bad data.

Sources:

- a folder: every ``*.json`` below it (recursively; hidden files and folders are ignored, and so
  are ocbench split files, which ``ocbench run`` keeps beside its entries);
- a file: that one entry;
- ``hf:ORG/NAME[@REVISION]`` or ``hf://datasets/ORG/NAME[@REVISION]``: the ``*.json`` files of a
  Hub dataset repo, fetched with ``huggingface_hub.snapshot_download``. Offline
  (``HF_HUB_OFFLINE=1``, or no network) it uses the cached snapshot from the last download.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from ocbench._io import read_json_bytes, sha256_bytes
from ocbench.benchmark.entry import Entry, entry_from_dict
from ocbench.errors import DataError
from ocbench.leaderboard.grouping import dedupe_entries
from ocbench.predictions import load_kept_predictions

__all__ = [
    "LoadedEntry",
    "Collection",
    "collect_entries",
    "validate_entries",
    "unreadable_predictions",
    "duplicate_problems",
    "no_entries_message",
    "parse_hub_source",
]

Source = str | os.PathLike
#: JSON files of this format (ocbench split files, ``benchmark/splits.py``) are skipped silently.
_SPLIT_FORMAT_PREFIX = "ocbench-split/"


@dataclass(frozen=True)
class LoadedEntry:
    """A valid entry plus where it came from."""

    entry: Entry
    path: Path  # the file on disk (inside the Hub cache for Hub sources)
    name: str  # the source plus the file's path inside it, POSIX (what problem lines show)
    source: str  # the source as given (folder, file or hf:...)
    sha256: str  # of the file's bytes
    raw: bytes  # the file's bytes, copied verbatim into a board's entries/
    schema_version: int  # the version the file was written with (before any upgrade)
    predictions: Any = None  # ocbench.predictions.Predictions kept beside it, checked against its scores
    predictions_note: str = ""  # why there are none, when the entry names a file it could not read


@dataclass(frozen=True)
class Collection:
    entries: tuple[LoadedEntry, ...]
    problems: tuple[str, ...]  # one line per skipped file
    files_seen: int
    ignored: tuple[str, ...] = ()  # split files found among the entries (not entries, not problems)


def parse_hub_source(source: str) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` for a Hub source string, else None."""
    for prefix in ("hf://datasets/", "hf:"):
        if source.startswith(prefix):
            rest = source[len(prefix) :].strip("/")
            repo_id, _, revision = rest.partition("@")
            if repo_id.count("/") != 1 or not all(repo_id.split("/")):
                raise DataError(f"{source}: a Hub source looks like hf:ORG/NAME or hf:ORG/NAME@REVISION")
            return repo_id, revision or None
    return None


def _snapshot(source: str, repo_id: str, revision: str | None) -> Path:
    """Local folder of the repo's JSON files (and the predictions kept beside entries, which the
    board's intervals and tie groups read); falls back to the cached snapshot when offline."""
    from huggingface_hub import snapshot_download

    kwargs = dict(repo_id=repo_id, repo_type="dataset", revision=revision, allow_patterns=["*.json", "*.predictions.npz"])
    try:
        return Path(snapshot_download(**kwargs))
    except Exception as exc:  # network down, repo missing, auth: try the cache before giving up
        first_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip()
        try:
            return Path(snapshot_download(**kwargs, local_files_only=True))
        except Exception:
            raise DataError(
                f"{source}: cannot fetch the Hub dataset repo {repo_id} ({first_error}) and no cached copy "
                "exists; check the name, your network and HF_TOKEN for private repos"
            ) from None


def _files_of(source: Source) -> list[tuple[Path, str]]:
    """``(path, shown name)`` of every candidate file of one source; DataError if it does not exist."""
    label = os.fspath(source)
    hub = parse_hub_source(label) if isinstance(source, str) else None
    root = _snapshot(label, *hub) if hub else Path(source)
    if root.is_file():
        return [(root, label)]
    if not root.is_dir():
        raise DataError(f"{label}: no such entry file or folder; give a folder of entry JSON files, a file, or hf:ORG/NAME")
    files = []
    for path in sorted(root.rglob("*.json")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):  # editor/temp files, the Hub's .cache
            continue
        files.append((path, f"{label.rstrip('/')}/{rel.as_posix()}"))
    return files


def _load_one(path: Path, shown: str, label: str) -> LoadedEntry | None:
    data, raw = read_json_bytes(path, shown=shown, what="entry", advice="fix or delete the file")
    if isinstance(data, dict) and str(data.get("format", "")).startswith(_SPLIT_FORMAT_PREFIX):
        return None  # a split file the runner keeps beside its entries: evidence, not an entry
    entry = entry_from_dict(data, source=shown)
    # scores that disagree with the entry's own predictions are a DataError: the file is refused
    predictions, note = load_kept_predictions(entry, path) if entry.predictions is not None else (None, "")
    return LoadedEntry(
        entry=entry,
        path=path,
        name=shown,
        source=label,
        sha256=sha256_bytes(raw),
        raw=raw,
        schema_version=int(data["schema_version"]),
        predictions=predictions,
        predictions_note=note.replace(f"{path.parent}/", "") if note else "",
    )


def collect_entries(sources: Sequence[Source] | Source) -> Collection:
    """Load every entry under ``sources``; bad files become problem lines and are skipped."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    entries: list[LoadedEntry] = []
    problems: list[str] = []
    ignored: list[str] = []
    seen_files: set[Path] = set()
    n_files = 0
    for source in sources:
        label = os.fspath(source)
        for path, shown in _files_of(source):
            resolved = path.resolve()
            if resolved in seen_files:  # the same file through two overlapping sources
                continue
            seen_files.add(resolved)
            n_files += 1
            try:
                loaded = _load_one(path, shown, label)
            except DataError as exc:
                problems.append(str(exc))
                continue
            if loaded is None:
                ignored.append(shown)
            else:
                entries.append(loaded)
    return Collection(tuple(entries), tuple(problems), n_files, tuple(ignored))


def no_entries_message(sources: Sequence[Source] | Source, collection: Collection) -> str:
    """The one-line error for sources holding no entry at all (an empty or wrong folder)."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    where = ", ".join(os.fspath(s) for s in sources) or "(no sources given)"
    seen = f"{collection.files_seen} JSON file{'s' if collection.files_seen != 1 else ''}"
    if collection.problems:
        return f"{where}: no valid entry ({seen}, all invalid; first: {collection.problems[0]})"
    split_note = f", {len(collection.ignored)} of them split files" if collection.ignored else ""
    return (
        f"{where}: no entries found ({seen}{split_note}); give the folder `ocbench run --output` wrote "
        "its entry JSON files into"
    )


def validate_entries(sources: Sequence[Source] | Source) -> list[str]:
    """Problem lines for every invalid file under ``sources`` (empty: all valid).

    Besides per-file problems, entries that would collide on a board (same key, dataset, split and
    protocol) are reported, since only one of them can be shown. Sources holding no file at all
    that could be an entry are a DataError: "all valid" would hide a wrong path.
    """
    collection = collect_entries(sources)
    if not collection.entries and not collection.problems:
        raise DataError(no_entries_message(sources, collection))
    return [*collection.problems, *unreadable_predictions(collection.entries), *duplicate_problems(collection.entries)]


def unreadable_predictions(entries: Iterable[LoadedEntry]) -> list[str]:
    """One line per entry whose predictions file is missing or damaged."""
    return [
        f"{e.name}: {e.predictions_note} (a board shows this entry without its interval)"
        for e in entries
        if e.entry.predictions is not None and e.predictions is None
    ]


def duplicate_problems(entries: Iterable[LoadedEntry]) -> list[str]:
    """One line per entry that is shadowed by a newer one with the same identity."""
    return dedupe_entries(list(entries))[1]
