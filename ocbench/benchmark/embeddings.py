"""Cached embedding extraction: any backbone becomes a function from OpenCell FOVs to features.

One directory per cache key under ``<cache>/embeddings/``::

    <backbone>__<adapter>__<hash16>/
        shard-00000000.safetensors   features (n, D) float32 for FOVs [start, stop) of the dataset
        shard-00000256.safetensors   ...
        manifest.json                written last: the "complete" marker, with meta and shard hashes

The key hashes everything that changes the numbers: dataset version, backbone name, weights
sha256 and revision, channel adapter, preprocessing and the on-disk format version. Shards are
written atomically as soon as they are full, so an interrupted run resumes at the first missing
shard. Once ``manifest.json`` exists, a second call reads the shards back and never loads the model.

Each shard carries its FOV ids, its range and a sha256 of its feature bytes in the safetensors
metadata, so a truncated or altered shard is caught with a one-line :class:`DataError`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ocbench import __version__ as _ocbench_version
from ocbench import paths
from ocbench._io import atomic_path, atomic_write, sha256_bytes, sha256_file
from ocbench.errors import ConfigError, DataError, OcbenchError

#: Bump when the shard layout or the meaning of stored features changes: old caches become misses.
EMBEDDING_FORMAT_VERSION = 1

MANIFEST_NAME = "manifest.json"
_SHARD_PATTERN = re.compile(r"^shard-(\d{8})\.safetensors$")
_FEATURES = "features"


@dataclasses.dataclass(frozen=True, eq=False)
class Embeddings:
    """Features of every FOV of a dataset, in dataset order.

    ``meta`` holds: backbone, weights_sha256, revision, adapter, preprocess, dataset_version, n,
    dim, wall_time_s, images_per_s, device, cache_hit, plus extraction_device, n_computed,
    n_reused, batch_size, num_workers, format_version, ocbench, created. ``device`` is where
    this call resolved ``device`` to (where downstream work should run). On a cache hit,
    ``wall_time_s``/``images_per_s``/``extraction_device`` describe the run that computed the
    features and ``load_time_s`` is the time taken to read them back.
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


def _slug(text: str) -> str:
    # Readable, filesystem-safe prefix; the hash suffix keeps keys unique anyway.
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", str(text)).strip("-") or "x"


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
    digest = sha256_bytes(json.dumps(identity, sort_keys=True).encode("utf-8"))[:16]
    return f"{_slug(identity['backbone'])}__{_slug(identity['adapter'])}__{digest}"


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


# --------------------------------------------------------------------------------------------
# Shards


def _shard_name(start: int) -> str:
    return f"shard-{start:08d}.safetensors"


def _write_shard(path: Path, features: np.ndarray, fov_ids: Sequence[str], start: int, key: str) -> str:
    """Write one shard atomically; returns the file's sha256 (recorded in the manifest)."""
    from safetensors.numpy import save_file

    features = np.ascontiguousarray(features, dtype=np.float32)
    metadata = {
        "ocbench_embedding_format": str(EMBEDDING_FORMAT_VERSION),
        "key": key,
        "start": str(start),
        "stop": str(start + len(fov_ids)),
        "fov_ids": json.dumps(list(fov_ids)),
        "features_sha256": sha256_bytes(features.tobytes()),
    }
    with atomic_path(path) as tmp:
        save_file({_FEATURES: features}, str(tmp), metadata=metadata)
    return sha256_file(path)


def _corrupt(path: Path, why: str) -> DataError:
    return DataError(
        f"embedding cache shard {path} is corrupt ({why}); delete {path.parent} or rerun with "
        f"recompute=True (--recompute) to extract again"
    )


@dataclasses.dataclass(frozen=True)
class _Shard:
    path: Path
    start: int
    stop: int
    fov_ids: tuple[str, ...]
    features: np.ndarray


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
    except (KeyError, ValueError, TypeError) as exc:
        raise _corrupt(path, f"bad metadata: {exc}") from None
    if shard_key != key:
        raise _corrupt(path, f"belongs to key {shard_key}")
    if features.dtype != np.float32 or features.ndim != 2 or features.shape[0] != stop - start or len(fov_ids) != stop - start:
        raise _corrupt(path, f"features {features.dtype}{tuple(features.shape)} do not match range [{start}, {stop})")
    if sha256_bytes(np.ascontiguousarray(features).tobytes()) != checksum:
        raise _corrupt(path, "feature checksum mismatch")
    return _Shard(path, start, stop, fov_ids, features)


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


