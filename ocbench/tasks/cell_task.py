"""Tasks on single cells: :class:`CellSelection` (which cells, cut how) and the :class:`CellTask` base.

A cell-level task scores embeddings of single-cell crops (:mod:`ocbench.data.cells`): every FOV is
segmented (masks are saved and reused), each cell is cut around its centroid, over-segmented
fragments are dropped, and the cells of eligible FOVs carry their FOV's weak labels (or an expert
file's). The settings that choose those cells are :class:`CellSelection`; ``ocbench data cells``
and ``ocbench embed --cells`` use it on its own (its defaults, then the dataset card's
``cell_selection``), and a task holds the same settings as its own fields by subclassing
:class:`CellTask`, so they are ``--set`` keys, recorded in the entry's ``task_config``, and a task
needs no code to select, cut or embed cells:

    @register_task
    @dataclass(frozen=True)
    class ScLinear(CellTask):
        name: ClassVar[str] = "sc-linear"
        ...
        def evaluate(self, context):
            cells = self.cell_items(context)   # segmented, cut, embedded, aligned
            ... cells.features, cells.labels, cells.parent_ids (the FOV of each cell) ...

``sc-knn`` (:mod:`ocbench.tasks.sc_knn`) is one such task; CONTRIBUTING.md ("A task on single
cells") shows a complete linear probe on cells as a plugin.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterable

from ocbench.errors import ConfigError, DataError
from ocbench.tasks.base import TaskConfig, _jsonable, parse_assignments

if TYPE_CHECKING:  # numpy and the cell pipeline are imported when cells are made: `import ocbench.tasks` stays light
    import numpy as np

    from ocbench.tasks.context import RunContext

__all__ = ["CellSelection", "CellTask", "CellItems"]


@dataclass(frozen=True)
class CellSelection:
    """Which cells a cell-level task evaluates, and how they are cut (defaults: the paper's).

    Segmentation (``segmentation``), the crop (``crop_size``, ``zoom``, ``mask_crops``), the
    over-segmentation filter (``black_percentile``) and the labels: weak labels of FOVs annotated at
    ``label_grade`` or higher, FOVs with a class of ``omit_fovs_with`` left out, or the cells of an
    expert file (``cell_labels``).
    """

    segmentation: str = field(
        default="auto",
        metadata={"help": "cellpose (paper), classical, or auto: the dataset card's (cellpose on OpenCell, classical "
                          "on the demo and a lab's own tables)"},
    )
    crop_size: int = field(
        default=512, metadata={"help": "crop cut and output size, px (default: from the dataset card's cell diameter)"}
    )
    zoom: float = field(default=2.0, metadata={"help": "zoom about the crop centre"})
    mask_crops: bool = field(default=True, metadata={"help": "zero the pixels outside the cell's own mask"})
    black_percentile: float = field(
        default=99.7, metadata={"help": "drop crops whose black-pixel fraction is above this percentile"}
    )
    label_grade: int = field(default=3, metadata={"help": "weak labels: FOV compartments annotated at this grade or higher"})
    omit_fovs_with: tuple[str, ...] = field(
        default=(), metadata={"help": "FOVs annotated with these classes are not evaluated (default: the dataset card's)"}
    )
    # "file": the entry records the file's sha256, and other contents are another run (runner.py)
    cell_labels: str = field(
        default="", metadata={"help": "expert cell labels CSV (see ocbench data cells --help); '' = weak labels", "file": True}
    )

    def __post_init__(self) -> None:
        check_cell_settings(self, "cell selection")

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def of(cls, settings: Any) -> "CellSelection":
        """The cell selection of ``settings`` (a CellTask, or anything with these attributes)."""
        return cls(**{k: getattr(settings, k) for k in cls.keys()})

    def to_dict(self) -> dict[str, Any]:
        return {k: _jsonable(getattr(self, k)) for k in self.keys()}

    # -- on a dataset ---------------------------------------------------------------------------
    def card_settings(self, dataset_card: Any, given: dict[str, Any] | None = None) -> dict[str, Any]:
        """The dataset card's cell selection (its ``cell_selection``), then ``given`` on top, and the
        crop size from the card's typical cell diameter unless one of them sets it."""
        settings = {**dict(dataset_card.cell_selection or {}), **(given or {})}
        if dataset_card.cell_diameter_px is not None and "crop_size" not in settings:
            settings["crop_size"] = dataset_card.cell_crop(settings.get("zoom", self.zoom))
        return settings

    def for_dataset(self, dataset_card: Any) -> "CellSelection":
        """This selection with the dataset card's settings applied (see :meth:`card_settings`)."""
        settings = self.card_settings(dataset_card)
        unknown = sorted(set(settings) - set(self.keys()))
        if unknown:
            raise ConfigError(f"dataset card {dataset_card.name!r}: cell_selection names unknown setting(s) {unknown}")
        return dataclasses.replace(self, **settings)

    def with_overrides(self, assignments: Iterable[str]) -> "CellSelection":
        """Apply ``["key=value", ...]`` (``--set``), each parsed with the setting's type."""
        changes = parse_assignments(assignments, self.keys(), typing.get_type_hints(type(self)), "cell selection")
        return dataclasses.replace(self, **changes)

    def crop_settings(self):
        from ocbench.data.cells import CropSettings

        return CropSettings(size=self.crop_size, zoom=self.zoom, mask_outside=self.mask_crops)

    def label_policy(self):
        from ocbench.data.cells import LabelPolicy

        return LabelPolicy(grade=self.label_grade, omit_fovs_with=tuple(self.omit_fovs_with))

    def backend_for(self, dataset_card: Any):
        """The segmentation backend: ``auto`` is the dataset card's ``segmentation``: cellpose (the
        paper's) on OpenCell, classical on the demo's drawn cells and on a lab's own tables (no model
        download, so they run offline; Cellpose is an optional install a card or ``--set`` can ask for)."""
        from ocbench.data.cells import get_backend

        return get_backend(dataset_card.segmentation if self.segmentation == "auto" else self.segmentation)

    def validate_for(self, dataset_card: Any, what: str = "cell selection") -> None:
        """Refuse, before any work, classes, channels, a backend or a label file this dataset lacks."""
        classes = tuple(dataset_card.class_names)
        unknown = sorted(set(self.omit_fovs_with) - set(classes))
        if unknown:
            raise ConfigError(f"{what}: omit_fovs_with names unknown class(es) {unknown}; the dataset's are {', '.join(classes)}")
        backend = self.backend_for(dataset_card)
        backend.check_channels(tuple(dataset_card.channel_names))
        backend.check_available()
        if self.cell_labels and not Path(self.cell_labels).expanduser().is_file():
            raise ConfigError(f"{what}: cell_labels file {self.cell_labels} does not exist")

    def evaluation_cells(self, dataset: Any, *, progress: Any = None, cache_dir: Any = None):
        """The cell table (segmenting what is not saved yet) and the cells this selection evaluates
        (:class:`ocbench.data.cells.EvaluationSet`)."""
        from ocbench.data import cells

        table = cells.prepare_cells(
            dataset, self.backend_for(dataset.card), crop=self.crop_settings(), black_percentile=self.black_percentile,
            labels=self.label_policy(), progress=progress, cache_dir=cache_dir,
        )
        return table, cells.evaluation_set(dataset, table, self.cell_labels or None)


def check_cell_settings(settings: Any, what: str) -> None:
    """One-line ConfigErrors (``<what>: <key> must be ...``) for cell-selection settings out of range."""
    def bad(key: str, rule: str) -> ConfigError:
        return ConfigError(f"{what}: {key} must be {rule}, got {getattr(settings, key)!r}")

    if settings.segmentation != "auto":
        from ocbench.data.cells import SEGMENTATION_BACKENDS

        if settings.segmentation not in SEGMENTATION_BACKENDS:
            raise bad("segmentation", f"auto or one of {', '.join(sorted(SEGMENTATION_BACKENDS.names()))}")
    if not (isinstance(settings.black_percentile, (int, float)) and 0 < settings.black_percentile <= 100):
        raise bad("black_percentile", "in (0, 100]")
    if settings.label_grade not in (1, 2, 3):
        raise bad("label_grade", "1, 2 or 3")
    from ocbench.data.cells import CropSettings

    CropSettings(size=settings.crop_size, zoom=settings.zoom, mask_outside=settings.mask_crops)  # checks size and zoom


@dataclass
class CellItems:
    """What :meth:`CellTask.cell_items` returns: the evaluation cells, embedded.

    ``features`` (N, D); ``labels`` (N, C) 0/1; ``ids`` the cell ids; ``parent_ids`` (N,) the FOV each
    cell was cut from (split by it: cells of one FOV share their weak labels); ``groups`` (N,) the
    dataset card's group of each cell (the protein on OpenCell, what intervals resample);
    ``table`` and ``evaluation``: the cell table and :class:`~ocbench.data.cells.EvaluationSet`.
    """

    features: np.ndarray
    labels: np.ndarray
    ids: list[str]
    parent_ids: np.ndarray
    groups: np.ndarray
    table: Any
    evaluation: Any

    def __len__(self) -> int:
        return len(self.ids)


def _cell_field(name: str) -> Any:
    """A CellTask field with :class:`CellSelection`'s default and help for ``name``."""
    f = CellSelection.__dataclass_fields__[name]
    return field(default=f.default, metadata=f.metadata)


@dataclass(frozen=True)
class CellTask(TaskConfig):
    """Base of a task on single cells: :class:`CellSelection`'s settings as fields (``--set`` keys,
    recorded in ``task_config``), the dataset card's cell selection as the defaults on that dataset,
    checks before any work, and :meth:`cell_items` (segment, cut, embed). A subclass adds its own
    settings and ``evaluate``."""

    requires: ClassVar[tuple[str, ...]] = ("skimage",)  # both segmentation backends use scikit-image
    extra: ClassVar[str | None] = "cells"  # scikit-image; Cellpose is checked by its backend when chosen

    segmentation: str = _cell_field("segmentation")
    crop_size: int = _cell_field("crop_size")
    zoom: float = _cell_field("zoom")
    mask_crops: bool = _cell_field("mask_crops")
    black_percentile: float = _cell_field("black_percentile")
    label_grade: int = _cell_field("label_grade")
    omit_fovs_with: tuple[str, ...] = _cell_field("omit_fovs_with")
    cell_labels: str = _cell_field("cell_labels")

    def __post_init__(self) -> None:
        check_cell_settings(self, f"task {self.name}")

    @property
    def selection(self) -> CellSelection:
        """This task's cell selection."""
        return CellSelection.of(self)

    def crop_settings(self):
        return self.selection.crop_settings()

    def label_policy(self):
        return self.selection.label_policy()

    def backend_for(self, dataset_card: Any):
        return self.selection.backend_for(dataset_card)

    def dataset_settings(self, dataset_card: Any) -> dict[str, Any]:
        """The card's ``cell_selection``, this task's ``task_defaults`` on top, and the crop size from
        the card's typical cell diameter."""
        return self.selection.card_settings(dataset_card, super().dataset_settings(dataset_card))

    def validate_for(self, dataset_card: Any) -> None:
        self.selection.validate_for(dataset_card, f"task {self.name}")

    def evaluation_cells(self, dataset: Any, *, progress: Any = None, cache_dir: Any = None):
        """The cell table and the cells this task evaluates: what ``evaluate`` scores."""
        return self.selection.evaluation_cells(dataset, progress=progress, cache_dir=cache_dir)

    def cell_items(self, context: RunContext) -> CellItems:
        """Segment (or reuse masks), cut and embed the evaluation cells, through ``context``."""
        # segmentation fills a shared cache: under torchrun rank 0 segments, the other ranks read
        table, evaluation = context.main_first(lambda: self.evaluation_cells(context.dataset, progress=context.progress))
        context.progress.step(
            f"{len(evaluation):,} evaluation cells ({evaluation.source} labels) of {len(table):,} masks "
            f"({table.meta['n_dropped']:,} dropped)"
        )
        import numpy as np

        embeddings = context.embed(evaluation.crops)
        if list(embeddings.fov_ids) != list(evaluation.ids):
            raise DataError("the cell embeddings do not line up with the evaluation cells; rerun with --recompute")
        return CellItems(np.asarray(embeddings.features), evaluation.labels, list(evaluation.ids),
                         evaluation.groups, evaluation.crops.groups, table, evaluation)

    def cell_details(self, cells: CellItems, dataset_card: Any) -> dict[str, Any]:
        """What a cell task's result reports about its cells (segmentation, masks, filter, labels)."""
        table, evaluation = cells.table, cells.evaluation
        return {
            "segmentation": self.backend_for(dataset_card).describe(),
            "mask_store": table.meta.get("masks_dir"),
            "n_masks": int(len(table)),
            "n_dropped": int(table.meta["n_dropped"]),
            "black_threshold": float(table.meta["black_threshold"]),
            "labels": evaluation.source,
            **{f"labels_{k}": v for k, v in evaluation.notes.items()},
        }
