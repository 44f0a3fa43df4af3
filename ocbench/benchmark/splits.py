"""Train/test splits: a held-out test part and 5 cross-validation folds over the rest.

Two tracks:

- ``paper``: split by FOV, as the paper did. The FOVs of one protein share its labels, so the
  same protein usually sits on both sides; this track reproduces the paper's numbers.
- ``protein``: grouped by the dataset card's group column (the ENSG id for OpenCell), so no
  protein is in two parts (test or any fold).

Both are stratified on each item's rarest label (the label with the fewest FOVs in the whole
manifest), as far as the groups allow, and are deterministic from (manifest, seed): the manifest is
sorted by ``fov_id`` first, so its row order does not matter.

A split is stored as canonical JSON (sorted keys and ids, fixed separators); the sha256 of those
bytes is the split id that result entries record.
"""

from __future__ import annotations

import difflib
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ocbench._io import atomic_write, read_json, sha256_bytes
from ocbench.data.content import listing_version
from ocbench.errors import ConfigError, DataError

TRACKS: tuple[str, ...] = ("paper", "protein")
N_FOLDS = 5
SPLIT_FORMAT = "ocbench-split/1"

#: Id and group columns of a bare manifest (a DataFrame without a card): OpenCell's.
DEFAULT_ID_COLUMN = "fov_id"
DEFAULT_GROUP_COLUMN = "ensg"


def group_column_of(manifest_or_dataset: Any) -> str:
    """The column grouping items that share labels: the dataset card's, else OpenCell's ``ensg``."""
    card = getattr(manifest_or_dataset, "card", None)
    return getattr(card, "group_column", None) or DEFAULT_GROUP_COLUMN


def id_column_of(manifest_or_dataset: Any) -> str:
    """The column holding item ids: the dataset card's, else OpenCell's ``fov_id``."""
    card = getattr(manifest_or_dataset, "card", None)
    return getattr(card, "id_column", None) or DEFAULT_ID_COLUMN


def _canonical_parts(
    test: Any, folds: Any
) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    # Sorted ids, folds ordered by their smallest id: one JSON text (and sha256) per partition.
    test_t = tuple(sorted(str(i) for i in test))
    folds_t = tuple(sorted((tuple(sorted(str(i) for i in fold)) for fold in folds), key=lambda f: f[:1]))
    return test_t, folds_t


