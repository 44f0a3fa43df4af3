"""What a dataset's files hold: per file its size, times and sha256, and one digest of them all.

A dataset's identity must cover its pixels: a re-export that rewrites every image while keeping
names, byte sizes and modification times must not be taken for the data a saved result was
computed from. :func:`read_content` gives the :class:`DataContent` of a list of files under a
root, once per dataset: every consumer (the dataset version, the embedding and mask caches, the
fine-tuning run) reads the record from it instead of hashing the files again.

Each file's record is ``[size, mtime_ns, ctime_ns, sha256]`` (:data:`FileRecord`, the same record
the embedding cache keeps per item). Records are remembered in ``ocbench-content.json`` beside the
dataset's manifest (in the ocbench cache when the data folder is read-only), so a later listing
only ``stat``\\ s the files: a file is hashed again only when its size or times differ. The ctime
counts too: a tool that restores the mtime after writing (``cp -p``, ``rsync -t``, ``os.utime``)
cannot restore it. The :attr:`DataContent.digest` hashes each file's name, size and sha256 (not
its times: a file only touched keeps the digest), so a copy of the data elsewhere has the same one.

The store also remembers the per-file sha256 of the last few digests, so a consumer holding an
older digest can say how many files changed since (:meth:`DataContent.changed_since`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ocbench import paths
from ocbench._io import atomic_write, json_sha256, read_json_or_none, sha256_bytes
from ocbench.errors import DataError

__all__ = ["CONTENT_NAME", "FileRecord", "DataContent", "read_content", "stat_key", "file_record", "listing_version",
           "combined_version"]

#: Written beside the dataset's manifest: the remembered file records.
CONTENT_NAME = "ocbench-content.json"
_FORMAT = 1
#: How many earlier digests the store remembers file by file (to count changed files).
_KEEP_DIGESTS = 4
#: Per file: [size, mtime_ns, ctime_ns, sha256 of its bytes].
FileRecord = list


def stat_key(stat: os.stat_result) -> tuple[int, int, int]:
    """What a ``stat`` says about a file's content without reading it: size, mtime and ctime."""
    return (int(stat.st_size), int(stat.st_mtime_ns), int(stat.st_ctime_ns))


def file_record(data: bytes, stat: os.stat_result) -> FileRecord:
    """The record of a file whose bytes ``data`` were read while it had ``stat``."""
    return [*stat_key(stat), hashlib.sha256(data).hexdigest()]


def _hash_file(path: Path) -> FileRecord:
    """Read and hash one file; a file that changes while being read is read again."""
    for _ in range(3):
        try:
            before = os.stat(path)
            digest = hashlib.sha256()
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
            after = os.stat(path)
        except OSError as exc:
            if os.path.islink(path) and not os.path.exists(path):
                raise DataError(f"{path}: a symbolic link to {os.readlink(path)}, which does not exist; fix or remove the link") from None
            raise DataError(f"{path}: cannot read the file ({exc.strerror or exc}); list the dataset again") from None
        if stat_key(before) == stat_key(after):
            return [*stat_key(after), digest.hexdigest()]
    raise DataError(f"{path}: the file changed while it was being read; run again once nothing writes to it")


def _digest(relpaths: Sequence[str], records: Sequence[FileRecord]) -> str:
    lines = "".join(f"{rel}\t{rec[0]}\t{rec[3]}\n" for rel, rec in zip(relpaths, records))
    return sha256_bytes(lines.encode("utf-8"))


