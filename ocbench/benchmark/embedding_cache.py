"""The embedding cache: keys, shards, manifests and the image files' change records.

The layout and the rules (what the key hashes, resuming at the first missing shard, the changed-file
check) are described in :mod:`ocbench.benchmark.embeddings`, which computes the missing shards
(:mod:`ocbench.benchmark.embedding_compute`) and takes the lock; this module only reads, checks and
writes what is on disk.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ocbench import paths
from ocbench._io import atomic_path, atomic_write, json_sha256, sha256_bytes, sha256_file, slug
from ocbench.backbones.adapters import ChannelAdapter
from ocbench.backbones.card import BackboneCard
from ocbench.data.content import FileRecord, file_record, stat_key
from ocbench.errors import DataError, OcbenchError

#: Bump when the shard layout or the meaning of stored features changes: old caches become misses.
EMBEDDING_FORMAT_VERSION = 1

MANIFEST_NAME = "manifest.json"
_SHARD_PATTERN = re.compile(r"^shard-(\d{8})\.safetensors$")
_FEATURES = "features"
#: How many changed file names a warning or ``meta["changed_files"]`` lists.
_NAMED_CHANGES = 5


@dataclasses.dataclass(frozen=True, eq=False)
class Embeddings:
    """Features of every item (FOV) of a dataset, in dataset order.

    ``meta`` holds: backbone, weights_sha256, revision, adapter, preprocess, precision,
    dataset_version, n, dim, wall_time_s, images_per_s, device, cache_hit, plus
    extraction_device, n_computed, n_reused, batch_size, num_workers, format_version, ocbench,
    created; the weights' provenance (weights_verified, weights_note, weights_source_sha256,
    weights_source_file; see ``BackboneIdentity``); and the image-file check: content_checked
    (False for datasets whose items are not files), n_changed_files and changed_files (the first
    few names) for files whose content changed since their features were cached (computed again).
    ``device`` is where this call resolved ``device`` to (where downstream work should run). On a
    cache hit, ``wall_time_s``/``images_per_s``/``extraction_device`` describe the run that
    computed the features and ``load_time_s`` is the time taken to read them back.
    """

    features: np.ndarray  # (N, D) float32, row i is fov_ids[i]
    fov_ids: list[str]
    key: str
    meta: dict[str, Any]

    def __len__(self) -> int:
        return len(self.fov_ids)

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])


# --------------------------------------------------------------------------------------------
# Key and location


def embedding_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder holding one sub-folder per embedding key (default ``<ocbench cache>/embeddings``)."""
    return Path(cache_dir).expanduser() if cache_dir is not None else paths.cache_dir() / "embeddings"


def cache_key(
    *,
    dataset_version: str,
    backbone_name: str,
    weights_sha256: str | None,
    revision: str | None,
    adapter_key: str,
    preprocess_key: str,
    card_sha256: str | None = None,
    precision: str = "fp32",
) -> str:
    """``<backbone>__<adapter>__<hash16>``: hash of everything that changes the features.

    ``card_sha256`` covers the architecture (a random-init card has no weights to hash);
    ``precision`` separates bf16-autocast (GPU) features from float32 ones.
    """
    return _key_of(
        _identity_dict(
            dataset_version, backbone_name, weights_sha256, revision, adapter_key, preprocess_key, card_sha256, precision
        )
    )


def _key_of(identity: dict) -> str:
    return f"{slug(identity['backbone'])}__{slug(identity['adapter'])}__{json_sha256(identity)[:16]}"


def _identity_dict(
    dataset_version, backbone_name, weights_sha256, revision, adapter_key, preprocess_key, card_sha256, precision
) -> dict:
    return {
        "card_sha256": card_sha256,
        "precision": precision,
        "format_version": EMBEDDING_FORMAT_VERSION,
        "dataset_version": dataset_version,
        "backbone": backbone_name,
        "weights_sha256": weights_sha256,
        "revision": revision,
        "adapter": adapter_key,
        "preprocess": preprocess_key,
    }


