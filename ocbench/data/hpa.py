"""The Human Protein Atlas single-cell classification challenge (Kaggle, 2021) in its published layout.

``--dataset hpa2021:DIR`` (or a folder recognisably in this layout) where ``DIR`` holds:

- ``train.csv``: ``ID,Label``, one row per image; ``Label`` is ``|``-separated class indices 0-18
  (:data:`CLASSES`: the challenge's 18 localization patterns and Negative); image-level labels,
  multi-label;
- ``train/<ID>_red.png``, ``_green.png``, ``_blue.png``, ``_yellow.png``: one grey PNG per channel:
  microtubules (red), the protein (green), nucleus (blue), endoplasmic reticulum (yellow).

Images are grouped by gene when a public HPA metadata table (one row per image: its ID, its gene,
optionally its cell line; CSV or TSV) is given with ``--annotations``: the protein split track then
keeps each gene in one part and the bootstrap resamples genes. Without it each image is its own
group (the card's group name becomes "image", and the board says so).

HPA-trained backbones (their cards list "HPA ..." training data) are not zero-shot here: the card
names the training-data names that mean these images (``extra["training_data_names"]``).
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ocbench._io import json_sha256
from ocbench.data import content as data_content
from ocbench.data.cards import DatasetCard
from ocbench.errors import DataError

__all__ = ["HPA2021", "CLASSES", "CHANNELS", "COLOURS", "Hpa2021Dataset"]

#: The challenge's classes, in label-index order (Label 0 is Nucleoplasm, 18 Negative).
CLASSES: tuple[str, ...] = (
    "Nucleoplasm", "Nuclear membrane", "Nucleoli", "Nucleoli fibrillar center", "Nuclear speckles",
    "Nuclear bodies", "Endoplasmic reticulum", "Golgi apparatus", "Intermediate filaments", "Actin filaments",
    "Microtubules", "Mitotic spindle", "Centrosome", "Plasma membrane", "Mitochondria", "Aggresome", "Cytosol",
    "Vesicles and punctate cytosolic patterns", "Negative",
)
#: Channel names (the names HPA-trained backbone cards give their inputs) and the file colour of each.
CHANNELS: tuple[str, ...] = ("microtubules", "protein", "nucleus", "er")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow")
#: Column names a metadata table may use for the image id, the gene and the cell line.
_META_ID = ("ID", "id", "Image", "image_id")
_META_GENE = ("gene", "Gene", "gene_name", "ensembl_ids", "Ensembl")
_META_CELL_LINE = ("cell_line", "Cellline", "cellline", "Cell line")
_KAGGLE = "https://www.kaggle.com/competitions/hpa-single-cell-image-classification"

HPA2021 = DatasetCard(
    name="hpa2021",
    description="Human Protein Atlas single-cell classification challenge (Kaggle 2021), training images: "
    "confocal FOVs of many cell lines, RGBY (microtubules, protein, nucleus, ER), 19 image-level labels",
    channel_names=CHANNELS,
    class_names=CLASSES,
    group_column="gene",
    group_name="gene",
    id_column="ID",
    reader="ocbench.data.hpa:Hpa2021Dataset",
    label_mode="multilabel",
    # RGB backbones see HPA's own colour rendering (the ER channel is left out); HPA-trained
    # backbones take all four channels by name ("natural").
    channel_presets={"imagenet-best": {"microtubules": "R", "protein": "G", "nucleus": "B"}},
    obtain_hint=f"download the challenge data from {_KAGGLE}/data (accept its rules; e.g. `kaggle competitions "
    "download -c hpa-single-cell-image-classification`), unzip it and pass --dataset hpa2021:DIR (DIR holds "
    "train.csv and train/)",
    url=_KAGGLE,
    citation="Le et al., Analysis of the Human Protein Atlas Weakly Supervised Single-Cell Classification "
    "competition, Nature Methods 19, 1221-1229 (2022)",
    license="Human Protein Atlas images: CC BY-SA 3.0; use under the competition's data rules",
    notes="Image-level labels (weak labels for the cells in an image). Image sizes vary (1728-3072 px); "
    "the card states no cell diameter: pass --set crop_size=N to single-cell tasks.",
    extra={
        # names a backbone card's training_datasets use for these images (-> not zero-shot)
        "training_data_names": ("HPA", "Human Protein Atlas"),
        # a folder holding these is in this layout (``--dataset DIR`` finds the card by them)
        "layout_files": ("train.csv", "train"),
        # what --annotations gives this reader
        "annotations": "a public HPA metadata table (ID, gene, optional cell line): images are grouped by gene",
    },
)


def _row(i: int) -> str:
    return f"row {i + 2}"  # the header is line 1 of train.csv


def _column(frame: Any, names: tuple[str, ...]) -> str | None:
    return next((c for c in names if c in frame.columns), None)


class Hpa2021Dataset:
    """The challenge's training images (see the module docstring), in ``train.csv`` order: an
    :class:`~ocbench.data.base.ItemSet`."""

    def __init__(self, root: str | os.PathLike, *, card: DatasetCard = HPA2021, name: str | None = None,
                 annotations: str | os.PathLike | None = None) -> None:
        import pandas as pd

        self.root = Path(root)
        table = self.root / "train.csv"
        try:
            frame = pd.read_csv(table, dtype=str, keep_default_na=False)
        except FileNotFoundError:
            raise DataError(f"{table}: not found; {card.obtain_hint}") from None
        except Exception as exc:  # pandas raises many kinds on a malformed file
            raise DataError(f"{table}: not a readable CSV ({str(exc).splitlines()[0]})") from None
        frame.columns = [str(c).strip() for c in frame.columns]
        for column in ("ID", "Label"):
            if column not in frame.columns:
                raise DataError(f"{table}: no {column!r} column (the challenge's train.csv has ID,Label)")
        if frame.empty:
            raise DataError(f"{table}: no rows")
        ids = frame["ID"].str.strip().tolist()
        duplicated = [k for k, n in Counter(ids).items() if n > 1]
        if duplicated:
            second = [i for i, x in enumerate(ids) if x == duplicated[0]][1]
            raise DataError(f"{table}: {_row(second)}: ID {duplicated[0]!r} is listed twice; list each image once")
        self._ids = ids
        self._labels = self._label_matrix(frame["Label"].tolist(), table, len(card.class_names))
        self._files = [[self.root / "train" / f"{image_id}_{colour}.png" for colour in COLOURS] for image_id in ids]
        for i, files in enumerate(self._files):
            for file in files:
                if not file.is_file():
                    raise DataError(f"{table}: {_row(i)}: {file} not found; restore it or remove the row")
        self.annotation_source: Path | None = Path(annotations) if annotations is not None else None
        if self.annotation_source is None:
            self._groups = np.asarray(ids)
            self._cell_lines: dict[str, str] = {}
            card = dataclasses.replace(card, group_name="image")  # no genes: each image its own group
        else:
            self._groups, self._cell_lines = self._genes(self.annotation_source)
        self.card: DatasetCard = card
        self.name: str = name or card.name
        self.version: str = self._version()

    @staticmethod
    def _label_matrix(values: list[str], table: Path, n_classes: int) -> np.ndarray:
        labels = np.zeros((len(values), n_classes), np.uint8)
        for i, value in enumerate(values):
            parts = [p.strip() for p in str(value).split("|") if p.strip()]
            if not parts:
                raise DataError(f"{table}: {_row(i)}: empty Label; give class indices 0-{n_classes - 1} separated by '|'")
            for part in parts:
                if not part.isdigit() or not 0 <= int(part) < n_classes:
                    raise DataError(f"{table}: {_row(i)}: label {part!r} is not a class index 0-{n_classes - 1}; "
                                    "fix the row")
                labels[i, int(part)] = 1
        return labels

    def _genes(self, path: Path) -> tuple[np.ndarray, dict[str, str]]:
        """Each image's gene (its group) and cell line, from a public HPA metadata table."""
        import pandas as pd

        sep = "\t" if path.suffix.lower() in (".tsv", ".txt") else ","
        try:
            meta = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
        except FileNotFoundError:
            raise DataError(f"{path}: metadata table not found; fix the --annotations path") from None
        except Exception as exc:
            raise DataError(f"{path}: not a readable metadata table ({str(exc).splitlines()[0]})") from None
        id_column, gene_column = _column(meta, _META_ID), _column(meta, _META_GENE)
        if id_column is None or gene_column is None:
            raise DataError(f"{path}: needs an image id column ({' or '.join(_META_ID)}) and a gene column "
                            f"({' or '.join(_META_GENE)}); columns are {', '.join(meta.columns)}")
        gene_of = dict(zip(meta[id_column].str.strip(), meta[gene_column].str.strip()))
        missing = [i for i in self._ids if not gene_of.get(i)]
        if missing:
            raise DataError(f"{path}: {len(missing)} image(s) of train.csv have no gene here (e.g. {missing[0]}); give "
                            "the metadata table of these images")
        line_column = _column(meta, _META_CELL_LINE)
        lines = dict(zip(meta[id_column].str.strip(), meta[line_column].str.strip())) if line_column else {}
        return np.asarray([gene_of[i] for i in self._ids]), {i: lines[i] for i in self._ids if lines.get(i)}

    def _version(self) -> str:
        """The listing (ids, genes, labels, card) and every channel file's content: any rewritten
        PNG gives another version (and so another embedding cache key)."""
        relpaths = [str(file.relative_to(self.root)) for files in self._files for file in files]
        listing = {"ids": self._ids, "groups": self._groups.tolist(), "labels": self._labels.tolist(),
                   "card": self.card.to_dict(), "files": relpaths}
        listing_sha = json_sha256(listing)
        self._content = data_content.read_content(self.root, relpaths)
        return data_content.combined_version(listing_sha, self._content.digest)

    # -- the item set -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return f"Hpa2021Dataset({str(self.root)!r}, images={len(self)}, version={self.version[:12]})"

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
    def cell_lines(self) -> dict[str, str]:
        """Image id -> cell line, where the metadata table gives one."""
        return dict(self._cell_lines)

    @property
    def reader_options(self) -> dict[str, Any]:
        return {}

    @property
    def manifest(self):
        """Ids, groups and one ``label_<class>`` column per class, under the card's column names."""
        import pandas as pd

        frame = pd.DataFrame({self.card.id_column: self._ids, self.card.group_column: self._groups})
        for j, c in enumerate(self.card.class_names):
            frame[f"label_{c}"] = self._labels[:, j].astype(np.int64)
        return frame

    def path(self, i: int) -> Path:
        """The protein (green) file of image ``i``."""
        return self._files[int(i)][1]

    def read(self, i: int) -> np.ndarray:
        """Image ``i`` as (4, H, W) uint16: microtubules, protein, nucleus, ER (8-bit PNGs scaled up)."""
        from ocbench.data.table import read_image

        if not -len(self) <= i < len(self):
            raise IndexError(f"image index {i} out of range for {len(self)} images")
        planes = []
        for file in self._files[int(i) % len(self)]:
            plane = read_image(file)
            planes.append(plane.max(axis=0, keepdims=True) if plane.shape[0] != 1 else plane)
        shapes = {p.shape[1:] for p in planes}
        if len(shapes) > 1:
            raise DataError(f"{self._files[int(i) % len(self)][0].parent}: the channel PNGs of "
                            f"{self._ids[int(i) % len(self)]} have different sizes; restore them from the download")
        return np.concatenate(planes)

    def report(self) -> str:
        """What ``ocbench data info`` prints."""
        from ocbench.data.hf import item_set_report

        text = item_set_report(self, where=str(self.root))
        if self.annotation_source is None:
            text += "\n(no metadata table: each image is its own group; pass --annotations METADATA to group by gene)"
        return text
