"""Single cells: crop geometry, the black-pixel filter, mask store reuse, labels, backends."""

import sys
import types
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest

from ocbench.data import cells as C
from ocbench.data.cards import get_dataset_card
from ocbench.errors import ConfigError, DataError

CARD = get_dataset_card("demo")
CLASSES = CARD.class_names


# -- a tiny in-memory dataset and a backend that draws known masks ----------------------------------
def _disk(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


class FakeDataset:
    """FOVs of constant brightness (1000) with known cells: what ``prepare_cells`` reads."""

    card = CARD
    name = "fake"

    def __init__(self, layouts, grades):
        self.layouts = layouts  # per FOV: list of (cy, cx, r)
        self.shape = (40, 40)
        rows = []
        for i, g in enumerate(grades):
            row = {"fov_id": f"FOV{i:02d}", "gene": f"G{i}", "ensg": f"E{i}"}
            row.update({f"label_{c}": int(g.get(c, 0) > 0) for c in CLASSES})
            row.update({f"grade_{c}": int(g.get(c, 0)) for c in CLASSES})
            rows.append(row)
        self.manifest = pd.DataFrame(rows)
        self.version = "f" * 64
        self.brightness = [1000] * len(grades)

    @property
    def ids(self):
        return self.manifest["fov_id"].tolist()

    @property
    def groups(self):
        return self.manifest["ensg"].to_numpy()

    @property
    def labels(self):
        return self.manifest[[f"label_{c}" for c in CLASSES]].to_numpy()

    def __len__(self):
        return len(self.manifest)

    def read(self, i):
        return np.full((2, *self.shape), self.brightness[i], np.uint16)


def _backend_for(dataset, tag="v1"):
    calls = []

    @dataclass(frozen=True)
    class Drawn(C.SegmentationBackend):
        name: ClassVar[str] = "drawn"
        tag: str = "v1"

        def segment(self, image, channel_names):
            # The FOV is found by its read count: prepare_cells reads FOVs in order, once each.
            i = order.pop(0)
            calls.append(i)
            labels = np.zeros(image.shape[1:], np.int32)
            for k, (cy, cx, r) in enumerate(dataset.layouts[i], start=1):
                labels[_disk(labels.shape, cy, cx, r)] = k
            return labels

    order: list = []
    backend = Drawn(tag=tag)
    return backend, calls, order


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# -- crops ---------------------------------------------------------------------------------------
def test_a_cell_at_an_image_corner_is_padded_centred_and_zoomed(tmp_path):
    h = w = 48
    yy, xx = np.mgrid[:h, :w]
    image = np.stack([100 + 10 * yy + xx, 5000 - yy - xx]).astype(np.uint16)  # linear ramps
    mask = _disk((h, w), 2.0, 3.0, 6)  # a cell cut by the top-left corner
    ys, xs = np.nonzero(mask)
    centroid = (ys.mean(), xs.mean())
    settings = C.CropSettings(size=32, zoom=2.0, mask_outside=False)
    crop = C.crop_cell(image, centroid, settings)
    assert crop.shape == (2, 32, 32) and crop.dtype == np.uint16
    # Output pixel u shows source position c + (u - 15.5) / 2: the centroid sits at the centre.
    py, px = C.crop_positions(centroid[0], settings), C.crop_positions(centroid[1], settings)
    assert (py[15] + py[16]) / 2 == pytest.approx(centroid[0]) and py[1] - py[0] == pytest.approx(0.5)
    off = (py[:, None] < -0.5) | (px[None, :] < -0.5)
    assert off.any() and (crop[:, off] == 0).all()  # padding: zero where the cut leaves the image
    inside = (py[:, None] >= 0) & (px[None, :] >= 0) & (py[:, None] <= h - 1) & (px[None, :] <= w - 1)
    expected = np.rint(100 + 10 * py[:, None] + px[None, :])
    np.testing.assert_array_equal(crop[0][inside], np.broadcast_to(expected, inside.shape)[inside])  # bilinear = exact on a ramp
    # The cell's mask in crop coordinates: centred, twice as large (4x the area).
    cut = C.crop_mask(mask, centroid, settings)
    cy, cx = np.nonzero(cut)
    assert cy.mean() == pytest.approx(15.5, abs=0.5) and cx.mean() == pytest.approx(15.5, abs=0.5)
    assert cut.sum() == pytest.approx(4 * mask.sum(), rel=0.1)
    # Masked: everything outside the cell is black too.
    masked = C.crop_cell(image, centroid, C.CropSettings(32, 2.0, True), mask)
    assert ((masked[0] > 0) == cut).all()


def _bilinear_tap_by_tap(image, centroid, settings, cell):
    """The crop by its definition: four taps per output pixel over the whole image, in float32."""
    _, h, w = image.shape
    y0, y1, wy, y_ok = C.geometry._linear(C.crop_positions(float(centroid[0]), settings), h)
    x0, x1, wx, x_ok = C.geometry._linear(C.crop_positions(float(centroid[1]), settings), w)
    img = image.astype(np.float32)
    wy, wx = wy.astype(np.float32)[:, None], wx.astype(np.float32)[None, :]
    top = img[:, y0][:, :, x0] * (1 - wx) + img[:, y0][:, :, x1] * wx
    bottom = img[:, y1][:, :, x0] * (1 - wx) + img[:, y1][:, :, x1] * wx
    out = top * (1 - wy) + bottom * wy
    keep = y_ok[:, None] & x_ok[None, :]
    if settings.mask_outside:
        keep &= C.crop_mask(cell, centroid, settings)
    return np.clip(np.rint(out * keep[None]), 0, 65535).astype(np.uint16)


@pytest.mark.parametrize("size,zoom,mask_outside", [(168, 2.0, True), (64, 0.5, True), (100, 3.3, False), (9, 1.0, True)])
def test_a_crop_cut_from_its_window_equals_the_tap_by_tap_crop_bit_for_bit(size, zoom, mask_outside):
    rng = np.random.default_rng(size)
    image = rng.integers(0, 65535, (2, 150, 130)).astype(np.uint16)
    labels = rng.integers(0, 5, (150, 130)).astype(np.int32)
    settings = C.CropSettings(size, zoom, mask_outside)
    for centroid in ((70.2, 60.7), (2.0, 128.5), (149.0, 0.0), (-5.0, 140.0)):
        expected = _bilinear_tap_by_tap(image, centroid, settings, labels == 3)
        assert np.array_equal(C.crop_cell(image, centroid, settings, labels, label=3), expected)
        assert np.array_equal(C.crop_cell(image, centroid, settings, labels == 3), expected)


def test_a_compact_cell_in_a_large_crop_equals_the_tap_by_tap_crop_and_a_cell_off_the_crop_is_black():
    rng = np.random.default_rng(7)
    image = rng.integers(0, 65535, (2, 150, 130)).astype(np.uint16)
    yy, xx = np.mgrid[0:150, 0:130]
    labels = np.where((yy - 70) ** 2 + (xx - 60) ** 2 < 12**2, 3, 0).astype(np.int32)
    settings = C.CropSettings(256, 2.0, True)
    for centroid in ((70.0, 60.0), (75.3, 52.9)):
        expected = _bilinear_tap_by_tap(image, centroid, settings, labels == 3)
        assert expected.any() and np.array_equal(C.crop_cell(image, centroid, settings, labels, label=3), expected)
    far = C.crop_cell(image, (10.0, 10.0), C.CropSettings(16, 2.0, True), labels, label=3)
    assert far.shape == (2, 16, 16) and not far.any()


def test_crop_default_is_the_papers_512_cut_zoom_2():
    settings = C.CropSettings()
    assert (settings.size, settings.zoom, settings.mask_outside) == (512, 2.0, True)
    p = C.crop_positions(300.0, settings)
    assert p[0] == pytest.approx(300 - 127.75) and p[-1] == pytest.approx(300 + 127.75)  # the central 256 px
    with pytest.raises(ConfigError, match="zoom"):
        C.CropSettings(zoom=0)


@pytest.mark.parametrize("mask_outside", [True, False])
def test_black_fraction_is_the_crops_fraction_of_black_pixels(mask_outside):
    image = np.full((2, 40, 40), 700, np.uint16)
    settings = C.CropSettings(size=24, zoom=2.0, mask_outside=mask_outside)
    for cy, cx, r in [(20, 20, 8), (1, 38, 5), (30, 4, 2), (39, 39, 9)]:
        mask = _disk((40, 40), cy, cx, r)
        ys, xs = np.nonzero(mask)
        centroid = (ys.mean(), xs.mean())
        crop = C.crop_cell(image, centroid, settings, mask)
        actual = float((crop == 0).all(axis=0).mean())
        assert C.black_fraction(mask, centroid, settings) == pytest.approx(actual, abs=1e-12)


# -- the cell table, the filter, reuse -----------------------------------------------------------------
LAYOUTS = [
    [(10, 10, 7), (28, 28, 8), (10, 30, 6)],
    [(20, 20, 9), (5, 35, 1), (35, 5, 6)],  # (5, 35, 1): an over-segmented fragment
    [(15, 15, 8), (30, 12, 1.5), (30, 32, 7)],  # another, larger fragment
]
GRADES = [{"nucleoplasm": 3, "cytoplasmic": 2}, {"er": 2}, {"golgi": 3, "big_aggregates": 1}]


#: sc-knn's weak-label policy on OpenCell (from the OpenCell card's task defaults)
OPENCELL_POLICY = C.LabelPolicy(grade=3, omit_fovs_with=("big_aggregates",))


def _prepare(dataset, backend, order, **kwargs):
    order[:] = [i for i in range(len(dataset))]
    kwargs.setdefault("labels", OPENCELL_POLICY)
    return C.prepare_cells(dataset, backend, crop=C.CropSettings(16, 2.0), **kwargs)


def test_black_pixel_filter_drops_the_fragments(cache):
    dataset = FakeDataset(LAYOUTS, GRADES)
    backend, calls, order = _backend_for(dataset)
    table = _prepare(dataset, backend, order, black_percentile=75)
    assert len(table) == 9
    fractions = table.cells["black_fraction"].to_numpy()
    threshold = np.percentile(fractions, 75)
    assert table.meta["black_threshold"] == pytest.approx(threshold)
    np.testing.assert_array_equal(table.kept, fractions <= threshold)
    assert table.meta["n_dropped"] == int((fractions > threshold).sum()) == 2
    dropped = table.cells.loc[~table.kept, ["fov_index", "mask_label"]].values.tolist()
    assert sorted(dropped) == [[1, 2], [2, 2]]  # exactly the two fragments
    assert all("percentile" in why for why in table.cells.loc[~table.kept, "dropped"])
    # 99.7 on nine cells: only the most extreme crop goes.
    order[:] = []
    assert C.prepare_cells(dataset, backend, crop=C.CropSettings(16, 2.0), labels=OPENCELL_POLICY).meta["n_dropped"] == 1


def test_masks_are_saved_reused_and_a_killed_run_resumes(cache):
    dataset = FakeDataset(LAYOUTS, GRADES)
    backend, calls, order = _backend_for(dataset)
    first = _prepare(dataset, backend, order)
    assert calls == [0, 1, 2] and first.meta["n_fovs_segmented_now"] == 3
    masks = sorted(first.masks_dir.glob("*.npz"))
    assert len(masks) == 3 and str(first.masks_dir).startswith(str(cache))
    second = _prepare(dataset, backend, order)
    assert calls == [0, 1, 2]  # nothing segmented again
    pd.testing.assert_frame_equal(second.cells, first.cells)
    masks[1].unlink()  # as if the run had been killed before FOV 1's mask was written
    order[:] = [1]
    third = C.prepare_cells(dataset, backend, crop=C.CropSettings(16, 2.0), labels=OPENCELL_POLICY)
    assert calls == [0, 1, 2, 1]
    pd.testing.assert_frame_equal(third.cells, first.cells)
    # A FOV whose pixels changed is segmented again (no file here: the pixels' sha256 is the check).
    dataset.brightness[2] = 900
    order[:] = [2]
    C.prepare_cells(dataset, backend, crop=C.CropSettings(16, 2.0), labels=OPENCELL_POLICY)
    assert calls == [0, 1, 2, 1, 2]
    # Other settings: another store.
    other, other_calls, other_order = _backend_for(dataset, tag="v2")
    assert C.mask_key(dataset, other) != C.mask_key(dataset, backend)
    assert first.mask("FOV00").max() == 3


def test_weak_labels_are_grade_3_fovs_without_big_aggregates(cache):
    dataset = FakeDataset(LAYOUTS, GRADES)
    backend, calls, order = _backend_for(dataset)
    table = _prepare(dataset, backend, order)
    evaluated_fovs = set(table.cells.loc[table.evaluated, "fov_index"])
    assert evaluated_fovs == {0}  # FOV 1 has no grade-3 label, FOV 2 is annotated big_aggregates
    rows = table.cells["fov_index"].to_numpy() == 0
    assert (table.cells.loc[rows, "labels"] == "nucleoplasm").all()  # the grade-2 label is not a weak label
    assert table.weak_labels[rows][:, CLASSES.index("nucleoplasm")].all()
    assert table.meta["fovs_not_eligible"] == {"annotated big_aggregates": 1, "no grade-3 annotation": 1}
    evaluation = C.evaluation_set(dataset, table)
    assert evaluation.source == "weak" and len(evaluation) == 3
    assert list(evaluation.groups) == ["FOV00"] * 3
    crop = evaluation.crops.read(0)
    assert crop.shape == (2, 16, 16) and crop.dtype == np.uint16
    text = C.format_cells_summary(table)
    assert "9 masks" in text and "nucleoplasm" in text and "dropped" in text


def test_expert_labels_by_cell_id_and_by_point(cache, tmp_path):
    dataset = FakeDataset(LAYOUTS, GRADES)
    backend, calls, order = _backend_for(dataset)
    table = _prepare(dataset, backend, order)
    by_id = tmp_path / "by_id.csv"
    by_id.write_text("cell_id,labels\nFOV01#c0001,er;golgi\nFOV00#c0002,nucleoplasm\n")
    rows, labels, skipped = C.read_cell_labels(by_id, table)
    assert skipped == {"outside_every_mask": 0, "in_a_merged_cell": 0}
    assert table.cells["cell_id"].iloc[rows].tolist() == ["FOV00#c0002", "FOV01#c0001"]  # table order
    assert labels[1, CLASSES.index("er")] == labels[1, CLASSES.index("golgi")] == 1
    by_point = C.write_cell_labels(tmp_path / "by_point.csv", [
        {"fov_id": "FOV02", "y": 16.0, "x": 14.0, "labels": ["golgi"]},
        {"fov_id": "FOV00", "y": 27.0, "x": 29.0, "labels": "cytoplasmic"},
    ])
    evaluation = C.evaluation_set(dataset, table, by_point)
    assert evaluation.ids == ["FOV00#c0002", "FOV02#c0001"] and evaluation.source == "expert:by_point.csv"
    # Points the segmentation cannot attribute to one cell are left out and counted, not fatal:
    # one outside every mask, two in one mask (cells the segmentation merged).
    partly = C.write_cell_labels(tmp_path / "partly.csv", [
        {"fov_id": "FOV02", "y": 16.0, "x": 14.0, "labels": ["golgi"]},
        {"fov_id": "FOV00", "y": 0.0, "x": 39.0, "labels": ["er"]},
        {"fov_id": "FOV00", "y": 27.0, "x": 29.0, "labels": ["er"]},
        {"fov_id": "FOV00", "y": 28.0, "x": 29.0, "labels": ["golgi"]},
    ])
    rows, labels, skipped = C.read_cell_labels(partly, table)
    assert table.cells["cell_id"].iloc[rows].tolist() == ["FOV02#c0001"]
    assert skipped == {"outside_every_mask": 1, "in_a_merged_cell": 2}
    notes = C.evaluation_set(dataset, table, partly).notes
    assert notes["points_outside_every_mask"] == 1 and notes["points_in_merged_cells"] == 2
    bad = tmp_path / "bad.csv"
    for body, message in [
        ("cell_id,labels\nFOV00#c0001,nucleus\n", "unknown class"),
        ("cell_id,labels\nFOV00#c0001,er\nFOV00#c0001,er\n", "already listed on line 2"),
        ("fov_id,y,x,labels\nFOV00,0,39,er\n", "none of the 1 listed cells matched this segmentation"),
        ("cell_id,labels\nFOV09#c0001,er\n", "unknown cell id"),
        ("cell,labels\nx,er\n", "expected the columns"),
        ("cell_id,labels\nFOV00#c0001,\n", "no labels"),
    ]:
        bad.write_text(body)
        with pytest.raises(DataError, match=message) as info:
            C.read_cell_labels(bad, table)
        assert "\n" not in str(info.value)


def test_contact_sheet_and_export(cache, tmp_path):
    dataset = FakeDataset(LAYOUTS, GRADES)
    backend, calls, order = _backend_for(dataset)
    table = _prepare(dataset, backend, order)
    sheet = C.write_contact_sheet(tmp_path / "sheet.png", dataset, table, n=4)
    assert sheet.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    features = np.arange(12, dtype=np.float32).reshape(3, 4)
    labels = np.zeros((3, len(CLASSES)), np.uint8)
    labels[0, 1] = 1
    path = C.export_embeddings(tmp_path / "cells.npz", features, ["c1", "c2", "c3"], labels, ["f", "f", "g"], CLASSES)
    with np.load(path) as z:  # no pickle needed
        np.testing.assert_array_equal(z["features"], features)
        assert z["features"].dtype == np.float32 and z["ids"].tolist() == ["c1", "c2", "c3"]
        np.testing.assert_array_equal(z["labels"], labels)
        assert z["groups"].tolist() == ["f", "f", "g"] and tuple(z["class_names"]) == CLASSES
    with pytest.raises(ConfigError, match=".npz or .parquet"):
        C.export_embeddings(tmp_path / "cells.csv", features, ["c1", "c2", "c3"], labels, ["f"] * 3, CLASSES)


# -- backends --------------------------------------------------------------------------------------
def test_cellpose_missing_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "cellpose", None)  # as if not installed
    with pytest.raises(ConfigError) as info:
        C.get_backend("cellpose").check_available()
    message = str(info.value)
    assert "\n" not in message and "cellpose" in message and "pip install 'ocbench[singlecell]'" in message