#: ``precision`` as it enters the key: bf16 keeps the name older releases used for their (always
#: bf16-autocast) GPU features, so those caches still hit.
_KEY_PRECISION = {"fp32": "fp32", "bf16": "bf16-autocast"}


# --------------------------------------------------------------------------------------------
# Image files: what each cached item was computed from

# Per item a FileRecord: [size, mtime_ns, ctime_ns, sha256 of the file's bytes] (None when not a
# file), the record ocbench.data.content keeps for a dataset's files. ctime too: a tool that
# restores mtime after writing (cp -p, rsync -t) cannot restore ctime.


def _known_record(dataset, index: int, stat: os.stat_result) -> FileRecord | None:
    """The dataset's own record of item ``index``'s file (``dataset.content``, hashed when the
    dataset was listed) when the file is still as it was then: it is not read and hashed again."""
    content = getattr(dataset, "content", None)
    if content is None or not callable(getattr(content, "record", None)):
        return None
    record = content.record(index)
    return record if tuple(record[:3]) == stat_key(stat) else None


def _is_file_backed(dataset) -> bool:
    return callable(getattr(dataset, "path", None))


def _check_files(dataset, records: Sequence[FileRecord | None], indices: Sequence[int]) -> tuple[list[int], dict[int, FileRecord]]:
    """Items among ``indices`` whose file content differs from ``records`` (changed), and new
    records for files only touched since (same content, other times)."""
    changed: list[int] = []
    refreshed: dict[int, FileRecord] = {}
    for i in indices:
        record = records[i]
        path = Path(dataset.path(i))
        try:
            stat = os.stat(path)
        except OSError:
            changed.append(i)  # gone: computing it again reports the file in the reader's words
            continue
        if record is not None and list(stat_key(stat)) == list(record[:3]):
            continue
        new = _known_record(dataset, i, stat)
        if new is None:
            try:
                new = file_record(path.read_bytes(), stat)
            except OSError:
                changed.append(i)
                continue
        if record is not None and new[3] == record[3]:
            refreshed[i] = new
        else:
            changed.append(i)
    return changed, refreshed


def _warn_changed(dataset, changed: Sequence[int], key_dir: Path) -> list[str]:
    names = [Path(dataset.path(i)).name for i in changed[:_NAMED_CHANGES]]
    more = f" and {len(changed) - len(names)} more" if len(changed) > len(names) else ""
    warnings.warn(
        f"{len(changed)} image file(s) changed since their embeddings were cached in {key_dir} "
        f"({', '.join(names)}{more}); computing those again",
        stacklevel=3,
    )
    return names


# --------------------------------------------------------------------------------------------
# Shards


def _shard_name(start: int) -> str:
    return f"shard-{start:08d}.safetensors"


def _cache_write_error(path: Path, exc: BaseException) -> OcbenchError:
    """Disk full, read-only or vanished cache folder: one line naming the path."""
    text = str(exc).strip()
    reason = (exc.strerror if isinstance(exc, OSError) else None) or (text.splitlines()[0] if text else type(exc).__name__)
    return OcbenchError(
        f"{path}: could not write the embedding cache ({reason}); free space on that disk, or use another cache "
        "folder (ocbench --cache-dir DIR ...)"
    )


def _write_shard(
    path: Path, features: np.ndarray, fov_ids: Sequence[str], start: int, key: str, files: Sequence[FileRecord | None]
) -> str:
    """Write one shard atomically; returns the file's sha256 (recorded in the manifest)."""
    from safetensors import SafetensorError
    from safetensors.numpy import save_file

    features = np.ascontiguousarray(features, dtype=np.float32)
    metadata = {
        "ocbench_embedding_format": str(EMBEDDING_FORMAT_VERSION),
        "key": key,
        "start": str(start),
        "stop": str(start + len(fov_ids)),
        "fov_ids": json.dumps(list(fov_ids)),
        "features_sha256": sha256_bytes(features.tobytes()),
        "files": json.dumps(list(files)),
    }
    try:
        with atomic_path(path) as tmp:
            save_file({_FEATURES: features}, str(tmp), metadata=metadata)
        return sha256_file(path)
    except (OSError, SafetensorError) as exc:  # safetensors reports a full disk as a SafetensorError
        raise _cache_write_error(path, exc) from None


