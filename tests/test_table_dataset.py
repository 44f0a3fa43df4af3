"""A lab's own images through a table (``--dataset my_images.csv``): the card it implies, its
sidecar, ``data info`` and ``data card init``, one-line errors for bad tables, and a run end to end."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from table_data import CLASSES, write_channel_table, write_tiff_table

from ocbench.benchmark.splits import make_split
from ocbench.cli import cli
from ocbench.data.base import ItemSet
from ocbench.data.cards import dataset_card_for, open_dataset
from ocbench.data.table import TableDataset, write_sidecar
from ocbench.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def tiff_table(tmp_path_factory):
    return write_tiff_table(tmp_path_factory.mktemp("tiff"), per_class=12, size=32)


@pytest.fixture(scope="module")
def channel_table(tmp_path_factory):
    return write_channel_table(tmp_path_factory.mktemp("png"), per_class=6, size=32)


def test_a_table_is_an_item_set_with_a_card_from_its_contents(tiff_table):
    ds = open_dataset(tiff_table)
    assert isinstance(ds, TableDataset) and isinstance(ds, ItemSet)
    card = ds.card
    assert ds.name == card.name == "local:my_images"
    assert card.channel_names == ("ch0", "ch1", "ch2") and card.class_names == tuple(sorted(CLASSES))
    assert card.label_mode == "single" and card.group_column == "group"
    assert len(ds) == 60 and ds.ids[0] == "images/alpha_000.tif" and ds.parent_ids == ds.ids
    assert ds.labels.shape == (60, 5) and (ds.labels.sum(axis=1) == 1).all()
    assert len(set(ds.groups)) == 20
    image = ds.read(0)
    assert image.shape == (3, 32, 32) and image.dtype == np.uint16
    assert dataset_card_for(str(tiff_table)) == card  # one resolver, before the images are opened


def test_one_file_per_channel_is_multilabel_and_ungrouped(channel_table):
    ds = open_dataset(channel_table)
    assert ds.card.channel_names == ("dna", "protein") and ds.card.label_mode == "multilabel"
    assert (ds.labels.sum(axis=1) == 2).all()
    assert list(ds.groups) == ds.ids and ds.card.group_name == "image"  # each image its own group
    image = ds.read(3)
    assert image.shape == (2, 32, 32) and image.dtype == np.uint16 and image.max() > 255  # 8-bit scaled up


def test_splits_group_by_the_group_column(tiff_table):
    ds = open_dataset(tiff_table)
    split = make_split(ds, track="protein", seed=0)
    part_of = {i: part for part, ids in split.parts.items() for i in ids}
    by_group: dict[str, set] = {}
    for item, group in zip(ds.ids, ds.groups):
        by_group.setdefault(group, set()).add(part_of[item])
    assert all(len(parts) == 1 for parts in by_group.values())
    test_idx, folds = split.indices_of(ds)
    assert sorted(np.concatenate([test_idx, *folds]).tolist()) == list(range(len(ds)))


def test_sidecar_card_orders_channels_and_classes(tmp_path, tiff_table):
    folder = tmp_path / "copy"
    shutil.copytree(tiff_table.parent, folder)
    table = folder / tiff_table.name
    sidecar = write_sidecar(table)
    assert sidecar.name == "my_images.dataset.json"
    card = json.loads(sidecar.read_text())
    card.update(name="lab-screen", channel_names=["nucleus", "protein", "membrane"], class_names=list(reversed(CLASSES)),
                cell_diameter_px=10)
    sidecar.write_text(json.dumps(card))
    ds = open_dataset(table)
    assert ds.name == "lab-screen" and ds.card.channel_names == ("nucleus", "protein", "membrane")
    assert ds.card.class_names == tuple(reversed(CLASSES)) and ds.card.cell_crop() == 64
    with pytest.raises(ConfigError, match="exists already"):
        write_sidecar(table)
    card["name"] = "opencell"
    sidecar.write_text(json.dumps(card))
    with pytest.raises(ConfigError, match="is a registered dataset"):
        open_dataset(table)
    card.update(name="x", chanel_names=["a"])
    sidecar.write_text(json.dumps(card))
    with pytest.raises(ConfigError, match="unknown field 'chanel_names' \\(did you mean channel_names\\?\\)"):
        open_dataset(table)


def _table(tmp_path, text: str, files=("a.tif", "b.tif", "c.tif", "d.tif")):
    import tifffile

    for name in files:
        tifffile.imwrite(tmp_path / name, np.zeros((2, 8, 8), np.uint16), photometric="minisblack")
    path = tmp_path / "t.csv"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, message",
    [
        ("file,label\na.tif,x\n", "no 'path' column"),
        ("path,class\na.tif,x\n", "no 'label' column"),
        ("path,label\na.tif,x\nb.tif,x\nc.tif,y\n", "row 4: class 'y' has one example"),
        ("path,label\na.tif,x\n../outside.tif,x\n", "row 3: path ../outside.tif is outside the table's folder"),
        ("path,label\na.tif,x\nb.tif,\n", "row 3: column 'label' is empty"),
        ("path,label\na.tif,x\nmissing.tif,x\n", "row 3: file"),
        ("path,label\na.tif,x\na.tif,x\n", "row 3: id 'a.tif' is listed twice"),
    ],
)
def test_bad_tables_are_one_line_errors_naming_the_row(tmp_path, text, message):
    with pytest.raises(DataError) as info:
        open_dataset(_table(tmp_path, text))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_unknown_class_and_bad_images(tmp_path):
    table = _table(tmp_path, "path,label\na.tif,x\nb.tif,x\nc.tif,y\nd.tif,y\n")
    (tmp_path / "t.dataset.json").write_text(json.dumps({"class_names": ["x", "z"]}))
    with pytest.raises(DataError, match="row 4: class 'y' is not in the card's classes"):
        open_dataset(table)
    (tmp_path / "t.dataset.json").unlink()
    (tmp_path / "c.tif").write_bytes(b"not a tiff at all")
    import tifffile

    tifffile.imwrite(tmp_path / "d.tif", np.zeros((3, 8, 8), np.uint16), photometric="minisblack")
    ds = open_dataset(table)
    with pytest.raises(DataError, match="c.tif: not a readable image"):
        ds.read(2)
    with pytest.raises(DataError, match="mixed channel counts"):
        ds.read(3)


def test_unknown_dataset_names_are_errors_with_did_you_mean():
    with pytest.raises(DataError, match=r"did you mean: opencell\?"):
        dataset_card_for("opencel")
    with pytest.raises(DataError, match="no such folder or table"):  # never silently OpenCell
        dataset_card_for("no/such/images.csv")


def test_min_grade_is_an_opencell_reader_option(tmp_path):
    table = _table(tmp_path, "path,label\na.tif,x\nb.tif,x\nc.tif,y\nd.tif,y\n")
    with pytest.raises(ConfigError, match="--min-grade: dataset 'local:t' has no reader option 'min_grade'"):
        open_dataset(table, min_grade=2)
    from ocbench.data.cards import OPENCELL

    with pytest.raises(ConfigError, match="--min-grade 4 is not allowed for dataset 'opencell'; use one of 1, 2, 3"):
        OPENCELL.reader_option_values({"min_grade": 4})


def test_data_info_and_card_init_on_the_command_line(tmp_path, channel_table):
    folder = tmp_path / "copy"
    shutil.copytree(channel_table.parent, folder)
    table = folder / channel_table.name
    (folder / "png" / "beta_001_dna.png").unlink()
    runner = CliRunner()
    info = runner.invoke(cli, ["data", "info", "--dataset", str(table)])
    assert info.exit_code == 0, info.output
    assert "label mode: multilabel; channels: dna, protein" in info.output
    assert "images: 30; groups: 30 (image)" in info.output
    assert "problems: 1" in info.output and "beta_001_dna.png" in info.output
    init = runner.invoke(cli, ["data", "card", "init", str(table)])
    assert init.exit_code == 0 and (folder / "cells.dataset.json").is_file()
    again = runner.invoke(cli, ["data", "card", "init", str(table)])
    assert again.exit_code == 2 and "exists already" in again.output


def test_tasks_refuse_a_label_mode_they_do_not_score(tiff_table):
    from ocbench.tasks import get_task

    with pytest.raises(ConfigError, match="task finetune scores multilabel labels; dataset 'local:my_images' is single"):
        get_task("finetune").for_dataset(dataset_card_for(tiff_table))


def test_the_board_never_puts_two_label_modes_or_datasets_in_one_table():
    from ocbench.benchmark.entry import entry_from_dict
    from board_examples import example_entry_dict
    from ocbench.leaderboard.grouping import GroupKey

    multi = example_entry_dict("tiny-vit-random", val_folds=[0.5, 0.55, 0.52, 0.51, 0.53])
    single = {**multi, "dataset": {**multi["dataset"], "label_mode": "single"}}
    other = {**multi, "dataset": {**multi["dataset"], "name": "local:my_images"}}
    keys = [GroupKey.of(entry_from_dict(d)) for d in (multi, single, other)]
    assert len(set(keys)) == 3 and len({k.slug for k in keys}) == 3
    assert keys[0].label_mode == "multilabel"  # an entry without a label mode was multilabel


@pytest.mark.slow
def test_a_multilabel_table_runs_compares_and_builds_a_board_with_no_code(tmp_path, monkeypatch):
    """A table with a sidecar card runs the FOV probes and sc-knn (classical cells), `compare` and
    `leaderboard build`; the probe scores real labels well above the same table with shuffled labels."""
    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path / "cache"))
    runner = CliRunner()
    tables = {}
    for kind in ("real", "shuffled"):
        table = write_tiff_table(tmp_path / kind, per_class=16, size=48, groups=8, multilabel=True)
        if kind == "shuffled":  # the same images, labels dealt at random
            rows = table.read_text().splitlines()
            labels = [r.split(",")[1] for r in rows[1:]]
            order = np.random.default_rng(0).permutation(len(labels))
            table.write_text("\n".join([rows[0]] + [f"{r.split(',')[0]},{labels[j]},{r.split(',')[2]}"
                                                    for r, j in zip(rows[1:], order)]) + "\n")
        (table.with_name("my_images.dataset.json")).write_text(json.dumps(
            {"name": f"screen-{kind}", "channel_names": ["nucleus", "protein", "membrane"], "cell_diameter_px": 12}))
        tables[kind] = table
    scores = {}
    for kind, table in tables.items():
        out = tmp_path / f"entries-{kind}"
        base = ["run", "--backbone", "classical-stats", "--dataset", str(table), "--channels",
                "protein=protein,nucleus=nucleus", "--output", str(out)]
        if kind == "real":  # cells from the classical backend (a table's default)
            cells = runner.invoke(cli, [*base, "--task", "sc-knn"])
            assert cells.exit_code == 0, cells.output
        result = runner.invoke(cli, [*base, "--task", "fov-mlp,fov-linear" if kind == "real" else "fov-mlp"])
        assert result.exit_code == 0, result.output
        entry = json.loads((out / "classical-stats__map-n1-p0__fov-mlp__paper.json").read_text())
        assert entry["dataset"]["name"] == f"screen-{kind}" and entry["dataset"]["label_mode"] == "multilabel"
        assert entry["class_names"] == sorted(CLASSES)
        scores[kind] = entry["scores"]["val"]["macro_f1"]["mean"]
    print(scores)
    assert scores["real"] > scores["shuffled"] + 0.2, scores
    knn = json.loads((tmp_path / "entries-real" / "classical-stats__map-n1-p0__sc-knn__paper.json").read_text())
    assert knn["task_config"]["crop_size"] == 80  # 3.2 x 12 px x zoom 2, from the card's cell diameter
    real = tmp_path / "entries-real"
    vit = runner.invoke(cli, ["run", "--backbone", "tiny-vit-random", "--dataset", str(tables["real"]), "--channels",
                              "protein=G,nucleus=B", "--task", "fov-mlp", "--output", str(real)])
    assert vit.exit_code == 0, vit.output
    compared = runner.invoke(cli, ["compare", str(real / "classical-stats__map-n1-p0__fov-mlp__paper.json"),
                                   str(real / "tiny-vit-random__map-n2-p1__fov-mlp__paper.json")])
    assert compared.exit_code == 0 and "paired" in compared.output.lower(), compared.output
    built = runner.invoke(cli, ["leaderboard", "build", str(real), str(tmp_path / "entries-shuffled"),
                                "--out", str(tmp_path / "board")])
    assert built.exit_code == 0, built.output
    board = (tmp_path / "board" / "LEADERBOARD.md").read_text()
    assert "screen-real" in board and "screen-shuffled" in board


def test_a_rewritten_second_channel_file_is_not_served_from_the_embedding_cache(tmp_path, monkeypatch):
    """One file per channel: an item is several files, so a changed file that is not ``path(i)``
    must still give fresh features (the cache once checked only each item's first file)."""
    from PIL import Image

    from ocbench.backbones import get_card
    from ocbench.backbones.adapters import parse_channels
    from ocbench.benchmark.embeddings import extract_embeddings

    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path / "cache"))
    table = write_channel_table(tmp_path / "png", per_class=4, size=32)
    card = get_card("classical-stats")
    ds = open_dataset(table)
    adapter = parse_channels("dna=nucleus,protein=protein", card, ds.card)
    before = np.asarray(extract_embeddings(ds, card, adapter, progress=False).features)
    second = ds._files[0][1]
    assert second != ds.path(0) and second.name.endswith("_protein.png")
    Image.fromarray(np.full((32, 32), 60000, np.uint16)).save(second)
    changed = open_dataset(table)
    after = np.asarray(extract_embeddings(changed, card, adapter, progress=False).features)
    assert changed.version != ds.version
    assert not np.allclose(after[0], before[0]) and np.allclose(after[1:], before[1:])