@dataclass(frozen=True)
class Split:
    """Which FOV ids are held out for testing and which form each validation fold."""

    track: str
    seed: int
    dataset_version: str
    test: tuple[str, ...]
    folds: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        test, folds = _canonical_parts(self.test, self.folds)
        object.__setattr__(self, "test", test)
        object.__setattr__(self, "folds", folds)

    @property
    def train_ids(self) -> tuple[str, ...]:
        """All ids outside the test part (the union of the folds), sorted."""
        return tuple(sorted(i for fold in self.folds for i in fold))

    @property
    def parts(self) -> dict[str, tuple[str, ...]]:
        """``{"test": ids, "fold0": ids, ...}``."""
        return {"test": self.test, **{f"fold{k}": fold for k, fold in enumerate(self.folds)}}

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": SPLIT_FORMAT,
            "track": self.track,
            "seed": self.seed,
            "dataset_version": self.dataset_version,
            "test": list(self.test),
            "folds": [list(fold) for fold in self.folds],
        }

    def to_json_bytes(self) -> bytes:
        """The canonical file content."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return (text + "\n").encode("ascii")

    @property
    def sha256(self) -> str:
        """The split id: sha256 of the canonical file bytes."""
        return sha256_bytes(self.to_json_bytes())

    def save(self, path: str | os.PathLike) -> Path:
        """Write the canonical JSON atomically; returns the path."""
        path = Path(path)
        with atomic_write(path, "wb") as fh:
            fh.write(self.to_json_bytes())
        return path

    def indices_of(self, items: Any) -> tuple[np.ndarray, list[np.ndarray]]:
        """Positions of the test items and of each fold's items in an item set, through its
        ``parent_ids``: for whole images that is :meth:`indices` of its ids; a cell crop goes
        where its FOV went, so a cell-level task reuses the image-level split."""
        parents = [str(p) for p in items.parent_ids]
        if list(parents) == [str(i) for i in items.ids]:
            return self.indices(parents)
        from ocbench.data.base import parent_positions

        unknown = sorted(set(parents).difference(set(self.test).union(*self.folds)))
        if unknown:
            raise DataError(
                f"split {self.sha256[:12]}: images {unknown[0]!r} (and {len(unknown) - 1} more) are in no part; "
                "it was made for another dataset: make a new one with `ocbench data split`"
            )
        return parent_positions(items, self.test), [parent_positions(items, fold) for fold in self.folds]

    def indices(self, fov_ids: Any) -> tuple[np.ndarray, list[np.ndarray]]:
        """Positions of the test ids and of each fold's ids in ``fov_ids`` (ascending int64 arrays).

        The split must cover ``fov_ids`` exactly; anything else means it belongs to another dataset.
        """
        position = {str(fov_id): i for i, fov_id in enumerate(fov_ids)}
        in_split = set(self.test).union(*self.folds)
        unknown = sorted(in_split.difference(position))
        if unknown:
            raise DataError(
                f"split {self.sha256[:12]}: {len(unknown)} ids are not in the dataset (e.g. {unknown[0]}); "
                "it was made for another dataset: make a new one with `ocbench data split`"
            )
        uncovered = sorted(set(position).difference(in_split))
        if uncovered:
            raise DataError(
                f"split {self.sha256[:12]}: {len(uncovered)} dataset items are in no part (e.g. {uncovered[0]}); "
                "it was made for another dataset: make a new one with `ocbench data split`"
            )

        def where(ids: tuple[str, ...]) -> np.ndarray:
            return np.sort(np.fromiter((position[i] for i in ids), dtype=np.int64, count=len(ids)))

        return where(self.test), [where(fold) for fold in self.folds]


# --------------------------------------------------------------------------------------------
# Making a split
# --------------------------------------------------------------------------------------------


def manifest_version(manifest: pd.DataFrame) -> str:
    """sha256 of the manifest as CSV: the same string as ``OpenCellDataset.manifest_version``."""
    return sha256_bytes(manifest.to_csv(index=False, lineterminator="\n").encode("utf-8"))


def items_frame(items: Any) -> pd.DataFrame:
    """An item set as the frame splits are made from: its ids and groups under the card's column
    names, and one ``label_<class>`` column per class."""
    card = items.card
    frame = pd.DataFrame({card.id_column: [str(i) for i in items.ids]})
    frame[card.group_column] = np.asarray(items.groups).astype(str)
    labels = np.asarray(items.labels)
    for j, name in enumerate(card.class_names):
        frame[f"label_{name}"] = labels[:, j].astype(np.int64)
    return frame


def _unpack(manifest_or_dataset: Any, dataset_version: str | None) -> tuple[pd.DataFrame, str]:
    """Accept a manifest frame or an item set (:class:`~ocbench.data.base.ItemSet`).

    A split is made for the dataset's listing (items, groups, labels), not for its pixels: a split
    stays valid when image files are rewritten (``listing_version``)."""
    if isinstance(manifest_or_dataset, pd.DataFrame):
        manifest = manifest_or_dataset
    else:
        manifest = items_frame(manifest_or_dataset)
    if not isinstance(manifest, pd.DataFrame):
        raise TypeError(f"expected a manifest DataFrame or a dataset, got {type(manifest_or_dataset).__name__}")
    if dataset_version is None:
        has_version = getattr(manifest_or_dataset, "version", None) is not None
        dataset_version = listing_version(manifest_or_dataset) if has_version else manifest_version(manifest)
    return manifest, dataset_version


def _label_columns(manifest: pd.DataFrame) -> list[str]:
    return [c for c in manifest.columns if str(c).startswith("label_")]


def _check_manifest(manifest: pd.DataFrame, track: str, group_column: str, id_column: str) -> None:
    needed = [id_column] + ([group_column] if track == "protein" else [])
    missing = [c for c in needed if c not in manifest.columns]
    if missing:
        raise DataError(f"manifest: column {missing[0]!r} is missing; the {track} track needs {', '.join(needed)}")
    duplicated = manifest[id_column][manifest[id_column].duplicated()]
    if len(duplicated):
        raise DataError(f"manifest: {id_column} {duplicated.iloc[0]!r} appears more than once; ids must be unique")


def _group_strata(items: pd.DataFrame, group_column: str) -> pd.DataFrame:
    """One row per group: key, number of items, and the rank of its rarest label (rarest = 0)."""
    label_cols = _label_columns(items)
    labels = items[label_cols].to_numpy(dtype=np.int64) > 0 if label_cols else np.zeros((len(items), 0), bool)
    frequency = labels.sum(axis=0)
    # Rank classes by how few items carry them; ties by vocabulary order. Unlabelled last.
    order = sorted(range(len(label_cols)), key=lambda c: (frequency[c], c))
    rank_of_class = np.empty(len(label_cols), np.int64)
    rank_of_class[order] = np.arange(len(label_cols))
    grouped = pd.DataFrame(labels, columns=label_cols).groupby(items[group_column].to_numpy(), sort=True)
    group_labels = grouped.max() if label_cols else None
    keys = sorted(items[group_column].unique())
    sizes = items.groupby(group_column, sort=True).size().reindex(keys).to_numpy()
    strata = []
    for key in keys:
        positive = np.flatnonzero(group_labels.loc[key].to_numpy()) if label_cols else np.array([], int)
        strata.append(int(rank_of_class[positive].min()) if len(positive) else len(label_cols))
    return pd.DataFrame({"key": keys, "size": sizes, "stratum": strata})


def _deal_folds(groups: pd.DataFrame, is_test: np.ndarray, n_folds: int, rng: np.random.Generator) -> np.ndarray:
    """The fold of each group not in test (-1 for test groups): dealt in the stratified order to the
    fold with the fewest groups of its stratum, then the fewest items, then a seeded tie order."""
    sizes = groups["size"].to_numpy()
    fold_of_group = np.full(len(groups), -1)
    per_stratum: Counter = Counter()
    fold_sizes = np.zeros(n_folds, np.int64)
    tie_order = rng.permutation(n_folds)  # no fold is always first on ties
    for g in np.flatnonzero(~is_test):
        stratum = groups.at[g, "stratum"]
        best = min(range(n_folds), key=lambda k: (per_stratum[stratum, k], fold_sizes[k], tie_order[k]))
        fold_of_group[g] = best
        per_stratum[stratum, best] += 1
        fold_sizes[best] += sizes[g]
    # Every fold needs something to validate on: move a group into any fold left empty.
    for k in np.flatnonzero(fold_sizes == 0):
        donor = int(np.argmax(fold_sizes))
        g = np.flatnonzero(fold_of_group == donor)[-1]
        fold_of_group[g] = k
        fold_sizes[donor] -= sizes[g]
        fold_sizes[k] += sizes[g]
    return fold_of_group


def make_split(
    manifest: Any,
    track: str = "paper",
    seed: int = 0,
    test_fraction: float = 0.1,
    n_folds: int = N_FOLDS,
    *,
    dataset_version: str | None = None,
) -> Split:
    """A stratified split of ``manifest`` (a manifest DataFrame or an ``OpenCellDataset``).

    ``dataset_version`` defaults to the version of the dataset's listing (the manifest's hash, see
    :func:`~ocbench.data.content.listing_version`). Groups (FOVs for ``paper``, proteins for ``protein``) are ordered by the rank of
    their rarest label, shuffled within it; the test part is a systematic sample of that order
    (so each stratum gives about ``test_fraction`` of its groups), and the other groups are dealt to
    the fold with the fewest groups of their stratum, then the fewest items overall.
    """
    if track not in TRACKS:
        close = difflib.get_close_matches(str(track), TRACKS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"split track {track!r} is unknown; {hint}use one of {', '.join(TRACKS)}")
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction={test_fraction} must be between 0 and 1")
    if n_folds < 2:
        raise ConfigError(f"n_folds={n_folds} must be at least 2")
    groups_by, id_column = group_column_of(manifest), id_column_of(manifest)
    manifest, dataset_version = _unpack(manifest, dataset_version)
    group_column = id_column if track == "paper" else groups_by
    _check_manifest(manifest, track, groups_by, id_column)
    items = manifest.sort_values(id_column, kind="stable").reset_index(drop=True)
    items = items.assign(**{column: items[column].astype(str) for column in {id_column, group_column}})
    groups = _group_strata(items, group_column)
    unit = "FOVs" if track == "paper" else "proteins"
    if len(groups) < n_folds + 1:
        raise DataError(
            f"manifest: {len(groups)} {unit} are too few for a {track}-track split "
            f"(need at least {n_folds + 1}: one per fold and one for test)"
        )

    rng = np.random.default_rng(np.random.SeedSequence([seed, TRACKS.index(track)]))
    groups["shuffle"] = rng.permutation(len(groups))
    groups = groups.sort_values(["stratum", "shuffle"], kind="stable").reset_index(drop=True)

    # Test: systematic sampling along the stratified order, one group every 1/test_fraction groups
    # (each group equally likely, so the expected test share of items is test_fraction too).
    position = np.arange(len(groups)) + rng.uniform(0.0, 1.0)
    is_test = np.floor(position * test_fraction) > np.floor((position - 1.0) * test_fraction)
    if not is_test.any():  # tiny manifests: still hold one group out
        is_test[int(rng.integers(len(groups)))] = True
    if is_test.sum() > len(groups) - n_folds:
        is_test[np.flatnonzero(is_test)[len(groups) - n_folds :]] = False

    # Folds: deal the rest, balancing each stratum first and fold sizes second.
    fold_of_group = _deal_folds(groups, is_test, n_folds, rng)
    part_of_key = dict(zip(groups["key"], np.where(is_test, -1, fold_of_group)))
    part_of_item = items[group_column].map(part_of_key).to_numpy()
    fov_ids = items[id_column].to_numpy()
    return Split(
        track=track,
        seed=int(seed),
        dataset_version=str(dataset_version),
        test=tuple(fov_ids[part_of_item == -1]),
        folds=tuple(tuple(fov_ids[part_of_item == k]) for k in range(n_folds)),
    )


# --------------------------------------------------------------------------------------------
# Loading and checking a split file
# --------------------------------------------------------------------------------------------


def _ids(path: Path, value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(i, str) for i in value):
        raise DataError(f"{path}: {where} must be a list of FOV id strings")
    if not value:
        raise DataError(f"{path}: {where} is empty; every part of a split needs items")
    duplicates = [i for i, n in Counter(value).items() if n > 1]
    if duplicates:
        raise DataError(f"{path}: id {duplicates[0]!r} appears {value.count(duplicates[0])} times in {where}")
    return value


def load_split(
    path: str | os.PathLike, manifest: Any = None, dataset_version: str | None = None
) -> Split:
    """Read and check a split file.

    Checks that it is a split (fields and types), that it has exactly 5 folds, that no id is in two
    parts, and, when given, that its ids are exactly the manifest's (a DataFrame or a dataset) and
    that it was made for ``dataset_version``. Raises DataError naming the file and the problem.
    """
    path = Path(path)
    data = read_json(path, what="split file", advice="write it again with `ocbench data split`",
                     missing="write one with `ocbench data split`")
    if not isinstance(data, dict):
        raise DataError(f"{path}: a split file must hold a JSON object, not {type(data).__name__}")
    for field_name in ("track", "seed", "dataset_version", "test", "folds"):
        if field_name not in data:
            raise DataError(f"{path}: field {field_name!r} is missing; write the split again with `ocbench data split`")
    if data.get("format", SPLIT_FORMAT) != SPLIT_FORMAT:
        raise DataError(f"{path}: split format {data['format']!r} is unknown; this ocbench reads {SPLIT_FORMAT!r}")
    unknown_fields = sorted(set(data) - {"format", "track", "seed", "dataset_version", "test", "folds"})
    if unknown_fields:
        raise DataError(
            f"{path}: unknown field {unknown_fields[0]!r}; a split has format, track, seed, dataset_version, test, folds"
        )
    if data["track"] not in TRACKS:
        raise DataError(f"{path}: track {data['track']!r} is unknown; use one of {', '.join(TRACKS)}")
    if not isinstance(data["seed"], int) or isinstance(data["seed"], bool):
        raise DataError(f"{path}: seed must be an integer, got {data['seed']!r}")
    if not isinstance(data["dataset_version"], str) or not data["dataset_version"]:
        raise DataError(f"{path}: dataset_version must be a non-empty string")
    folds = data["folds"]
    if not isinstance(folds, list) or len(folds) != N_FOLDS:
        count = len(folds) if isinstance(folds, list) else "no list of"
        raise DataError(f"{path}: has {count} folds; a split needs exactly {N_FOLDS}")

    test = _ids(path, data["test"], "test")
    fold_lists = [_ids(path, fold, f"fold {k}") for k, fold in enumerate(folds)]
    seen: dict[str, str] = {i: "test" for i in test}
    for k, fold in enumerate(fold_lists):
        for i in fold:
            if i in seen:
                overlap = len(set(fold) & {j for j, part in seen.items() if part == seen[i]})
                raise DataError(
                    f"{path}: id {i!r} is in both {seen[i]} and fold {k} ({overlap} shared ids); "
                    "parts must not overlap: write the split again with `ocbench data split`"
                )
            seen[i] = f"fold {k}"

    if dataset_version is not None and data["dataset_version"] != dataset_version:
        raise DataError(
            f"{path}: made for dataset version {data['dataset_version'][:12]}, not this dataset's "
            f"{dataset_version[:12]}; make a new split with `ocbench data split`"
        )
    split = Split(
        track=data["track"], seed=data["seed"], dataset_version=data["dataset_version"], test=test, folds=fold_lists
    )
    if manifest is not None:
        frame = manifest if isinstance(manifest, pd.DataFrame) else items_frame(manifest)
        _check_against_manifest(path, split, frame, seen, group_column_of(manifest), id_column_of(manifest))
    return split


def _check_against_manifest(
    path: Path, split: Split, manifest: pd.DataFrame, part_of: dict[str, str], group_column: str, id_column: str
) -> None:
    manifest_ids = set(manifest[id_column].astype(str))
    unknown = sorted(set(part_of) - manifest_ids)
    if unknown:
        raise DataError(
            f"{path}: {len(unknown)} ids are not in the dataset manifest (e.g. {unknown[0]!r}); "
            "the split is for another dataset: make a new one with `ocbench data split`"
        )
    uncovered = sorted(manifest_ids - set(part_of))
    if uncovered:
        raise DataError(
            f"{path}: {len(uncovered)} dataset FOVs are in no part (e.g. {uncovered[0]!r}); "
            "the split is for another dataset: make a new one with `ocbench data split`"
        )
    if split.track == "protein" and group_column in manifest.columns:
        parts_of_protein: dict[str, set[str]] = {}
        for fov_id, ensg in zip(manifest[id_column].astype(str), manifest[group_column].astype(str)):
            parts_of_protein.setdefault(ensg, set()).add(part_of[fov_id])
        for ensg, parts in sorted(parts_of_protein.items()):
            if len(parts) > 1:
                raise DataError(
                    f"{path}: protein {ensg} has FOVs in {' and '.join(sorted(parts))}; "
                    "the protein track keeps each protein in one part"
                )


# --------------------------------------------------------------------------------------------
# Reporting and the `ocbench data split` command
# --------------------------------------------------------------------------------------------


def class_counts(split: Split, manifest: Any) -> pd.DataFrame:
    """Positive FOVs per class in each part: rows are the 17 compartments plus ``fovs`` and
    ``proteins`` (items and distinct ENSG ids per part), columns ``test, fold0..fold4, train``."""
    group_column, id_column = group_column_of(manifest), id_column_of(manifest)
    manifest = manifest if isinstance(manifest, pd.DataFrame) else items_frame(manifest)
    test_idx, folds_idx = split.indices(manifest[id_column].astype(str).tolist())
    parts = {"test": test_idx, **{f"fold{k}": idx for k, idx in enumerate(folds_idx)}}
    parts["train"] = np.sort(np.concatenate(folds_idx))
    rows: dict[str, dict[str, int]] = {}
    for column in _label_columns(manifest):
        values = manifest[column].to_numpy() > 0
        rows[column.removeprefix("label_")] = {part: int(values[idx].sum()) for part, idx in parts.items()}
    rows["fovs"] = {part: len(idx) for part, idx in parts.items()}
    if group_column in manifest.columns:
        ensg = manifest[group_column].astype(str).to_numpy()
        rows["proteins"] = {part: len(set(ensg[idx])) for part, idx in parts.items()}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "class"
    return table


def format_class_counts(counts: pd.DataFrame) -> str:
    """``class_counts`` as a plain-text table for the terminal."""
    from tabulate import tabulate

    return tabulate(counts, headers=[counts.index.name or "", *counts.columns], tablefmt="simple")


def default_split_path(root: str | os.PathLike, track: str, seed: int) -> Path:
    """Where ``write_split`` puts a split by default: ``<root>/splits/<track>-seed<seed>.json``."""
    return Path(root) / "splits" / f"{track}-seed{seed}.json"


def write_split(
    dataset: Any, out: str | os.PathLike | None = None, *, track: str = "protein", seed: int = 0
) -> tuple[Split, Path]:
    """Make a split of ``dataset`` (an ``OpenCellDataset``) and save it; returns it and its path.

    ``out`` defaults to :func:`default_split_path` under the dataset's root.
    """
    split = make_split(dataset, track=track, seed=seed)
    if out is None:
        root = getattr(dataset, "root", None)
        if root is None:
            raise ConfigError("write_split: pass out= when splitting a bare manifest (it has no root folder)")
        root = Path(root)
        out = default_split_path(root if root.is_dir() else root.parent, track, seed)  # a table: beside it
    return split, split.save(out)
