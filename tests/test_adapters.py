"""Channel adapters: presets, explicit specs, sweeps, one-line errors, and what apply() builds."""

from __future__ import annotations

import re

import pytest
import torch

from ocbench.backbones.adapters import ChannelAdapter, available_presets, parse_channels, sweep_adapters
from ocbench.backbones.cards import get_card
from ocbench.errors import ConfigError

HPA = get_card("hpa-fov-vitb8")
RGB = get_card("tiny-vit-random")
IMAGENET = get_card("imagenet-dino-vitb8")
OPENCELL = get_card("opencell-dino-vits8")
CLASSICAL = get_card("classical-stats")


def test_presets_follow_the_paper():
    natural = parse_channels("natural", HPA)
    assert (natural.strategy, natural.targets, natural.key, natural.n_views) == ("map", (1, 2), "map-p1-n2", 1)
    best = parse_channels("imagenet-best", IMAGENET)
    assert best.targets == (1, 2) and best.describe(IMAGENET) == "protein->G, nucleus->B"
    assert parse_channels("best-imagenet", IMAGENET).key == best.key  # DESIGN.md's spelling
    assert parse_channels("natural", OPENCELL).targets == (0, 1)
    assert available_presets(HPA) == ["natural"]
    assert available_presets(RGB) == ["imagenet-best"]
    assert available_presets(CLASSICAL) == ["natural"]


def test_default_is_the_cards_default():
    assert parse_channels(None, HPA) == parse_channels("natural", HPA)
    assert parse_channels(None, IMAGENET).key == "map-p1-n2"


def test_replicate():
    adapter = parse_channels("replicate", HPA)
    assert (adapter.strategy, adapter.key, adapter.n_views, adapter.spec) == ("replicate", "replicate", 2, "replicate")
    assert adapter.to_dict() == {"strategy": "replicate", "key": "replicate", "spec": "replicate"}


@pytest.mark.parametrize(
    "spec",
    ["protein=G,nucleus=B", "protein=1,nucleus=2", "map:protein=g, nucleus=b", " nucleus=B , protein=G ", "imagenet-best"],
)
def test_equivalent_specs_share_one_key(spec):
    assert parse_channels(spec, IMAGENET).key == "map-p1-n2"


def test_hpa_targets_by_index_name_or_letter():
    assert parse_channels("protein=Y,nucleus=microtubules", HPA).targets == (3, 0)
    assert parse_channels("protein=er,nucleus=0", HPA).key == "map-p3-n0"
    assert parse_channels("protein=protein,nucleus=nucleus", HPA).key == "map-p1-n2"


def test_partial_map_leaves_a_channel_out():
    adapter = parse_channels("protein=1", HPA)
    assert adapter.targets == (1, None) and adapter.key == "map-p1" and adapter.spec == "protein=1"


@pytest.mark.parametrize("card, count", [(RGB, 6), (HPA, 12), (OPENCELL, 2), (CLASSICAL, 2)], ids=lambda v: getattr(v, "name", v))
def test_sweep_enumerates_every_injective_map(card, count):
    maps = sweep_adapters(card)
    assert len(maps) == count
    assert len({m.key for m in maps}) == count
    for adapter in maps:
        assert adapter.strategy == "map" and adapter.targets[0] != adapter.targets[1]
        assert parse_channels(adapter.spec, card) == adapter  # canonical spec parses back
        assert re.fullmatch(r"[a-z0-9-]+", adapter.key)


def test_sweep_contains_the_papers_hpa_maps():
    keys = {adapter.key for adapter in sweep_adapters(HPA)}
    for protein, nucleus in [(1, 2), (1, 3), (1, 0), (0, 2), (0, 1), (3, 0), (2, 1)]:
        assert f"map-p{protein}-n{nucleus}" in keys


