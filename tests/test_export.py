"""``export_hf``: a real OpenCellDataset over a tiny raw-layout folder, exported and read back."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tifffile

from ocbench.benchmark.splits import Split
from ocbench.data.content import listing_version
from ocbench.data.compartments import CHANNELS, COMPARTMENTS, RAW_CHANNEL_INDEX
from ocbench.data.export import export_hf
from ocbench.data.layout import FovName
from ocbench.data.opencell import OpenCellDataset
from ocbench.errors import DataError

H, W = 24, 20  # not square, so a transposed array would show

PROTEINS = [  # gene, ensg, cid, n_fovs
    ("ATL3", "ENSG00000184743", 367, 2),
    ("H1-0", "ENSG00000189060", 12, 1),
    ("C12orf57", "ENSG00000111678", 900, 1),
]
FLAT = (
    "ensg_id,target_name,annotation_name,annotation_grade\n"
    "ENSG00000184743,ATL3,er,3\n"
    "ENSG00000184743,ATL3,vesicles,1\n"
    "ENSG00000189060,H1-0,chromatin,3\n"
    "ENSG00000189060,H1-0,nucleoplasm,2\n"
    "ENSG00000111678,C12orf57,nucleoplasm,2\n"
)


@pytest.fixture
def raw_root(tmp_path):
    root = tmp_path / "opencell"
    rng = np.random.default_rng(7)
    fid = 100
    for gene, ensg, cid, n in PROTEINS:
        for _ in range(n):
            fid += 1
            fov = FovName(gene=gene, ensg=ensg, cid=cid, fid=fid)
            path = root / fov.relpath
            path.parent.mkdir(parents=True, exist_ok=True)
            # Raw files are (nucleus, protein); give the channels different ranges to catch swaps.
            image = np.empty((2, H, W), dtype=np.uint16)
            image[RAW_CHANNEL_INDEX["nucleus"]] = rng.integers(0, 1000, size=(H, W))
            image[RAW_CHANNEL_INDEX["protein"]] = rng.integers(30000, 65535, size=(H, W))
            tifffile.imwrite(path, image)
    (root / "annotations.csv").write_text(FLAT)
    return root


def small_split(ds, dataset_version=None):
    """A real Split over the 4 FOVs; the last FOV is left out to show the "unassigned" value."""
    ids = ds.fov_ids
    return Split(
        track="paper",
        seed=0,
        dataset_version=dataset_version or listing_version(ds),  # a split is made for the listing
        test=(ids[0],),
        folds=((ids[1],), (ids[2],), (), (), ()),
    )


def test_round_trip_gives_identical_items(raw_root, tmp_path):
    import datasets

    ds = OpenCellDataset(raw_root)
    assert len(ds) == 4
    split = small_split(ds)
    out = export_hf(ds, tmp_path / "hf", split=split)
    assert out == tmp_path / "hf"

    back = datasets.load_from_disk(str(out))
    assert back.num_rows == len(ds)
    assert back["fov_id"] == ds.fov_ids
    assert back["gene"] == ds.manifest["gene"].tolist()
    assert back["ensg"] == ds.manifest["ensg"].tolist()
    part_of = {fov_id: part for part, ids in split.parts.items() for fov_id in ids}
    assert back["split"] == [part_of.get(f, "unassigned") for f in ds.fov_ids]
    assert back["split"][0] == "test" and back["split"][3] == "unassigned"
    assert sorted(back["split"][1:3]) == sorted(p for p, ids in split.parts.items() if ids and p != "test")

    names = back.features["labels"].feature.names
    assert names == list(COMPARTMENTS)
    assert back.features["image"].dtype == "uint16" and back.features["image"].shape == (2, H, W)
    assert "['protein', 'nucleus']" in back.info.description and ds.version in back.info.description
    assert split.sha256 in back.info.description

    assert str(back.data.column("image").type.storage_type) == "list<item: list<item: list<item: uint16>>>"
    arrays = back.with_format("numpy", dtype=np.uint16)  # the numpy format widens ints to int64 otherwise
    for i in range(len(ds)):
        row = arrays[i]
        expected = ds.read(i)
        assert row["image"].dtype == np.uint16
        np.testing.assert_array_equal(row["image"], expected)
        assert list(back[i]["channels"]) == list(CHANNELS)
        multi_hot = np.zeros(len(COMPARTMENTS), dtype=np.uint8)
        multi_hot[list(back[i]["labels"])] = 1
        np.testing.assert_array_equal(multi_hot, ds.labels[i])
        expected_grades = ds.manifest.loc[i, [f"grade_{c}" for c in COMPARTMENTS]].to_numpy(dtype=np.uint8)
        np.testing.assert_array_equal(np.asarray(back[i]["grades"]), expected_grades)

    # Protein channel first: the exported planes are not the raw file's order.
    assert arrays[0]["image"][0].min() >= 30000 and arrays[0]["image"][1].max() < 1000
    atl3 = ds.fov_ids.index(next(f for f in ds.fov_ids if "_ATL3_" in f))
    assert sorted(names[j] for j in back[atl3]["labels"]) == ["er", "vesicles"]

    # Nothing but the saved dataset is left next to it (no cache or temp folders).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "opencell"]


def test_without_split_there_is_no_split_column_and_reexport_replaces(raw_root, tmp_path):
    import datasets

    ds = OpenCellDataset(raw_root)
    out = export_hf(ds, tmp_path / "hf", split=small_split(ds))
    export_hf(ds, out)  # an earlier export is replaced
    back = datasets.load_from_disk(str(out))
    assert "split" not in back.column_names and back.num_rows == 4


def test_refuses_to_replace_a_folder_that_is_not_an_export(raw_root, tmp_path):
    ds = OpenCellDataset(raw_root)
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a saved dataset"):
        export_hf(ds, precious)
    assert (precious / "notes.txt").read_text() == "keep me"


def test_split_of_another_dataset_version_is_rejected(raw_root, tmp_path):
    ds = OpenCellDataset(raw_root)
    with pytest.raises(DataError, match="dataset version"):
        export_hf(ds, tmp_path / "hf", split=small_split(ds, dataset_version="0" * 64))
    unknown = dataclasses.replace(small_split(ds), test=("OC-FOV_NOPE_ENSG00000000001_CID000001_FID00000001",))
    with pytest.raises(DataError, match="not in this dataset"):
        export_hf(ds, tmp_path / "hf", split=unknown)
    assert not (tmp_path / "hf").exists()


def test_a_bad_file_mid_export_leaves_nothing_behind(raw_root, tmp_path):
    ds = OpenCellDataset(raw_root)
    (raw_root / ds.manifest.at[2, "path"]).write_bytes(b"II*\x00truncated")
    with pytest.raises(DataError):
        export_hf(ds, tmp_path / "hf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["opencell"]


def test_push_to_hub_is_called_and_its_failure_is_one_line(raw_root, tmp_path, monkeypatch):
    import datasets

    ds = OpenCellDataset(raw_root)
    pushed = []
    monkeypatch.setattr(
        datasets.Dataset, "push_to_hub", lambda self, repo_id, **kw: pushed.append((repo_id, self.num_rows))
    )
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_file",
                        lambda self, **kw: pushed.append((kw["repo_id"], kw["path_in_repo"], kw["repo_type"])))
    export_hf(ds, tmp_path / "hf", push_to_hub="someone/opencell-fov")
    # the rows, then the card that lets `--dataset hf:someone/opencell-fov` read them back
    assert pushed == [("someone/opencell-fov", 4), ("someone/opencell-fov", "ocbench.dataset.json", "dataset")]

    def refuse(self, repo_id, **kw):
        raise RuntimeError("401 Client Error: Unauthorized\nmore details")

    monkeypatch.setattr(datasets.Dataset, "push_to_hub", refuse)
    with pytest.raises(DataError, match="hf auth login") as info:
        export_hf(ds, tmp_path / "hf2", push_to_hub="someone/opencell-fov")
    assert "\n" not in str(info.value)
    assert (tmp_path / "hf2" / "dataset_info.json").is_file()  # saved locally before the push
