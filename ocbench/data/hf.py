"""Hugging Face ``datasets`` in: ``--dataset hf:ORG/NAME[@REVISION]``, a ``save_to_disk`` folder, or
a folder of parquet shards.

Columns, by convention (an ``ocbench.dataset.json`` card in the folder or repository may name others):

- the image: one column ``image`` (an ``Image``, or an ``Array2D``/``Array3D`` of shape (C, H, W)),
  or one column per channel, ``image:<channel name>`` (each an ``Image`` or ``Array2D``);
- the labels: ``label`` or ``labels``, a ``ClassLabel`` (single-label) or a list of ``ClassLabel``
  (multi-label); the class names are the feature's names;
- ``group`` (optional): what images sharing labels have in common; without it every image is its
  own group;
- ``id`` (optional): the item id (default: the row number).

The card beside the data (``ocbench.dataset.json`` or ``.yaml``) takes the fields of a table's
sidecar (name, channel and class order, label mode, pixel size, cell diameter, licence, ...) plus
``id_column``, ``group_column``, ``label_column`` and ``image_column``;
``ocbench data export --to hf`` writes one, so an exported OpenCell folder reads back with its
ids, proteins and channel names.

A Hub dataset is fetched with ``huggingface_hub`` (every parquet shard of the repository, all its
splits: ocbench makes its own split) at the given revision, and the commit it resolved to is
recorded in entries (``reader_options``), like a backbone's revision. ``HF_HUB_OFFLINE=1`` reads
the local Hub cache only. The dataset's version hashes the listing and the content of its data
files (``.arrow`` / ``.parquet``), so rewritten pixels give another version.
"""

from __future__ import annotations

import io
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ocbench._io import json_sha256
from ocbench.data import content as data_content
from ocbench.data.cards import DatasetCard, DATASETS
from ocbench.errors import ConfigError, DataError

__all__ = ["HFDataset", "HF_PREFIX", "CARD_NAMES", "hf_card", "fetch_hub_dataset", "is_hf_folder", "parse_hf_spec"]

HF_PREFIX = "hf:"
#: The card a folder or Hub repository may carry about itself.
CARD_NAMES: tuple[str, ...] = ("ocbench.dataset.json", "ocbench.dataset.yaml", "ocbench.dataset.yml")
#: Card fields naming columns (on top of a table sidecar's fields).
COLUMN_FIELDS = ("id_column", "group_column", "label_column", "image_column")
_SAVED_MARKERS = ("state.json", "dataset_info.json", "dataset_dict.json")
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SLUG = re.compile(r"[^a-z0-9._-]+")


# ---------------------------------------------------------------------------------------------
# Where the data is: a local folder, or a Hub repository fetched into the Hub cache


def is_hf_folder(path: Path) -> bool:
    """Whether ``path`` is a ``save_to_disk`` folder or holds parquet shards."""
    if not path.is_dir():
        return False
    return any((path / marker).is_file() for marker in _SAVED_MARKERS) or bool(_parquet_files(path))


def _parquet_files(folder: Path) -> list[Path]:
    """Parquet shards at the top of ``folder`` or one folder down (``data/``, or a Hub config's folder)."""
    found = [*folder.glob("*.parquet"), *folder.glob("*/*.parquet")]
    return sorted(p for p in found if p.is_file() and not any(part.startswith(".") for part in
                                                                p.relative_to(folder).parts))


def parse_hf_spec(text: str) -> tuple[str, str | None]:
    """``hf:ORG/NAME[@REVISION]`` -> (repo id, revision or None)."""
    spec = text[len(HF_PREFIX):] if text.startswith(HF_PREFIX) else text
    repo, _, revision = spec.partition("@")
    if not _REPO.match(repo) or (_ and not revision):
        raise ConfigError(f"--dataset {text}: expected hf:ORG/NAME or hf:ORG/NAME@REVISION (a Hub dataset repository)")
    return repo, revision or None