@pytest.mark.parametrize(
    "card, spec, expected",
    [
        (HPA, "protein=4,nucleus=2", "protein=4 is out of range; hpa-fov-vitb8 has 4 input channels"),
        (HPA, "protein=-1,nucleus=2", "out of range"),
        (HPA, "protein=1,nucleus=1", "protein and nucleus both go to input channel 1"),
        (IMAGENET, "protein=G,nucleus=1", "protein and nucleus both go to input channel 1"),
        (HPA, "prot=1,nucleus=2", "unknown dataset channel 'prot' (did you mean protein?); the dataset's channels are protein, nucleus"),
        (HPA, "protein=1,protein=2", "protein is given twice"),
        (RGB, "protein=X,nucleus=B", "unknown input channel 'X' for tiny-vit-random"),
        (RGB, "natural", "preset 'natural' needs input channels named protein and nucleus"),
        (HPA, "imagenet-best", "preset 'imagenet-best' (protein->G, nucleus->B) needs input channels named G, B"),
        (HPA, "natrual", "not understood; did you mean natural?"),
        (HPA, "sweep", "not understood"),
        (HPA, "map:replicate", "replicate is a strategy of its own"),
        (HPA, "protein:1", "not understood"),
        (HPA, "protein=1,nucleus", "is not of the form channel=input"),
        (HPA, ",", "not understood"),
    ],
)
def test_invalid_specs_fail_in_one_line(card, spec, expected):
    with pytest.raises(ConfigError) as info:
        parse_channels(spec, card)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_map_apply_places_channels_and_zero_fills():
    x = torch.rand(3, 2, 8, 8)
    (view,) = parse_channels("natural", HPA).apply(x)
    assert view.shape == (3, 4, 8, 8)
    assert torch.equal(view[:, 1], x[:, 0]) and torch.equal(view[:, 2], x[:, 1])
    assert not view[:, 0].any() and not view[:, 3].any()
    (swapped,) = parse_channels("protein=2,nucleus=1", HPA).apply(x)
    assert torch.equal(swapped[:, 2], x[:, 0]) and torch.equal(swapped[:, 1], x[:, 1])


def test_a_map_in_the_models_own_order_passes_the_batch_through():
    x = torch.rand(3, 2, 8, 8)
    adapter = parse_channels(None, CLASSICAL)
    assert adapter.targets == (0, 1)
    (view,) = adapter.apply(x)
    assert view is x  # nothing to move or pad: no copy
    (swapped,) = ChannelAdapter("map", 2, (1, 0)).apply(x)
    assert torch.equal(swapped, x.flip(1))


def test_replicate_apply_copies_each_channel_to_all_inputs():
    x = torch.rand(2, 2, 8, 8)
    protein_view, nucleus_view = parse_channels("replicate", RGB).apply(x)
    for c in range(3):
        assert torch.equal(protein_view[:, c], x[:, 0])
        assert torch.equal(nucleus_view[:, c], x[:, 1])


def test_apply_rejects_wrong_channel_count():
    with pytest.raises(Exception, match=r"expects \(N, 2, H, W\)"):
        ChannelAdapter("map", 3, (1, 2)).apply(torch.zeros(1, 3, 4, 4))


# ------------------------------------------------------------------------------------------------
# Adapters take the dataset's channel names (a made-up 3-channel dataset)

THREE = ("protein", "nucleus", "membrane")


def test_opencell_keys_are_unchanged_by_the_channels_argument():
    from ocbench.data.compartments import CHANNELS

    for card in (HPA, RGB, IMAGENET, OPENCELL, CLASSICAL):
        for spec in ["replicate", None, *available_presets(card)]:
            assert parse_channels(spec, card, CHANNELS) == parse_channels(spec, card)
    assert [a.key for a in sweep_adapters(RGB, CHANNELS)] == [
        "map-p0-n1", "map-p0-n2", "map-p1-n0", "map-p1-n2", "map-p2-n0", "map-p2-n1",
    ]
    assert ChannelAdapter("map", 3, (1, 2)).channels == CHANNELS


