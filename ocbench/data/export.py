"""``ocbench data export --to hf``: an OpenCell dataset as a Hugging Face ``datasets`` dataset; and
:func:`export_embeddings` (``ocbench embed --export``): embeddings, labels and groups as ``.npz`` or ``.parquet``.

One row per labelled FOV:

- ``fov_id``, ``gene``, ``ensg``: strings, as in the manifest;
- ``image``: ``Array3D(uint16)`` of shape ``(2, H, W)`` in CHANNELS order (protein, nucleus);
- ``channels``: the names of the image's channels, in order (the same on every row, so each row
  says what its planes are even after filtering or streaming);
- ``labels``: list of ``ClassLabel`` compartment indices (multi-label; names in COMPARTMENTS);
- ``grades``: 17 ints, the annotation grade per compartment in COMPARTMENTS order (0 = none);
- ``split`` (when a split is given): ``test``, ``fold0`` ... ``fold4`` or ``unassigned``.

Rows are produced by a generator and written in small batches, so the 9 GB of the full dataset
never sit in memory. The result is written with ``save_to_disk`` into a temporary folder that
replaces ``out_dir`` only when complete, with an ``ocbench.dataset.json`` card that lets
``ocbench run --dataset <out_dir>`` read it back as it was (see ``ocbench.data.hf``); ``datasets.load_from_disk(out_dir)`` reads it back
(``.with_format("numpy", dtype="uint16")`` keeps the images uint16; the plain numpy format widens
integers to int64).
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from ocbench._io import atomic_dir, atomic_path, sha256_bytes
from ocbench.data.compartments import CHANNELS, COMPARTMENTS
from ocbench.data.hf import CARD_NAMES
from ocbench.errors import ConfigError, DataError, OcbenchError

if TYPE_CHECKING:  # imported lazily at run time: keeps `ocbench --help` fast
    from ocbench.data.opencell import OpenCellDataset

UNASSIGNED = "unassigned"
#: The card written beside the export (what ``ocbench.data.hf`` reads back).
CARD_FILE = CARD_NAMES[0]
TEST_PART = "test"
#: Rows per Arrow write: 64 full-size OpenCell FOVs (2x600x600 uint16) are ~90 MB in memory.
WRITER_BATCH_SIZE = 64
# Files that mark a folder written by Dataset.save_to_disk (safe to replace on re-export).
_SAVED_DATASET_MARKERS = ("dataset_info.json", "state.json")


def export_hf(
    dataset: "OpenCellDataset",
    out_dir: str | os.PathLike,
    *,
    split: Any = None,
    push_to_hub: str | None = None,
) -> Path:
    """Write ``dataset`` as a Hugging Face dataset to ``out_dir``; return ``out_dir``.

    ``split``: an ``ocbench.benchmark.splits.Split`` (anything with ``.test`` and ``.folds`` tuples
    of fov ids) adds the ``split`` column; it must belong to this dataset version.
    ``push_to_hub``: a repo id (``user/name``) to upload to after saving (needs a Hub login).
    """
    from datasets import Dataset

    out_dir = Path(out_dir)
    _check_target(out_dir)
    n = len(dataset)
    if n == 0:
        raise DataError(f"{dataset.root}: the dataset has no labelled FOVs to export")
    part_of = _split_parts(dataset, split) if split is not None else None

    first = dataset.read(0)
    _check_image(dataset, 0, first, first.shape)
    shape = tuple(int(s) for s in first.shape)
    features = _hf_features(shape, with_split=part_of is not None)
    rows = _row_generator(dataset, first, shape, part_of)

    # The fingerprint names what is exported, so `datasets` never hashes (pickles) the reader; a
    # private cache folder keeps it from reusing another run's Arrow files.
    split_sha = getattr(split, "sha256", None) if split is not None else None
    fingerprint = sha256_bytes(f"{dataset.version}|{split_sha}|{shape}".encode())[:32]
    cache = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".cache"))
    try:
        hf = _build_hf_dataset(Dataset, rows, features, cache, fingerprint)
        synthetic = bool(getattr(getattr(dataset, "card", None), "synthetic", False))
        hf.info.description = _description(dataset, shape, split, split_sha, synthetic)
        hf.info.homepage = "" if synthetic else "https://opencell.czbiohub.org"
        with atomic_dir(out_dir) as tmp:
            hf.save_to_disk(str(tmp))
            _write_card(dataset, tmp)
        if push_to_hub:
            _push(hf, push_to_hub, out_dir)
        del hf
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return out_dir


def _hf_features(shape: tuple[int, ...], *, with_split: bool):
    """The ``datasets.Features`` of one exported row (see the module docstring)."""
    from datasets import Array3D, ClassLabel, Features, List, Value

    features = {
        "fov_id": Value("string"),
        "gene": Value("string"),
        "ensg": Value("string"),
        "image": Array3D(shape=shape, dtype="uint16"),
        "channels": List(Value("string"), length=len(CHANNELS)),
        "labels": List(ClassLabel(names=list(COMPARTMENTS))),
        "grades": List(Value("uint8"), length=len(COMPARTMENTS)),
    }
    if with_split:
        features["split"] = Value("string")
    return Features(features)


def _row_generator(
    dataset, first: np.ndarray, shape: tuple[int, ...], part_of: dict[str, str] | None
) -> Callable[[], Iterator[dict]]:
    """A generator function over the exported rows, reading one FOV at a time (``first`` is FOV 0,
    already read); every image is checked against ``shape`` as it is read."""
    manifest = dataset.manifest
    labels = np.asarray(dataset.labels)
    grades = manifest[[f"grade_{c}" for c in COMPARTMENTS]].to_numpy(dtype=np.uint8)
    fov_ids = manifest["fov_id"].tolist()

    def rows() -> Iterator[dict]:
        for i in range(len(dataset)):
            image = first if i == 0 else dataset.read(i)
            _check_image(dataset, i, image, shape)
            row = {
                "fov_id": fov_ids[i],
                "gene": str(manifest.at[i, "gene"]),
                "ensg": str(manifest.at[i, "ensg"]),
                "image": image,
                "channels": list(CHANNELS),
                "labels": [int(j) for j in np.flatnonzero(labels[i])],
                "grades": [int(g) for g in grades[i]],
            }
            if part_of is not None:
                row["split"] = part_of.get(fov_ids[i], UNASSIGNED)
            yield row

    return rows


def _build_hf_dataset(dataset_class, rows, features, cache: Path, fingerprint: str):
    """``Dataset.from_generator`` into ``cache``; an ocbench error raised while reading rows comes
    out as itself, not wrapped by ``datasets``."""
    try:
        return dataset_class.from_generator(
            rows,
            features=features,
            cache_dir=str(cache),
            fingerprint=fingerprint,
            writer_batch_size=WRITER_BATCH_SIZE,
        )
    except Exception as exc:  # `datasets` wraps errors raised in the generator: surface ours as they are
        cause = exc.__cause__
        if isinstance(cause, OcbenchError):
            raise cause from None
        raise


def _write_card(dataset, folder: Path) -> None:
    """``ocbench.dataset.json`` beside the saved data: what ``--dataset <folder>`` reads back (ids,
    proteins, channel names, the card's vocabulary), so a run on the copy scores as on the original.
    No name: the copy is recorded as ``local:<folder>``, never as the dataset it came from."""
    import json

    card = dataset.card
    fields = {
        "description": f"{card.description} (exported by ocbench from {dataset.name}, version {dataset.version[:12]})",
        "channel_names": list(CHANNELS),
        "label_mode": card.label_mode,
        "group_name": card.group_name,
        "pixel_size_um": card.pixel_size_um,
        "cell_diameter_px": card.cell_diameter_px,
        "segmentation": card.segmentation,  # what sc-knn's auto cuts cells with, as on the original
        "synthetic": bool(card.synthetic),
        "license": card.license,
        "citation": card.citation,
        "url": card.url,
        # not task_defaults: OpenCell's (sc-knn's label grade) need the grades, which the copy has as a column only
        "channel_presets": card.channel_presets,
        "id_column": "fov_id",
        "group_column": "ensg",
        "label_column": "labels",
        "image_column": "image",
    }
    (folder / CARD_FILE).write_text(json.dumps(fields, indent=2, default=list) + "\n", encoding="utf-8")


def _check_target(out_dir: Path) -> None:
    """Refuse to replace a folder that is not an earlier export (it would be deleted)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: exists and is not a folder; choose another output folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not any((out_dir / marker).is_file() for marker in _SAVED_DATASET_MARKERS):
            raise DataError(
                f"{out_dir}: folder is not empty and is not a saved dataset; choose a new or empty output folder"
            )
    out_dir.parent.mkdir(parents=True, exist_ok=True)


def _check_image(dataset, i: int, image: np.ndarray, shape: tuple[int, ...]) -> None:
    if image.dtype != np.uint16 or image.ndim != 3 or image.shape[0] != len(CHANNELS):
        raise DataError(
            f"{dataset.manifest.at[i, 'path']}: read as {image.dtype} {image.shape}, expected uint16 (2, H, W)"
        )
    if tuple(image.shape) != tuple(shape):
        raise DataError(
            f"{dataset.manifest.at[i, 'path']}: image is {tuple(image.shape)} but the first FOV is {tuple(shape)}; "
            "a Hugging Face export needs one image size (crop or resize the outliers first)"
        )


def _split_parts(dataset, split) -> dict[str, str]:
    """fov_id -> "test" / "fold<k>"; checks that the split was made for this dataset."""
    from ocbench.data.content import listing_version

    version, listing = getattr(split, "dataset_version", None), listing_version(dataset)
    if version and version != listing:
        raise DataError(
            f"split was made for dataset version {str(version)[:12]}, this dataset is {listing[:12]}; "
            "make a new split with `ocbench data split`"
        )
    part_of: dict[str, str] = {}
    parts = [(TEST_PART, split.test)] + [(f"fold{k}", fold) for k, fold in enumerate(split.folds)]
    for name, ids in parts:
        for fov_id in ids:
            if fov_id in part_of:
                raise DataError(f"split: FOV {fov_id} is in both {part_of[fov_id]} and {name}; make a new split")
            part_of[fov_id] = name
    unknown = set(part_of) - set(dataset.manifest["fov_id"])
    if unknown:
        raise DataError(
            f"split names {len(unknown)} FOVs that are not in this dataset (e.g. {sorted(unknown)[0]}); "
            "make a new split with `ocbench data split`"
        )
    return part_of


def _description(dataset, shape, split, split_sha, synthetic: bool) -> str:
    card = getattr(dataset, "card", None)
    if synthetic:  # never let generated images pass for OpenCell's
        first = (f"SYNTHETIC images in OpenCell's layout (ocbench's {card.name!r} dataset, generated, not microscopy), "
                 "exported by ocbench: evidence that a pipeline works, not about real cells.")
    elif getattr(card, "name", "opencell") == "opencell":
        first = ("OpenCell FOVs exported by ocbench (https://opencell.czbiohub.org; images from the AWS open-data "
                 "bucket czb-opencell).")
    else:
        first = f"FOVs of the dataset {card.name!r} in OpenCell's layout, exported by ocbench."
    lines = [
        first,
        f"image: uint16 array of shape {list(shape)}; channel order {list(CHANNELS)} "
        "(protein = mNeonGreen-tagged protein, nucleus = Hoechst 33342). Read it with "
        "ds.with_format('numpy', dtype='uint16'): the numpy format widens integers to int64 otherwise.",
        f"labels: multi-label compartment indices into {list(COMPARTMENTS)}.",
        "grades: annotation grade per compartment in the same order (3 prominent, 2 less pronounced, 1 weak, 0 none).",
        f"dataset version (sha256 of the ocbench manifest and the images' content): {dataset.version}.",
    ]
    min_grade = getattr(dataset, "min_grade", None)
    if min_grade is not None:
        lines.append(f"labels count annotations of grade >= {min_grade}.")
    if split is not None:
        track = getattr(split, "track", "?")
        seed = getattr(split, "seed", "?")
        lines.append(
            f"split: track {track}, seed {seed}, sha256 {split_sha}; values test, fold0..fold{len(split.folds) - 1}, "
            f"{UNASSIGNED}."
        )
    return "\n".join(lines)


def _push(hf, repo_id: str, out_dir: Path) -> None:
    """Push the rows, then the card (``--dataset hf:ORG/NAME`` reads it back from the repository)."""
    try:
        hf.push_to_hub(repo_id)
        from huggingface_hub import HfApi

        HfApi().upload_file(path_or_fileobj=str(out_dir / CARD_FILE), path_in_repo=CARD_FILE, repo_id=repo_id,
                            repo_type="dataset", commit_message="ocbench dataset card")
    except Exception as exc:  # network, auth, repo name: all the user's to fix
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(
            f"push to the Hugging Face Hub repo {repo_id!r} failed ({type(exc).__name__}: {first_line}); "
            f"the dataset is saved at {out_dir}; log in with `hf auth login` (or set HF_TOKEN) and check the repo id"
        ) from exc


def export_embeddings(
    path: str | os.PathLike,
    features: np.ndarray,
    ids: Sequence[str],
    labels: np.ndarray,
    groups: Sequence[str],
    class_names: Sequence[str],
    fovs: Sequence[str] | None = None,
) -> Path:
    """Write embeddings for use outside ocbench: ``.npz`` (arrays ``features`` (N, D) float32,
    ``ids`` (N,), ``labels`` (N, C) uint8 0/1, ``groups`` (N,: the protein, or the dataset card's
    group, that grouped splits and intervals go by), ``fovs`` (N,: the FOV each item comes from;
    ``ids`` when not given) and ``class_names`` (C,), strings as unicode arrays: ``np.load(path)``
    needs no pickle) or ``.parquet`` (one row per item: id, group, fov, one column per class, then
    ``f0000``...)."""
    path = Path(path).expanduser()
    x = np.asarray(features, dtype=np.float32)
    y = np.asarray(labels)
    n = len(ids)
    if x.ndim != 2 or x.shape[0] != n:
        raise DataError(f"export: features of shape {x.shape} for {n} ids")
    if y.shape != (n, len(class_names)) or not np.isin(y, (0, 1)).all():
        raise DataError(f"export: labels must be ({n}, {len(class_names)}) 0/1, got {y.shape}")
    fovs = list(ids) if fovs is None else list(fovs)
    if len(groups) != n or len(fovs) != n:
        raise DataError(f"export: {len(groups)} groups and {len(fovs)} FOVs for {n} ids")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer, features=x, ids=np.asarray(list(ids), dtype=str), labels=y.astype(np.uint8),
            groups=np.asarray([str(g) for g in groups], dtype=str), fovs=np.asarray([str(f) for f in fovs], dtype=str),
            class_names=np.asarray(list(class_names), dtype=str),
        )
        with atomic_path(path) as tmp:
            tmp.write_bytes(buffer.getvalue())
    elif suffix == ".parquet":
        import pandas as pd

        frame = pd.DataFrame({"id": list(ids), "group": [str(g) for g in groups], "fov": [str(f) for f in fovs]})
        frame = pd.concat(
            [frame, pd.DataFrame(y.astype(np.uint8), columns=list(class_names)),
             pd.DataFrame(x, columns=[f"f{j:04d}" for j in range(x.shape[1])])], axis=1,
        )
        try:
            with atomic_path(path) as tmp:
                frame.to_parquet(tmp, index=False)
        except ImportError:
            raise ConfigError("writing .parquet needs pyarrow, which is not installed; pip install pyarrow, or export to .npz") from None
    else:
        raise ConfigError(f"{path}: export format must be .npz or .parquet (from the file name)")
    return path