def fetch_hub_dataset(text: str) -> tuple[Path, str, str]:
    """Fetch (or find in the Hub cache) the data files of ``hf:ORG/NAME[@REVISION]``; returns
    (local snapshot folder, repo id, the commit it resolved to). One-line errors otherwise."""
    repo, revision = parse_hf_spec(text)
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        raise ConfigError("--dataset hf:...: needs huggingface_hub (pip install huggingface_hub datasets)") from None
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    try:
        folder = Path(snapshot_download(repo, repo_type="dataset", revision=revision,
                                        allow_patterns=["*.parquet", *CARD_NAMES, "README.md"]))
    except RevisionNotFoundError:
        raise DataError(f"hf:{repo}: no revision {revision!r} in this dataset repository; give a branch, tag or "
                        "commit it has") from None
    except GatedRepoError:
        raise DataError(f"hf:{repo}: the repository is gated; accept its terms on the Hub and log in "
                        "(`hf auth login` or HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise DataError(f"hf:{repo}: no such dataset repository on the Hub (or it is private: log in with "
                        "`hf auth login`)") from None
    except LocalEntryNotFoundError:
        what = f"revision {revision!r} of " if revision else ""
        why = "HF_HUB_OFFLINE is set and " if offline else "the Hub cannot be reached and "
        raise DataError(f"hf:{repo}: {why}{what}this dataset is not in the local Hub cache; fetch it once online "
                        "(or unset HF_HUB_OFFLINE)") from None
    except Exception as exc:  # network and Hub errors come in many kinds; all mean the same here
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"hf:{repo}: could not fetch the dataset ({type(exc).__name__}: {first})") from None
    commit = folder.name if re.fullmatch(r"[0-9a-f]{40}", folder.name) else (revision or "unknown")
    if not _parquet_files(folder):
        raise DataError(f"hf:{repo}@{commit[:12]}: the repository has no parquet data files; ocbench reads "
                        "datasets stored as parquet (what push_to_hub writes)")
    return folder, repo, commit


# ---------------------------------------------------------------------------------------------
# Reading the rows and their features


def _folder_card_path(folder: Path) -> Path | None:
    for name in CARD_NAMES:
        if (folder / name).is_file():
            return folder / name
    return None


def _load(folder: Path):
    """The folder's rows as one ``datasets.Dataset`` (memory-mapped for ``save_to_disk``) and the
    data files behind it (relative to ``folder``)."""
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"{folder}: reading a Hugging Face dataset needs `datasets` (pip install datasets)") from None
    if any((folder / marker).is_file() for marker in _SAVED_MARKERS):
        try:
            loaded = datasets.load_from_disk(str(folder))
        except Exception as exc:  # a damaged or partial folder: many kinds, one meaning
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise DataError(f"{folder}: not a readable save_to_disk folder ({first}); save it again") from None
        parts = list(loaded.values()) if isinstance(loaded, datasets.DatasetDict) else [loaded]
        files = [Path(f["filename"]).resolve() for part in parts for f in part.cache_files]
        hf = parts[0] if len(parts) == 1 else _concatenate(datasets, parts, folder)
        # in row order (a split's shards, split after split)
        return hf, list(dict.fromkeys(str(f.relative_to(folder.resolve())) for f in files))
    shards = _parquet_files(folder)
    if not shards:
        raise DataError(f"{folder}: no parquet files and not a save_to_disk folder; pass a folder written by "
                        "Dataset.save_to_disk or holding .parquet shards")
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        tables = [pq.read_table(shard) for shard in shards]
        table = pa.concat_tables(tables, promote_options="none") if len(tables) > 1 else tables[0]
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"{folder}: parquet shards that do not read as one table ({first}); keep one dataset "
                        "(one schema) per folder") from None
    return datasets.Dataset(table), [str(s.relative_to(folder)) for s in shards]


def _concatenate(datasets, parts, folder: Path):
    try:
        return datasets.concatenate_datasets(parts)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"{folder}: the splits of this dataset have different columns ({first}); save one split") from None


def _class_label_of(feature: Any):
    """(ClassLabel, multilabel?) of a label feature, or None when it is neither form."""
    from datasets import ClassLabel

    if isinstance(feature, ClassLabel):
        return feature, False
    inner = getattr(feature, "feature", None)
    if isinstance(inner, ClassLabel):
        return inner, True
    return None


def _is_image_feature(feature: Any) -> bool:
    from datasets import Array2D, Array3D, Image

    return isinstance(feature, (Image, Array2D, Array3D))


