"""Dataset cards: what a dataset is (channels, classes, groups, labels), registered by name.

A card is the one place the rest of ocbench learns a dataset's vocabulary: channel adapters take
its channel names and presets, splits group by its group column, tasks take their per-task
defaults, label mode and crop sizes from it, entries key per-class scores by its class names, the
board labels tables with its name and never ranks two datasets or label modes together.
``opencell`` (the real data, fetched by ``ocbench data download opencell``), ``demo``
(synthetic, in the same layout) and ``hpa2021`` (the HPA single-cell challenge layout, card and
reader in ``ocbench.data.hpa``) are built in;
a plugin adds others with :func:`register_dataset_card` (or the ``ocbench.datasets`` entry point).

:func:`resolve_dataset` is the one resolver of what a user typed after ``--dataset`` (a card name,
``NAME:DIR``, a table of a lab's own images, a Hugging Face dataset, or a folder); :func:`open_dataset` opens it into an item set
(:class:`~ocbench.data.base.ItemSet`) carrying its card (``.card``) and the name its entries record
(``.name``). A folder in the OpenCell layout is read by the OpenCell reader, but recorded
as ``opencell`` only when it is OpenCell (it holds the marker ``ocbench data download`` writes);
a user's own folder in that layout is recorded as ``local:<folder name>``, and a demo folder as
``demo``, so the paper's numbers never stand beside data that is not OpenCell.

Standard library only (readers are imported when a dataset is opened).
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ocbench._io import read_json_or_none
from ocbench.data.compartments import CHANNELS, COMPARTMENTS, GRADES
from ocbench.errors import ConfigError, DataError
from ocbench.registry import Registry

__all__ = [
    "DatasetCard",
    "DATASETS",
    "OPENCELL",
    "DEMO",
    "DOWNLOAD_MARKER",
    "register_dataset_card",
    "get_dataset_card",
    "list_dataset_cards",
    "open_dataset",
    "dataset_card_for",
]

#: Written by ``ocbench data download`` at the root of the data it fetched: the folder is OpenCell.
DOWNLOAD_MARKER = "ocbench-download.json"
#: Written by ``ocbench data demo`` at the root of a synthetic demo dataset.
DEMO_MARKER = "ocbench-demo.json"

_NAME = re.compile(r"^[a-z0-9][a-z0-9._:/-]*$")  # "/": hf:org/name
#: How a dataset's labels are given: several classes per item, or exactly one.
LABEL_MODES: tuple[str, ...] = ("multilabel", "single")
#: A single-cell crop's window, in typical cell diameters.
CROP_DIAMETERS = 3.2


@dataclass(frozen=True)
class DatasetCard:
    """Everything ocbench needs to know about a dataset, besides its files."""

    name: str
    description: str
    #: Channel names in the order the reader returns them (``dataset.read(i)`` is (C, H, W)).
    channel_names: tuple[str, ...]
    #: Label vocabulary in label-vector order.
    class_names: tuple[str, ...]
    #: Manifest column grouping items that share labels (split track "protein"; bootstrap unit).
    group_column: str
    #: What one group is, in words ("protein").
    group_name: str
    #: ``"module:callable"`` called as ``reader(root, card=..., name=..., **options)`` where options
    #: are ``annotations`` and this card's :attr:`reader_options`.
    reader: str
    #: Annotation grades and the lowest grade counted as a positive label by default.
    grades: tuple[int, ...] = ()
    default_min_grade: int = 1
    #: ``multilabel`` (any number of classes per item) or ``single`` (exactly one per item). Labels
    #: are an (N, C) 0/1 matrix in both modes; a task states which modes it scores.
    label_mode: str = "multilabel"
    #: The manifest column holding item ids (what splits and embedding caches list).
    id_column: str = "fov_id"
    #: Reader options a user may set (``--min-grade`` is OpenCell's ``min_grade``): name -> allowed values.
    reader_options: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    #: Named channel maps for RGB backbones: preset -> {dataset channel: input channel letter or name}.
    #: ``imagenet-best`` for OpenCell is the paper's best map (protein -> G, nucleus -> B).
    channel_presets: dict[str, dict[str, str]] = field(default_factory=dict)
    #: The protocol's per-task settings on this dataset: task name -> {setting: value}. They are the
    #: task's defaults here (not overrides), e.g. which classes sc-knn leaves out.
    task_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Which single cells every cell-level task (sc-knn, a plugin's) and ``ocbench data cells`` take
    #: on this dataset: ``CellSelection`` settings (``ocbench.tasks.cell_task``), e.g. the label grade
    #: and the classes whose FOVs are left out; a task's own ``task_defaults`` come on top.
    cell_selection: dict[str, Any] = field(default_factory=dict)
    #: A typical cell's diameter in pixels: single-cell crops are sized from it.
    cell_diameter_px: float | None = None
    #: The segmentation backend single-cell tasks use when set to ``auto``: Cellpose (the paper's)
    #: on OpenCell; ``classical`` (scikit-image, no model download, works offline) elsewhere.
    segmentation: str = "classical"
    #: Where the data lives by default: ``"module:callable"`` returning a folder, or None.
    default_root: str | None = None
    #: How to get the data when the default folder is missing (shown in the error).
    obtain_hint: str = ""
    pixel_size_um: float | None = None
    synthetic: bool = False
    url: str = ""
    citation: str = ""
    license: str = ""
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        def bad(what: str, why: str) -> ConfigError:
            return ConfigError(f"dataset card '{self.name}': field {what} {why}")

        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise bad("name", "must be lower case letters, digits, '.', '_', '-', ':' or '/'")
        for what in ("channel_names", "class_names"):
            names = getattr(self, what)
            if not isinstance(names, tuple) or not names or not all(isinstance(n, str) and n for n in names):
                raise bad(what, "must be a non-empty tuple of names")
            if len(set(names)) != len(names):
                raise bad(what, "has duplicate names")
        if ":" not in self.reader:
            raise bad("reader", "must be 'module:callable'")
        if self.grades and self.default_min_grade not in self.grades:
            raise bad("default_min_grade", f"must be one of the grades {self.grades}")
        if self.label_mode not in LABEL_MODES:
            raise bad("label_mode", f"must be one of {', '.join(LABEL_MODES)}, got {self.label_mode!r}")
        for preset, mapping in self.channel_presets.items():
            unknown = sorted(set(mapping) - set(self.channel_names))
            if unknown:
                raise bad("channel_presets", f"preset {preset!r} names unknown channel(s) {', '.join(unknown)}")
        if not isinstance(self.segmentation, str) or not self.segmentation:
            raise bad("segmentation", "must name a segmentation backend (classical, cellpose)")
        if not isinstance(self.cell_selection, dict):
            raise bad("cell_selection", "must map cell selection settings to values (label_grade, omit_fovs_with, ...)")
        if self.cell_diameter_px is not None and not self.cell_diameter_px > 0:
            raise bad("cell_diameter_px", "must be a positive number of pixels")

    def reader_option_values(self, given: dict[str, Any]) -> dict[str, Any]:
        """This card's reader options with ``given`` applied (None = the default); one-line errors
        for options the card does not have or values it does not allow."""
        # defaults: the first allowed value, except OpenCell's grade, whose default the card states
        values = {name: self.default_min_grade if name == "min_grade" else allowed[0]
                  for name, allowed in self.reader_options.items()}
        for name, value in given.items():
            if value is None:
                continue
            flag = "--" + name.replace("_", "-")
            if name not in self.reader_options:
                raise ConfigError(f"{flag}: dataset {self.name!r} has no reader option {name!r}; leave it out")
            allowed = self.reader_options[name]
            if value not in allowed:
                raise ConfigError(
                    f"{flag} {value!r} is not allowed for dataset {self.name!r}; use one of {', '.join(map(str, allowed))}"
                )
            values[name] = value
        return values

    def cell_crop(self, zoom: float = 2.0) -> int:
        """Output size (px) of a single-cell crop at ``zoom``: a window of 3.2 cell diameters (a cell
        and its neighbours' edges), zoomed, rounded to a multiple of 8. OpenCell (80 px cells)
        gets the paper's 512 px at zoom 2."""
        if self.cell_diameter_px is None:
            raise ConfigError(
                f"dataset {self.name!r} states no cell diameter; set cell_diameter_px in its card, or --set crop_size=N"
            )
        return max(8, int(round(CROP_DIAMETERS * self.cell_diameter_px * zoom / 8.0)) * 8)

    def __hash__(self) -> int:
        return hash(self.name)

    def to_dict(self) -> dict[str, Any]:
        """What an entry records about the dataset's card (JSON-ready)."""
        return {
            "name": self.name,
            "channel_names": list(self.channel_names),
            "class_names": list(self.class_names),
            "group_column": self.group_column,
            "group_name": self.group_name,
            "label_mode": self.label_mode,
            "pixel_size_um": self.pixel_size_um,
            "cell_diameter_px": self.cell_diameter_px,
            "synthetic": self.synthetic,
        }

    def default_folder(self) -> Path | None:
        if self.default_root is None:
            return None
        from ocbench.registry import resolve_reference

        return Path(resolve_reference(self.default_root, what=f"dataset {self.name} default root")())


def _check_card(card: Any) -> None:
    if not isinstance(card, DatasetCard):
        raise ConfigError(f"expected a DatasetCard, got {type(card).__name__}")


DATASETS: Registry[DatasetCard] = Registry(
    "dataset", entry_point_group="ocbench.datasets", check=_check_card, list_command="ocbench data list"
)


def register_dataset_card(card: DatasetCard, *, overwrite: bool = False) -> DatasetCard:
    """Add a dataset card (returns it); another card under a taken name is refused."""
    _check_card(card)
    DATASETS.register(card.name, card, overwrite=overwrite)
    return card


def get_dataset_card(name: str | DatasetCard) -> DatasetCard:
    if isinstance(name, DatasetCard):
        return name
    return DATASETS.get(name)


def list_dataset_cards() -> list[DatasetCard]:
    return [card for _, card in DATASETS.items()]


_OPENCELL_CITATION = (
    "Cho et al., OpenCell: Endogenous tagging for the cartography of human cellular organization, "
    "Science 375, eabi6983 (2022)"
)

#: What every dataset in OpenCell's raw layout shares: channels, classes, groups, grades, reader.
_OPENCELL_LAYOUT: dict[str, Any] = dict(
    channel_names=CHANNELS,
    class_names=COMPARTMENTS,
    group_column="ensg",
    group_name="protein",
    reader="ocbench.data.opencell:OpenCellDataset",
    grades=GRADES,
    default_min_grade=1,
    reader_options={"min_grade": GRADES},
    channel_presets={"imagenet-best": {"protein": "G", "nucleus": "B"}},
    # single-cell weak labels (sc-knn's): compartments at grade 3, FOVs with big aggregates left out
    # (unreliable segmentation; the paper excludes them)
    cell_selection={"label_grade": 3, "omit_fovs_with": ("big_aggregates",)},
)

OPENCELL = register_dataset_card(
    DatasetCard(
        name="opencell",
        description="OpenCell: 1,310 endogenously tagged proteins in HEK293T, confocal FOVs "
        "(protein: mNeonGreen, nucleus: Hoechst), 17 localization compartments graded 1-3 per protein",
        **_OPENCELL_LAYOUT,
        default_root="ocbench.paths:opencell_root",
        obtain_hint="run `ocbench data download opencell` first, or pass --dataset DIR (or --dataset demo for the offline demo)",
        pixel_size_um=0.206,
        cell_diameter_px=80.0,  # about 16 um HEK293T cells at 0.206 um/px
        segmentation="cellpose",  # the paper's masks
        url="https://opencell.czbiohub.org",
        citation=_OPENCELL_CITATION,
        license="CC BY 4.0 (images and annotations)",
    )
)

DEMO = register_dataset_card(
    DatasetCard(
        name="demo",
        description="ocbench's synthetic demo in the exact OpenCell raw layout: drawn cells whose "
        "protein channel carries class-specific patterns (offline, written on first use)",
        **_OPENCELL_LAYOUT,
        default_root="ocbench.data.demo:ensure_demo",
        cell_diameter_px=26.0,  # DemoConfig.cell_radius 13 px
        synthetic=True,
        notes="Synthetic: its scores say that the pipeline works, not how a backbone does on real cells.",
    )
)


def _same_folder(a: Path, b: Path | None) -> bool:
    try:
        return b is not None and a.resolve() == b.resolve()
    except OSError:
        return False


def demo_card(root: Path) -> DatasetCard:
    """The demo card with the cell diameter the folder's generator drew: a demo written with
    ``--scale`` or ``--size`` has larger cells than the default one, and single-cell crops are sized
    from the diameter."""
    config = (read_json_or_none(root / DEMO_MARKER, dict) or {}).get("config")
    radius = config.get("cell_radius") if isinstance(config, dict) else None
    if not isinstance(radius, (int, float)) or isinstance(radius, bool):
        return DEMO  # a demo written before its marker recorded the radius drew the default cells
    diameter = 2.0 * float(radius)
    return DEMO if diameter == DEMO.cell_diameter_px else dataclasses.replace(DEMO, cell_diameter_px=diameter)


def recorded_name(root: Path) -> tuple[DatasetCard, str]:
    """The card and the recorded name of a folder in the OpenCell layout (see the module docstring)."""
    if (root / DEMO_MARKER).is_file():
        return demo_card(root), DEMO.name
    if (root / DOWNLOAD_MARKER).is_file() or _same_folder(root, OPENCELL.default_folder()):
        return OPENCELL, OPENCELL.name
    slug = re.sub(r"[^a-z0-9._-]+", "-", root.resolve().name.lower()).strip("-") or "folder"
    return OPENCELL, f"local:{slug}"


#: File name endings read as a lab's own table (one row per image; see ``ocbench.data.table``).
TABLE_SUFFIXES: tuple[str, ...] = (".csv", ".tsv", ".parquet")
#: What makes a table's card (its sidecar over what the table says about itself).
TABLE_CARD = "ocbench.data.table:table_card"


@dataclass(frozen=True)
class DatasetSource:
    """What ``--dataset`` named, resolved but not opened: the card, where the data is, the name
    entries record."""

    card: DatasetCard
    root: Path
    name: str


def _unknown_dataset(text: str, path: Path) -> DataError:
    looks_like_path = os.sep in text or path.suffix != ""
    close = "" if looks_like_path else DATASETS.unknown(text).args[0]
    hint = f" ({close.split('; ', 1)[1]})" if "did you mean" in close else ""
    return DataError(
        f"{path}: no such folder or table and no dataset card of that name{hint}; "
        f"known datasets: {', '.join(DATASETS.names())} (see: ocbench data list), "
        f"or a folder in the OpenCell layout, or a table ({', '.join(TABLE_SUFFIXES)}), "
        "or a Hugging Face dataset (hf:ORG/NAME, a save_to_disk or parquet folder)"
    )


#: What reads Hugging Face datasets (by reference: that module builds on this one).
HF_MODULE = "ocbench.data.hf"


def _is_opencell_layout(card: DatasetCard) -> bool:
    return card.reader == OPENCELL.reader


def _layout_card(path: Path) -> DatasetCard | None:
    """The registered card whose layout ``path`` is in, by the files its card says such a folder
    holds (``extra["layout_files"]``, e.g. HPA 2021's ``train.csv`` and ``train/``)."""
    for _, card in DATASETS.items():
        marks = tuple(card.extra.get("layout_files", ()))
        if marks and all((path / mark).exists() for mark in marks):
            return card
    return None


def _card_folder(card: DatasetCard, folder: Path) -> DatasetSource:
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder for dataset {card.name!r}; "
                        f"{card.obtain_hint or 'pass the folder holding its data'}")
    return DatasetSource(card, folder, card.name)


