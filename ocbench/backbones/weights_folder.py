"""The layout of a Hub-style weights folder and the checksums that guard it.

A folder holds ``model.safetensors``, ``config.json`` (timm's Hub format; ocbench's imports add an
``ocbench`` section recording the provenance and the weights' sha256) and ``README.md`` (the Hub
model card). Converted and locally trained weights live in ``<cache>/weights/<card name>/``.

A leaf: nothing from ``ocbench.backbones`` is imported here, so the converter (``dino_import``),
the fetcher (``sources``) and the publisher (``hub``) share the layout without importing each other.
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path
from typing import Any

from ocbench._io import read_json_or_none, sha256_file
from ocbench.errors import DataError
from ocbench.paths import cache_dir as default_cache_dir

WEIGHTS_FILENAME = "model.safetensors"
CONFIG_FILENAME = "config.json"
README_FILENAME = "README.md"
#: Everything an import writes (an existing folder holding only these may be replaced).
IMPORT_FILES = frozenset({WEIGHTS_FILENAME, CONFIG_FILENAME, README_FILENAME})

_SHA256 = re.compile(r"[0-9a-f]{64}")


def folder_for(card_name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """``<cache>/weights/<card name>``: where converted or trained weights of a card live."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / "weights" / card_name


def local_folder(location: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where ``local:<location>`` points: a bare relative name is a folder under ``<cache>/weights/``;
    an absolute path or one starting with ``~`` or ``.`` is used as it is."""
    path = Path(location).expanduser()
    if not (path.is_absolute() or location.startswith((".", "~"))):
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        path = root / "weights" / location
    return path


def default_file_mode() -> int:
    """The mode a plain ``open(..., "w")`` gives a new file (0666 less the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, remembered per (real path, size, mtime) so repeated loads hash once."""
    real = os.path.realpath(path)
    stat = os.stat(real)
    key = (real, stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_MEMO:
        _SHA_MEMO[key] = sha256_file(real)
    return _SHA_MEMO[key]


def read_import_record(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The ``ocbench`` section of ``<folder>/config.json`` (what an import recorded), or None."""
    config = read_json_or_none(Path(folder) / CONFIG_FILENAME, dict)  # none, or not ours: nothing recorded
    record = config.get("ocbench") if config is not None else None
    return record if isinstance(record, dict) else None


def recorded_sha256(path: str | os.PathLike) -> str | None:
    """The ``ocbench.weights_sha256`` that ``config.json`` beside a ``model.safetensors`` records, if any."""
    path = Path(path)
    if path.name != WEIGHTS_FILENAME:
        return None
    value = (read_import_record(path.parent) or {}).get("weights_sha256")
    return value.lower() if isinstance(value, str) and _SHA256.fullmatch(value.lower()) else None


def check_recorded_sha256(path: str | os.PathLike, sha256: str, card_name: str | None = None) -> None:
    """Refuse weights whose sha256 differs from the one their folder's ``config.json`` records."""
    recorded = recorded_sha256(path)
    if recorded is not None and sha256 != recorded:
        path = Path(path)
        raise DataError(
            f"{path}: sha256 {sha256[:12]}... differs from weights_sha256 {recorded[:12]}... recorded in {path.parent / CONFIG_FILENAME} "
            f"(damaged or changed after the import); re-import it with `ocbench backbones import {card_name or 'NAME'}` "
            "(same --checkpoint/--out as before)"
        )


def check_safetensors_header(path: str | os.PathLike) -> dict[str, Any]:
    """Cheap integrity check (header only): a truncated or foreign file fails here, not deep in torch.
    Returns the header (tensor name -> dtype, shape, offsets; ``__metadata__``)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise ValueError("file shorter than the 8-byte header length")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > size - 8 or header_len > 100_000_000:
                raise ValueError(f"header length {header_len} exceeds the file size {size}")
            header = json.loads(fh.read(header_len))
        if not isinstance(header, dict):  # valid JSON, but safetensors headers are objects
            raise ValueError(f"header is a JSON {type(header).__name__}, not an object")
        ends = []
        for key, info in header.items():
            if key == "__metadata__":
                continue
            if not isinstance(info, dict):
                raise ValueError(f"entry {key!r} of the header is not an object")
            ends.append(info["data_offsets"][1])
        if ends and max(ends) > size - 8 - header_len:
            raise ValueError("tensor data runs past the end of the file (truncated?)")
        return header
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: not a valid safetensors file ({reason}); delete it and fetch/import the weights again") from exc


def safetensors_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, read from the header alone (no tensor is loaded)."""
    header = check_safetensors_header(path)
    try:
        return {key: tuple(int(n) for n in info["shape"]) for key, info in header.items() if key != "__metadata__"}
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: not a valid safetensors file (a tensor without a shape: {exc}); "
                        "delete it and fetch/import the weights again") from None