class _FovImages:
    """torch-style map dataset: index -> (index, uint16 array (2,H,W)) read by the OpenCell reader.

    User errors raised while reading (a bad TIFF) are returned, not raised, so that a DataLoader
    worker hands them back intact and the main process re-raises the one-line message.
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            return index, np.ascontiguousarray(self.dataset.read(index))
        except OcbenchError as exc:
            return index, exc


class _MixedSizes(Exception):
    """Two FOVs of different sizes in one batch; the main process names their files."""

    def __init__(self, index_a: int, shape_a: tuple, index_b: int, image_b) -> None:
        super().__init__(index_a, shape_a, index_b, image_b.shape)

    def to_error(self, dataset) -> DataError:
        index_a, shape_a, index_b, shape_b = self.args
        return DataError(
            f"{dataset.path(index_b)}: image of shape {tuple(shape_b)} while {Path(dataset.path(index_a)).name} "
            f"in the same batch is {tuple(shape_a)}; pass --batch-size 1 for datasets with mixed FOV sizes"
        )


def _collate(items):
    """-> (indices, uint16 tensor (N,2,H,W)), or (indices, OcbenchError) for the main process to raise."""
    import torch

    indices = [i for i, _ in items]
    for _, image in items:
        if isinstance(image, BaseException):
            return indices, image
    first_index, first = items[0]
    odd = next(((i, image) for i, image in items if image.shape != first.shape), None)
    if odd is not None:
        return indices, _MixedSizes(first_index, first.shape, *odd)
    return indices, torch.from_numpy(np.stack([image for _, image in items]))


def _batches(ranges: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    # Batches never straddle a shard boundary, so each shard is written as soon as its last batch is done.
    return [list(range(b, min(b + batch_size, stop))) for start, stop in ranges for b in range(start, stop, batch_size)]


def _resolve_device(device) -> str:
    """"auto"/None -> "cuda" when available, else "cpu" (ConfigError for CUDA without CUDA)."""
    from ocbench.backbones.loader import resolve_device

    return str(resolve_device(device))


# --------------------------------------------------------------------------------------------
# Backbone, adapter and identity


def _resolve_backbone(backbone) -> tuple[Any, Any]:
    """-> (card, loaded Backbone or None). Accepts a card name, a card, or an already loaded Backbone."""
    if isinstance(backbone, str):
        from ocbench.backbones.cards import get_card

        return get_card(backbone), None
    if hasattr(backbone, "embed_raw"):  # a loaded Backbone (tests, benchmarks, callers that reuse a model)
        return backbone.card, backbone
    if hasattr(backbone, "name"):
        return backbone, None
    raise ConfigError(f"backbone must be a card name, a BackboneCard or a loaded Backbone, not {type(backbone).__name__}")


def _resolve_adapter(adapter, card):
    if adapter is None or isinstance(adapter, str):
        from ocbench.backbones.adapters import parse_channels

        return parse_channels(adapter, card)
    if not hasattr(adapter, "key"):
        raise ConfigError(f"channels must be a spec string or a ChannelAdapter, not {type(adapter).__name__}")
    return adapter


def _backbone_identity(card, loaded) -> dict[str, str | None]:
    """weights sha256, revision and preprocessing key, without building the model when possible."""
    if loaded is not None:
        return {
            "weights_sha256": loaded.weights_sha256,
            "revision": loaded.revision,
            "preprocess": loaded.preprocess_key,
        }
    from ocbench.backbones import loader

    # The loader resolves these from the card and the local weight files only (no model build),
    # which is what lets a cache hit skip loading the model.
    ident = loader.resolve_identity(card)
    return {"weights_sha256": ident.weights_sha256, "revision": ident.revision, "preprocess": ident.preprocess_key}


# --------------------------------------------------------------------------------------------
# Reading a finished cache


def _read_manifest(key_dir: Path) -> dict:
    path = key_dir / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        manifest["shards"], manifest["meta"], manifest["fov_ids"]  # noqa: B018 - presence check
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(
            f"embedding cache manifest {path} is unreadable ({type(exc).__name__}); delete {key_dir} or rerun "
            f"with recompute=True (--recompute)"
        ) from None
    return manifest


def _load_complete(key_dir: Path, key: str, fov_ids: Sequence[str]) -> tuple[np.ndarray, dict]:
    manifest = _read_manifest(key_dir)
    if list(manifest["fov_ids"]) != list(fov_ids):
        raise DataError(
            f"embedding cache {key_dir} lists other FOVs than the dataset; delete it or rerun with recompute=True (--recompute)"
        )
    parts, pos = [], 0
    for entry in manifest["shards"]:
        path = key_dir / entry["file"]
        if not path.is_file():
            raise _corrupt(path, "missing")
        if sha256_file(path) != entry["sha256"]:
            raise _corrupt(path, "file sha256 differs from manifest")
        shard = _read_shard(path, key)
        if shard.start != pos or list(shard.fov_ids) != list(fov_ids[shard.start : shard.stop]):
            raise _corrupt(path, f"range [{shard.start}, {shard.stop}) does not continue at {pos}")
        parts.append(shard.features)
        pos = shard.stop
    if pos != len(fov_ids):
        raise DataError(f"embedding cache {key_dir} covers {pos} of {len(fov_ids)} FOVs; delete it or rerun with recompute=True")
    return np.concatenate(parts, axis=0), manifest["meta"]


# --------------------------------------------------------------------------------------------
# Extraction


def extract_embeddings(
    dataset,
    backbone,
    adapter=None,
    *,
    batch_size: int = 16,
    device: str | None = "auto",
    num_workers: int = 0,
    cache_dir: str | os.PathLike | None = None,
    shard_size: int = 256,
    progress: bool = True,
    recompute: bool = False,
) -> Embeddings:
    """Embed every FOV of ``dataset`` with ``backbone`` (cached; resumable); see the module docstring.

    ``dataset``: an OpenCellDataset (``fov_ids``, ``version``, ``read(i)``, ``len``).
    ``backbone``: a card name, a BackboneCard, or an already loaded Backbone.
    ``adapter``: channel spec string, ChannelAdapter, or None for the card's default.
    ``device``: "auto" (CUDA when available), "cpu", "cuda[:i]".
    ``num_workers``: DataLoader worker processes decoding TIFFs in parallel with the model.
    ``cache_dir``: folder of embedding caches (default ``<ocbench cache>/embeddings``).
    ``shard_size``: FOVs per shard; a killed run loses at most one shard of work.
    ``recompute``: delete this key's cache first and extract again.
    """
    started = time.perf_counter()
    for name, value, low in (("batch_size", batch_size, 1), ("shard_size", shard_size, 1), ("num_workers", num_workers, 0)):
        if not isinstance(value, int) or value < low:
            raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    card, loaded = _resolve_backbone(backbone)
    adapter = _resolve_adapter(adapter, card)
    ident = _backbone_identity(card, loaded)
    fov_ids = list(dataset.fov_ids)
    n = len(fov_ids)
    if n == 0:
        raise DataError("the dataset has no labelled FOVs to embed; check its annotations file")
    dataset_version = str(dataset.version)
    device_name = _resolve_device(device) if loaded is None else str(loaded.device)
    from ocbench.backbones.loader import uses_bf16_autocast

    identity = _identity_dict(
        dataset_version, card.name, ident["weights_sha256"], ident["revision"], adapter.key, ident["preprocess"],
        card_sha256=sha256_bytes(json.dumps(card.to_dict(), sort_keys=True, default=str).encode("utf-8")),
        precision="bf16-autocast" if uses_bf16_autocast(card, device_name) else "fp32",
    )
    key = _key_of(identity)
    key_dir = embedding_cache_dir(cache_dir) / key

    if recompute and key_dir.exists():
        shutil.rmtree(key_dir)
    if (key_dir / MANIFEST_NAME).is_file():
        features, stored_meta = _load_complete(key_dir, key, fov_ids)
        meta = {
            **stored_meta,
            "cache_hit": True,
            "load_time_s": round(time.perf_counter() - started, 4),
            # Where downstream work (the task) should run now; the extraction's device stays recorded.
            "device": device_name,
        }
        expected_dim = card.feature_dim * adapter.n_views
        if features.shape[1] != expected_dim:
            raise _corrupt(key_dir / MANIFEST_NAME, f"it holds {features.shape[1]}-dim features, the card gives {expected_dim}")
        return Embeddings(features=features, fov_ids=fov_ids, key=key, meta=meta)

    # Resume: shards already on disk are reused where they line up with the dataset.
    reusable: dict[int, Path] = {}
    stops: dict[int, int] = {}
    for start, path in _existing_shards(key_dir).items():
        stop = _shard_stop_from_header(path)
        if 0 <= start < stop <= n:
            reusable[start], stops[start] = path, stop
    todo = _plan_shards(n, stops, shard_size)
    done: dict[int, _Shard] = {}
    todo_stops = dict(todo)
    pos = 0
    while pos < n:  # load (and verify) exactly the shards the plan reuses
        if pos in todo_stops:
            pos = todo_stops[pos]
            continue
        shard = _read_shard(reusable[pos], key)
        if list(shard.fov_ids) != fov_ids[shard.start : shard.stop]:
            raise _corrupt(shard.path, "its FOV ids differ from the dataset's")
        done[pos] = shard
        pos = shard.stop

    n_todo = sum(stop - start for start, stop in todo)
    compute = {"device": device_name, "loop_s": 0.0}
    if todo:
        if loaded is None:
            from ocbench.backbones import loader as backbone_loader

            loaded = backbone_loader.load_backbone(card, device=device_name)
        compute = _compute_shards(
            dataset, loaded, adapter, card, todo, key, key_dir, fov_ids, done,
            batch_size=batch_size, num_workers=num_workers, device=device_name,
            progress=progress, n_already=n - n_todo,
        )

    shards = [done[start] for start in sorted(done)]
    dims = {s.features.shape[1] for s in shards}
    if len(dims) != 1:
        raise DataError(f"embedding cache {key_dir} mixes feature sizes {sorted(dims)}; delete it or rerun with recompute=True")
    features = np.concatenate([s.features for s in shards], axis=0)
    wall = time.perf_counter() - started
    meta = {
        "backbone": card.name,
        "weights_sha256": ident["weights_sha256"],
        "revision": ident["revision"],
        "adapter": adapter.key,
        "preprocess": ident["preprocess"],
        "dataset_version": dataset_version,
        "n": n,
        "dim": int(features.shape[1]),
        "wall_time_s": round(wall, 4),
        "images_per_s": round(n_todo / compute["loop_s"], 3) if compute["loop_s"] > 0 else 0.0,
        "device": compute["device"],
        "extraction_device": compute["device"],
        "cache_hit": False,
        "n_computed": n_todo,
        "n_reused": n - n_todo,
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
        "shards": [
            {"file": s.path.name, "start": s.start, "stop": s.stop, "sha256": sha256_file(s.path)} for s in shards
        ],
    }
    with atomic_write(key_dir / MANIFEST_NAME) as fh:  # the "complete" marker: written last
        json.dump(manifest, fh, indent=1)
    _remove_leftovers(key_dir, {s.path.name for s in shards})
    return Embeddings(features=features, fov_ids=fov_ids, key=key, meta=meta)


def _shard_stop_from_header(path: Path) -> int:
    """Read a shard's ``stop`` from its header only (cheap); unreadable shards are reported."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as fh:
            return int((fh.metadata() or {})["stop"])
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
    dataset, loaded, adapter, card, todo, key, key_dir, fov_ids, done, *,
    batch_size, num_workers, device, progress, n_already,
) -> dict:
    """Run the model over the ranges in ``todo``, writing each shard as soon as it is full."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    on_cuda = device.startswith("cuda")
    batches = _batches(todo, batch_size)
    loader = DataLoader(
        _FovImages(dataset),
        batch_sampler=batches,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=on_cuda,  # page-locked host memory makes the host->GPU copy asynchronous
        persistent_workers=False,
        **({"prefetch_factor": 4} if num_workers > 0 else {}),
    )
    expected_dim = None
    if getattr(card, "feature_dim", None) and getattr(adapter, "n_views", None):
        expected_dim = int(card.feature_dim) * int(adapter.n_views)

    shard_iter = iter(todo)
    shard_start, shard_stop = next(shard_iter)
    buffer: list[np.ndarray] = []
    loop_started = time.perf_counter()
    bar = tqdm(
        total=len(fov_ids), initial=n_already, unit="img", desc=f"embed {card.name}",
        disable=None if progress else True, smoothing=0.1,
    )
    try:
        with torch.inference_mode():
            for indices, images in loader:
                if isinstance(images, _MixedSizes):
                    raise images.to_error(dataset)
                if isinstance(images, BaseException):
                    raise images
                output = loaded.embed_raw(images, adapter)
                features = output.detach().to("cpu", torch.float32).numpy()
                _check_batch(features, indices, fov_ids, card, expected_dim)
                buffer.append(features)
                bar.update(len(indices))
                if indices[-1] + 1 == shard_stop:
                    shard_features = np.concatenate(buffer, axis=0)
                    path = key_dir / _shard_name(shard_start)
                    ids = fov_ids[shard_start:shard_stop]
                    _write_shard(path, shard_features, ids, shard_start, key)
                    done[shard_start] = _Shard(path, shard_start, shard_stop, tuple(ids), shard_features)
                    buffer = []
                    shard_start, shard_stop = next(shard_iter, (None, None))
    finally:
        bar.close()
    return {"device": device, "loop_s": time.perf_counter() - loop_started}


def _check_batch(features: np.ndarray, indices, fov_ids, card, expected_dim) -> None:
    if features.ndim != 2 or features.shape[0] != len(indices):
        raise ConfigError(
            f"backbone {card.name} returned features of shape {tuple(features.shape)} for a batch of {len(indices)}; "
            f"expected ({len(indices)}, D)"
        )
    if expected_dim is not None and features.shape[1] != expected_dim:
        raise ConfigError(
            f"backbone {card.name} returned {features.shape[1]} features per FOV, its card and adapter say {expected_dim}"
        )
    finite = np.isfinite(features).all(axis=1)
    if not finite.all():
        bad = fov_ids[indices[int(np.argmin(finite))]]
        raise DataError(
            f"backbone {card.name} produced NaN/inf embeddings (first at FOV {bad}); nothing was cached for "
            f"this shard; check the backbone's weights and normalization"
        )