def resolve_dataset(dataset: str | os.PathLike) -> DatasetSource:
    """The one resolver of what a user typed after ``--dataset``:

    - a card name (its default folder);
    - ``NAME:DIR``: a folder in the layout of the registered card NAME (``hpa2021:/data/hpa``);
    - ``hf:ORG/NAME[@REVISION]``: a Hugging Face Hub dataset (fetched into the Hub cache);
    - a table of a lab's own images (``.csv``, ``.tsv``, ``.parquet``);
    - a folder: a Hugging Face ``save_to_disk`` folder or parquet shards, a registered layout it is
      recognisably in (e.g. HPA 2021), or the OpenCell layout.

    Anything else is an error with a did-you-mean, never silently OpenCell. Reads tables and
    features, not the images."""
    from ocbench.registry import resolve_reference

    text = str(dataset)
    if text in DATASETS:
        card = DATASETS.get(text)
        root = card.default_folder()
        if root is None:
            layout = f"--dataset {card.name}:DIR" if not _is_opencell_layout(card) else "--dataset DIR"
            raise ConfigError(f"dataset {card.name!r} has no default folder; pass {layout}"
                              + (f" ({card.obtain_hint})" if card.obtain_hint else ""))
        if not root.exists():
            raise DataError(f"{root}: no {card.name} data here; {card.obtain_hint or 'pass --dataset DIR'}")
        return DatasetSource(card, root, card.name)
    if text.startswith("hf:"):
        card, folder = resolve_reference(f"{HF_MODULE}:open_hub", what="Hugging Face datasets")(text)
        return DatasetSource(card, folder, card.name)
    prefix, sep, rest = text.partition(":")
    if sep and prefix in DATASETS and rest and not _is_opencell_layout(DATASETS.get(prefix)):
        # an OpenCell-layout folder is named by its markers instead (see recorded_name)
        return _card_folder(DATASETS.get(prefix), Path(rest).expanduser())
    path = Path(text).expanduser()
    if path.suffix.lower() in TABLE_SUFFIXES and path.is_file():
        # by reference, like every reader: the table reader builds on this module
        card = resolve_reference(TABLE_CARD, what="table dataset card")(path)
        return DatasetSource(card, path, card.name)
    if path.is_dir():
        if resolve_reference(f"{HF_MODULE}:is_hf_folder", what="Hugging Face datasets")(path):
            card = resolve_reference(f"{HF_MODULE}:hf_card", what="Hugging Face datasets")(path)
            return DatasetSource(card, path, card.name)
        layout = _layout_card(path)
        if layout is not None:
            return DatasetSource(layout, path, layout.name)
        card, name = recorded_name(path)
        return DatasetSource(card, path, name)
    raise _unknown_dataset(text, path)


