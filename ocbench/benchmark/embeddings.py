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

**Modules.** The cache on disk (keys, shards, manifest, the files' change records) is
:mod:`ocbench.benchmark.embedding_cache`; reading images and running the model over the missing
shards is :mod:`ocbench.benchmark.embedding_compute`; this module checks the arguments, takes the
lock and hands the shards to the ranks, and re-exports the names callers use.
"""

from __future__ import annotations

import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ocbench import __version__ as _ocbench_version
from ocbench._io import json_sha256, sha256_file
from ocbench._lock import file_lock
from ocbench.backbones.adapters import ChannelAdapter
from ocbench.backbones.card import BackboneCard
from ocbench.backbones.protocol import Backbone
from ocbench.benchmark import distributed
from ocbench.benchmark.embedding_cache import (  # noqa: F401 - re-exported: the names importers use
    _KEY_PRECISION,
    EMBEDDING_FORMAT_VERSION,
    MANIFEST_NAME,
    Embeddings,
    _CacheScan,
    _cache_write_error,
    _cached_result,
    _corrupt,
    _identity_dict,
    _is_file_backed,
    _key_of,
    _plan_shards,
    _read_manifest,
    _read_shard,
    _remove_leftovers,
    _scan_cache,
    _Shard,
    _shard_name,
    _write_manifest,
    cache_key,
    embedding_cache_dir,
)
from ocbench.benchmark.embedding_compute import _compute_shards, _read_item, default_workers  # noqa: F401 - re-exported
from ocbench.data.content import listing_version
from ocbench.errors import ConfigError, DataError

if TYPE_CHECKING:  # pragma: no cover
    from ocbench.backbones.loader import BackboneIdentity
    from ocbench.data.base import ItemSet


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
# Extraction


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
    ``shard_size``: items per shard (at most; see :func:`rank_shard_size`); a killed run loses one at most.
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


#: Under torchrun, new shards are cut so that each rank gets at least this many.
SHARDS_PER_RANK = 4


def rank_shard_size(shard_size: int, n: int, ranks: int) -> int:
    """Items per new shard: ``shard_size``, or fewer when several ranks share ``n`` items.

    Ranks take every N-th shard, so with few large shards one rank would do most of the work (417
    items in shards of 256 on two ranks: 256 against 161). With at least ``SHARDS_PER_RANK`` shards
    each, the ranks' shares differ by at most one shard.
    """
    if ranks <= 1:
        return shard_size
    return max(1, min(shard_size, -(-n // (ranks * SHARDS_PER_RANK))))


def _extract_locked(
    dataset: "ItemSet", card: BackboneCard, loaded: Backbone | None, adapter: ChannelAdapter, fov_ids: list[str], key: str, key_dir: Path,
    identity: dict, ident: dict, *, known: "BackboneIdentity | None", started: float, batch_size: int, device_name: str, num_workers: int,
    shard_size: int, progress: bool, recompute: bool, precision: str,
) -> Embeddings:
    """Rank 0 scans the cache (a hit returns here); every rank computes its share of the missing
    shards; then rank 0 writes the manifest (:func:`_write_complete`) while the others wait."""
    n = len(fov_ids)
    hashed = _is_file_backed(dataset)
    world = distributed.world()
    scan = None

    def plan() -> tuple[bool, list]:
        nonlocal scan
        scan = _scan_cache(dataset, key, key_dir, fov_ids, hashed, recompute, rank_shard_size(shard_size, n, world.size))
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
    embeddings = _write_complete(
        dataset, card, adapter, fov_ids, key, key_dir, identity, ident, scan, todo, computed,
        started=started, loop_s=loop_s, n_todo=n_todo, extraction_device=compute["device"], processes=world.size,
        batch_size=batch_size, num_workers=num_workers, precision=precision, hashed=hashed,
    )
    distributed.barrier()
    return embeddings


def _write_complete(
    dataset: "ItemSet", card: BackboneCard, adapter: ChannelAdapter, fov_ids: list[str], key: str, key_dir: Path,
    identity: dict, ident: dict, scan: _CacheScan, todo: list, computed: dict[int, _Shard], *, started: float,
    loop_s: float, n_todo: int, extraction_device: str, processes: int, batch_size: int, num_workers: int,
    precision: str, hashed: bool,
) -> Embeddings:
    """Rank 0, once every rank's shards are on disk: gather them, write the manifest (the cache is
    complete) and remove what an earlier run left behind."""
    n = len(fov_ids)
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
        "device": extraction_device,
        "extraction_device": extraction_device,
        "processes": processes,
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
    return Embeddings(features=features, fov_ids=fov_ids, key=key, meta=meta)
