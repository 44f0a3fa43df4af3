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
