"""The item set: what every dataset reader hands the rest of ocbench.

An item is one image the benchmark embeds: a whole field of view, or a crop of one cell. Tasks,
splits, the embedding cache and entries see items only through this protocol, so any reader (the
OpenCell layout, a lab's own table, cell crops cut from either) serves the same tasks.

- ``card``: the :class:`~ocbench.data.cards.DatasetCard` (channels, classes, label mode, groups);
- ``name``: what entries record (``opencell``, ``demo``, ``local:<stem>``);
- ``version``: a content hash; it changes whenever an item's pixels, id or labels would;
- ``ids``: unique item ids, in item order;
- ``parent_ids``: the image each item comes from (``ids`` for whole images, the FOV for a cell
  crop): splits are made over images and map to items through it, so a cell-level task reuses
  the image-level split without hand mapping;
- ``groups``: what items sharing labels have in common (OpenCell: the protein); the protein split
  track keeps a group in one part and the bootstrap resamples groups;
- ``labels``: ``(N, C)`` 0/1 uint8 in ``card.class_names`` order, in both label modes (a single-label
  dataset has exactly one 1 per row);
- ``read(i)``: ``(C, H, W)`` pixels in ``card.channel_names`` order; ``path(i)``: the file behind it;
- ``reader_options``: the options the reader was opened with (``{"min_grade": 1}``), recorded.

Standard library and numpy only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Sequence, runtime_checkable

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from ocbench.data.cards import DatasetCard

__all__ = ["ItemSet", "ImageSplit", "parent_positions"]


@runtime_checkable
class ItemSet(Protocol):
    """What a dataset reader (and a set of cell crops) provides; see the module docstring."""

    card: "DatasetCard"
    name: str
    version: str

    @property
    def ids(self) -> Sequence[str]: ...

    @property
    def parent_ids(self) -> Sequence[str]: ...

    @property
    def groups(self) -> np.ndarray: ...

    @property
    def labels(self) -> np.ndarray: ...

    @property
    def reader_options(self) -> dict[str, Any]: ...

    def read(self, i: int) -> np.ndarray: ...

    def path(self, i: int) -> Path: ...

    def __len__(self) -> int: ...


def parent_positions(items: ItemSet, parents: Sequence[str]) -> np.ndarray:
    """Positions (ascending int64) of the items whose parent image is in ``parents``."""
    wanted = set(map(str, parents))
    return np.flatnonzero(np.fromiter((str(p) in wanted for p in items.parent_ids), dtype=bool,
                                      count=len(items))).astype(np.int64)


@runtime_checkable
class ImageSplit(Protocol):
    """A split of a dataset's images into a test part and cross-validation folds (made in
    ``ocbench.benchmark.splits``): what a task asks of ``context.split``."""

    track: str
    seed: int

    @property
    def sha256(self) -> str: ...

    def indices(self, ids: Sequence[str]) -> tuple[np.ndarray, list[np.ndarray]]: ...

    def indices_of(self, items: ItemSet) -> tuple[np.ndarray, list[np.ndarray]]: ...
