"""The classical baseline's features: well defined, per-image, and they carry localization signal."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ocbench.backbones.cards import get_card
from ocbench.backbones.classical import CROSS_FEATURES, PER_CHANNEL_FEATURES, ClassicalFeatures, feature_dim, feature_names


def _cells(size=64, seed=0):
    """Nuclei blobs, a matching cell-body mask, pixel grids."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    nuclei, bodies = np.zeros((size, size)), np.zeros((size, size))
    for cy, cx in rng.uniform(0.2, 0.8, size=(3, 2)) * size:
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        nuclei += np.exp(-d2 / (2 * 5.0**2))
        bodies += np.exp(-d2 / (2 * 12.0**2))
    return nuclei / nuclei.max(), bodies / bodies.max()


def _features(protein, nucleus):
    x = torch.tensor(np.stack([protein, nucleus])[None], dtype=torch.float32)
    return dict(zip(feature_names(("protein", "nucleus")), ClassicalFeatures(2)(x)[0].tolist()))


def test_dimension_and_names_agree_with_the_card():
    assert feature_dim(2) == get_card("classical-stats").feature_dim == 92
    names = feature_names(("protein", "nucleus"))
    assert len(names) == 92 == len(set(names))
    assert len(PER_CHANNEL_FEATURES) == 44 and len(CROSS_FEATURES) == 4
    assert ClassicalFeatures(2)(torch.rand(2, 2, 32, 32)).shape == (2, 92)


def test_nuclear_protein_sits_inside_the_nucleus_mask_cytoplasmic_does_not():
    nuclei, bodies = _cells()
    nuclear = _features(nuclei, nuclei)
    cytoplasmic = _features(np.clip(bodies - nuclei, 0, None), nuclei)
    assert nuclear["protein~nucleus.mass0_in_mask1"] > 0.6
    assert cytoplasmic["protein~nucleus.mass0_in_mask1"] < nuclear["protein~nucleus.mass0_in_mask1"] - 0.3
    assert nuclear["protein~nucleus.pearson"] > 0.99 > cytoplasmic["protein~nucleus.pearson"]


def test_texture_features_separate_punctate_from_smooth():
    nuclei, bodies = _cells()
    rng = np.random.default_rng(3)
    punctate = bodies * (rng.random(bodies.shape) > 0.97)
    smooth, spotty = _features(bodies, nuclei), _features(punctate, nuclei)
    assert spotty["protein.grad_mean_s1"] > smooth["protein.grad_mean_s1"]
    assert spotty["protein.glcm_contrast_d1"] > smooth["protein.glcm_contrast_d1"]
    # high-frequency power: smooth bodies keep it in the low bands
    high = [f"protein.power_band{b}" for b in (5, 6, 7)]
    assert sum(spotty[k] for k in high) > sum(smooth[k] for k in high)


def test_features_are_per_image_and_order_independent():
    model = ClassicalFeatures(2)
    x = torch.rand(5, 2, 48, 40)
    out = model(x)
    order = torch.tensor([3, 0, 4, 1, 2])
    assert torch.equal(model(x[order]), out[order])
    assert torch.equal(torch.cat([model(x[i : i + 1]) for i in range(5)]), out)


def test_constant_and_zero_images_stay_finite():
    model = ClassicalFeatures(2)
    out = model(torch.cat([torch.zeros(1, 2, 32, 32), torch.full((1, 2, 32, 32), 0.5)]))
    assert torch.isfinite(out).all()
    names = feature_names(("protein", "nucleus"))
    assert out[0, names.index("protein.std")] == 0 and out[0, names.index("protein~nucleus.pearson")] == 0


def test_too_small_images_are_refused():
    with pytest.raises(ValueError, match="too small"):
        ClassicalFeatures(2)(torch.rand(1, 2, 6, 6))


def _framed(cell: torch.Tensor, size: int, top: int, left: int) -> torch.Tensor:
    """``cell`` (C, h, w) placed at (top, left) in a zero frame of ``size`` px."""
    out = torch.zeros(cell.shape[0], size, size)
    out[:, top : top + cell.shape[1], left : left + cell.shape[2]] = cell
    return out


def test_a_masked_cell_is_measured_on_its_own_box_not_on_the_black_frame_around_it():
    nuclei, bodies = _cells(size=40, seed=2)
    cell = torch.tensor(np.stack([bodies, nuclei]), dtype=torch.float32)
    cell[:, cell[0] < 0.15] = 0  # masked outside the cell, as a crop is
    model = ClassicalFeatures(2)
    small, large, shifted = (model(_framed(cell, size, top, left)[None])[0] for size, top, left in ((64, 10, 12), (512, 200, 180), (512, 3, 470)))
    # the same cell in a 64 px or a 512 px crop, anywhere in it: the same statistics
    assert torch.equal(small, large) and torch.equal(small, shifted)
    names = feature_names(("protein", "nucleus"))
    whole_crop_mean = float(_framed(cell, 512, 200, 180)[0].mean())
    assert small[names.index("protein.mean")] > 20 * whole_crop_mean  # the frame is not averaged in


def test_images_without_a_black_frame_are_measured_whole_and_a_mixed_batch_matches_one_by_one():
    model = ClassicalFeatures(2)
    fovs = torch.rand(3, 2, 48, 48) + 0.01
    nuclei, bodies = _cells(size=20, seed=4)
    crop = _framed(torch.tensor(np.stack([bodies, nuclei]), dtype=torch.float32), 48, 14, 20)
    mixed = torch.cat([fovs[:2], crop[None], fovs[2:]])
    out = model(mixed)
    assert torch.equal(torch.cat([model(mixed[i : i + 1]) for i in range(4)]), out)
    assert torch.equal(out[[0, 1, 3]], model(fovs))
    # a cell of a few pixels is measured on a box of at least 8 px
    dot = torch.zeros(1, 2, 48, 48)
    dot[0, :, 30, 40] = 1.0
    assert torch.isfinite(model(dot)).all()
    assert torch.equal(model(dot), model(_framed(dot[0, :, 26:34, 36:44], 64, 50, 2)[None]))


def test_large_fields_of_view_get_the_same_features_in_any_batch():
    # Reductions over a batch of 600 px images split their work across threads differently from
    # one image's, so the last bits of a feature depended on the batch the image came in.
    torch.manual_seed(3)
    fovs = torch.rand(4, 2, 600, 600) ** 3
    model = ClassicalFeatures(2)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        one_by_one = torch.cat([model(fovs[i : i + 1]) for i in range(4)])
        assert torch.equal(model(fovs), one_by_one)
        assert torch.equal(model(fovs[[2, 0]]), one_by_one[[2, 0]])
    finally:
        torch.set_num_threads(threads)