def _corrupt(path: Path, why: str, key_dir: Path | None = None) -> DataError:
    folder = key_dir if key_dir is not None else path.parent
    return DataError(
        f"embedding cache {path} is corrupt ({why}); delete the folder {folder} (or pass --recompute) to extract again"
    )


@dataclasses.dataclass(frozen=True)
class _Shard:
    path: Path
    start: int
    stop: int
    fov_ids: tuple[str, ...]
    features: np.ndarray
    files: tuple[FileRecord | None, ...] | None  # None: written before file records existed


def _read_shard(path: Path, key: str) -> _Shard:
    """Load and verify one shard (header, metadata, feature checksum)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as fh:
            metadata = fh.metadata() or {}
            features = fh.get_tensor(_FEATURES)
    except Exception as exc:  # safetensors raises several types for truncated/garbled files
        raise _corrupt(path, f"unreadable: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    try:
        start, stop = int(metadata["start"]), int(metadata["stop"])
        fov_ids = tuple(json.loads(metadata["fov_ids"]))
        checksum = metadata["features_sha256"]
        shard_key = metadata["key"]
        files = tuple(json.loads(metadata["files"])) if "files" in metadata else None
    except (KeyError, ValueError, TypeError) as exc:
        raise _corrupt(path, f"bad metadata: {exc}") from None
    if shard_key != key:
        raise _corrupt(path, f"belongs to key {shard_key}")
    if features.dtype != np.float32 or features.ndim != 2 or features.shape[0] != stop - start or len(fov_ids) != stop - start:
        raise _corrupt(path, f"features {features.dtype}{tuple(features.shape)} do not match range [{start}, {stop})")
    if files is not None and len(files) != stop - start:
        raise _corrupt(path, f"{len(files)} file records for range [{start}, {stop})")
    if sha256_bytes(np.ascontiguousarray(features).tobytes()) != checksum:
        raise _corrupt(path, "feature checksum mismatch")
    return _Shard(path, start, stop, fov_ids, features, files)


def _existing_shards(key_dir: Path) -> dict[int, Path]:
    if not key_dir.is_dir():
        return {}
    found = {}
    for entry in key_dir.iterdir():
        match = _SHARD_PATTERN.match(entry.name)
        if match:
            found[int(match.group(1))] = entry
    return found


def _plan_shards(n: int, reusable: dict[int, int], shard_size: int) -> list[tuple[int, int]]:
    """Ranges [start, stop) still to compute.

    ``reusable`` maps the start of each shard already on disk to its stop. Walking from 0, a shard
    found at the current position is reused; otherwise a new range is cut at ``shard_size`` or just
    before the next shard on disk (so a rerun with another ``shard_size`` still reuses old work).
    """
    todo: list[tuple[int, int]] = []
    starts = sorted(reusable)
    pos = 0
    while pos < n:
        if pos in reusable and reusable[pos] > pos:
            pos = reusable[pos]
            continue
        next_on_disk = min((s for s in starts if s > pos), default=n)
        stop = min(pos + shard_size, next_on_disk, n)
        todo.append((pos, stop))
        pos = stop
    return todo


# --------------------------------------------------------------------------------------------
# Reading a finished cache


def _read_manifest(key_dir: Path) -> dict:
    path = key_dir / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        manifest["shards"], manifest["meta"], manifest["fov_ids"]  # noqa: B018 - presence check
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(
            f"embedding cache manifest {path} is unreadable ({type(exc).__name__}); delete the folder {key_dir} "
            "(or pass --recompute) to extract again"
        ) from None
    return manifest


def _load_complete(key_dir: Path, key: str, fov_ids: Sequence[str], manifest: dict) -> np.ndarray:
    if list(manifest["fov_ids"]) != list(fov_ids):
        raise DataError(
            f"embedding cache {key_dir} lists other items than the dataset; delete the folder {key_dir} "
            "(or pass --recompute) to extract again"
        )
    parts, pos = [], 0
    for entry in manifest["shards"]:
        path = key_dir / entry["file"]
        if not path.is_file():
            raise _corrupt(path, "missing", key_dir)
        if sha256_file(path) != entry["sha256"]:
            raise _corrupt(path, "file sha256 differs from manifest", key_dir)
        shard = _read_shard(path, key)
        if shard.start != pos or list(shard.fov_ids) != list(fov_ids[shard.start : shard.stop]):
            raise _corrupt(path, f"range [{shard.start}, {shard.stop}) does not continue at {pos}", key_dir)
        parts.append(shard.features)
        pos = shard.stop
    if pos != len(fov_ids):
        raise DataError(
            f"embedding cache {key_dir} covers {pos} of {len(fov_ids)} items; delete the folder {key_dir} "
            "(or pass --recompute) to extract again"
        )
    return np.concatenate(parts, axis=0)


def _write_manifest(key_dir: Path, manifest: dict) -> None:
    path = key_dir / MANIFEST_NAME
    try:
        with atomic_write(path) as fh:  # the "complete" marker: written last
            json.dump(manifest, fh, indent=1)
    except OSError as exc:
        raise _cache_write_error(path, exc) from None


def _drop_stale_complete(dataset, key_dir: Path, manifest: dict, n: int) -> tuple[list[int], list[str], bool]:
    """Check a finished cache's image files. Returns (changed item indices, their first names,
    whether the cache is still complete); removes the manifest and the shards holding changed
    items when it is not, and records new times for files only touched."""
    records = manifest.get("files")
    if records is None or len(records) != n:
        warnings.warn(
            f"{key_dir} was cached without image-file checksums (an older ocbench); extracting again once",
            stacklevel=3,
        )
        shutil.rmtree(key_dir)
        return [], [], False
    changed, refreshed = _check_files(dataset, records, range(n))
    if changed:
        names = _warn_changed(dataset, changed, key_dir)
        (key_dir / MANIFEST_NAME).unlink()
        hit = set(changed)
        for entry in manifest["shards"]:
            first = int(entry.get("start", 0))
            stop = int(entry.get("stop", first))
            if any(first <= i < stop for i in hit):
                (key_dir / entry["file"]).unlink(missing_ok=True)
        return changed, names, False
    if refreshed:
        for i, record in refreshed.items():
            records[i] = record
        _write_manifest(key_dir, manifest)
    return [], [], True


# --------------------------------------------------------------------------------------------
# What rank 0 finds in a key's folder


@dataclasses.dataclass
class _CacheScan:
    """What rank 0 found in a key's cache folder: a complete manifest, or the shards it reuses and
    the ranges still to compute."""

    complete: dict | None = None
    todo: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    done: dict[int, "_Shard"] = dataclasses.field(default_factory=dict)
    refreshed: dict[int, FileRecord] = dataclasses.field(default_factory=dict)
    changed: list[int] = dataclasses.field(default_factory=list)
    changed_names: list[str] = dataclasses.field(default_factory=list)


def _scan_cache(dataset, key: str, key_dir: Path, fov_ids: list[str], hashed: bool, recompute: bool,
                shard_size: int) -> _CacheScan:
    n = len(fov_ids)
    scan = _CacheScan()
    if recompute and key_dir.exists():
        shutil.rmtree(key_dir)
    if (key_dir / MANIFEST_NAME).is_file():
        manifest = _read_manifest(key_dir)
        complete = True
        if hashed:
            scan.changed, scan.changed_names, complete = _drop_stale_complete(dataset, key_dir, manifest, n)
        if complete:
            scan.complete = manifest
            return scan

    # Resume: shards already on disk are reused where they line up with the dataset and their
    # image files are unchanged.
    reusable: dict[int, Path] = {}
    stops: dict[int, int] = {}
    for start, path in sorted(_existing_shards(key_dir).items()):
        stop, files = _shard_header(path)
        if not 0 <= start < stop <= n:
            continue
        if hashed:
            if files is None or len(files) != stop - start:
                path.unlink(missing_ok=True)  # no file records (an older ocbench): compute again
                continue
            records: list = [None] * n
            records[start:stop] = files
            shard_changed, shard_refreshed = _check_files(dataset, records, range(start, stop))
            if shard_changed:
                scan.changed.extend(shard_changed)
                path.unlink(missing_ok=True)
                continue
            scan.refreshed.update(shard_refreshed)
        reusable[start], stops[start] = path, stop
    if scan.changed and not scan.changed_names:
        scan.changed_names = _warn_changed(dataset, sorted(set(scan.changed)), key_dir)
    scan.todo = _plan_shards(n, stops, shard_size)
    todo_stops = dict(scan.todo)
    pos = 0
    while pos < n:  # load (and verify) exactly the shards the plan reuses
        if pos in todo_stops:
            pos = todo_stops[pos]
            continue
        shard = _read_shard(reusable[pos], key)
        if list(shard.fov_ids) != fov_ids[shard.start : shard.stop]:
            raise _corrupt(shard.path, "its item ids differ from the dataset's", key_dir)
        scan.done[pos] = shard
        pos = shard.stop
    return scan


def _cached_result(manifest: dict, *, dataset, card: BackboneCard, adapter: ChannelAdapter, fov_ids: list[str],
                   key: str, key_dir: Path, ident: dict, started: float, device_name: str, precision: str,
                   hashed: bool) -> Embeddings:
    """The embeddings a complete manifest lists (a cache hit)."""
    features = _load_complete(key_dir, key, fov_ids, manifest)
    meta = {
        **manifest["meta"],
        **ident["provenance"],  # as known now (a card may have pinned a checksum since)
        "precision": precision,
        "content_checked": hashed,
        "n_changed_files": 0,
        "changed_files": [],
        "cache_hit": True,
        "load_time_s": round(time.perf_counter() - started, 4),
        # Where downstream work (the task) should run now; the extraction's device stays recorded.
        "device": device_name,
    }
    expected_dim = card.feature_dim * adapter.n_views
    if features.shape[1] != expected_dim:
        raise _corrupt(key_dir / MANIFEST_NAME, f"it holds {features.shape[1]}-dim features, the card gives {expected_dim}")
    return Embeddings(features=features, fov_ids=fov_ids, key=key, meta=meta)


def _shard_header(path: Path) -> tuple[int, list | None]:
    """A shard's ``stop`` and file records, from its header only (cheap); unreadable shards are reported."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as fh:
            metadata = fh.metadata() or {}
        files = json.loads(metadata["files"]) if "files" in metadata else None
        return int(metadata["stop"]), files if isinstance(files, list) else None
    except Exception as exc:
        raise _corrupt(path, f"unreadable header: {type(exc).__name__}") from None


def _remove_leftovers(key_dir: Path, keep: set[str]) -> None:
    # Shards from an earlier run with another shard_size, and temp files of a killed writer.
    for entry in key_dir.iterdir():
        stale_shard = _SHARD_PATTERN.match(entry.name) and entry.name not in keep
        stale_temp = entry.name.startswith(".shard-") and entry.name.endswith(".tmp")
        if stale_shard or stale_temp:
            entry.unlink(missing_ok=True)