def dataset_card_for(dataset: str | os.PathLike) -> DatasetCard:
    """The card of what ``--dataset`` names, without opening the images (for checks before any work)."""
    return resolve_dataset(dataset).card


def open_dataset(
    dataset: str | os.PathLike | DatasetSource,
    *,
    annotations: str | os.PathLike | None = None,
    min_grade: int | None = None,
    reader_kwargs: dict[str, Any] | None = None,
):
    """Open ``dataset`` (a card name, a table or a folder) and return its item set
    (:class:`~ocbench.data.base.ItemSet`: ``.card``, ``.name`` recorded in entries, ``.version``).

    ``min_grade`` is a reader option (OpenCell's); a dataset whose card has no such option refuses it.
    """
    from ocbench.registry import resolve_reference

    source = dataset if isinstance(dataset, DatasetSource) else resolve_dataset(dataset)
    card = source.card
    options = card.reader_option_values({"min_grade": min_grade})
    if annotations is not None:
        # the OpenCell layout's annotation table, or what a card says its reader takes (HPA's metadata)
        if "min_grade" not in card.reader_options and not card.extra.get("annotations"):
            raise ConfigError(f"--annotations: dataset {source.name!r} takes its labels from its table; leave it out")
        options["annotations"] = annotations
    reader: Callable[..., Any] = resolve_reference(card.reader, what=f"dataset {card.name} reader")
    return reader(source.root, card=card, name=source.name, **options, **(reader_kwargs or {}))


# Built-in cards defined beside their readers, registered by reference (those modules build on
# this one; the card is imported on first use).
DATASETS.register("hpa2021", "ocbench.data.hpa:HPA2021")
