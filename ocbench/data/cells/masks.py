"""The mask store: one compressed label image per FOV under ``<cache>/cells/<key>/masks/``, each
with the fingerprint of its FOV file, so a changed image is segmented again."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ocbench import paths
from ocbench._io import atomic_path, json_sha256, sha256_bytes, sha256_file, slug
from ocbench.data.cells.backends import SegmentationBackend
from ocbench.errors import DataError

#: Bump when the mask files or the cell table change meaning: old ones are no longer reused.
CELLS_FORMAT = 1


def cells_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder of mask stores (default ``<ocbench cache>/cells``)."""
    return Path(cache_dir).expanduser() if cache_dir is not None else paths.cache_dir() / "cells"


def _dataset_root(dataset: Any) -> str | None:
    root = getattr(dataset, "root", None)
    if root is None:
        return None
    try:
        return str(Path(root).resolve())
    except OSError:
        return str(root)


def mask_key(dataset: Any, backend: SegmentationBackend) -> str:
    """``<dataset>__<backend>__<hash16>``: the mask store of this dataset, backend and settings."""
    identity = {
        "format": CELLS_FORMAT,
        "dataset": str(getattr(dataset, "name", "dataset")),
        "root": _dataset_root(dataset),
        "backend": backend.identity(),
    }
    return f"{slug(identity['dataset'])}__{slug(backend.name)}__{json_sha256(identity, default=str)[:16]}"


def _mask_file(masks_dir: Path, fov_id: str) -> Path:
    return masks_dir / f"{slug(fov_id)}.npz"


def _source_stat(dataset: Any, i: int) -> dict[str, Any] | None:
    """Size and times of FOV ``i``'s file (None when the dataset has no files, or when its items
    are not one file each: then the pixels' sha256 is the check, since ``path(i)`` would stand for
    one channel file of several)."""
    path_of = getattr(dataset, "path", None)
    if path_of is None or getattr(dataset, "content", None) is None:
        return None
    try:
        st = os.stat(path_of(i))
    except OSError:
        return None
    # ctime too: a tool that restores the mtime after rewriting a file cannot restore it.
    return {"path": str(path_of(i)), "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns),
            "ctime_ns": int(st.st_ctime_ns)}


def _known_sha256(dataset: Any, i: int) -> str | None:
    """FOV ``i``'s file sha256 from the dataset's content record (hashed once, when it was listed),
    while the file's size and times are still those recorded; else None (hash it here)."""
    content = getattr(dataset, "content", None)
    stat = _source_stat(dataset, i)
    if content is None or stat is None or not callable(getattr(content, "record", None)):
        return None
    record = content.record(i)
    return record[3] if list(record[:3]) == [stat["size"], stat["mtime_ns"], stat["ctime_ns"]] else None


def _fingerprint(dataset: Any, i: int, image: np.ndarray) -> dict[str, Any]:
    stat = _source_stat(dataset, i)
    if stat is not None:
        return {**stat, "sha256": _known_sha256(dataset, i) or sha256_file(stat["path"])}
    return {"pixels_sha256": sha256_bytes(np.ascontiguousarray(image).tobytes())}


def _mask_state(path: Path, dataset: Any, i: int) -> str:
    """``current`` (a saved mask of FOV ``i``'s file as it is now), ``changed`` (saved for other
    content of the file) or ``missing`` (none, or damaged)."""
    if not path.is_file():
        return "missing"
    try:
        with np.load(path) as z:
            stored = json.loads(str(z["meta"]))
    except Exception:
        return "missing"  # a damaged file is segmented again
    source = stored.get("source", {})
    known = _known_sha256(dataset, i)
    if known is not None:
        return "current" if source.get("sha256") == known else "changed"
    stat = _source_stat(dataset, i)
    if stat is None:
        same = "pixels_sha256" in source and source["pixels_sha256"] == sha256_bytes(
            np.ascontiguousarray(dataset.read(i)).tobytes()
        )
    elif all(source.get(k) == stat[k] for k in ("size", "mtime_ns", "ctime_ns")):
        same = True
    else:
        same = source.get("size") == stat["size"] and source.get("sha256") == sha256_file(stat["path"])
    return "current" if same else "changed"


def _write_mask(path: Path, labels: np.ndarray, meta: dict[str, Any]) -> None:
    dtype = np.uint16 if int(labels.max(initial=0)) < 65536 else np.int32
    buffer = io.BytesIO()
    np.savez_compressed(buffer, labels=labels.astype(dtype), meta=np.array(json.dumps(meta)))
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def _read_mask(path: Path) -> np.ndarray:
    try:
        with np.load(path) as z:
            return np.asarray(z["labels"]).astype(np.int32)
    except Exception as exc:
        raise DataError(f"cell mask {path} is unreadable ({type(exc).__name__}); delete it and run `ocbench data cells` again") from None
