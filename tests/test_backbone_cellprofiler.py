"""The cellprofiler baseline: cp-measure's measurements on a synthetic cell agree with values computed
here, crops and FOVs give the profile the card declares, and a run on a small demo writes entries."""

import sys

import numpy as np
import pytest

from cli_assertions import one_line_error

CHANNELS = ("protein", "nucleus")


def _synthetic_cells(seed: int = 0):
    """Two cells (an ellipse and a disk) on a 48 x 64 image; two channels of smooth random intensity in (0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:48, :64]
    labels = np.zeros((48, 64), np.int32)
    labels[((yy - 20) / 11.0) ** 2 + ((xx - 18) / 15.0) ** 2 <= 1] = 1
    labels[(yy - 26) ** 2 + (xx - 48) ** 2 <= 9**2] = 2
    base = rng.uniform(0.05, 1.0, (2, 48, 64))
    # nucleus = a noisy function of the protein: a correlation clearly away from 0 and 1
    channels = np.stack([base[0], np.clip(0.6 * base[0] + 0.4 * base[1], 0, 1)])
    return labels, channels


def test_measurements_match_values_computed_independently():
    pytest.importorskip("cp_measure", reason="the cellprofiler baseline needs cp-measure (pip install 'ocbench[cellprofiler]')")
    from ocbench.backbones.cellprofiler import measure_cells

    labels, channels = _synthetic_cells()
    names, table = measure_cells(labels, channels, CHANNELS)
    assert table.shape == (2, len(names)) and len(set(names)) == len(names)
    column = {name: table[:, i] for i, name in enumerate(names)}
    for cell in (1, 2):
        inside = labels == cell
        protein, nucleus = channels[0][inside], channels[1][inside]
        row = cell - 1
        assert column["object.SizeShape.Area"][row] == inside.sum()
        assert column["protein.Intensity.Intensity_MeanIntensity"][row] == pytest.approx(protein.mean(), rel=1e-9)
        assert column["nucleus.Intensity.Intensity_IntegratedIntensity"][row] == pytest.approx(nucleus.sum(), rel=1e-9)
        assert column["protein.Intensity.Intensity_MaxIntensity"][row] == pytest.approx(protein.max(), rel=1e-12)
        pearson = np.corrcoef(protein, nucleus)[0, 1]
        assert 0.3 < pearson < 0.95
        assert column["protein~nucleus.Pearson.Correlation_Pearson"][row] == pytest.approx(pearson, rel=1e-9)
    # positions are left out: they say where a cell lies, not what it is
    assert not any(".Center_" in n or "Location_" in n or "BoundingBoxMinimum" in n for n in names)
    assert any(".Texture." in n for n in names) and any(".Granularity." in n for n in names)
    assert any(".RadialDistribution." in n for n in names)


def test_a_masked_crop_is_one_cell_and_its_profile_is_its_measurements():
    pytest.importorskip("cp_measure", reason="the cellprofiler baseline needs cp-measure (pip install 'ocbench[cellprofiler]')")
    from ocbench.backbones.cellprofiler import cell_feature_names, feature_names, profile_image

    labels, channels = _synthetic_cells(1)
    inside = labels == 2
    counts = np.rint(100 + 3000 * channels) * inside  # the single-cell track's crop: zero outside the cell
    profile = profile_image(counts, CHANNELS)
    names = feature_names(CHANNELS)
    n = len(cell_feature_names(CHANNELS))
    assert profile.shape == (len(names),) == (2 * n + 1,) and np.isfinite(profile).all()
    assert names[-1] == "cell_count" and profile[-1] == 1
    assert (profile[n:2 * n] == 0).all()  # one cell: no spread
    value = dict(zip(names, profile))
    assert value["median.object.SizeShape.Area"] == inside.sum()
    # the channels were stretched to their 99.9th percentile inside the cell before measuring
    protein = counts[0][inside] / np.percentile(counts[0][inside], 99.9)
    assert value["median.protein.Intensity.Intensity_MeanIntensity"] == pytest.approx(np.clip(protein, 0, 1).mean(), rel=1e-9)
    # the crop's own measurements, wherever the cell lies in the crop
    # (the cell and an 8 px margin stay on the padded image, so the crop is cut to the same box)
    shifted = np.roll(np.pad(counts, ((0, 0), (10, 10), (10, 10))), (-3, -7), axis=(1, 2))
    np.testing.assert_allclose(profile_image(shifted, CHANNELS), profile_image(np.pad(counts, ((0, 0), (10, 10), (10, 10))), CHANNELS),
                               rtol=1e-9, atol=1e-12)


def test_missing_cp_measure_is_a_one_line_error(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from demo_data import labelled_demo
    from ocbench.cli import cli

    data = labelled_demo(tmp_path / "demo", proteins=4, fovs_per_protein=1, size=64)
    monkeypatch.setitem(sys.modules, "cp_measure", None)  # import cp_measure -> ImportError
    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path / "cache"))
    shown = CliRunner().invoke(cli, ["backbones", "show", "cellprofiler"])
    assert shown.exit_code == 0 and "needs the Python package cp-measure" in shown.output
    result = CliRunner().invoke(cli, ["run", "--backbone", "cellprofiler", "--dataset", str(data), "--task", "fov-linear",
                                       "--output", str(tmp_path / "results")])
    one_line_error(result, "cp-measure", "pip install 'ocbench[cellprofiler]'")
    assert not list((tmp_path / "results").rglob("*.json")) if (tmp_path / "results").exists() else True


def test_a_fov_profile_is_the_median_and_mad_over_the_cells_the_single_cell_track_segments(tmp_path):
    pytest.importorskip("cp_measure", reason="the cellprofiler baseline needs cp-measure (pip install 'ocbench[cellprofiler]')")
    pytest.importorskip("skimage", reason="the demo's cells are segmented with scikit-image (pip install 'ocbench[cells]')")
    import torch

    from demo_data import labelled_demo
    from ocbench.backbones.cellprofiler import CellProfilerFeatures, cell_feature_names, measure_cells
    from ocbench.data.cards import open_dataset
    from ocbench.data.cells import get_backend

    data = open_dataset(str(labelled_demo(tmp_path / "demo", proteins=2, fovs_per_protein=1, size=64)))
    fov = np.asarray(data.read(0)).astype(np.float64)
    labels = get_backend("classical").segment(fov, data.card.channel_names)
    assert labels.max() >= 2
    inside = labels > 0
    stretched = np.stack([np.clip(c / np.percentile(c[inside], 99.9), 0, 1) for c in fov])
    _, table = measure_cells(labels, stretched, CHANNELS)
    median = np.nanmedian(table, axis=0)
    mad = np.nanmedian(np.abs(table - median), axis=0)
    expected = np.concatenate([np.nan_to_num(median), np.nan_to_num(mad), [labels.max()]])
    model = CellProfilerFeatures(CHANNELS)
    out = model(torch.from_numpy(np.stack([fov, fov[:, ::-1].copy()])).float()).numpy()
    assert out.shape == (2, 2 * len(cell_feature_names(CHANNELS)) + 1) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], expected.astype(np.float32), rtol=1e-5, atol=1e-6)
    # one image's profile does not depend on the others in the batch
    np.testing.assert_array_equal(model(torch.from_numpy(fov[None]).float()).numpy()[0], out[0])


def test_cellprofiler_runs_the_single_cell_task_on_a_small_demo(module_cache, tmp_path):
    pytest.importorskip("cp_measure", reason="the cellprofiler baseline needs cp-measure (pip install 'ocbench[cellprofiler]')")
    pytest.importorskip("skimage", reason="the demo's cells are segmented with scikit-image (pip install 'ocbench[cells]')")
    from demo_data import labelled_demo
    from ocbench.backbones.cards import get_card
    from ocbench.benchmark.entry import load_entry
    from ocbench.benchmark.runner import RunOptions, RunSpec, run_grid
    from ocbench.data.cards import open_dataset

    card = get_card("cellprofiler")
    assert (card.role, card.feature_standardization) == ("baseline", "robust")
    data = open_dataset(str(labelled_demo(tmp_path / "demo", proteins=12, fovs_per_protein=2, size=64)))
    options = RunOptions(output_dir=tmp_path / "results", device="cpu", progress=False)
    spec = RunSpec(backbone="cellprofiler", task="sc-knn", overrides=("ks=1,5", "main_k=5", "crop_size=64"))
    (outcome,) = run_grid([spec], data, options)
    entry = load_entry(outcome.path)
    assert entry.backbone.name == "cellprofiler" and {r.name for r in entry.references} >= {"all-positive", "shuffled-labels"}
    record = entry.feature_standardization
    assert record["applied"] is True and record["after"]["near_tie_share"] < 0.05, record
    assert outcome.details["feature_dim"] == card.feature_dim
