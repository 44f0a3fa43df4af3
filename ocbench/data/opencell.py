"""The OpenCell dataset: walks the public raw layout, joins FOVs to labels, reads images lazily.

Construction only lists file names (6,301 FOVs of 2x600x600 uint16 are about 9 GB, so images are
read one at a time by :meth:`OpenCellDataset.read`). Labels are per protein: a FOV is joined to
the annotation table by the ENSG id in its file name, or, where that id is not in the table, by
its gene name when exactly one annotated target has that name. OpenCell's own tables disagree on
the ENSG id of 36 targets (the cell-line table vs the annotation table), so an ENSG-only join would
silently drop them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from ocbench._io import atomic_write, sha256_bytes
from ocbench.data import content as data_content
from ocbench.data.annotations import GRADE_COLUMNS, LABEL_COLUMNS, build_labels, load_annotations
from ocbench.data.compartments import CHANNELS, COMPARTMENTS, GRADES, RAW_CHANNEL_INDEX
from ocbench.data.layout import FOV_PATTERN, RAW_DIR, FovName, parse_fov_filename
from ocbench.errors import ConfigError, DataError

#: Written next to the data; its sha256 is the listing's version (names, paths, labels), which with
#: the files' content (:mod:`ocbench.data.content`) makes the dataset version.
MANIFEST_NAME = "ocbench-manifest.csv"
#: Annotation tables looked for under the root when none is given, first existing wins.
DEFAULT_ANNOTATION_FILES: tuple[str, ...] = ("annotations.csv", "opencell-localization-annotations.csv")
#: Manifest columns before the 17 label and 17 grade columns.
MANIFEST_ID_COLUMNS: tuple[str, ...] = ("fov_id", "gene", "ensg", "cid", "fid", "path", "joined_by")
MANIFEST_COLUMNS: tuple[str, ...] = (*MANIFEST_ID_COLUMNS, *LABEL_COLUMNS, *GRADE_COLUMNS)

ANNOTATIONS_SOURCE_HINT = "https://opencell.czbiohub.org/download"

# First bytes of classic (42) and BigTIFF (43) files, little and big endian.
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_FIX_FILE = "delete it and download it again"
# What tifffile logs about a cut-off or damaged file (as opposed to harmless metadata quirks).
_DAMAGE_WORDS = ("offset", "corrupt", "truncat", "end of file")


# ---------------------------------------------------------------------------------------------
# Walking the raw layout


@dataclass(frozen=True)
class RawScan:
    """What a walk of ``<root>/microscopy/raw`` found (names only, nothing read)."""

    fovs: tuple[tuple[FovName, str], ...]  # proj files and their POSIX paths relative to the root
    files_found: int  # every file under microscopy/raw
    skipped: tuple[str, ...]  # relative paths of files whose names are not in the layout
    other_kinds: int  # layout names of another kind (``_stack.tif``): valid, not read


def scan_raw(root: str | os.PathLike) -> RawScan:
    """List the FOV files under ``<root>/microscopy/raw`` in a deterministic order."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"{root}: dataset root not found; create it with `ocbench data download` or `ocbench data demo`"
        )
    raw = root / RAW_DIR
    if not raw.is_dir():
        raise DataError(
            f"{root}: no {RAW_DIR}/ folder; expected the OpenCell raw layout {RAW_DIR}/<GENE>_<ENSG>/{FOV_PATTERN}"
        )
    fovs: list[tuple[FovName, str]] = []
    skipped: list[str] = []
    files_found = other_kinds = 0
    for folder, dirnames, filenames in os.walk(raw):
        dirnames.sort()  # os.walk's order depends on the file system; ours must not
        rel_folder = Path(folder).relative_to(root).as_posix()
        for name in sorted(filenames):
            files_found += 1
            relpath = f"{rel_folder}/{name}"
            parsed = parse_fov_filename(name)
            if parsed is None:
                skipped.append(relpath)
            elif parsed.kind != "proj":
                other_kinds += 1
            else:
                fovs.append((parsed, relpath))
    if skipped:
        examples = ", ".join(skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        warnings.warn(
            f"{raw}: skipped {len(skipped)} file(s) whose names are not in the raw layout ({examples}); "
            f"expected {FOV_PATTERN}",
            stacklevel=2,
        )
    return RawScan(fovs=tuple(fovs), files_found=files_found, skipped=tuple(skipped), other_kinds=other_kinds)


# ---------------------------------------------------------------------------------------------
# Reading one FOV


class _CollectLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _tifffile_log() -> Iterator[list[str]]:
    """Collect what tifffile logs (e.g. 'invalid page offset') instead of letting it reach stderr."""
    logger = logging.getLogger("tifffile")
    handler, propagate = _CollectLog(), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _check_complete(tif, path: Path) -> None:
    """Every tag value and pixel strip must lie inside the file: a cut-off download fails here."""
    tif.pages.useframes = False  # parse every page fully, not just the first (tifffile's default)
    size = tif.filehandle.size
    for page in tif.pages:
        ends = [tag.valueoffset + tag.valuebytecount for tag in page.tags.values()]
        ends += [offset + count for offset, count in zip(page.dataoffsets, page.databytecounts)]
        if ends and max(ends) > size:
            raise DataError(f"{path}: truncated TIFF (needs {max(ends)} bytes, has {size}); {_FIX_FILE}")


def read_fov(path: str | os.PathLike) -> np.ndarray:
    """Read one ``_proj.tif`` and return ``(2, H, W)`` uint16 in :data:`CHANNELS` order (protein, nucleus).

    Channels are taken from the file by name through :data:`RAW_CHANNEL_INDEX`. Anything that is
    not a 2-channel CYX uint16 TIFF is a one-line DataError naming the file.
    """
    import tifffile  # the reader's only heavy dependency; listing a dataset does not need it

    path = Path(path)
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except FileNotFoundError:
        if os.path.islink(path):  # listed, but the link points nowhere: listing again would list it again
            raise DataError(f"{path}: a symbolic link to {os.readlink(path)}, which does not exist; fix or remove the link") from None
        raise DataError(
            f"{path}: file not found; the data changed since the dataset was listed, list it again"
        ) from None
    if magic and len(magic) < 4 and any(m.startswith(magic) for m in _TIFF_MAGIC):
        raise DataError(f"{path}: truncated TIFF (only {len(magic)} bytes); {_FIX_FILE}")
    if magic not in _TIFF_MAGIC:
        what = "it is empty" if not magic else f"it starts with {magic!r}"
        raise DataError(f"{path}: not a TIFF file ({what}); {_FIX_FILE}")

    n_channels = len(RAW_CHANNEL_INDEX)
    with _tifffile_log() as logged:
        try:
            with tifffile.TiffFile(path) as tif:
                _check_complete(tif, path)
                series = tif.series[0]
                shape, dtype = series.shape, series.dtype
                core = tuple(shape)
                while len(core) > 3 and core[0] == 1:  # tolerate leading singleton axes
                    core = core[1:]
                damage = [m for m in logged if any(word in m.lower() for word in _DAMAGE_WORDS)]
                if damage:  # a cut-off file can lose tags or a whole page and still parse
                    raise DataError(f"{path}: truncated or corrupt TIFF (tifffile: {damage[0]}); {_FIX_FILE}")
                if len(core) != 3 or core[0] != n_channels:
                    size = "x".join(map(str, shape))
                    if len(shape) == 2:
                        found = "one channel"
                    elif len(shape) == 3:
                        found = f"{shape[0]} channels"
                    else:
                        found = f"{len(shape)} axes, a z-stack?"
                    raise DataError(
                        f"{path}: image of shape {size} ({found}); expected CYX ({n_channels}, H, W) with "
                        f"nucleus at channel {RAW_CHANNEL_INDEX['nucleus']} "
                        f"and protein at channel {RAW_CHANNEL_INDEX['protein']}"
                    )
                if dtype != np.uint16:
                    raise DataError(f"{path}: pixel type {dtype}, expected uint16 (16-bit raw intensities)")
                data = series.asarray().reshape(core)
        except DataError:
            raise
        except Exception as exc:  # tifffile raises many kinds on a damaged file; all mean the same here
            raise DataError(f"{path}: truncated or corrupt TIFF ({_first_line(exc)}); {_FIX_FILE}") from None
    return np.ascontiguousarray(np.stack([data[RAW_CHANNEL_INDEX[name]] for name in CHANNELS]))


# ---------------------------------------------------------------------------------------------
# Dataset summary


@dataclass(frozen=True)
class DatasetInfo:
    """Counts for ``ocbench data info``. Proteins with images are ``<GENE>_<ENSG>`` folders."""

    root: str
    annotations: str
    annotation_format: str
    min_grade: int
    version: str
    manifest_path: str | None  # None when the manifest could not be written
    files_hashed: int  # image files read and hashed by this listing (the others' records were remembered)
    content_s: float  # seconds the content record took
    files_found: int
    names_skipped: int
    other_kinds: int
    fovs_found: int
    fovs_labelled: int
    fovs_unlabelled: int
    proteins_with_images: int
    proteins_labelled: int
    proteins_joined_by_ensg: int
    proteins_joined_by_name: int
    fovs_joined_by_ensg: int
    fovs_joined_by_name: int
    proteins_below_min_grade: int  # joined, but no annotation with grade >= min_grade
    fovs_below_min_grade: int
    proteins_with_images_without_annotations: int
    fovs_without_annotations: int
    proteins_annotated: int
    proteins_annotated_without_images: int
    fovs_per_class: dict[str, int] = field(default_factory=dict)
    proteins_per_class: dict[str, int] = field(default_factory=dict)
    skipped_examples: tuple[str, ...] = ()
    unannotated_examples: tuple[str, ...] = ()


def format_info(info: DatasetInfo) -> str:
    """The text ``ocbench data info`` prints: a summary of counts and a table of counts per class."""
    from tabulate import tabulate

    def examples(items: tuple[str, ...], total: int) -> str:
        return "" if not items else "e.g. " + ", ".join(items) + (", ..." if total > len(items) else "")

    skipped = examples(info.skipped_examples, info.names_skipped)
    summary = [
        (f"files under {RAW_DIR}/", info.files_found, ""),
        ("  names not in the raw layout (skipped)", info.names_skipped, skipped),
        ("  other kinds, e.g. _stack.tif (not used)", info.other_kinds, ""),
        ("FOV images (_proj.tif)", info.fovs_found, ""),
        ("  labelled (in the manifest)", info.fovs_labelled, ""),
        ("    joined by ENSG id", info.fovs_joined_by_ensg, ""),
        ("    joined by target name (ENSG id differs)", info.fovs_joined_by_name, ""),
        ("  unlabelled (excluded)", info.fovs_unlabelled, ""),
        ("    protein not in the annotation table", info.fovs_without_annotations, ""),
        (f"    protein has no annotation of grade >= {info.min_grade}", info.fovs_below_min_grade, ""),
        ("proteins with images", info.proteins_with_images, ""),
        ("  labelled", info.proteins_labelled, ""),
        ("  joined by ENSG id", info.proteins_joined_by_ensg, ""),
        ("  joined by target name (ENSG id differs)", info.proteins_joined_by_name, ""),
        ("  with images but no annotations", info.proteins_with_images_without_annotations,
         examples(info.unannotated_examples, info.proteins_with_images_without_annotations)),
        (f"  annotated, but no grade >= {info.min_grade}", info.proteins_below_min_grade, ""),
        ("proteins in the annotation table", info.proteins_annotated, ""),
        ("  with annotations but no images", info.proteins_annotated_without_images, ""),
    ]
    # Written by hand, not with tabulate, which strips the indentation that shows what adds up to what.
    width = max(len(label) for label, _, _ in summary)
    digits = max(len(str(count)) for _, count, _ in summary)
    lines = [f"{label:<{width}}  {count:>{digits}}  {note}".rstrip() for label, count, note in summary]
    classes = [(c, info.fovs_per_class.get(c, 0), info.proteins_per_class.get(c, 0)) for c in COMPARTMENTS]
    return "\n".join(
        [
            f"OpenCell dataset: {info.root}",
            f"annotations: {info.annotations} ({info.annotation_format} format); positive = grade >= {info.min_grade}",
            f"version: {info.version} (names, labels and the images' content)",
            f"content: {info.fovs_labelled} image files checked in {info.content_s:.2f} s, "
            f"{info.files_hashed} read and hashed now, the others unchanged since last listed",
            f"manifest: {info.manifest_path or 'not saved'}",
            "",
            *lines,
            "",
            "Labelled FOVs and proteins per class (multi-label: a protein counts in each of its classes):",
            tabulate(classes, headers=["compartment", "FOVs", "proteins"], tablefmt="simple"),
        ]
    )


# ---------------------------------------------------------------------------------------------
# The dataset


def _find_annotations(root: Path) -> Path:
    for name in DEFAULT_ANNOTATION_FILES:
        if (root / name).is_file():
            return root / name
    raise DataError(
        f"{root}: no annotation table found (looked for {', '.join(DEFAULT_ANNOTATION_FILES)}); "
        f"pass --annotations FILE (flat or portal format, e.g. opencell-localization-annotations.csv "
        f"from {ANNOTATIONS_SOURCE_HINT})"
    )


class OpenCellDataset:
    """FOVs of an OpenCell raw-layout folder that have labels, in ``fov_id`` order.

    ``annotations`` is a table path (either format) or a frame from :func:`load_annotations`;
    None looks for :data:`DEFAULT_ANNOTATION_FILES` under ``root``. ``min_grade`` sets which
    annotation grades count as positives. The manifest is written to ``<root>/ocbench-manifest.csv``
    (atomically, only when its content changed); ``manifest_version`` is the sha256 of its bytes.
    ``content`` is the files' :class:`~ocbench.data.content.DataContent` (size, times and sha256
    of each image file, hashed only when new or changed); ``version`` covers both, so any result
    keyed by it is computed again when an image's pixels change.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        annotations: str | os.PathLike | pd.DataFrame | None = None,
        min_grade: int = 1,
        *,
        write_manifest: bool = True,
        card=None,
        name: str | None = None,
    ) -> None:
        from ocbench.data.cards import OPENCELL, recorded_name


        if min_grade not in GRADES:
            raise ConfigError(f"min_grade={min_grade!r} is not a grade; use one of {', '.join(map(str, GRADES))}")
        self.root = Path(root)
        self.min_grade = min_grade
        if card is None or name is None:
            found_card, found_name = recorded_name(self.root) if self.root.is_dir() else (OPENCELL, "opencell")
            card, name = card or found_card, name or found_name
        #: The dataset card (channel and class names, group column) and the name entries record.
        self.card = card
        self.name: str = name
        scan = scan_raw(self.root)  # checks the root before anything else
        if isinstance(annotations, pd.DataFrame):
            table = annotations
        else:
            table = load_annotations(Path(annotations) if annotations is not None else _find_annotations(self.root))
        self.annotation_source = str(table.attrs.get("source", "<DataFrame>"))
        self.annotation_format = str(table.attrs.get("format", "unknown"))
        if not scan.fovs:
            raise DataError(
                f"{self.root / RAW_DIR}: no FOV images found ({scan.files_found} files, none named {FOV_PATTERN}); "
                "check the root folder"
            )
        self.manifest, self._info_counts = _build_manifest(scan, build_labels(table, min_grade))
        if self.manifest.empty:
            raise DataError(
                f"{self.root}: none of {len(scan.fovs)} FOV images matched a labelled protein in "
                f"{self.annotation_source} (by ENSG id or target name); pass the right table with --annotations"
            )
        csv_bytes = self.manifest.to_csv(index=False, lineterminator="\n").encode("utf-8")
        #: sha256 of the manifest: the items, their files and labels, not the files' content.
        self.manifest_version: str = sha256_bytes(csv_bytes)
        self.manifest_path: Path | None = self._save_manifest(csv_bytes) if write_manifest else None
        #: Size, times and sha256 of every item's file, in item order (computed once, here).
        self.content = data_content.read_content(self.root, self.manifest["path"].tolist(), save=write_manifest)
        self.version: str = data_content.combined_version(self.manifest_version, self.content.digest)
        self._scan = scan
        self._labels: np.ndarray | None = None

    def files_changed_since(self, version: str) -> list[str] | None:
        """Image files (relative paths) whose content changed since this dataset had ``version``;
        None when ``version`` is not an earlier state of this listing that ocbench remembers (other
        items or labels, another copy of the data, or too long ago)."""
        if version == self.version:
            return []
        for digest in self.content.known_digests():
            if data_content.combined_version(self.manifest_version, digest) == version:
                return self.content.changed_since(digest)
        return None

    # -- contents ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.manifest)

    def __repr__(self) -> str:
        return f"OpenCellDataset(root={str(self.root)!r}, fovs={len(self)}, version={self.version[:12]})"

    @property
    def ids(self) -> list[str]:
        """FOV ids (the card's id column), in item order."""
        return self.manifest[self.card.id_column].tolist()

    @property
    def fov_ids(self) -> list[str]:
        return self.ids

    @property
    def parent_ids(self) -> list[str]:
        """Whole images: each FOV is its own parent."""
        return self.ids

    @property
    def groups(self) -> np.ndarray:
        """The protein (the card's group column, ENSG id) of each FOV."""
        return self.manifest[self.card.group_column].astype(str).to_numpy()

    @property
    def reader_options(self) -> dict[str, int]:
        return {"min_grade": self.min_grade}

    @property
    def labels(self) -> np.ndarray:
        """``(N, 17)`` uint8 multi-hot labels in COMPARTMENTS order."""
        if self._labels is None:
            self._labels = self.manifest[list(LABEL_COLUMNS)].to_numpy(dtype=np.uint8)
        return self._labels

    def path(self, i: int) -> Path:
        return self.root / self.manifest.at[i, "path"]

    def read(self, i: int) -> np.ndarray:
        """FOV ``i`` as ``(2, H, W)`` uint16 in CHANNELS order (protein, nucleus), read from disk now."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"FOV index {i} out of range for {len(self)} FOVs")
        return read_fov(self.path(int(i) % len(self)))

    def read_channels(self, i: int) -> dict[str, np.ndarray]:
        """FOV ``i`` as ``{"protein": (H, W), "nucleus": (H, W)}`` uint16."""
        image = self.read(i)
        return {name: image[k] for k, name in enumerate(CHANNELS)}

    # -- summary ----------------------------------------------------------------------------
    def info(self) -> DatasetInfo:
        m = self.manifest
        label_matrix = self.labels.astype(bool)
        protein_of_row = m["ensg"].to_numpy()
        fovs_per_class = {c: int(label_matrix[:, j].sum()) for j, c in enumerate(COMPARTMENTS)}
        proteins_per_class = {
            c: len(set(protein_of_row[label_matrix[:, j]])) for j, c in enumerate(COMPARTMENTS)
        }
        return DatasetInfo(
            root=str(self.root),
            annotations=self.annotation_source,
            annotation_format=self.annotation_format,
            min_grade=self.min_grade,
            version=self.version,
            manifest_path=str(self.manifest_path) if self.manifest_path else None,
            files_hashed=self.content.n_hashed,
            content_s=self.content.seconds,
            files_found=self._scan.files_found,
            names_skipped=len(self._scan.skipped),
            other_kinds=self._scan.other_kinds,
            fovs_found=len(self._scan.fovs),
            fovs_labelled=len(m),
            fovs_unlabelled=len(self._scan.fovs) - len(m),
            fovs_per_class=fovs_per_class,
            proteins_per_class=proteins_per_class,
            skipped_examples=self._scan.skipped[:3],
            **self._info_counts,
        )

    # -- manifest ---------------------------------------------------------------------------
    def _save_manifest(self, csv_bytes: bytes) -> Path | None:
        target = self.root / MANIFEST_NAME
        try:
            if target.is_file() and target.read_bytes() == csv_bytes:
                return target  # unchanged: leave the file (and its mtime) alone
            with atomic_write(target, "wb") as fh:
                fh.write(csv_bytes)
        except OSError as exc:  # a read-only copy of the data still works; it just keeps no manifest
            reason = exc.strerror or exc
            warnings.warn(f"{target}: could not save the manifest ({reason}); continuing without it", stacklevel=3)
            return None
        return target


def _build_manifest(scan: RawScan, labels: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Join FOVs to labels (ENSG id first, then unique target name); return the manifest and counts."""
    known_ensg = set(labels["ensg_id"])
    name_counts = labels["target_name"].value_counts()
    unique_name = {
        name: ensg for ensg, name in zip(labels["ensg_id"], labels["target_name"]) if name_counts[name] == 1
    }
    label_rows = labels.set_index("ensg_id")
    has_positive = label_rows[list(LABEL_COLUMNS)].to_numpy().any(axis=1)
    positive = dict(zip(label_rows.index, has_positive))

    # One decision per image protein (folder), shared by its FOVs.
    image_proteins = sorted({(fov.gene, fov.ensg) for fov, _ in scan.fovs})
    target_of: dict[tuple[str, str], tuple[str, str] | None] = {}
    for gene, ensg in image_proteins:
        if ensg in known_ensg:
            target_of[(gene, ensg)] = (ensg, "ensg")
        elif gene in unique_name:
            target_of[(gene, ensg)] = (unique_name[gene], "name")
        else:
            target_of[(gene, ensg)] = None

    rows, seen, seen_cid_fid = [], {}, {}
    fovs_per = {"none": 0, "below": 0}
    for fov, relpath in scan.fovs:
        if fov.fov_id in seen:
            raise DataError(
                f"{relpath}: FOV {fov.fov_id} is also at {seen[fov.fov_id]}; keep one copy of each FOV"
            )
        seen[fov.fov_id] = relpath
        # CID+FID names one FOV; under a second protein's name it would count again with that protein's labels.
        if (fov.cid, fov.fid) in seen_cid_fid:
            raise DataError(
                f"{relpath}: CID{fov.cid:06d}_FID{fov.fid:08d} is also at {seen_cid_fid[fov.cid, fov.fid]} "
                "under another protein; one FOV belongs to one protein: keep the copy in the right folder"
            )
        seen_cid_fid[fov.cid, fov.fid] = relpath
        target = target_of[(fov.gene, fov.ensg)]
        if target is None:
            fovs_per["none"] += 1
            continue
        label_ensg, how = target
        if not positive[label_ensg]:
            fovs_per["below"] += 1
            continue
        rows.append((fov.fov_id, fov.gene, fov.ensg, fov.cid, fov.fid, relpath, how, label_ensg))

    manifest = pd.DataFrame(rows, columns=[*MANIFEST_ID_COLUMNS, "_label_ensg"])
    values = label_rows.loc[manifest["_label_ensg"], [*LABEL_COLUMNS, *GRADE_COLUMNS]].reset_index(drop=True)
    manifest = pd.concat([manifest.drop(columns="_label_ensg"), values], axis=1)
    manifest = manifest.astype({"cid": "int64", "fid": "int64", **{c: "int64" for c in values.columns}})
    manifest = manifest.sort_values("fov_id", kind="stable").reset_index(drop=True)[list(MANIFEST_COLUMNS)]

    joined = {key: t for key, t in target_of.items() if t is not None}
    joined_targets = {t[0] for t in joined.values()}
    unannotated = [gene for (gene, ensg), t in target_of.items() if t is None]
    counts = dict(
        proteins_with_images=len(image_proteins),
        proteins_labelled=sum(1 for t in joined.values() if positive[t[0]]),
        proteins_joined_by_ensg=sum(1 for t in joined.values() if t[1] == "ensg"),
        proteins_joined_by_name=sum(1 for t in joined.values() if t[1] == "name"),
        fovs_joined_by_ensg=int((manifest["joined_by"] == "ensg").sum()),
        fovs_joined_by_name=int((manifest["joined_by"] == "name").sum()),
        proteins_below_min_grade=sum(1 for t in joined.values() if not positive[t[0]]),
        fovs_below_min_grade=fovs_per["below"],
        proteins_with_images_without_annotations=len(unannotated),
        fovs_without_annotations=fovs_per["none"],
        proteins_annotated=len(labels),
        proteins_annotated_without_images=len(known_ensg - joined_targets),
        unannotated_examples=tuple(unannotated[:3]),
    )
    return manifest, counts
