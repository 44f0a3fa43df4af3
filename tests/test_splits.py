"""Split tracks (paper by FOV, protein by ENSG), the split file and its validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ocbench._io import sha256_file
from ocbench.benchmark.splits import (
    Split,
    class_counts,
    format_class_counts,
    load_split,
    make_split,
    manifest_version,
    write_split,
)
from ocbench.data.compartments import COMPARTMENTS
from ocbench.errors import ConfigError, DataError

N_PROTEINS = 150


def make_manifest(n_proteins: int = N_PROTEINS, seed: int = 0) -> pd.DataFrame:
    """A manifest like the reader's: 4-6 FOVs per protein, 1-3 labels shared by its FOVs.

    cytoplasmic and nucleoplasm are common; ``focal_adhesions`` is on exactly 6 proteins and on no
    other, so it is the rarest class and every carrier's rarest label.
    """
    rng = np.random.default_rng(seed)
    weights = np.ones(len(COMPARTMENTS))
    weights[[COMPARTMENTS.index("cytoplasmic"), COMPARTMENTS.index("nucleoplasm")]] = 4.0
    rare = COMPARTMENTS.index("focal_adhesions")
    weights[rare] = 0.0
    weights /= weights.sum()
    rows = []
    fid = 0
    for p in range(n_proteins):
        labels = set(rng.choice(len(COMPARTMENTS), size=int(rng.integers(1, 4)), replace=False, p=weights))
        if p % (n_proteins // 6) == 0 and p < 6 * (n_proteins // 6):
            labels.add(rare)
        ensg = f"ENSG{p + 1:011d}"
        for _ in range(int(rng.integers(4, 7))):
            fid += 1
            row = {"fov_id": f"OC-FOV_G{p}_{ensg}_CID{p:06d}_FID{fid:08d}", "ensg": ensg}
            row.update({f"label_{c}": int(k in labels) for k, c in enumerate(COMPARTMENTS)})
            rows.append(row)
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def manifest() -> pd.DataFrame:
    return make_manifest()


def _ensgs(manifest: pd.DataFrame, ids) -> set[str]:
    return set(manifest.set_index("fov_id").loc[list(ids), "ensg"])


@pytest.mark.parametrize("track", ["paper", "protein"])
def test_split_is_deterministic_and_ignores_row_order(manifest, track):
    split = make_split(manifest, track=track, seed=3)
    shuffled = manifest.sample(frac=1.0, random_state=1)
    # Same parts whatever the row order (the version hash, made from the rows, differs).
    assert make_split(shuffled, track=track, seed=3, dataset_version=split.dataset_version) == split
    assert make_split(manifest, track=track, seed=3).to_json_bytes() == split.to_json_bytes()
    assert make_split(manifest, track=track, seed=4) != split


@pytest.mark.parametrize("track", ["paper", "protein"])
def test_split_partitions_all_ids_with_ten_percent_test(manifest, track):
    split = make_split(manifest, track=track, seed=0)
    parts = [split.test, *split.folds]
    assert len(split.folds) == 5 and all(parts)
    all_ids = [i for part in parts for i in part]
    assert len(all_ids) == len(set(all_ids)) == len(manifest)
    assert set(all_ids) == set(manifest["fov_id"])
    assert set(split.train_ids) == set(manifest["fov_id"]) - set(split.test)
    share = len(split.test) / len(manifest)
    if track == "paper":
        assert abs(len(split.test) - 0.1 * len(manifest)) <= 1
    else:
        assert 0.06 <= share <= 0.14
    fold_sizes = [len(f) for f in split.folds]
    assert max(fold_sizes) - min(fold_sizes) <= (1 if track == "paper" else 6)


def test_protein_track_shares_no_protein_between_parts(manifest):
    for seed in range(3):
        split = make_split(manifest, track="protein", seed=seed)
        test_proteins = _ensgs(manifest, split.test)
        train_proteins = _ensgs(manifest, split.train_ids)
        assert test_proteins and not test_proteins & train_proteins
        fold_proteins = [_ensgs(manifest, fold) for fold in split.folds]
        for a in range(5):
            for b in range(a + 1, 5):
                assert not fold_proteins[a] & fold_proteins[b]


def test_paper_track_splits_by_fov(manifest):
    split = make_split(manifest, track="paper", seed=0)
    # FOVs of one protein end up on both sides: the split is by image, not by protein.
    assert _ensgs(manifest, split.test) & _ensgs(manifest, split.train_ids)


@pytest.mark.parametrize("track", ["paper", "protein"])
def test_rarest_class_is_spread_over_the_parts(manifest, track):
    split = make_split(manifest, track=track, seed=0)
    counts = class_counts(split, manifest)
    totals = counts.loc[list(COMPARTMENTS), "test"] + counts.loc[list(COMPARTMENTS), "train"]
    assert totals.idxmin() == "focal_adhesions"
    # Its 6 proteins (~30 FOVs) are one stratum, dealt over the parts: every fold gets some.
    assert (counts.loc["focal_adhesions", [f"fold{k}" for k in range(5)]] > 0).all()
    if track == "paper":
        assert counts.loc["focal_adhesions", "test"] > 0


def test_class_counts_add_up(manifest):
    split = make_split(manifest, track="protein", seed=1)
    counts = class_counts(split, manifest)
    folds = [f"fold{k}" for k in range(5)]
    assert list(counts.columns) == ["test", *folds, "train"]
    assert list(counts.index) == [*COMPARTMENTS, "fovs", "proteins"]
    for c in COMPARTMENTS:
        assert counts.loc[c, "test"] + counts.loc[c, "train"] == manifest[f"label_{c}"].sum()
    assert (counts.loc[c, folds].sum()) == counts.loc[c, "train"]
    assert counts.loc["fovs", ["test", "train"]].sum() == len(manifest)
    assert counts.loc["proteins", ["test", "train"]].sum() == manifest["ensg"].nunique()
    text = format_class_counts(counts)
    assert "focal_adhesions" in text and "fold4" in text


def test_indices_follow_the_given_id_order(manifest):
    split = make_split(manifest, track="paper", seed=0)
    order = list(manifest["fov_id"].sample(frac=1.0, random_state=2))
    test_idx, folds_idx = split.indices(order)
    assert sorted(order[i] for i in test_idx) == list(split.test)
    assert [sorted(order[i] for i in idx) for idx in folds_idx] == [list(f) for f in split.folds]
    with pytest.raises(DataError, match="not in the dataset"):
        split.indices(order[1:])


def test_saved_file_is_canonical_and_its_sha256_is_the_split_id(manifest, tmp_path):
    split = make_split(manifest, track="protein", seed=0)
    path = split.save(tmp_path / "s.json")
    raw = path.read_bytes()
    data = json.loads(raw)
    assert raw == (json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n").encode()
    assert {"track", "seed", "dataset_version", "test", "folds"} <= set(data)
    assert data["test"] == sorted(data["test"]) and all(f == sorted(f) for f in data["folds"])
    assert split.sha256 == sha256_file(path)
    assert data["dataset_version"] == manifest_version(manifest)
    loaded = load_split(path, manifest, dataset_version=manifest_version(manifest))
    assert loaded == split and loaded.sha256 == split.sha256


def test_dataset_object_gives_its_version(manifest, tmp_path):
    from ocbench.data.cards import OPENCELL

    class FakeDataset:  # an item set (ocbench.data.base.ItemSet) as far as splits look
        def __init__(self) -> None:
            self.card = OPENCELL
            self.ids = manifest["fov_id"].tolist()
            self.groups = manifest["ensg"].to_numpy()
            self.labels = manifest[[f"label_{c}" for c in COMPARTMENTS]].to_numpy()
            self.version = "v" * 64
            self.root = tmp_path

    split, path = write_split(FakeDataset(), track="paper", seed=2)
    assert split == make_split(manifest, track="paper", seed=2, dataset_version="v" * 64)  # the same frame
    assert split.dataset_version == "v" * 64
    assert path == tmp_path / "splits" / "paper-seed2.json"
    assert load_split(path, FakeDataset(), dataset_version="v" * 64) == split


# -- bad split files ---------------------------------------------------------------------------


def _write(tmp_path: Path, data) -> Path:
    path = tmp_path / "split.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


@pytest.fixture()
def good(manifest) -> dict:
    return make_split(manifest, track="protein", seed=0).to_dict()


def _load_error(path: Path, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_split(path, **kwargs)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


def test_overlapping_ids_are_refused(tmp_path, good):
    good["test"].append(good["folds"][1][0])
    assert "both test and fold 1" in _load_error(_write(tmp_path, good))


def test_ids_shared_between_folds_are_refused(tmp_path, good):
    good["folds"][3].append(good["folds"][0][0])
    assert "fold 0 and fold 3" in _load_error(_write(tmp_path, good))


def test_unknown_ids_are_refused(tmp_path, good, manifest):
    good["folds"][2].append("OC-FOV_NOPE_ENSG99999999999_CID000001_FID00000001")
    message = _load_error(_write(tmp_path, good), manifest=manifest)
    assert "not in the dataset manifest" in message and "NOPE" in message


def test_wrong_fold_count_is_refused(tmp_path, good):
    good["folds"] = good["folds"][:4]
    assert "exactly 5" in _load_error(_write(tmp_path, good))


def test_other_dataset_version_is_refused(tmp_path, good):
    message = _load_error(_write(tmp_path, good), dataset_version="0" * 64)
    assert "dataset version" in message


def test_protein_spanning_two_parts_is_refused(tmp_path, good, manifest):
    moved = good["folds"][0].pop()
    good["folds"][1].append(moved)  # its protein's other FOVs stay in fold 0
    assert "one part" in _load_error(_write(tmp_path, good), manifest=manifest)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "not a JSON split file"),
        ("[1, 2]", "JSON object"),
        ({"track": "paper"}, "field 'seed' is missing"),
    ],
)
def test_malformed_files_are_refused(tmp_path, content, expected):
    assert expected in _load_error(_write(tmp_path, content))


def test_missing_file_is_refused(tmp_path):
    assert "not found" in _load_error(tmp_path / "absent.json")


# -- bad input to make_split -------------------------------------------------------------------


def test_make_split_rejects_bad_input(manifest):
    with pytest.raises(ConfigError, match="did you mean|unknown"):
        make_split(manifest, track="proteins")
    with pytest.raises(DataError, match="ensg"):
        make_split(manifest.drop(columns=["ensg"]), track="protein")
    with pytest.raises(DataError, match="too few"):
        make_split(manifest[manifest["ensg"].isin(manifest["ensg"].unique()[:4])], track="protein")
    with pytest.raises(DataError, match="more than once"):
        make_split(pd.concat([manifest, manifest.head(1)]), track="paper")


def test_split_constructor_canonicalizes_order():
    a = Split("paper", 0, "v", test=("b", "a"), folds=(("d", "c"), ("e",), ("f",), ("g",), ("h",)))
    b = Split("paper", 0, "v", test=("a", "b"), folds=(("h",), ("g",), ("f",), ("e",), ("c", "d")))
    assert a == b and a.sha256 == b.sha256