def test_three_channel_dataset_map_replicate_and_sweep():
    adapter = parse_channels("protein=G,nucleus=B,membrane=R", RGB, THREE)
    assert adapter.channels == THREE and adapter.targets == (1, 2, 0)
    assert adapter.key == "map-p1-n2-m0" and adapter.spec == "protein=1,nucleus=2,membrane=0"
    assert parse_channels(adapter.spec, RGB, THREE) == adapter
    assert adapter.describe(RGB) == "protein->G, nucleus->B, membrane->R"
    x = torch.rand(2, 3, 8, 8)
    (view,) = adapter.apply(x)
    assert torch.equal(view[:, 1], x[:, 0]) and torch.equal(view[:, 2], x[:, 1]) and torch.equal(view[:, 0], x[:, 2])

    replicate = parse_channels("replicate", HPA, THREE)
    assert replicate.n_views == 3 and replicate.key == "replicate"
    views = replicate.apply(x)
    assert len(views) == 3 and all(v.shape == (2, 4, 8, 8) for v in views)
    assert torch.equal(views[2][:, 3], x[:, 2])

    maps = sweep_adapters(RGB, THREE)
    assert len(maps) == 6 and len({m.key for m in maps}) == 6
    assert all(parse_channels(m.spec, RGB, THREE) == m for m in maps)
    assert len(sweep_adapters(HPA, THREE)) == 24
    assert sweep_adapters(OPENCELL, THREE) == []  # 3 channels do not fit 2 inputs injectively

    partial = parse_channels("membrane=1", HPA, THREE)
    assert partial.targets == (None, None, 1) and partial.key == "map-m1"
    assert parse_channels("imagenet-best", RGB, THREE).targets == (1, 2, None)  # membrane unused


def test_three_channel_errors_name_the_datasets_channels():
    with pytest.raises(ConfigError) as info:
        parse_channels("protein=1,dna=2", HPA, THREE)
    message = str(info.value)
    assert "unknown dataset channel 'dna'" in message and "protein, nucleus, membrane" in message
    with pytest.raises(ConfigError, match="needs input channels named protein, nucleus and membrane"):
        parse_channels("natural", HPA, THREE)
    assert available_presets(HPA, THREE) == []
    with pytest.raises(ConfigError, match="both go to input channel 1"):
        parse_channels("protein=1,membrane=1", HPA, THREE)
    with pytest.raises(Exception, match=r"expects \(N, 3, H, W\) in order protein, nucleus, membrane"):
        parse_channels("replicate", HPA, THREE).apply(torch.zeros(1, 2, 4, 4))
    with pytest.raises(ConfigError, match="preset 'imagenet-best' places protein and nucleus; the dataset's channels are"):
        parse_channels("imagenet-best", RGB, ("dapi", "gfp"))


def test_natural_preset_and_keys_for_another_vocabulary():
    from ocbench.backbones.adapters import channel_abbreviations

    card = _three_input_card()
    natural = parse_channels("natural", card, ("dapi", "gfp", "actin"))
    assert natural.targets == (2, 0, 1) and natural.key == "map-d2-g0-a1"
    assert channel_abbreviations(("ch1", "ch2", "ch10")) == ("ch1_", "ch2_", "ch10_")
    assert channel_abbreviations(("nucleus", "nuclear-membrane")) == ("nucleu", "nuclea")
    with pytest.raises(ConfigError, match="unique"):
        parse_channels("replicate", card, ("dapi", "DAPI"))


def test_preprocessing_checks_the_adapters_channels():
    from ocbench.backbones.preprocess import model_inputs

    batch = torch.randint(0, 1000, (2, 3, 16, 16)).to(torch.int32)
    views = model_inputs(batch, RGB, parse_channels("replicate", RGB, THREE))
    assert len(views) == 3 and views[0].shape == (2, 3, 16, 16)
    with pytest.raises(Exception, match=r"\(N, 2, H, W\) in channel order protein, nucleus"):
        model_inputs(batch, RGB, parse_channels(None, RGB))


def _three_input_card():
    from ocbench.backbones.card import BackboneCard

    return BackboneCard(
        name="gfp-actin-dapi", source="builtin:random-init", init_seed=0, arch="vit_small_patch8_224",
        feature_dim=64, in_chans=3, input_channels=("gfp", "actin", "dapi"), default_channels="replicate",
        normalization="self",
    )
