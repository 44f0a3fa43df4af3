"""Robust feature standardisation (card feature_standardization): classical-stats on the demo's cells."""

import numpy as np
import pytest

pytest.importorskip("skimage", reason="the demo's cells are segmented with scikit-image (pip install 'ocbench[singlecell]')")

from demo_data import labelled_demo  # noqa: E402
from ocbench.backbones.cards import get_card  # noqa: E402
from ocbench.benchmark.entry import load_entry  # noqa: E402
from ocbench.benchmark.runner import RunOptions, RunSpec, run_grid  # noqa: E402
from ocbench.data.cards import open_dataset  # noqa: E402
from ocbench.tasks.standardize import robust_center_scale, standardize_robust  # noqa: E402


def test_robust_center_scale_handles_constant_and_mostly_constant_features():
    x = np.zeros((10, 3))
    x[:, 0] = np.arange(10.0) * 1000
    x[9, 1] = 5.0  # IQR 0: the std is the scale
    center, scale = robust_center_scale(x)
    assert center.tolist() == [4500.0, 0.0, 0.0]
    assert scale[0] == pytest.approx((6750 - 2250) / 1.349) and scale[1] == pytest.approx(x[:, 1].std()) and scale[2] == 1.0
    z = standardize_robust(x)
    assert np.isfinite(z).all() and z.dtype == np.float32


def test_classical_stats_sc_knn_on_the_demo_has_few_near_ties_after_standardisation(module_cache, tmp_path):
    card = get_card("classical-stats")
    assert card.feature_standardization == "robust" and card.role == "baseline"
    data = open_dataset(str(labelled_demo(tmp_path / "demo", proteins=16, fovs_per_protein=3, size=64)))
    options = RunOptions(output_dir=tmp_path / "results", device="cpu", progress=False)
    overrides = ("ks=1,5", "main_k=5", "crop_size=64")  # small crops: the same features, faster
    (outcome,) = run_grid([RunSpec(backbone="classical-stats", task="sc-knn", overrides=overrides)], data, options)
    entry = load_entry(outcome.path)
    record = entry.feature_standardization
    assert record["declared"] == "robust" and record["applied"] is True
    before, after = record["before"], record["after"]
    assert after["near_tie_share"] < 0.05, record
    assert before["near_tie_share"] >= after["near_tie_share"]
    assert after["nearest_neighbour_cosine_median"] < before["nearest_neighbour_cosine_median"]
    assert after["queries"] == outcome.details["n_cells"] and before["queries"] == after["queries"]