def _columns(features: Any, given: dict[str, Any], where: str) -> dict[str, Any]:
    """Which columns hold ids, groups, labels and the image (one, or one per channel)."""
    names = list(features)

    def named(field_name: str, defaults: tuple[str, ...], required: bool, what: str) -> str | None:
        if field_name in given:
            column = str(given[field_name])
            if column not in features:
                raise DataError(f"{where}: the card's {field_name} {column!r} is not a column ({', '.join(names)}); "
                                f"name one of them")
            return column
        for column in defaults:
            if column in features:
                return column
        if required:
            raise DataError(f"{where}: no {what} column ({' or '.join(map(repr, defaults))}); add one, or name it with "
                            f"{field_name} in {CARD_NAMES[0]} (columns: {', '.join(names)})")
        return None

    label = named("label_column", ("label", "labels"), True, "label")
    if _class_label_of(features[label]) is None:
        raise DataError(f"{where}: column {label!r} is {type(features[label]).__name__}; ocbench reads a ClassLabel "
                        "(single-label) or a list of ClassLabel (multi-label), whose names are the classes "
                        "(cast it with Dataset.cast_column)")
    per_channel = [c for c in names if c.startswith("image:")]
    if "image_column" in given:
        image = named("image_column", (), True, "image")
        images = (image,)
    elif "image" in features:
        images = ("image",)
    elif per_channel:
        images = tuple(per_channel)
    else:
        candidates = [c for c in names if _is_image_feature(features[c])]
        if len(candidates) != 1:
            raise DataError(f"{where}: no image column; name it 'image' (an Image or Array3D (C, H, W)), or give one "
                            f"'image:<channel>' column per channel (columns: {', '.join(names)})")
        images = (candidates[0],)
    for column in images:
        if not _is_image_feature(features[column]):
            raise DataError(f"{where}: column {column!r} is {type(features[column]).__name__}, not an image; store "
                            "pixels as an Image, Array2D or Array3D feature")
    return {
        "id": named("id_column", ("id",), False, "id"),
        "group": named("group_column", ("group",), False, "group"),
        "label": label,
        "images": images,
    }


def _read_card_file(path: Path) -> dict[str, Any]:
    from ocbench.data.table import SIDECAR_FIELDS, read_sidecar

    return read_sidecar(path, fields=SIDECAR_FIELDS + COLUMN_FIELDS)


def _folder_name(folder: Path) -> str:
    return "local:" + (_SLUG.sub("-", folder.resolve().name.lower()).strip("-") or "folder")


def hf_card(folder: str | os.PathLike, *, name: str | None = None, repo: str | None = None,
            revision: str | None = None) -> DatasetCard:
    """The dataset card of a Hugging Face dataset folder: its ``ocbench.dataset.json`` over what its
    features say (classes, label mode, channels). ``repo``/``revision``: where it came from on the Hub."""
    folder = Path(folder)
    hf, _ = _load(folder)
    return _card(folder, hf, name=name, repo=repo, revision=revision)


def _card(folder: Path, hf: Any, *, name: str | None, repo: str | None, revision: str | None) -> DatasetCard:
    where = f"hf:{repo}" if repo else str(folder)
    card_path = _folder_card_path(folder)
    given = _read_card_file(card_path) if card_path is not None else {}
    columns = _columns(hf.features, given, where)
    class_label, multi = _class_label_of(hf.features[columns["label"]])
    if len(hf) == 0:
        raise DataError(f"{where}: the dataset has no rows")
    if len(columns["images"]) > 1:
        channels = tuple(c.split(":", 1)[1].strip() for c in columns["images"])
    else:
        first = _read_pixels(_pixel_views(hf, columns["images"]), columns["images"], 0, where)
        channels = tuple(f"ch{k}" for k in range(first.shape[0]))
    fields: dict[str, Any] = {
        "name": name or (f"hf:{repo.lower()}" if repo else _folder_name(folder)),
        "description": f"Hugging Face dataset {repo}" if repo else f"Hugging Face dataset saved in {folder.name}",
        "channel_names": channels,
        "class_names": tuple(class_label.names),
        "label_mode": "multilabel" if multi else "single",
        "group_name": "group" if columns["group"] else "image",
    }
    fields.update({k: v for k, v in given.items() if k not in COLUMN_FIELDS})
    for key in ("channel_names", "class_names"):
        fields[key] = tuple(str(v) for v in fields[key])
    if str(fields["name"]) in DATASETS:  # "opencell" would stand beside the paper's numbers
        raise ConfigError(f"{card_path}: name {fields['name']!r} is a registered dataset; give your data its own name")
    if tuple(fields["class_names"]) != tuple(class_label.names):
        if sorted(fields["class_names"]) != sorted(class_label.names):
            raise ConfigError(f"{card_path}: class_names differ from the label feature's names "
                              f"({', '.join(class_label.names)}); list the same classes")
    if len(fields["channel_names"]) != len(channels):
        raise ConfigError(f"{card_path}: {len(fields['channel_names'])} channel_names, but the images have "
                          f"{len(channels)} channel(s); name each channel once")
    if len(columns["images"]) > 1 and set(fields["channel_names"]) != set(channels):
        raise ConfigError(f"{card_path}: channel_names differ from the image:<channel> columns ({', '.join(channels)}); "
                          "name the same channels")
    extra = {"columns": columns, "hf_repo": repo, "hf_revision": revision}
    try:
        return DatasetCard(**fields, group_column=columns["group"] or "group", id_column=columns["id"] or "id",
                           reader="ocbench.data.hf:HFDataset", extra=extra)
    except TypeError as exc:
        raise ConfigError(f"{card_path or where}: bad dataset card ({exc})") from None


