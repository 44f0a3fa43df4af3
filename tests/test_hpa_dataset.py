"""The HPA single-cell classification challenge (2021) layout as the registered card ``hpa2021``: a
synthetic copy in the exact layout (train.csv, train/<ID>_{red,green,blue,yellow}.png) written here
is read with its 19 classes and RGBY channels, grouped by gene from a metadata table, run through
the FOV probes by an HPA-trained card (RGBY, natural) and an ImageNet card (the card's RGB preset),
and the board marks the HPA-trained rows not zero-shot because their cards list HPA training data."""

from __future__ import annotations

import csv
import dataclasses
import json
import uuid

import numpy as np
import pytest
from click.testing import CliRunner

from cli_assertions import one_line_error
from ocbench.backbones import get_card, not_zero_shot_reasons, register_card
from ocbench.benchmark.splits import make_split
from ocbench.cli import cli
from ocbench.data.base import ItemSet
from ocbench.data.cards import dataset_card_for, get_dataset_card, open_dataset
from ocbench.data.hpa import CLASSES, HPA2021, Hpa2021Dataset

SIZE = 32
#: Label index -> where the protein (green) sits: the class signal of the synthetic images.
PATTERNS = {0: "nucleus", 2: "nucleoli", 13: "rim", 16: "cytosol"}


def _write_hpa(root, *, per_class=12, genes=16, seed=0):
    """~per_class x 4 images in the challenge layout; returns (root, metadata table path)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "train").mkdir(parents=True)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    r = np.hypot(yy - SIZE / 2, xx - SIZE / 2)
    nucleus, cell = r < 7, r < 13
    masks = {"nucleus": nucleus, "nucleoli": r < 2.5, "rim": (r > 11) & (r < 13), "cytosol": cell & ~nucleus}
    rows, meta = [], []
    k = 0
    for label, pattern in PATTERNS.items():
        for j in range(per_class):
            image_id = str(uuid.UUID(int=int(rng.integers(0, 2**62)) * 4 + k))
            labels = [label] + ([16] if label == 0 and j % 3 == 0 else [])  # some multi-label rows
            rows.append((image_id, "|".join(map(str, labels))))
            meta.append((image_id, f"GENE{k % genes}", "U2OS" if k % 2 else "A-431"))
            planes = {
                "red": 60 * cell,
                "green": 180 * masks[pattern] + (90 * masks["cytosol"] if len(labels) > 1 else 0),
                "blue": 200 * nucleus,
                "yellow": 40 * cell,
            }
            for colour, plane in planes.items():
                noisy = np.clip(plane + rng.normal(0, 12, (SIZE, SIZE)), 0, 255).astype(np.uint8)
                Image.fromarray(noisy).save(root / "train" / f"{image_id}_{colour}.png")
            k += 1
    with open(root / "train.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("ID", "Label"), *rows])
    metadata = root.parent / "hpa_metadata.tsv"
    metadata.write_text("ID\tgene\tcell_line\n" + "".join(f"{a}\t{b}\t{c}\n" for a, b, c in meta))
    return root, metadata


@pytest.fixture(scope="module")
def hpa(tmp_path_factory):
    return _write_hpa(tmp_path_factory.mktemp("hpa") / "hpa-scc")


def test_the_layout_reads_as_the_registered_card(hpa):
    root, _ = hpa
    assert get_dataset_card("hpa2021") is HPA2021 and len(CLASSES) == 19
    assert CLASSES[0] == "Nucleoplasm" and CLASSES[13] == "Plasma membrane" and CLASSES[18] == "Negative"
    ds = open_dataset(f"hpa2021:{root}")
    assert isinstance(ds, Hpa2021Dataset) and isinstance(ds, ItemSet) and ds.name == "hpa2021"
    assert ds.card.channel_names == ("microtubules", "protein", "nucleus", "er") and ds.card.label_mode == "multilabel"
    assert len(ds) == 48 and ds.labels.shape == (48, 19) and ds.labels[:, [0, 2, 13, 16]].sum(axis=0).tolist() == [12, 12, 12, 16]
    image = ds.read(0)
    assert image.shape == (4, SIZE, SIZE) and image.dtype == np.uint16
    assert image[2][SIZE // 2, SIZE // 2] > image[2][0, 0]  # blue is the nucleus channel
    # no metadata: each image its own group, and the card says so
    assert list(ds.groups) == ds.ids and ds.card.group_name == "image"
    # the folder alone is recognised by its layout
    assert dataset_card_for(str(root)) is HPA2021 and open_dataset(str(root)).version == ds.version


def test_a_metadata_table_groups_images_by_gene(hpa):
    root, metadata = hpa
    ds = open_dataset(f"hpa2021:{root}", annotations=metadata)
    assert ds.card.group_name == "gene" and len(set(ds.groups)) == 16 and ds.groups[0] == "GENE0"
    assert set(ds.cell_lines.values()) == {"U2OS", "A-431"}
    split = make_split(ds, track="protein", seed=0)
    part_of = {i: part for part, ids in split.parts.items() for i in ids}
    for gene in set(ds.groups):
        assert len({part_of[i] for i, g in zip(ds.ids, ds.groups) if g == gene}) == 1


def test_errors_name_the_file_and_where_to_get_the_data(hpa, tmp_path):
    root, _ = hpa
    runner = CliRunner()
    one_line_error(runner.invoke(cli, ["data", "info", "--dataset", "hpa2021"]), "hpa2021:DIR", "kaggle")
    one_line_error(runner.invoke(cli, ["data", "info", "--dataset", f"hpa2021:{tmp_path / 'nowhere'}"]),
                   "no such folder", "hpa-single-cell-image-classification")
    bad = tmp_path / "bad"
    (bad / "train").mkdir(parents=True)
    (bad / "train.csv").write_text("ID,Label\nabc,3|19\n")
    one_line_error(runner.invoke(cli, ["data", "info", "--dataset", f"hpa2021:{bad}"]), "row 2", "'19'")
    (bad / "train.csv").write_text("ID,Label\nabc,3\n")
    one_line_error(runner.invoke(cli, ["data", "info", "--dataset", str(bad)]), "abc_red.png", "not found")
    info = runner.invoke(cli, ["data", "info", "--dataset", f"hpa2021:{root}"])
    assert info.exit_code == 0 and "items: 48" in info.output and "--annotations" in info.output, info.output


def test_hpa_trained_cards_are_not_zero_shot_from_their_training_data():
    for name in ("hpa-fov-vitb8", "hpa-sc-vitb16", "subcell-bg-mae-pool"):
        reasons = not_zero_shot_reasons(get_card(name), HPA2021)
        assert reasons and "hpa2021" in reasons[0], (name, reasons)
        assert not_zero_shot_reasons(get_card(name), get_dataset_card("opencell")) == []
    for name in ("imagenet-dino-vitb8", "dinov2-vits14", "classical-stats"):
        assert not_zero_shot_reasons(get_card(name), HPA2021) == [], name


def _tiny(name: str, like: str):
    """A seeded tiny ViT with the card ``like``'s channels, normalization and training data."""
    card = dataclasses.replace(get_card(like), name=name, source="builtin:random-init", init_seed=0, sha256=None,
                               arch="vit_small_patch8_224", arch_kwargs={"embed_dim": 32, "depth": 1, "num_heads": 2},
                               patch_size=8, feature_dim=32, resize="none")
    return register_card(card, overwrite=True)


