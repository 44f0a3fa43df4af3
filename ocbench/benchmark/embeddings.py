"""Cached embedding extraction: any backbone becomes a function from dataset images to features.

One directory per cache key under ``<cache>/embeddings/``::

    <backbone>__<adapter>__<hash16>/
        shard-00000000.safetensors   features (n, D) float32 for items [start, stop) of the dataset
        shard-00000256.safetensors   ...
        manifest.json                written last: the "complete" marker, with meta and shard hashes
    .locks/<backbone>__<adapter>__<hash16>.lock   one process at a time per key (``ocbench._lock``)

The key hashes everything that changes the numbers: dataset listing (items and labels), backbone name, weights
sha256 and revision, channel adapter, preprocessing, precision and the on-disk format version.
Shards are written atomically as soon as they are full, so an interrupted run resumes at the first
missing shard. Once ``manifest.json`` exists, a second call reads the shards back and never loads
the model.

Each shard carries its item ids, its range and a sha256 of its feature bytes in the safetensors
metadata, so a truncated or altered shard is caught with a one-line :class:`DataError`.

**Image files changed since.** The key covers the dataset's listing (ids, paths, labels), not the
pixels, so that a changed image recomputes only its shard. Every shard records, per item, the
image file's size, mtime, ctime and the sha256 of its bytes: the record the dataset keeps of its
files (``dataset.content``, see :mod:`ocbench.data.content`; hashed while the image is read for
datasets without one). A later call compares size and times of every file (a ``stat``, no
reading); a file whose size or times differ is compared by the dataset's record (else hashed again),
and if its content differs, the shards holding it are computed again, with a warning naming the
changed files (a file only touched gets its new times recorded). A cache without these records
(an older ocbench) is extracted again once. Datasets whose items are not files (no ``path(i)``)
are not checked (``meta["content_checked"]`` is False).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ocbench import __version__ as _ocbench_version
from ocbench import paths
from ocbench._io import atomic_path, atomic_write, json_sha256, sha256_bytes, sha256_file, slug
from ocbench._lock import file_lock
from ocbench.backbones.adapters import ChannelAdapter
from ocbench.backbones.card import BackboneCard
from ocbench.backbones.protocol import Backbone
from ocbench.benchmark import distributed
from ocbench.data.content import FileRecord, file_record, listing_version, stat_key
from ocbench.errors import ConfigError, DataError, OcbenchError

if TYPE_CHECKING:  # pragma: no cover
    from ocbench.backbones.loader import BackboneIdentity
    from ocbench.data.base import ItemSet

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


def _read_item(dataset, index: int, hashed: bool) -> tuple[np.ndarray, FileRecord | None]:
    """The image (via ``dataset.read``) and, for file-backed datasets, its file record.

    The file's bytes are read and hashed right before the reader decodes it (so the second read
    comes from the page cache); a file that changes in between is read again.
    """
    if not hashed:
        return np.ascontiguousarray(dataset.read(index)), None
    path = Path(dataset.path(index))
    for _ in range(3):
        try:
            before = os.stat(path)
            known = _known_record(dataset, index, before)
            data = None
            if known is None:
                with open(path, "rb") as fh:
                    data = fh.read()
        except FileNotFoundError:
            break  # the reader says it in its own words
        image = np.ascontiguousarray(dataset.read(index))
        after = os.stat(path)
        if stat_key(before) == stat_key(after) and (data is None or len(data) == after.st_size):
            return image, known if known is not None else file_record(data, after)
    image = np.ascontiguousarray(dataset.read(index))  # raises for a missing file
    raise DataError(f"{path}: the file changed while it was being read; run again once nothing writes to it")


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
# Data loading


class _Images:
    """torch-style map dataset: index -> (index, uint16 array (C,H,W), file record or None).

    User errors raised while reading (a bad TIFF) are returned, not raised, so that a DataLoader
    worker hands them back intact and the main process re-raises the one-line message. The file's
    bytes are hashed here, in the worker, while the image is read for the model anyway.
    """

    def __init__(self, dataset, hashed: bool):
        self.dataset = dataset
        self.hashed = hashed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            image, record = _read_item(self.dataset, index, self.hashed)
            return index, image, record
        except OcbenchError as exc:
            return index, exc, None


class _MixedSizes(Exception):
    """Two images of different sizes in one batch; the main process names their files."""

    def __init__(self, index_a: int, shape_a: tuple, index_b: int, image_b) -> None:
        super().__init__(index_a, shape_a, index_b, image_b.shape)

    def to_error(self, dataset) -> DataError:
        index_a, shape_a, index_b, shape_b = self.args
        return DataError(
            f"{dataset.path(index_b)}: image of shape {tuple(shape_b)} while {Path(dataset.path(index_a)).name} "
            f"in the same batch is {tuple(shape_a)}; pass --batch-size 1 for datasets with mixed image sizes"
        )


def _collate(items):
    """-> (indices, uint16 tensor (N,C,H,W), records), or (indices, error, records) for the main process to raise."""
    import torch

    indices = [i for i, _, _ in items]
    records = [record for _, _, record in items]
    for _, image, _ in items:
        if isinstance(image, BaseException):
            return indices, image, records
    first_index, first, _ = items[0]
    odd = next(((i, image) for i, image, _ in items if image.shape != first.shape), None)
    if odd is not None:
        return indices, _MixedSizes(first_index, first.shape, *odd), records
    return indices, torch.from_numpy(np.stack([image for _, image, _ in items])), records


def _batches(ranges: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    # Batches never straddle a shard boundary, so each shard is written as soon as its last batch is done.
    return [list(range(b, min(b + batch_size, stop))) for start, stop in ranges for b in range(start, stop, batch_size)]


# --------------------------------------------------------------------------------------------
# Backbone, adapter and identity


def _dataset_channels(dataset: "ItemSet") -> tuple[str, ...] | None:
    card = getattr(dataset, "card", None)  # a bare item set (a test's, a library caller's) may have none
    names = getattr(card, "channel_names", None)
    return tuple(names) if names else None


def _split_backbone(backbone: "BackboneCard | Backbone") -> tuple[BackboneCard, "Backbone | None"]:
    """-> (card, loaded Backbone or None) for a BackboneCard or an already loaded Backbone."""
    if isinstance(backbone, Backbone):  # tests, benchmarks, callers that reuse a model
        return backbone.card, backbone
    if isinstance(backbone, BackboneCard):
        return backbone, None
    raise ConfigError(f"backbone must be a BackboneCard or a loaded Backbone, not {type(backbone).__name__}")


def _check_adapter(adapter, card: BackboneCard, dataset) -> ChannelAdapter:
    if not isinstance(adapter, ChannelAdapter):
        raise ConfigError(f"channels must be a ChannelAdapter (see parse_channels), not {type(adapter).__name__}")
    if adapter.in_chans != card.in_chans:
        raise ConfigError(f"channel adapter {adapter.key} is for {adapter.in_chans} input channels; {card.name} has {card.in_chans}")
    channels = _dataset_channels(dataset)
    if channels is not None and tuple(c.lower() for c in channels) != tuple(c.lower() for c in adapter.channels):
        raise ConfigError(
            f"channel adapter {adapter.key} is for the channels {', '.join(adapter.channels)}; the dataset's are "
            f"{', '.join(channels)}: parse the spec with the dataset's channel names"
        )
    return adapter


def _backbone_identity(card: BackboneCard, loaded: "Backbone | None",
                       known: "BackboneIdentity | None" = None) -> "BackboneIdentity | None":
    """The card's identity for a backbone not loaded yet: ``known`` when the caller resolved it
    already (the runner does, once per backbone, so the weights are not hashed again for every
    cell), else resolved here, once, from the card and the local weight files (no model build: a
    cache hit never loads it); handed to the loader on a cache miss. None for a loaded backbone."""
    if loaded is not None or known is not None:
        return known if loaded is None else None
    from ocbench.backbones import loader

    return loader.resolve_identity(card)


def _identity_record(loaded: "Backbone | None", known: "BackboneIdentity | None") -> dict[str, Any]:
    """weights sha256, revision, preprocessing key and provenance, as the key and meta record them."""
    if loaded is not None:
        from ocbench.backbones import loader

        ident = loaded.identity
        provenance = ident.provenance() if ident is not None else loader.BackboneIdentity(None, None, "").provenance()
        return {"weights_sha256": loaded.weights_sha256, "revision": loaded.revision,
                "preprocess": loaded.preprocess_key, "provenance": provenance}
    assert known is not None
    return {"weights_sha256": known.weights_sha256, "revision": known.revision, "preprocess": known.preprocess_key,
            "provenance": known.provenance()}


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
# Extraction


def default_workers(device: str) -> int:
    """DataLoader workers when none are asked for: on a GPU, enough CPU processes to decode and
    scale images while the GPU runs the model (up to 8, leaving one core to the main process,
    sharing the node's cores with the other ranks); on CPU none, because the model already uses
    every core and a decoding process would only take one away from it."""
    if not str(device).startswith("cuda"):
        return 0
    from ocbench._cores import available_cores

    return max(0, min(8, available_cores() - 1))


def _check_counts(**counts: int | None) -> None:
    """batch_size and shard_size >= 1, num_workers >= 0 (None: the device's default)."""
    for name, value in counts.items():
        low = 0 if name == "num_workers" else 1
        if name == "num_workers" and value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")


def extract_embeddings(
    dataset: "ItemSet",
    backbone: "BackboneCard | Backbone",
    adapter: ChannelAdapter,
    *,
    batch_size: int = 16,
    device: str | None = "auto",
    num_workers: int | None = 0,
    cache_dir: str | os.PathLike | None = None,
    shard_size: int = 256,
    progress: bool = True,
    recompute: bool = False,
    precision: str = "fp32",
    lock_timeout: float | None = None,
    identity: "BackboneIdentity | None" = None,
) -> Embeddings:
    """Embed every item of ``dataset`` with ``backbone`` (cached; resumable); see the module docstring.

    ``dataset``: an :class:`~ocbench.data.base.ItemSet` (``ids``, ``version``, ``read(i)``, ``len``; ``path(i)`` for
    the changed-file check; ``card.channel_names``).
    ``backbone``: a BackboneCard, or an already loaded Backbone.
    ``adapter``: a ChannelAdapter for the dataset's channels (``parse_channels(spec, card, dataset.card)``).
    ``device``: "auto" (CUDA when available), "cpu", "cuda[:i]".
    ``num_workers``: DataLoader worker processes decoding (and hashing) images in parallel with the
    model; None: :func:`default_workers` for the device.
    ``cache_dir``: folder of embedding caches (default ``<ocbench cache>/embeddings``).
    ``shard_size``: items per shard; a killed run loses at most one shard of work.
    ``recompute``: delete this key's cache first and extract again.
    ``precision``: "fp32" (default) or "bf16" (autocast, CUDA only); part of the key, in ``meta``.
    ``lock_timeout``: seconds to wait for another process extracting the same key (None: as long as it takes).
    ``identity``: the card's ``resolve_identity`` result, when already known (skips hashing the weights again).

    Objects only: names (what a user typed) are resolved once, at the edge (the CLI, the runner).
    """
    started = time.perf_counter()
    _check_counts(batch_size=batch_size, shard_size=shard_size, num_workers=num_workers)
    card, loaded = _split_backbone(backbone)
    adapter = _check_adapter(adapter, card, dataset)
    from ocbench.backbones.loader import effective_precision, resolve_device

    device_name = str(loaded.device) if loaded is not None else str(resolve_device(device))
    used_precision = effective_precision(card, device_name, precision)
    if num_workers is None:
        num_workers = default_workers(device_name)
    if loaded is not None and loaded.precision != used_precision:
        raise ConfigError(
            f"backbone {card.name} was loaded with precision {loaded.precision}; pass precision={loaded.precision!r} "
            "or load it again"
        )
    fov_ids = list(dataset.ids)
    n = len(fov_ids)
    if n == 0:
        raise DataError("the dataset has no labelled items to embed; check its annotations file")
    known = _backbone_identity(card, loaded, identity)
    ident = _identity_record(loaded, known)
    # The listing, not the content: each item's file content is checked against its record, so a
    # changed image recomputes its own shard, not the whole key.
    dataset_version = listing_version(dataset)
    key_identity = _identity_dict(
        dataset_version, card.name, ident["weights_sha256"], ident["revision"], adapter.key, ident["preprocess"],
        card_sha256=json_sha256(card.extraction_dict(), default=str),
        precision=_KEY_PRECISION[used_precision],
    )
    key = _key_of(key_identity)
    root = embedding_cache_dir(cache_dir)
    key_dir = root / key
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _cache_write_error(root, exc) from None
    # Under torchrun only rank 0 takes the lock: it alone reads and changes the cache's state; the
    # other ranks write the shards rank 0 hands them (see ocbench.benchmark.distributed).
    main = distributed.world().main
    lock = file_lock(root / ".locks" / f"{key}.lock", timeout=lock_timeout, what=f"the embeddings {key}") if main else nullcontext()
    with lock:
        return _extract_locked(
            dataset, card, loaded, adapter, fov_ids, key, key_dir, key_identity, ident,
            known=known, started=started, batch_size=batch_size, device_name=device_name, num_workers=num_workers,
            shard_size=shard_size, progress=progress, recompute=recompute, precision=used_precision,
        )


def _extract_locked(
    dataset: "ItemSet", card: BackboneCard, loaded: Backbone | None, adapter: ChannelAdapter, fov_ids: list[str], key: str, key_dir: Path,
    identity: dict, ident: dict, *, known: "BackboneIdentity | None", started: float, batch_size: int, device_name: str, num_workers: int,
    shard_size: int, progress: bool, recompute: bool, precision: str,
) -> Embeddings:
    n = len(fov_ids)
    hashed = _is_file_backed(dataset)
    world = distributed.world()
    scan = None

    def plan() -> tuple[bool, list]:
        nonlocal scan
        scan = _scan_cache(dataset, key, key_dir, fov_ids, hashed, recompute, shard_size)
        return scan.complete is not None, scan.todo

    # What the other ranks need to know from rank 0: is the cache complete, and what is left to do.
    complete, todo = distributed.from_main(plan)
    result = dict(dataset=dataset, card=card, adapter=adapter, fov_ids=fov_ids, key=key, key_dir=key_dir,
                  ident=ident, started=started, device_name=device_name, precision=precision, hashed=hashed)
    if complete:
        return _cached_result(scan.complete if scan is not None else _read_manifest(key_dir), **result)

    mine = distributed.rank_share(todo)
    n_todo = sum(stop - start for start, stop in todo)
    computed: dict[int, _Shard] = {}
    compute = {"device": device_name, "loop_s": 0.0}
    compute_started = time.perf_counter()
    if mine:
        if loaded is None:
            from ocbench.backbones import loader as backbone_loader

            loaded = backbone_loader.load_backbone(card, device=device_name, precision=precision, identity=known)
        compute = _compute_shards(
            dataset, loaded, adapter, card, mine, key, key_dir, fov_ids, computed,
            batch_size=batch_size, num_workers=num_workers, device=device_name,
            progress=progress and world.main, n_already=n - sum(stop - start for start, stop in mine), hashed=hashed,
        )
    distributed.barrier()  # every rank's shards are on disk
    if not world.main:
        distributed.barrier()  # rank 0 has written the manifest
        return _cached_result(_read_manifest(key_dir), **result)
    loop_s = time.perf_counter() - compute_started if world.active else compute["loop_s"]

    done = {**scan.done, **computed}
    for start, stop in todo:  # the other ranks' shards
        if start not in done:
            shard = _read_shard(key_dir / _shard_name(start), key)
            if (shard.start, shard.stop) != (start, stop) or list(shard.fov_ids) != fov_ids[start:stop]:
                raise _corrupt(shard.path, "it does not hold the items it was planned for", key_dir)
            done[start] = shard
    shards = [done[start] for start in sorted(done)]
    dims = {s.features.shape[1] for s in shards}
    if len(dims) != 1:
        raise DataError(f"embedding cache {key_dir} mixes feature sizes {sorted(dims)}; delete the folder {key_dir} (or pass --recompute)")
    features = np.concatenate([s.features for s in shards], axis=0)
    files: list | None = None
    if hashed:
        files = [record for s in shards for record in s.files]
        for i, record in scan.refreshed.items():
            files[i] = record
    wall = time.perf_counter() - started
    meta = {
        "backbone": card.name,
        "weights_sha256": ident["weights_sha256"],
        "revision": ident["revision"],
        **ident["provenance"],
        "adapter": adapter.key,
        "preprocess": ident["preprocess"],
        "precision": precision,
        "dataset_version": str(dataset.version),
        "n": n,
        "dim": int(features.shape[1]),
        "wall_time_s": round(wall, 4),
        "images_per_s": round(n_todo / loop_s, 3) if loop_s > 0 else 0.0,
        "device": compute["device"],
        "extraction_device": compute["device"],
        "processes": world.size,
        "cache_hit": False,
        "n_computed": n_todo,
        "n_reused": n - n_todo,
        "content_checked": hashed,
        "n_changed_files": len(set(scan.changed)),
        "changed_files": scan.changed_names,
        "batch_size": batch_size,
        "num_workers": num_workers,
        "format_version": EMBEDDING_FORMAT_VERSION,
        "ocbench": _ocbench_version,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    manifest = {
        "format_version": EMBEDDING_FORMAT_VERSION,
        "key": key,
        "identity": identity,
        "meta": meta,
        "fov_ids": fov_ids,
        "files": files,
        "shards": [
            {"file": s.path.name, "start": s.start, "stop": s.stop, "sha256": sha256_file(s.path)} for s in shards
        ],
    }
    _write_manifest(key_dir, manifest)
    _remove_leftovers(key_dir, {s.path.name for s in shards})
    distributed.barrier()
    return Embeddings(features=features, fov_ids=fov_ids, key=key, meta=meta)


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


def _compute_shards(
    dataset: "ItemSet", loaded: Backbone, adapter: ChannelAdapter, card: BackboneCard, todo, key, key_dir, fov_ids, done, *,
    batch_size, num_workers, device, progress, n_already, hashed,
) -> dict:
    """Run the model over the ranges in ``todo``, writing each shard as soon as it is full."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    on_cuda = device.startswith("cuda")
    batches = _batches(todo, batch_size)
    loader = DataLoader(
        _Images(dataset, hashed),
        batch_sampler=batches,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=on_cuda,  # page-locked host memory makes the host->GPU copy asynchronous
        persistent_workers=False,
        **({"prefetch_factor": 4} if num_workers > 0 else {}),
    )
    expected_dim = int(card.feature_dim) * int(adapter.n_views)

    shard_iter = iter(todo)
    shard_start, shard_stop = next(shard_iter)
    buffer: list[np.ndarray] = []
    records: list[FileRecord | None] = []
    loop_started = time.perf_counter()
    bar = tqdm(
        total=len(fov_ids), initial=n_already, unit="img", desc=f"embed {card.name}",
        disable=None if progress else True, smoothing=0.1,
    )
    log = _ProgressLines(f"embed {card.name}", total=len(fov_ids), n_already=n_already,
                         n_shards=len(todo), enabled=progress and not sys.stderr.isatty())
    try:
        with torch.inference_mode():
            for indices, images, batch_records in loader:
                if isinstance(images, _MixedSizes):
                    raise images.to_error(dataset)
                if isinstance(images, BaseException):
                    raise images
                output = loaded.embed_raw(images, adapter)
                features = output.detach().to("cpu", torch.float32).numpy()
                _check_batch(features, indices, fov_ids, card, expected_dim)
                buffer.append(features)
                records.extend(batch_records)
                bar.update(len(indices))
                shard_finished = indices[-1] + 1 == shard_stop
                if shard_finished:
                    shard_features = np.concatenate(buffer, axis=0)
                    path = key_dir / _shard_name(shard_start)
                    ids = fov_ids[shard_start:shard_stop]
                    _write_shard(path, shard_features, ids, shard_start, key, records)
                    done[shard_start] = _Shard(path, shard_start, shard_stop, tuple(ids), shard_features, tuple(records))
                    buffer, records = [], []
                    shard_start, shard_stop = next(shard_iter, (None, None))
                log.items_done(len(indices), shard_finished)
    finally:
        bar.close()
    return {"device": device, "loop_s": time.perf_counter() - loop_started}


class _ProgressLines:
    """Progress for a log (no terminal, so no live bar): one plain line on stderr per finished
    shard, and between shards at least every ``every_s`` seconds, with the rate so far."""

    def __init__(self, what: str, *, total: int, n_already: int, n_shards: int, enabled: bool,
                 every_s: float = 30.0) -> None:
        self.what, self.total, self.n_shards, self.enabled, self.every_s = what, total, n_shards, enabled, every_s
        self.done = n_already
        self.computed = 0
        self.shards = 0
        self.started = self.last = time.perf_counter()

    def items_done(self, n: int, shard_finished: bool) -> None:
        self.done += n
        self.computed += n
        self.shards += int(shard_finished)
        if shard_finished or time.perf_counter() - self.last >= self.every_s:
            self._say()

    def _say(self) -> None:
        self.last = now = time.perf_counter()
        if not self.enabled:
            return
        rate = self.computed / max(now - self.started, 1e-9)
        print(f"{self.what}: shard {self.shards}/{self.n_shards} · {self.done:,}/{self.total:,} items · "
              f"{rate:,.1f} items/s", file=sys.stderr, flush=True)


def _check_batch(features: np.ndarray, indices, fov_ids, card: BackboneCard, expected_dim: int) -> None:
    if features.ndim != 2 or features.shape[0] != len(indices):
        raise ConfigError(
            f"backbone {card.name} returned features of shape {tuple(features.shape)} for a batch of {len(indices)}; "
            f"expected ({len(indices)}, D)"
        )
    if features.shape[1] != expected_dim:
        raise ConfigError(
            f"backbone {card.name} returned {features.shape[1]} features per item, its card and adapter say {expected_dim}"
        )
    finite = np.isfinite(features).all(axis=1)
    if not finite.all():
        bad = fov_ids[indices[int(np.argmin(finite))]]
        raise DataError(
            f"backbone {card.name} produced NaN/inf embeddings (first at FOV {bad}); nothing was cached for "
            f"this shard; check the backbone's weights and normalization"
        )