# ---------------------------------------------------------------------------------------------
# Pixels


def _as_uint16(data: np.ndarray, where: str) -> np.ndarray:
    if data.dtype == np.uint8:
        return data.astype(np.uint16) * 257  # 8-bit images scaled to the 16-bit range, as tables are
    if data.dtype == np.uint16:
        return np.ascontiguousarray(data)
    if np.issubdtype(data.dtype, np.integer) and data.min(initial=0) >= 0 and data.max(initial=0) <= 65535:
        return data.astype(np.uint16)
    raise DataError(f"{where}: pixel type {data.dtype}; ocbench reads 8- or 16-bit images (convert them)")


def _pixels_of(value: Any, feature: Any, where: str) -> np.ndarray:
    """One cell of an image column as (C, H, W) uint16."""
    from datasets import Image

    if isinstance(feature, Image):
        from PIL import Image as PILImage

        image = value
        if isinstance(value, dict):  # undecoded: {"bytes", "path"}
            image = PILImage.open(io.BytesIO(value["bytes"])) if value.get("bytes") else PILImage.open(value["path"])
        if image.mode in ("RGBA", "P", "LA", "CMYK", "YCbCr"):
            image = image.convert("RGB")
        data = np.asarray(image)
        if data.ndim == 3:
            data = np.moveaxis(data, -1, 0)
    else:
        data = np.asarray(value, dtype=np.dtype(feature.dtype))
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise DataError(f"{where}: image of shape {data.shape}; expected (C, H, W), (H, W) or an RGB image")
    return _as_uint16(data, where)


def _pixel_views(hf: Any, columns: tuple[str, ...]) -> dict[str, Any]:
    """Per image column, a view of the rows that decodes it: arrays in their stored dtype (the plain
    numpy format would widen them to int64 and hide 8-bit data), images as PIL images."""
    from datasets import Image

    views = {}
    for column in columns:
        feature = hf.features[column]
        view = hf.select_columns([column])
        views[column] = view if isinstance(feature, Image) else view.with_format("numpy", dtype=feature.dtype)
    return views


def _read_pixels(views: dict[str, Any], columns: tuple[str, ...], i: int, where: str) -> np.ndarray:
    planes = []
    for column in columns:
        view = views[column]
        plane = _pixels_of(view[int(i)][column], view.features[column], f"{where}: row {i}, column {column!r}")
        if len(columns) > 1 and plane.shape[0] != 1:  # an RGB image per channel: its channels are copies
            plane = plane.max(axis=0, keepdims=True)
        planes.append(plane)
    shapes = {p.shape[1:] for p in planes}
    if len(shapes) > 1:
        raise DataError(f"{where}: row {i}: the channel images have different sizes "
                        f"({', '.join('x'.join(map(str, s)) for s in sorted(shapes))}); give images of one size")
    return planes[0] if len(planes) == 1 else np.concatenate(planes)


