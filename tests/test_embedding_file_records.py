"""Cells of one FOV share its file: its bytes are hashed once while the file stays as it was."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ocbench.benchmark.embedding_compute import _read_item
from ocbench.data.content import file_record, stat_key


class _OneFile:
    """Two items (two cells) read from one file."""

    def __init__(self, path: Path):
        self._path = path

    def path(self, index: int) -> Path:
        return self._path

    def read(self, index: int) -> np.ndarray:
        return np.frombuffer(self._path.read_bytes(), dtype=np.uint8).reshape(1, 1, -1)


def test_the_previous_items_record_is_reused_only_while_the_file_is_unchanged(tmp_path: Path):
    path = tmp_path / "fov.bin"
    path.write_bytes(b"12345678")
    items = _OneFile(path)
    _, first = _read_item(items, 0, hashed=True)
    assert first == file_record(path.read_bytes(), os.stat(path))
    marked = [*first[:3], "hash-of-the-previous-item"]
    _, second = _read_item(items, 1, hashed=True, previous=(path, marked))
    assert second == marked  # same file, same size and times: not read and hashed again
    path.write_bytes(b"87654321")  # same size, new content: its times change
    os.utime(path, ns=(first[1] + 10**9, first[1] + 10**9))
    assert stat_key(os.stat(path)) != tuple(first[:3])
    _, third = _read_item(items, 1, hashed=True, previous=(path, marked))
    assert third[3] == file_record(b"87654321", os.stat(path))[3] != first[3]
    _, other = _read_item(items, 1, hashed=True, previous=(tmp_path / "other.bin", marked))
    assert other[3] == third[3]