def test_cellpose_offline_is_one_clear_line(monkeypatch):
    from urllib.error import URLError

    fake = types.ModuleType("cellpose")
    models = types.ModuleType("cellpose.models")

    def no_network(**kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution\nmore detail")

    models.Cellpose = no_network
    fake.models = models
    monkeypatch.setitem(sys.modules, "cellpose", fake)
    monkeypatch.setitem(sys.modules, "cellpose.models", models)
    monkeypatch.setattr("ocbench.data.cells.backends._cellpose_version", lambda: "3.1.1")
    C._CELLPOSE_MODELS.clear()
    with pytest.raises(DataError) as info:
        C.get_backend("cellpose").segment(np.zeros((2, 8, 8), np.uint16), ("protein", "nucleus"))
    message = str(info.value)
    assert "\n" not in message and "cyto3" in message and "internet" in message
    monkeypatch.setattr("ocbench.data.cells.backends._cellpose_version", lambda: "4.0.1")
    with pytest.raises(ConfigError, match=r"cellpose 3\.x"):
        C.get_backend("cellpose").check_available()


def test_backend_names_and_settings():
    assert {"classical", "cellpose"} <= set(C.backend_names())
    with pytest.raises(ConfigError, match="did you mean"):
        C.get_backend("celpose")
    with pytest.raises(ConfigError, match="bad settings"):
        C.get_backend("classical", diameter=3)
    with pytest.raises(ConfigError, match="no 'dapi' channel"):
        C.get_backend("classical", nucleus_channel="dapi").check_channels(("protein", "nucleus"))


def test_damaged_cell_label_files_are_one_line_naming_the_file_and_line(cache, tmp_path):
    """Not UTF-8, or a field over csv's 131,072-character limit, were tracebacks; the same point listed
    twice was counted as "2 in merged cells"."""
    dataset = FakeDataset(LAYOUTS, GRADES)
    backend, calls, order = _backend_for(dataset)
    table = _prepare(dataset, backend, order)
    bad = tmp_path / "labels.csv"
    for body, fragments in [
        (b"cell_id,labels\nFOV00#c0002,nucleoplasm\nFOV01#c0001,\xe9r\n", ["line 3", "not UTF-8"]),
        (b"cell_id,labels\nFOV00#c0002,nucleoplasm\nFOV01#c0001," + b"x" * 200_000 + b"\n", ["line 3", "131,072 characters"]),
        (b"fov_id,y,x,labels\nFOV00,27,29,er\nFOV02,16,14,golgi\nFOV00,27.0,29.0,er\n", ["line 4", "duplicate of line 2"]),
    ]:
        bad.write_bytes(body)
        with pytest.raises(DataError) as info:
            C.read_cell_labels(bad, table)
        message = str(info.value)
        assert "\n" not in message and message.startswith(f"{bad}: "), message
        for fragment in fragments:
            assert fragment in message, message
