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
        (HPA, "prot=1,nucleus=2", "unknown OpenCell channel 'prot' (did you mean protein?)"),
        (HPA, "protein=1,protein=2", "protein is given twice"),
        (RGB, "protein=X,nucleus=B", "unknown input channel 'X' for tiny-vit-random"),
        (RGB, "natural", "preset 'natural' needs input channels named protein and nucleus"),
        (HPA, "imagenet-best", "preset 'imagenet-best' needs RGB input channels"),
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


def test_replicate_apply_copies_each_channel_to_all_inputs():
    x = torch.rand(2, 2, 8, 8)
    protein_view, nucleus_view = parse_channels("replicate", RGB).apply(x)
    for c in range(3):
        assert torch.equal(protein_view[:, c], x[:, 0])
        assert torch.equal(nucleus_view[:, c], x[:, 1])


def test_apply_rejects_wrong_channel_count():
    with pytest.raises(Exception, match=r"expects \(N, 2, H, W\)"):
        ChannelAdapter("map", 3, (1, 2)).apply(torch.zeros(1, 3, 4, 4))
