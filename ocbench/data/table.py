"""A lab's own images, listed in a table: ``--dataset my_images.csv`` (also ``.tsv``, ``.parquet``).

One row per image:

- ``path``: the image, relative to the table's folder: a multi-channel TIFF/OME-TIFF (C, Y, X), or
  a PNG/JPEG (grey or RGB); or instead one column per channel, ``path:<channel name>``, one file
  each (as HPA and Cell Painting store them);
- ``label``: one class name (single-label), or several separated by ``|`` (multi-label);
- ``group`` (optional): what images sharing labels have in common (a protein, a plate, a patient).
  The protein split track keeps a group in one part and the bootstrap resamples groups; without
  the column every image is its own group;
- ``id`` (optional): the image's id (default: its first path).

An optional sidecar card ``<table stem>.dataset.json`` (or ``.yaml``) beside the table names the
dataset and gives channel names and order, class order, label mode, pixel size, cell diameter,
the segmentation backend of single-cell tasks (default ``classical``), description, licence,
citation (``ocbench data card init TABLE`` writes one to edit). Without it
channels are ``ch0..chN`` (or the ``path:<channel>`` names), classes are the sorted distinct
labels, the label mode is ``multilabel`` when any row has ``|``, and the name is ``local:<stem>``.

Bad tables are one-line errors naming the row and the fix.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ocbench._io import atomic_write, json_sha256, read_json
from ocbench.data import content as data_content
from ocbench.data.cards import DatasetCard
from ocbench.errors import ConfigError, DataError

__all__ = ["TableDataset", "read_table", "table_card", "sidecar_path", "write_sidecar", "table_report", "LABEL_SEPARATOR",
           "read_sidecar", "read_image", "SIDECAR_FIELDS"]

LABEL_SEPARATOR = "|"
SIDECAR_SUFFIXES: tuple[str, ...] = (".dataset.json", ".dataset.yaml", ".dataset.yml")
_IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
#: Sidecar fields a user may write (anything else is a typo, refused).
SIDECAR_FIELDS = ("name", "description", "channel_names", "class_names", "label_mode", "group_name",
                  "pixel_size_um", "cell_diameter_px", "license", "citation", "url", "channel_presets",
                  "task_defaults", "cell_selection", "synthetic", "segmentation")
_NAME = re.compile(r"[^a-z0-9._-]+")


# ---------------------------------------------------------------------------------------------
# The table and its card


@dataclass(frozen=True)
class _Table:
    path: Path
    frame: pd.DataFrame
    path_columns: tuple[str, ...]  # "path", or "path:<channel>" per channel
    has_group: bool


def _row(i: int) -> str:
    return f"row {i + 2}"  # the header is line 1 of the file; rows count from line 2


def read_table(path: str | os.PathLike) -> _Table:
    """Read and check the table's columns (not its images); one-line DataError otherwise."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            frame = pd.read_parquet(path)
            frame = frame.astype({c: str for c in frame.columns if c != "label" or frame[c].dtype != object})
        else:
            frame = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise DataError(f"{path}: table not found") from None
    except Exception as exc:  # pandas raises many kinds on a malformed file; all mean the same here
        raise DataError(f"{path}: not a readable {suffix[1:]} table ({str(exc).splitlines()[0]})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    path_columns = tuple(c for c in frame.columns if c == "path" or c.startswith("path:"))
    if not path_columns:
        raise DataError(f"{path}: no 'path' column; add one (image file relative to the table), or one 'path:<channel>' "
                        "column per channel")
    if "path" in path_columns and len(path_columns) > 1:
        raise DataError(f"{path}: both 'path' and 'path:<channel>' columns; use one form")
    if "label" not in frame.columns:
        raise DataError(f"{path}: no 'label' column; add one (a class name per row, several separated by '{LABEL_SEPARATOR}')")
    if frame.empty:
        raise DataError(f"{path}: the table has no rows; add one row per image")
    for column in (*path_columns, "label"):
        empty = np.flatnonzero(frame[column].astype(str).str.strip() == "")
        if len(empty):
            raise DataError(f"{path}: {_row(int(empty[0]))}: column {column!r} is empty; fill it in or remove the row")
    return _Table(path, frame.reset_index(drop=True), path_columns, "group" in frame.columns)


def _labels_of(value: Any) -> list[str]:
    if isinstance(value, (list, tuple, np.ndarray)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [part.strip() for part in str(value).split(LABEL_SEPARATOR) if part.strip()]


def sidecar_path(table: str | os.PathLike) -> Path | None:
    """The sidecar card beside ``table`` (``<stem>.dataset.json`` or ``.yaml``), if there is one."""
    table = Path(table)
    for suffix in SIDECAR_SUFFIXES:
        candidate = table.with_name(table.stem + suffix)
        if candidate.is_file():
            return candidate
    return None


def _read_yaml_card(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
        import yaml

        return yaml.safe_load(text)
    except ImportError:
        raise ConfigError(f"{path}: reading a YAML card needs PyYAML (pip install pyyaml); or write it as JSON") from None
    except Exception as exc:
        raise ConfigError(f"{path}: not a readable dataset card ({str(exc).splitlines()[0]})") from None


def read_sidecar(path: Path, fields: tuple[str, ...] = SIDECAR_FIELDS) -> dict[str, Any]:
    """A dataset card file's fields (JSON or YAML); ``fields`` are those a user may write."""
    if path.suffix == ".json":
        data = read_json(path, what="dataset card", advice="fix it, or write a new one with `ocbench data card init TABLE`",
                         missing="write one with `ocbench data card init TABLE`", error=ConfigError)
    else:
        data = _read_yaml_card(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a dataset card holds an object of fields ({', '.join(fields)})")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], fields, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"{path}: unknown field {unknown[0]!r}{hint}; a card has {', '.join(fields)}")
    return data


def _image_channels(file: Path) -> int:
    """Channels of one image, read from its header (TIFF) or mode (PNG/JPEG)."""
    return int(read_image(file).shape[0])


def _default_card(table: _Table) -> dict[str, Any]:
    """What a table says about itself, without a sidecar."""
    labels = [_labels_of(v) for v in table.frame["label"]]
    multi = any(len(row) > 1 for row in labels)
    if table.path_columns == ("path",):
        first = _resolve(table, 0, "path")
        channels = tuple(f"ch{k}" for k in range(_image_channels(first)))
    else:
        channels = tuple(c.split(":", 1)[1].strip() for c in table.path_columns)
    slug = _NAME.sub("-", table.path.stem.lower()).strip("-") or "table"
    return {
        "name": f"local:{slug}",
        "description": f"images listed in {table.path.name}",
        "channel_names": channels,
        "class_names": tuple(sorted({c for row in labels for c in row})),
        "label_mode": "multilabel" if multi else "single",
        # without a group column each image is its own group: the board's unit is then "image"
        "group_name": "group" if table.has_group else "image",
    }


def table_card(path: str | os.PathLike) -> DatasetCard:
    """The dataset card of a table: its sidecar's fields over what the table says about itself."""
    table = read_table(path)
    return _card_of(table)


def _card_of(table: _Table) -> DatasetCard:
    fields = _default_card(table)
    sidecar = sidecar_path(table.path)
    if sidecar is not None:
        given = read_sidecar(sidecar)
        for key in ("channel_names", "class_names"):
            if key in given:
                given[key] = tuple(str(v) for v in given[key])
        fields.update(given)
        from ocbench.data.cards import DATASETS

        if str(fields["name"]) in DATASETS:  # "opencell" would stand beside the paper's numbers
            raise ConfigError(f"{sidecar}: name {fields['name']!r} is a registered dataset; give your data its own name")
    if table.path_columns != ("path",):
        declared = tuple(c.split(":", 1)[1].strip() for c in table.path_columns)
        if set(declared) != set(fields["channel_names"]):
            raise ConfigError(
                f"{sidecar}: channel_names {', '.join(fields['channel_names'])} differ from the table's path:<channel> "
                f"columns ({', '.join(declared)}); name the same channels"
            )
    try:
        return DatasetCard(
            **fields,
            group_column="group",
            id_column="id",
            reader="ocbench.data.table:TableDataset",
        )
    except TypeError as exc:
        raise ConfigError(f"{sidecar or table.path}: bad dataset card ({exc})") from None


def write_sidecar(table_path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write the sidecar card of a table (what it says about itself) for the user to edit."""
    table = read_table(table_path)
    existing = sidecar_path(table.path)
    target = table.path.with_name(table.path.stem + ".dataset.json")
    if existing is not None and not overwrite:
        raise ConfigError(f"{existing}: a dataset card exists already; edit it, or pass --overwrite to write it again")
    fields = _default_card(table)
    fields["name"] = fields["name"].removeprefix("local:")
    card = {
        **{k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()},
        "pixel_size_um": None,
        "cell_diameter_px": None,
        "license": "",
        "citation": "",
    }
    with atomic_write(target) as fh:
        json.dump(card, fh, indent=2)
        fh.write("\n")
    return target


# ---------------------------------------------------------------------------------------------
# Images


def _resolve(table: _Table, i: int, column: str) -> Path:
    """The file of row ``i``'s ``column``: inside the table's folder, or a one-line error."""
    raw = str(table.frame.at[i, column]).strip()
    folder = table.path.parent.resolve()
    file = (folder / raw).resolve()
    if Path(raw).is_absolute() or not file.is_relative_to(folder):
        raise DataError(
            f"{table.path}: {_row(i)}: path {raw} is outside the table's folder {folder}; "
            "put the images under it and give paths relative to the table"
        )
    return file


def read_image(file: Path) -> np.ndarray:
    """One image as (C, H, W) uint16 (8-bit images scaled to the 16-bit range)."""
    suffix = file.suffix.lower()
    if suffix not in _IMAGE_SUFFIXES:
        raise DataError(f"{file}: not an image ocbench reads ({', '.join(_IMAGE_SUFFIXES)}); convert it or fix the path")
    if not file.is_file():
        raise DataError(f"{file}: file not found; fix the path in the table or restore the file")
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            data = np.asarray(tifffile.imread(file))
            while data.ndim > 3 and data.shape[0] == 1:
                data = data[0]
            if data.ndim == 3 and data.shape[-1] in (3, 4) and data.shape[0] not in (1, 2, 3, 4):
                data = np.moveaxis(data, -1, 0)  # an RGB TIFF stored (Y, X, C)
        else:
            from PIL import Image

            with Image.open(file) as img:
                img.load()
                if img.mode in ("RGBA", "P", "LA", "CMYK", "YCbCr"):
                    img = img.convert("RGB")
                data = np.asarray(img)
            if data.ndim == 3:
                data = np.moveaxis(data, -1, 0)
    except DataError:
        raise
    except Exception as exc:  # decoders raise many kinds on a broken file; all mean the same here
        raise DataError(f"{file}: not a readable image ({type(exc).__name__}); replace the file") from None
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise DataError(f"{file}: image of shape {data.shape}; expected (C, Y, X), (Y, X) or an RGB image")
    if data.dtype == np.uint8:
        return data.astype(np.uint16) * 257
    if data.dtype != np.uint16:
        if np.issubdtype(data.dtype, np.integer) and data.min(initial=0) >= 0 and data.max(initial=0) <= 65535:
            return data.astype(np.uint16)
        raise DataError(f"{file}: pixel type {data.dtype}; ocbench reads 8- or 16-bit images (convert it)")
    return np.ascontiguousarray(data)


# ---------------------------------------------------------------------------------------------
# The dataset


class TableDataset:
    """The images of a table (see the module docstring), in table order: an
    :class:`~ocbench.data.base.ItemSet`."""

    def __init__(self, root: str | os.PathLike, *, card: DatasetCard | None = None, name: str | None = None,
                 check_files: bool = True) -> None:
        table = read_table(root)
        self.root = table.path
        self.card: DatasetCard = card if card is not None else _card_of(table)
        self.name: str = name or self.card.name
        self._table = table
        frame = table.frame
        self._channel_columns = self._column_per_channel()
        self._files = [[_resolve(table, i, c) for c in self._channel_columns] for i in range(len(frame))]
        ids = frame["id"].astype(str).str.strip().tolist() if "id" in frame.columns else \
            [str(frame.at[i, self._channel_columns[0]]).strip() for i in range(len(frame))]
        duplicated = [k for k, n in Counter(ids).items() if n > 1]
        if duplicated:
            second = [i for i, x in enumerate(ids) if x == duplicated[0]][1]
            raise DataError(f"{self.root}: {_row(second)}: id {duplicated[0]!r} is listed twice; "
                            "list each image once")
        self._ids = ids
        self._groups = frame["group"].astype(str).str.strip().to_numpy() if table.has_group else np.asarray(ids)
        self._labels = self._label_matrix()
        if check_files:
            for i, files in enumerate(self._files):
                for file in files:
                    if not file.is_file():
                        raise DataError(f"{self.root}: {_row(i)}: file {file} not found; fix the path or remove the row "
                                        "(`ocbench data info` lists every missing file)")
        self.version: str = self._version()

    def _column_per_channel(self) -> tuple[str, ...]:
        if self._table.path_columns == ("path",):
            return ("path",)
        by_name = {c.split(":", 1)[1].strip(): c for c in self._table.path_columns}
        return tuple(by_name[name] for name in self.card.channel_names)

    def _label_matrix(self) -> np.ndarray:
        classes = {c: j for j, c in enumerate(self.card.class_names)}
        labels = np.zeros((len(self._table.frame), len(classes)), np.uint8)
        for i, value in enumerate(self._table.frame["label"]):
            names = _labels_of(value)
            if self.card.label_mode == "single" and len(names) != 1:
                raise DataError(f"{self.root}: {_row(i)}: {len(names)} labels ({value}) in a single-label dataset; "
                                f"give one class, or set label_mode to multilabel in the dataset card")
            for c in names:
                if c not in classes:
                    raise DataError(f"{self.root}: {_row(i)}: class {c!r} is not in the card's classes "
                                    f"({', '.join(self.card.class_names)}); fix the label or add the class to the card")
                labels[i, classes[c]] = 1
        counts = labels.sum(axis=0)
        for j in np.flatnonzero(counts == 1):
            row = int(np.flatnonzero(labels[:, j])[0])
            raise DataError(f"{self.root}: {_row(row)}: class {self.card.class_names[j]!r} has one example; "
                            "a split needs several per class: add images of it or drop the row")
        return labels

    def _version(self) -> str:
        """The listing (ids, groups, labels, the card, the files' names) and the files' content.

        Where each item is one file, ``manifest_version`` is the listing alone (what splits and the
        embedding cache's key are made for) and ``content`` gives each item its file's record: the
        caches check items against it, so a rewritten image recomputes its own features. Items of
        several files (``path:<channel>`` columns) cannot be checked through one file, so there the
        listing and the content key everything (no ``manifest_version``): any rewritten channel
        file gives new keys. ``version`` always adds every file's content
        (:mod:`ocbench.data.content`), so no result outlives a rewritten image."""
        folder = self.root.parent.resolve()
        relpaths = [str(file.relative_to(folder)) for files in self._files for file in files]
        listing = {"ids": self._ids, "groups": self._groups.tolist(), "labels": self._labels.tolist(),
                   "card": self.card.to_dict(), "files": relpaths}
        self._listing = json_sha256(listing)
        one_file_each = all(len(files) == 1 for files in self._files)
        if one_file_each:
            self.manifest_version: str = self._listing
        if not all((folder / rel).is_file() for rel in relpaths):
            # Only a listing that was not asked to check its files gets here (`data info` reports
            # the missing ones): no content, and a version that matches no run's.
            self._content = data_content.DataContent(folder, (), (), "incomplete", 0, 0.0, None)
            return data_content.combined_version(self._listing, "incomplete: files missing")
        self._content = data_content.read_content(folder, relpaths)
        if one_file_each:
            self.content = self._content
        return data_content.combined_version(self._listing, self._content.digest)

    def files_changed_since(self, version: str) -> list[str] | None:
        """Image files (relative to the table) whose content changed since this dataset had
        ``version``; None when that is not an earlier state of this listing ocbench remembers."""
        return self._content.changed_since_version(self._listing, version)

    # -- the item set -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return f"TableDataset({str(self.root)!r}, images={len(self)}, version={self.version[:12]})"

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
        return {}

    @property
    def manifest(self) -> pd.DataFrame:
        """ids, groups and one ``label_<class>`` column per class (what ``ocbench data split`` lists)."""
        frame = pd.DataFrame({"id": self._ids, "group": self._groups})
        for j, c in enumerate(self.card.class_names):
            frame[f"label_{c}"] = self._labels[:, j].astype(np.int64)
        return frame

    def path(self, i: int) -> Path:
        return self._files[int(i)][0]

    def read(self, i: int) -> np.ndarray:
        """Image ``i`` as (C, H, W) uint16 in the card's channel order."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"image index {i} out of range for {len(self)} images")
        files = self._files[int(i) % len(self)]
        if len(files) == 1:
            image = read_image(files[0])
        else:
            planes = []
            for file in files:
                plane = read_image(file)
                if plane.shape[0] != 1:  # an RGB PNG per channel: its channels are equal copies or one is used
                    plane = plane.max(axis=0, keepdims=True)
                planes.append(plane)
            shapes = {p.shape[1:] for p in planes}
            if len(shapes) > 1:
                raise DataError(f"{self.root}: {_row(int(i) % len(self))}: the channel files have different sizes "
                                f"({', '.join('x'.join(map(str, s)) for s in sorted(shapes))}); give images of one size")
            image = np.concatenate(planes)
        if image.shape[0] != len(self.card.channel_names):
            raise DataError(
                f"{files[0]}: {image.shape[0]} channel(s), while the dataset has {len(self.card.channel_names)} "
                f"({', '.join(self.card.channel_names)}); give every image the same channels (mixed channel counts)"
            )
        return image


# ---------------------------------------------------------------------------------------------
# `ocbench data info` on a table


def table_report(path: str | os.PathLike, *, n_folds: int = 5, read_images: bool = True) -> str:
    """What ``ocbench data info`` prints for a table: counts per class and group, unreadable or
    missing files, classes too small for the folds, and what the split will do."""
    from tabulate import tabulate

    dataset = TableDataset(path, check_files=False)
    card = dataset.card
    problems: list[str] = []
    for i, files in enumerate(dataset._files):
        for file in files:
            if not file.is_file():
                problems.append(f"{_row(i)}: missing {file}")
            elif read_images:
                try:
                    image = dataset.read(i) if file == files[0] else None
                except DataError as exc:
                    problems.append(f"{_row(i)}: {exc}")
                    continue
                if image is not None and image.shape[0] != len(card.channel_names):
                    problems.append(f"{_row(i)}: {image.shape[0]} channels, expected {len(card.channel_names)}")
    groups = dataset.groups
    per_class = []
    small = []
    for j, c in enumerate(card.class_names):
        rows = dataset.labels[:, j].astype(bool)
        n_groups = len(set(groups[rows]))
        per_class.append((c, int(rows.sum()), n_groups))
        if n_groups < n_folds + 1:
            small.append(f"{c} ({n_groups} {'groups' if _grouped(dataset) else 'images'})")
    n_groups = len(set(groups))
    lines = [
        f"dataset: {dataset.name} (table {dataset.root})",
        f"card: {sidecar_path(dataset.root) or 'none (defaults; write one with `ocbench data card init`)'}",
        f"version: {dataset.version}",
        f"label mode: {card.label_mode}; channels: {', '.join(card.channel_names)}",
        f"images: {len(dataset)}; groups: {n_groups} ({card.group_name})",
        "",
        tabulate(per_class, headers=["class", "images", "groups"], tablefmt="simple"),
        "",
        f"split: a test part (~10% of the {'groups' if _grouped(dataset) else 'images'}) and {n_folds} folds, "
        f"stratified on each image's rarest class; the protein track keeps each group in one part"
        + ("" if _grouped(dataset) else " (no group column: each image is its own group)"),
    ]
    if small:
        lines.append(f"classes with fewer groups than the split has parts ({n_folds + 1}): {', '.join(small)}; "
                     "some parts will have no example of them")
    lines.append(f"problems: {len(problems)}" + ("" if problems else " (every file found and readable)"))
    lines += [f"  {p}" for p in problems[:20]] + ([f"  ... and {len(problems) - 20} more"] if len(problems) > 20 else [])
    return "\n".join(lines)


def _grouped(dataset: TableDataset) -> bool:
    """Whether the table groups its images (a ``group`` column)."""
    return dataset._table.has_group