def _rows_per_file(folder: Path, files: list[str]) -> list[int]:
    """Rows in each data file (read from its metadata: parquet footers, Arrow stream batches)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    counts = []
    for rel in files:
        path = folder / rel
        if path.suffix == ".parquet":
            counts.append(pq.ParquetFile(path).metadata.num_rows)
        else:
            with pa.memory_map(str(path)) as source:
                counts.append(sum(batch.num_rows for batch in pa.ipc.open_stream(source)))
    return counts


# ---------------------------------------------------------------------------------------------
# The dataset


class HFDataset:
    """The rows of a Hugging Face dataset (see the module docstring), in row order: an
    :class:`~ocbench.data.base.ItemSet`.

    An item's file (``path(i)``) is the Arrow or parquet shard holding its row, and ``content``
    gives each item its shard's record: the embedding and mask caches check items against it, so
    a rewritten shard recomputes the items it holds.
    """

    def __init__(self, root: str | os.PathLike, *, card: DatasetCard | None = None, name: str | None = None) -> None:
        self.root = Path(root)
        self._hf, self._data_files = _load(self.root)
        self.card: DatasetCard = card if card is not None else _card(self.root, self._hf, name=None, repo=None,
                                                                         revision=None)
        self.name: str = name or self.card.name
        columns = self.card.extra.get("columns") or _columns(self._hf.features, {}, str(self.root))
        self._columns = columns
        self._where = f"hf:{self.card.extra['hf_repo']}" if self.card.extra.get("hf_repo") else str(self.root)
        n = len(self._hf)
        if columns["id"]:
            ids = [str(v).strip() for v in self._hf[columns["id"]]]
        else:
            width = len(str(max(n - 1, 0)))
            ids = [f"row{i:0{width}d}" for i in range(n)]
        duplicated = [k for k, c in Counter(ids).items() if c > 1]
        if duplicated:
            raise DataError(f"{self._where}: id {duplicated[0]!r} is in {Counter(ids)[duplicated[0]]} rows; "
                            "give each row its own id")
        self._ids = ids
        self._groups = (np.asarray([str(v) for v in self._hf[columns["group"]]]) if columns["group"]
                        else np.asarray(ids))
        self._labels = self._label_matrix()
        # Channels in the card's order (one column per channel may be stored in another order).
        if len(columns["images"]) > 1:
            by_name = {c.split(":", 1)[1].strip(): c for c in columns["images"]}
            self._image_columns = tuple(by_name[c] for c in self.card.channel_names)
        else:
            self._image_columns = tuple(columns["images"])
        self._pixels = _pixel_views(self._hf, self._image_columns)
        self.version: str = self._version()

    def _label_matrix(self) -> np.ndarray:
        column = self._columns["label"]
        label_feature, multi = _class_label_of(self._hf.features[column])
        names = list(label_feature.names)
        position = [self.card.class_names.index(c) for c in names]  # the card may order the classes
        labels = np.zeros((len(self._hf), len(names)), np.uint8)
        for i, value in enumerate(self._hf[column]):
            values = list(value) if multi else [value]
            if self.card.label_mode == "single" and len(values) != 1:
                raise DataError(f"{self._where}: row {i}: {len(values)} labels in a single-label dataset; give one "
                                "class, or set label_mode to multilabel in the dataset card")
            for v in values:
                if v is None or not 0 <= int(v) < len(names):
                    raise DataError(f"{self._where}: row {i}: label {v!r} is not a class index of column {column!r} "
                                    f"(0..{len(names) - 1}); fix or drop the row")
                labels[i, position[int(v)]] = 1
        counts = labels.sum(axis=0)
        for j in np.flatnonzero(counts == 1):
            row = int(np.flatnonzero(labels[:, j])[0])
            raise DataError(f"{self._where}: row {row}: class {self.card.class_names[j]!r} has one example; a split "
                            "needs several per class: add rows of it or drop the row")
        return labels

    def _version(self) -> str:
        """The listing (ids, groups, labels, card, data files: ``manifest_version``, what splits and
        the embedding cache's key are made for) and the data files' content (``version``)."""
        listing = {"ids": self._ids, "groups": self._groups.tolist(), "labels": self._labels.tolist(),
                   "card": self.card.to_dict(), "files": self._data_files,
                   "columns": [self._columns["label"], *self._image_columns]}
        self.manifest_version: str = json_sha256(listing)
        # The Hub cache is the Hub's: its records are kept in the ocbench cache, not beside the files.
        hub = self.card.extra.get("hf_repo") is not None
        self._content = data_content.read_content(self.root, self._data_files, save=not hub)
        shard_of = np.repeat(np.arange(len(self._data_files)), _rows_per_file(self.root, self._data_files))
        if len(shard_of) != len(self):
            raise DataError(f"{self._where}: the data files hold {len(shard_of)} rows, the dataset {len(self)}; "
                            "save the dataset again (flatten_indices before save_to_disk)")
        self._shard_of = shard_of
        self.content = data_content.DataContent(
            self.root, tuple(self._data_files[k] for k in shard_of), tuple(self._content.records[k] for k in shard_of),
            self._content.digest, self._content.n_hashed, self._content.seconds, self._content.store)
        return data_content.combined_version(self.manifest_version, self._content.digest)

    def files_changed_since(self, version: str) -> list[str] | None:
        """Data files whose content changed since this dataset had ``version`` (None: not a
        remembered state of this listing)."""
        return self._content.changed_since_version(self.manifest_version, version)

    # -- the item set -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return f"HFDataset({self._where!r}, rows={len(self)}, version={self.version[:12]})"

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    @property
    def parent_ids(self) -> list[str]:
        return list(self._ids)

    @property
    def groups(self) -> np.ndarray:
        return self._groups

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    @property
    def reader_options(self) -> dict[str, Any]:
        """Where a Hub dataset came from (repo and the commit its revision resolved to), recorded."""
        repo = self.card.extra.get("hf_repo")
        return {"hf_repo": repo, "hf_revision": self.card.extra.get("hf_revision")} if repo else {}

    @property
    def manifest(self):
        """Ids, groups and one ``label_<class>`` column per class, under the card's column names."""
        import pandas as pd

        frame = pd.DataFrame({self.card.id_column: self._ids, self.card.group_column: self._groups})
        for j, c in enumerate(self.card.class_names):
            frame[f"label_{c}"] = self._labels[:, j].astype(np.int64)
        return frame

    def path(self, i: int) -> Path:
        """The data file (Arrow or parquet shard) holding row ``i``."""
        return self.root / self._data_files[int(self._shard_of[int(i)])]

    def read(self, i: int) -> np.ndarray:
        """Row ``i``'s image as (C, H, W) uint16 in the card's channel order."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"image index {i} out of range for {len(self)} images")
        image = _read_pixels(self._pixels, self._image_columns, int(i) % len(self), self._where)
        if image.shape[0] != len(self.card.channel_names):
            raise DataError(f"{self._where}: row {int(i) % len(self)}: {image.shape[0]} channel(s), while the dataset has "
                            f"{len(self.card.channel_names)} ({', '.join(self.card.channel_names)}); give every image "
                            "the same channels")
        return image

    def report(self) -> str:
        """What ``ocbench data info`` prints: counts per class and group, the version, where from."""
        return item_set_report(self, where=self._where)


def item_set_report(dataset: Any, *, where: str) -> str:
    """Counts per class and group of any item set (``ocbench data info`` for non-OpenCell readers)."""
    from tabulate import tabulate

    card = dataset.card
    groups = np.asarray(dataset.groups)
    rows = []
    for j, c in enumerate(card.class_names):
        members = np.asarray(dataset.labels)[:, j].astype(bool)
        rows.append((c, int(members.sum()), len(set(groups[members]))))
    options = dataset.reader_options
    lines = [
        f"dataset: {dataset.name} ({where})",
        f"version: {dataset.version}",
        *( [f"reader options: {', '.join(f'{k}={v}' for k, v in options.items())}"] if options else []),
        f"label mode: {card.label_mode}; channels: {', '.join(card.channel_names)}",
        f"items: {len(dataset)}; groups: {len(set(groups))} ({card.group_name})",
        "",
        tabulate(rows, headers=["class", "items", "groups"], tablefmt="simple"),
    ]
    return "\n".join(lines)


def open_hub(text: str, *, card: DatasetCard | None = None) -> tuple[DatasetCard, Path]:
    """The card and local folder of ``hf:ORG/NAME[@REVISION]`` (fetched into the Hub cache)."""
    folder, repo, commit = fetch_hub_dataset(text)
    if card is None:
        card = hf_card(folder, repo=repo, revision=commit)
    return card, folder

