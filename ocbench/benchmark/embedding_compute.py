"""Computing embeddings: reading images (and hashing their files), batches, the DataLoader and
the model forward, each shard written to the cache as soon as it is full.

The cache itself is :mod:`ocbench.benchmark.embedding_cache`; which ranges are computed, by which
rank, under which lock, is decided in :mod:`ocbench.benchmark.embeddings`.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ocbench.backbones.adapters import ChannelAdapter
from ocbench.backbones.card import BackboneCard
from ocbench.backbones.protocol import Backbone
from ocbench.benchmark.embedding_cache import _known_record, _Shard, _shard_name, _write_shard
from ocbench.data.content import FileRecord, file_record, stat_key
from ocbench.errors import ConfigError, DataError, OcbenchError

if TYPE_CHECKING:  # pragma: no cover
    from ocbench.data.base import ItemSet


def _read_item(
    dataset, index: int, hashed: bool, previous: tuple[Path, FileRecord] | None = None
) -> tuple[np.ndarray, FileRecord | None]:
    """The image (via ``dataset.read``) and, for file-backed datasets, its file record.

    The file's bytes are read and hashed right before the reader decodes it (so the second read
    comes from the page cache); a file that changes in between is read again. ``previous`` is the
    last item's file and record: consecutive cells of one FOV share its file, hashed once while
    its size and times stay the same.
    """
    if not hashed:
        return np.ascontiguousarray(dataset.read(index)), None
    path = Path(dataset.path(index))
    for _ in range(3):
        try:
            before = os.stat(path)
            known = _known_record(dataset, index, before)
            if known is None and previous is not None and previous[0] == path and tuple(previous[1][:3]) == stat_key(before):
                known = previous[1]
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
        self._previous: tuple[Path, FileRecord] | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            image, record = _read_item(self.dataset, index, self.hashed, self._previous)
            if record is not None:
                self._previous = (Path(self.dataset.path(index)), record)
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
# The model over the missing shards


def default_workers(device: str) -> int:
    """DataLoader workers when none are asked for: on a GPU, enough CPU processes to decode and
    scale images while the GPU runs the model (up to 8, leaving one core to the main process,
    sharing the node's cores with the other ranks); on CPU none, because the model already uses
    every core and a decoding process would only take one away from it."""
    if not str(device).startswith("cuda"):
        return 0
    from ocbench._cores import available_cores

    return max(0, min(8, available_cores() - 1))


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