def test_fov_probes_on_hpa_and_the_board_marks_hpa_trained_rows(hpa, tmp_path, monkeypatch):
    root, metadata = hpa
    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path / "cache"))
    hpa_card, imagenet_card = _tiny("hpa-fov-tiny-test", "hpa-fov-vitb8"), _tiny("imagenet-tiny-test", "imagenet-dino-vits8")
    out = tmp_path / "entries"
    runner = CliRunner()
    result = runner.invoke(cli, ["run", "--backbone", f"{hpa_card.name},{imagenet_card.name}", "--dataset",
                                 f"hpa2021:{root}", "--annotations", str(metadata), "--task", "fov-linear,fov-mlp",
                                 "--set", "epochs=3", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert len(list(out.glob("*fov-mlp__paper.json"))) == 2
    entries = {json.loads(p.read_text())["backbone"]["name"]: json.loads(p.read_text())
               for p in out.glob("*fov-linear__paper.json")}
    assert set(entries) == {hpa_card.name, imagenet_card.name}
    # RGBY into an RGBY model (natural); the card's RGB preset for ImageNet: microtubules R, protein G, nucleus B
    assert entries[hpa_card.name]["channels"]["spec"] == "microtubules=0,protein=1,nucleus=2,er=3"
    assert entries[imagenet_card.name]["channels"]["spec"] == "microtubules=0,protein=1,nucleus=2"
    assert entries[hpa_card.name]["dataset"]["name"] == "hpa2021"
    assert entries[hpa_card.name]["dataset"]["card"]["group_name"] == "gene"
    assert entries[hpa_card.name]["backbone"]["not_zero_shot"] and not entries[imagenet_card.name]["backbone"]["not_zero_shot"]

    built = runner.invoke(cli, ["leaderboard", "build", str(out), "--out", str(tmp_path / "board")])
    assert built.exit_code == 0, built.output
    with open(tmp_path / "board" / "leaderboard.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("backbone") in entries]
    assert len(rows) == 4  # two backbones x two probes
    for row in rows:
        reasons = json.loads(row["not_zero_shot"])
        assert (row["backbone"] == hpa_card.name) == bool(reasons), row
        assert all("hpa2021" in why for why in reasons)
    board = (tmp_path / "board" / "LEADERBOARD.md").read_text()
    assert "hpa2021" in board and "not zero-shot" in board


def test_a_rewritten_nucleus_png_is_segmented_again(tmp_path, monkeypatch):
    """An image is four files: a mask is current only while all its pixels are (the mask store
    once checked only ``path(i)``, the protein file, so a new nucleus channel kept its old mask)."""
    from PIL import Image

    from ocbench.data import cells

    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path / "cache"))
    root, _ = _write_hpa(tmp_path / "hpa", per_class=2)
    crop, policy = cells.CropSettings(16, 2.0), cells.LabelPolicy(grade=1)
    ds = open_dataset(f"hpa2021:{root}")
    first = cells.prepare_cells(ds, "classical", crop=crop, labels=policy)
    assert first.meta["n_fovs_segmented_now"] == len(ds) == 8
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(root / "train" / f"{ds.ids[0]}_blue.png")
    with pytest.warns(UserWarning, match="changed since their masks were made"):
        again = cells.prepare_cells(open_dataset(f"hpa2021:{root}"), "classical", crop=crop, labels=policy)
    assert again.meta["n_fovs_segmented_now"] == 1
