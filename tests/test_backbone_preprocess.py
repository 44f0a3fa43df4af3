"""Preprocessing rules: intensity scaling, resize policy, normalization, and the order they run in."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ocbench.backbones.adapters import parse_channels
from ocbench.backbones.cards import get_card
from ocbench.backbones.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    model_inputs,
    normalize,
    parse_intensity,
    parse_resize,
    preprocess_key,
    quantiles,
    resize_images,
    scale_intensity,
)
from ocbench.errors import ConfigError, DataError


def test_quantiles_match_numpy_linear_percentiles():
    rng = np.random.default_rng(0)
    data = rng.integers(0, 65535, size=(5, 997)).astype(np.float32)
    got = quantiles(torch.from_numpy(data), [0.001, 0.25, 0.5, 0.999]).numpy()
    want = np.percentile(data, [0.1, 25, 50, 99.9], axis=1).T
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_quantiles_of_mostly_zero_rows_match_numpy_exactly():
    # masked cell crops are mostly black: their quantiles are taken from the non-zero pixels
    rng = np.random.default_rng(5)
    data = rng.integers(1, 65535, size=(6, 4001)).astype(np.float32)
    for row, black in enumerate((0.5, 0.9, 0.999, 0.9995, 1.0, 0.97)):
        data[row, rng.permutation(4001)[: int(black * 4001)]] = 0
    qs = [0.001, 0.01, 0.5, 0.99, 0.999]
    got = quantiles(torch.from_numpy(data), qs).numpy()
    want = np.quantile(data.astype(np.float64), qs, axis=1).T.astype(np.float32)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
    assert (got[4] == 0).all() and got[1, 0] == 0 and got[1, -1] > 0


def test_integer_counts_give_the_quantiles_and_scaling_of_their_float_copy():
    # uint16 images are partitioned as they are (no float copy of the batch first): same bits
    rng = np.random.default_rng(8)
    raw = rng.integers(0, 65535, size=(3, 2, 96, 96)).astype(np.uint16)
    raw[1:, :, :, :70] = 0  # two mostly-black crops beside a dense field
    raw[2, :, 60:] = 0
    counts = torch.from_numpy(raw)
    floats = counts.to(torch.float32)
    qs = (0.001, 0.01, 0.5, 0.99)
    got = quantiles(counts.reshape(6, -1), qs)
    assert got.dtype == torch.float32 and torch.equal(got, quantiles(floats.reshape(6, -1), qs))
    bounds = quantiles(floats.reshape(6, -1), (0.01, 0.99))
    low, span = bounds[:, :1], bounds[:, 1:] - bounds[:, :1]
    want = ((floats.reshape(6, -1) - low) / span).clamp(0, 1).reshape(raw.shape)
    assert torch.equal(scale_intensity(counts, "percentile-1-99"), want)
    assert torch.equal(scale_intensity(floats, "percentile-1-99"), want)
    assert torch.equal(counts, torch.from_numpy(raw))  # the input is left as it was


def test_percentile_scaling_per_image_and_channel():
    rng = np.random.default_rng(1)
    raw = rng.integers(100, 5000, size=(2, 2, 16, 16)).astype(np.uint16)
    raw[1, 1] *= 3  # a brighter channel scales to the same range
    scaled = scale_intensity(torch.from_numpy(raw), "percentile-1-99").numpy()
    for n in range(2):
        for c in range(2):
            lo, hi = np.percentile(raw[n, c].astype(np.float64), [1, 99])
            want = np.clip((raw[n, c] - lo) / (hi - lo), 0, 1)
            np.testing.assert_allclose(scaled[n, c], want, atol=1e-5)
    assert scaled.min() == 0 and scaled.max() == 1


def test_flat_channel_scales_to_zero():
    raw = torch.full((1, 2, 8, 8), 700, dtype=torch.int32)
    assert not scale_intensity(raw, "percentile-0.1-99.9").any()


def test_raw_and_unit_rules():
    raw = torch.tensor([[[[0, 65535]]]], dtype=torch.int32).expand(1, 2, 1, 2)
    assert scale_intensity(raw, "raw").tolist()[0][0] == [[0.0, 65535.0]]
    assert scale_intensity(raw, "unit").tolist()[0][0] == [[0.0, 1.0]]


def test_self_normalization_is_per_image_channel_z_score_and_keeps_zero_channels_zero():
    x = torch.rand(2, 4, 16, 16) * 1000
    x[:, 0] = 0
    out = normalize(x, "self")
    assert not out[:, 0].any()
    mean = out[:, 1:].mean(dim=(-2, -1))
    std = out[:, 1:].std(dim=(-2, -1), unbiased=False)
    assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-5)
    assert torch.allclose(std, torch.ones_like(std), atol=1e-4)


def test_imagenet_normalization():
    out = normalize(torch.zeros(1, 3, 2, 2), "imagenet")
    for c in range(3):
        assert torch.allclose(out[0, c], torch.full((2, 2), -IMAGENET_MEAN[c] / IMAGENET_STD[c]))


def test_resize_policies():
    x = torch.rand(1, 2, 40, 30)
    assert resize_images(x, "none") is x
    assert resize_images(x, "resize-16").shape == (1, 2, 16, 16)
    crop = resize_images(x, "center-crop-20")
    assert torch.equal(crop, x[..., 10:30, 5:25])
    with pytest.raises(DataError, match="smaller than the card's center crop"):
        resize_images(x, "center-crop-64")


@pytest.mark.parametrize("rule", ["percentile-5", "percentile-50-10", "log", "percentile-0-101"])
def test_bad_intensity_rules(rule):
    with pytest.raises(ConfigError, match="intensity rule"):
        parse_intensity(rule)


@pytest.mark.parametrize("policy", ["resize", "crop-4", "resize-0", "resize-2.5"])
def test_bad_resize_policies(policy):
    with pytest.raises(ConfigError, match="resize policy"):
        parse_resize(policy)


def test_preprocess_keys_differ_where_rules_differ():
    keys = {name: preprocess_key(get_card(name)) for name in ("imagenet-dino-vitb8", "hpa-fov-vitb8", "classical-stats")}
    assert keys == {
        "imagenet-dino-vitb8": "pp1_percentile-0.1-99.9_imagenet_none",
        "hpa-fov-vitb8": "pp1_raw_self_none",
        "classical-stats": "pp1_percentile-0.1-99.9_none_none",
    }


def test_model_inputs_scale_then_place_then_normalize():
    """Zero-filled inputs are black images: after ImageNet normalization they hold -mean/std."""
    card = get_card("imagenet-dino-vitb8")
    raw = torch.from_numpy(np.random.default_rng(0).integers(0, 4000, (1, 2, 16, 16)).astype(np.uint16))
    (view,) = model_inputs(raw, card, parse_channels("imagenet-best", card))
    scaled = scale_intensity(raw, card.intensity)
    assert torch.allclose(view[0, 1], (scaled[0, 0] - IMAGENET_MEAN[1]) / IMAGENET_STD[1])  # protein -> G
    assert torch.allclose(view[0, 2], (scaled[0, 1] - IMAGENET_MEAN[2]) / IMAGENET_STD[2])  # nucleus -> B
    assert torch.allclose(view[0, 0], torch.full((16, 16), -IMAGENET_MEAN[0] / IMAGENET_STD[0]))


def test_model_inputs_for_hpa_are_self_normalized_with_zero_channels():
    card = get_card("hpa-fov-vitb8")
    raw = torch.from_numpy(np.random.default_rng(0).integers(0, 4000, (2, 2, 16, 16)).astype(np.uint16))
    (view,) = model_inputs(raw, card, parse_channels(None, card))
    assert view.shape == (2, 4, 16, 16)
    assert not view[:, 0].any() and not view[:, 3].any()
    # z-score of the raw counts: scale-free
    doubled = model_inputs(raw.to(torch.int32) * 2, card, parse_channels(None, card))[0]
    assert torch.allclose(view, doubled, atol=1e-5)


def test_model_inputs_rejects_wrong_shapes():
    card = get_card("classical-stats")
    with pytest.raises(DataError, match=r"\(N, 2, H, W\)"):
        model_inputs(torch.zeros(2, 16, 16, dtype=torch.int32), card, parse_channels(None, card))
