"""Hugging Face datasets in: a save_to_disk folder, parquet shards and ``hf:ORG/NAME[@REV]`` from the
local Hub cache; the demo exported with ``ocbench data export --to hf`` scores exactly as the
original; bad inputs are one-line errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from demo_data import labelled_demo

from cli_assertions import one_line_error
from ocbench.cli import cli
from ocbench.data.base import ItemSet
from ocbench.data.cards import open_dataset, resolve_dataset

datasets = pytest.importorskip("datasets")

CLASSES = ["nucleus", "membrane", "cytosol"]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _run(runner, dataset, out):
    return runner.invoke(cli, ["run", "--backbone", "classical-stats", "--dataset", str(dataset), "--task", "fov-linear",
                               "--set", "epochs=10", "--output", str(out)])


def test_exported_demo_scores_exactly_as_the_original(tmp_path, monkeypatch):
    """`data export --to hf` then `run --dataset <export>`: same ids, groups, labels and pixels, so the
    same split and the same scores; recorded under its own name, never as the demo."""
    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path / "cache"))
    root = labelled_demo(tmp_path / "demo", proteins=8, fovs_per_protein=3, size=32)
    runner = CliRunner()
    exported = tmp_path / "demo-hf"
    result = runner.invoke(cli, ["data", "export", "--to", "hf", str(exported), "--dataset", str(root)])
    assert result.exit_code == 0, result.output
    original, copy = open_dataset(str(root)), open_dataset(str(exported))
    assert isinstance(copy, ItemSet) and copy.name == "local:demo-hf"
    assert copy.card.channel_names == original.card.channel_names and copy.card.class_names == original.card.class_names
    assert copy.ids == original.ids and (copy.groups == original.groups).all() and (copy.labels == original.labels).all()
    assert copy.card.group_name == "protein" and copy.card.label_mode == "multilabel" and copy.card.synthetic
    assert all((copy.read(i) == original.read(i)).all() and copy.read(i).dtype == np.uint16 for i in range(len(copy)))

    entries = {}
    for name, dataset in (("original", root), ("copy", exported)):
        result = _run(runner, dataset, tmp_path / name)
        assert result.exit_code == 0, result.output
        (path,) = (tmp_path / name).glob("*fov-linear__paper.json")
        entries[name] = json.loads(path.read_text())
    assert entries["copy"]["scores"] == entries["original"]["scores"]
    assert entries["copy"]["scores"]["test"]["macro_f1"]["n"] == 5
    assert entries["original"]["dataset"]["name"] == "demo" and entries["copy"]["dataset"]["name"] == "local:demo-hf"

    info = runner.invoke(cli, ["data", "info", "--dataset", str(exported)])
    assert info.exit_code == 0 and "items: 24; groups: 8 (protein)" in info.output, info.output


def _parquet_dataset(folder, *, seed=0, n_per_class=4, label_feature="single", channels=("dna", "protein")):
    """Rows with one Image column per channel (8-bit PNGs), a ClassLabel (or list of them) and a group."""
    from datasets import ClassLabel, Dataset, Features, Image, List, Value
    from PIL import Image as PILImage

    rng = np.random.default_rng(seed)
    rows = {"id": [], "group": [], "label": [], **{f"image:{c}": [] for c in channels}}
    for k in range(len(CLASSES) * n_per_class):
        rows["id"].append(f"img{k:03d}")
        rows["group"].append(f"plate{k % 4}")
        rows["label"].append(k % 3 if label_feature == "single" else [k % 3, (k + 1) % 3])
        for c in channels:
            rows[f"image:{c}"].append(PILImage.fromarray(rng.integers(0, 255, (16, 12), dtype=np.uint8)))
    label = ClassLabel(names=CLASSES)
    features = Features({"id": Value("string"), "group": Value("string"),
                         "label": label if label_feature == "single" else List(label),
                         **{f"image:{c}": Image() for c in channels}})
    folder.mkdir(parents=True, exist_ok=True)
    Dataset.from_dict(rows, features=features).to_parquet(str(folder / "train-00000-of-00001.parquet"))
    return folder


def test_parquet_shards_with_one_image_column_per_channel(tmp_path):
    folder = _parquet_dataset(tmp_path / "shards" / "data")
    ds = open_dataset(str(folder))
    card = ds.card
    assert ds.name == card.name == "local:data" and card.label_mode == "single"
    assert card.channel_names == ("dna", "protein") and card.class_names == tuple(CLASSES)
    assert card.group_column == "group" and len(set(ds.groups)) == 4 and ds.ids[0] == "img000"
    assert (ds.labels.sum(axis=1) == 1).all() and ds.labels[4].tolist() == [0, 1, 0]
    image = ds.read(1)
    assert image.shape == (2, 16, 12) and image.dtype == np.uint16 and image.max() > 255  # 8-bit scaled up
    from PIL import Image as PILImage

    raw = datasets.Dataset.from_parquet(str(folder / "train-00000-of-00001.parquet"))[1]["image:protein"]
    assert (image[1] == np.asarray(PILImage.Image.convert(raw, "L")).astype(np.uint16) * 257).all()

    # new pixels under the same ids and labels: another version
    version = ds.version
    _parquet_dataset(folder, seed=1)
    assert open_dataset(str(folder)).version != version


def test_hub_dataset_from_the_local_cache_records_its_commit(tmp_path, monkeypatch):
    """``hf:ORG/NAME`` offline, from a Hub cache laid out as huggingface_hub keeps it: the branch
    resolves to its commit, which the dataset records; an unknown revision is one line, exit 2."""
    cache = tmp_path / "hub"
    repo = cache / "datasets--lab--screen"
    _parquet_dataset(repo / "snapshots" / COMMIT / "data", label_feature="multi")
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    source = resolve_dataset("hf:lab/screen")
    ds = open_dataset(source)
    assert ds.name == "hf:lab/screen" and ds.card.label_mode == "multilabel"
    assert ds.reader_options == {"hf_repo": "lab/screen", "hf_revision": COMMIT}
    assert (ds.labels.sum(axis=1) == 2).all()
    assert open_dataset(f"hf:lab/screen@{COMMIT}").version == ds.version

    runner = CliRunner()
    one_line_error(runner.invoke(cli, ["data", "info", "--dataset", "hf:lab/screen@v9"]), "hf:lab/screen",
                   "not in the local Hub cache")
    one_line_error(runner.invoke(cli, ["data", "info", "--dataset", "hf:lab"]), "hf:ORG/NAME")


def _saved(folder, features, rows):
    datasets.Dataset.from_dict(rows, features=datasets.Features(features)).save_to_disk(str(folder))
    return folder


def test_bad_hf_datasets_are_one_line_errors(tmp_path):
    from datasets import Array2D, ClassLabel, Value

    image = np.zeros((4, 4), np.uint16)
    runner = CliRunner()
    cases = {
        "no-label": ({"image": Array2D((4, 4), "uint16"), "name": Value("string")},
                     {"image": [image] * 2, "name": ["a", "b"]}, "no label column"),
        "no-image": ({"label": ClassLabel(names=CLASSES), "name": Value("string")},
                     {"label": [0, 1], "name": ["a", "b"]}, "no image column"),
        "string-label": ({"image": Array2D((4, 4), "uint16"), "label": Value("string")},
                         {"image": [image] * 2, "label": ["a", "b"]}, "ClassLabel"),
    }
    for name, (features, rows, message) in cases.items():
        folder = _saved(tmp_path / name, features, rows)
        one_line_error(runner.invoke(cli, ["data", "info", "--dataset", str(folder)]), str(folder), message)
    # a card naming a column the data does not have
    folder = tmp_path / "card"
    shutil.copytree(tmp_path / "no-image", folder)
    (folder / "ocbench.dataset.json").write_text(json.dumps({"image_column": "pixels"}))
    one_line_error(runner.invoke(cli, ["data", "info", "--dataset", str(folder)]), "image_column 'pixels'")


def test_new_pixels_in_a_shard_recompute_the_entry(tmp_path, monkeypatch):
    """Same rows, ids and labels, rewritten pixels: the entry is computed again (not reused, not refused)."""
    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path / "cache"))
    channels = ("nucleus", "protein")  # the names classical-stats takes
    folder = _parquet_dataset(tmp_path / "screen", label_feature="multi", n_per_class=6, channels=channels)
    runner = CliRunner()
    result = _run(runner, folder, tmp_path / "out")
    assert result.exit_code == 0, result.output
    (path,) = (tmp_path / "out").glob("*fov-linear__paper.json")
    before = json.loads(path.read_text())["dataset"]["version"]
    _parquet_dataset(folder, label_feature="multi", n_per_class=6, seed=3, channels=channels)
    result = _run(runner, folder, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "changed since" in result.output, result.output
    after = json.loads(path.read_text())["dataset"]["version"]
    assert after != before and after == open_dataset(str(folder)).version