@dataclass(frozen=True, eq=False)
class DataContent:
    """The content record of a dataset's files, in the dataset's item order.

    ``relpaths``: each item's file, relative to the root; ``records``: its :data:`FileRecord`;
    ``digest``: sha256 over every file's name, size and sha256; ``n_hashed``: files read and
    hashed by this call (the others' records were remembered); ``seconds``: time it took;
    ``store``: where the records are remembered (None: not saved).
    """

    root: Path
    relpaths: tuple[str, ...]
    records: tuple[tuple[int, int, int, str], ...]
    digest: str
    n_hashed: int
    seconds: float
    store: Path | None
    _seen: dict[str, dict[str, str]] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.records)

    def record(self, i: int) -> FileRecord:
        return list(self.records[i])

    def sha256(self, i: int) -> str:
        return self.records[i][3]

    def subset(self, indices: Sequence[int]) -> "DataContent":
        """The record of some items only (e.g. the images a fine-tuning run trains on)."""
        relpaths = tuple(self.relpaths[int(i)] for i in indices)
        records = tuple(self.records[int(i)] for i in indices)
        return DataContent(self.root, relpaths, records, _digest(relpaths, records), 0, 0.0, None, {})

    def by_file(self) -> dict[str, str]:
        """``{relpath: sha256}``: what a consumer stores to count changed files later."""
        return dict(zip(self.relpaths, (r[3] for r in self.records)))

    def changed_files(self, then: dict[str, str]) -> list[str]:
        """Files (relative paths) whose content differs from ``then`` (``by_file()`` of an earlier
        record), including files added or removed since."""
        now = self.by_file()
        changed = [rel for rel, sha in now.items() if not (then.get(rel) and sha.startswith(str(then[rel])))]
        return changed + sorted(set(then) - set(now))

    def changed_since(self, digest: str) -> list[str] | None:
        """Files whose content differs from the record whose digest was ``digest``; None when that
        record is not remembered (another copy of the data, or too long ago)."""
        if digest == self.digest:
            return []
        then = self._seen.get(digest)
        return None if then is None else self.changed_files(then)

    def changed_since_version(self, listing: str, version: str) -> list[str] | None:
        """Files whose content changed since a dataset of listing version ``listing`` had the
        :func:`combined_version` ``version``; None when ``version`` is not a remembered state of
        this listing (other items or labels, another copy of the data, or too long ago)."""
        for digest in [self.digest, *self._seen]:
            if combined_version(listing, digest) == version:
                return self.changed_since(digest)
        return None


def _store_paths(root: Path) -> list[Path]:
    """Where the records may be kept: beside the manifest, else in the ocbench cache."""
    try:
        resolved = str(root.resolve())
    except OSError:
        resolved = str(root)
    return [root / CONTENT_NAME, paths.cache_dir() / "content" / f"{sha256_bytes(resolved.encode())[:16]}.json"]


def _load_store(candidates: Sequence[Path]) -> tuple[dict, Path | None]:
    for path in candidates:
        data = read_json_or_none(path, dict)  # None: none yet, or damaged, and the files are hashed again
        if data is not None and data.get("format") == _FORMAT and isinstance(data.get("files"), dict):
            return data, path
    return {}, None


def read_content(root: str | os.PathLike, relpaths: Sequence[str], *, save: bool = True) -> DataContent:
    """The content record of the files ``relpaths`` (relative to ``root``), in that order.

    Files whose size and times match the remembered record are not read; the others are hashed.
    ``save``: remember the records (beside the data, or in the ocbench cache when the data folder
    cannot be written); False only reads what is remembered.
    """
    started = time.perf_counter()
    root = Path(root)
    candidates = _store_paths(root)
    stored, found_at = _load_store(candidates)
    known: dict[str, Any] = stored.get("files", {})
    seen: dict[str, dict[str, str]] = {d: f for d, f in (stored.get("seen") or {}).items() if isinstance(f, dict)}
    records: list[tuple[int, int, int, str]] = []
    hashed = 0
    for rel in relpaths:
        path = root / rel
        old = known.get(rel)
        try:
            now = stat_key(os.stat(path))
        except OSError:
            now = None  # _hash_file says why in one line
        if now is not None and isinstance(old, list) and len(old) == 4 and tuple(old[:3]) == now:
            records.append((*now, str(old[3])))
            continue
        record = _hash_file(path)
        hashed += 1
        records.append(tuple(record))
    relpaths = tuple(relpaths)
    digest = _digest(relpaths, records)
    earlier = {d: f for d, f in seen.items() if d != digest}
    store = None
    if save and (hashed or digest not in seen or found_at is None):
        files = {**known, **{rel: list(rec) for rel, rec in zip(relpaths, records)}}
        keep = dict(list(earlier.items())[-(_KEEP_DIGESTS - 1):])
        keep[digest] = {rel: rec[3][:16] for rel, rec in zip(relpaths, records)}
        payload = {"format": _FORMAT, "root": str(root), "digest": digest, "files": files, "seen": keep}
        for path in ([found_at] if found_at is not None else []) + [p for p in candidates if p != found_at]:
            try:
                with atomic_write(path) as fh:
                    json.dump(payload, fh, separators=(",", ":"))
            except OSError:
                continue  # a read-only data folder: the next place
            store = path
            break
    elif found_at is not None:
        store = found_at
    return DataContent(root, relpaths, tuple(records), digest, hashed, time.perf_counter() - started, store, earlier)


def listing_version(dataset: Any) -> str:
    """The version of a dataset's listing (item names, paths, labels) without its files' content:
    what splits and the embedding cache's key are made for (the cache checks each item's content
    itself). Datasets that do not tell them apart give their ``version``."""
    return str(getattr(dataset, "manifest_version", None) or dataset.version)


def combined_version(listing: str, content_digest: str) -> str:
    """A dataset's version: its listing and its files' content, in one sha256."""
    return json_sha256({"listing": listing, "content": content_digest})
