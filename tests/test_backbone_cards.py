"""Backbone cards and registry: every seed backbone is described honestly, lookups fail helpfully."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys

import pytest

from ocbench.backbones import cards as cards_module
from ocbench.backbones.adapters import parse_channels
from ocbench.backbones.cards import (
    BackboneCard,
    format_card,
    format_cards_table,
    get_card,
    list_cards,
    register_card,
    reported_channels,
)
from ocbench.backbones.preprocess import preprocess_key
from ocbench.errors import ConfigError
from ocbench.reported import headline, reported_for_backbone

SEED_BACKBONES = {
    "imagenet-dino-vits8",
    "imagenet-dino-vitb8",
    "imagenet-dino-vitb16",
    "hpa-fov-vitb8",
    "hpa-sc-vitb16",
    "opencell-dino-vits8",
    "opencell-dino-vitb8",
}
OFFLINE_BACKBONES = {"classical-stats", "tiny-vit-random"}


@pytest.fixture
def clean_registry():
    """Undo any registration a test makes."""
    registry = cards_module.BACKBONES
    before = dict(registry.items())
    yield
    for name in registry.names():
        if name not in before:
            registry.unregister(name)
    for name, card in before.items():
        registry.register(name, card, overwrite=True)


def _card(**overrides) -> BackboneCard:
    fields = dict(
        name="test-card",
        source="builtin:random-init",
        arch="vit_small_patch8_224",
        feature_dim=64,
        in_chans=3,
        input_channels=("R", "G", "B"),
        default_channels="imagenet-best",
        init_seed=0,
        patch_size=8,
    )
    fields.update(overrides)
    return BackboneCard(**fields)


def test_registry_has_every_seed_and_offline_backbone():
    names = [card.name for card in list_cards()]
    assert SEED_BACKBONES | OFFLINE_BACKBONES <= set(names)  # and the recent backbones (zoo_modern, subcell)
    assert len(names) == len(set(names))


@pytest.mark.parametrize("card", list_cards(), ids=lambda card: card.name)
def test_card_is_self_consistent(card):
    assert card.in_chans == len(card.input_channels)
    default = parse_channels(card.default_channels, card)
    assert default.in_chans == card.in_chans
    # every reported row, in the card's words, is a channel spec ocbench runs as exactly that map
    for result in reported_for_backbone(card.name):
        adapter = parse_channels(reported_channels(result, card), card)
        assert adapter.strategy == result.strategy
        if result.strategy == "map":
            assert adapter.targets == result.channel_map
        assert all(0 < v < 1 for v in (result.mean, *result.per_k) if v is not None)
    if card.patch_size is not None and card.arch.startswith("vit_"):
        assert f"patch{card.patch_size}_" in card.arch
    assert re.fullmatch(r"[A-Za-z0-9._-]+", preprocess_key(card))
    json.dumps(card.to_dict())  # goes into result entries verbatim
    assert card.license and card.citation


def test_hub_cards_pin_a_commit():
    for name in ("imagenet-dino-vits8", "imagenet-dino-vitb8", "imagenet-dino-vitb16"):
        card = get_card(name)
        repo, _, revision = card.source_target.partition("@")
        assert repo.startswith("timm/") and repo.endswith(".dino")
        assert re.fullmatch(r"[0-9a-f]{40}", revision)
        assert card.normalization == "imagenet" and card.in_chans == 3 and card.default_channels == "imagenet-best"


def test_hpa_cards_follow_dino4cells():
    for name, record, filename, patch in (
        ("hpa-fov-vitb8", "8061392", "DINO_FOV_checkpoint.pth", 8),
        ("hpa-sc-vitb16", "8061426", "DINO_single_cell_checkpoint.pth", 16),
    ):
        card = get_card(name)
        assert card.source_kind == "url" and record in card.source and card.source.endswith(filename)
        assert card.sha256 is None  # not published: recorded on first download, never invented
        assert card.input_channels == ("microtubules", "protein", "nucleus", "er")
        assert card.channel_letters == ("R", "G", "B", "Y")
        assert (card.normalization, card.resize, card.patch_size, card.feature_dim) == ("self", "none", patch, 768)
        assert parse_channels(None, card).targets == (1, 2)  # natural: protein -> 1, nucleus -> 2


def test_opencell_cards_need_training_and_offline_cards_do_not():
    for name in ("opencell-dino-vits8", "opencell-dino-vitb8"):
        card = get_card(name)
        assert card.source_kind == "local" and card.in_chans == 2
        assert "trained" in card.unavailable_reason() or "local" in card.unavailable_reason()
        assert not card.offline
    for name in OFFLINE_BACKBONES:
        assert get_card(name).offline and get_card(name).unavailable_reason() is None
    assert get_card("hpa-fov-vitb8").unavailable_reason().startswith("needs network: url:")


def test_paper_numbers_of_the_cards():
    """The paper's numbers are not on the cards: ocbench.reported holds them, by card name."""
    assert not any("paper_reference" in card.to_dict() for card in list_cards())
    top = {name: headline(name) for name in SEED_BACKBONES}
    assert (top["hpa-fov-vitb8"].mean, top["hpa-fov-vitb8"].std) == (0.822, 0.007)
    assert (top["imagenet-dino-vitb8"].mean, top["imagenet-dino-vitb8"].std) == (0.818, 0.007)
    assert (top["opencell-dino-vits8"].mean, top["opencell-dino-vits8"].std) == (0.810, 0.015)
    assert top["hpa-sc-vitb16"].task == "sc-knn" and top["hpa-sc-vitb16"].per_k[0] == 0.852
    hpa = get_card("hpa-fov-vitb8")
    rows = reported_for_backbone(hpa.name)
    replicate = [r for r in rows if r.strategy == "replicate" and r.setting == "zero-shot"]
    assert [(r.mean, r.std) for r in replicate] == [(0.768, 0.010)]
    zero_shot_maps = {reported_channels(r, hpa) for r in rows if r.task == "fov-mlp" and r.setting == "zero-shot"}
    assert len(zero_shot_maps) == 8  # 7 maps of PROTOCOL.md section 2 + replicate
    assert "natural" in zero_shot_maps and "protein=3,nucleus=0" in zero_shot_maps
    imagenet = get_card("imagenet-dino-vitb8")
    assert {reported_channels(r, imagenet) for r in reported_for_backbone(imagenet.name) if r.task == "fov-mlp"} >= {
        "imagenet-best",
        "protein=G,nucleus=R",
        "protein=B,nucleus=R",
    }
    for name in OFFLINE_BACKBONES:
        assert reported_for_backbone(name) == [] and headline(name) is None


def test_unknown_name_suggests_close_names():
    with pytest.raises(ConfigError) as info:
        get_card("hpa-fov-vit8")
    message = str(info.value)
    assert message.startswith("unknown backbone 'hpa-fov-vit8'; did you mean: hpa-fov-vitb8")
    assert "\n" not in message


def test_unknown_name_without_close_match_lists_known():
    with pytest.raises(ConfigError, match=r"unknown backbone 'zzz'; known: .*classical-stats"):
        get_card("zzz")


def test_register_and_get_custom_card(clean_registry):
    card = register_card(_card(name="my-tiny"))
    assert get_card("my-tiny") is card
    assert list_cards()[-1] is card
    register_card(card)  # same card again is fine
    with pytest.raises(ConfigError, match="already registered"):
        register_card(_card(name="my-tiny", feature_dim=32))


def test_register_checks_default_channels(clean_registry):
    with pytest.raises(ConfigError, match=r"'bad-default'.*default_channels.*natural"):
        register_card(_card(name="bad-default", default_channels="natural"))
    assert "bad-default" not in [c.name for c in list_cards()]


@pytest.mark.parametrize(
    "overrides, field_name",
    [
        ({"normalization": "z-score"}, "normalization"),
        ({"source": "s3://bucket/x"}, "source"),
        ({"source": "hf-hub:"}, "source"),
        ({"input_channels": ("R", "G")}, "input_channels"),
        ({"input_channels": ("R", "G", "g")}, "input_channels"),
        ({"in_chans": 4, "input_channels": ("a", "b", "c", "d")}, "normalization"),  # imagenet needs RGB
        ({"intensity": "percentile-99-1"}, "intensity"),
        ({"resize": "resize-"}, "resize"),
        ({"name": "Bad Name"}, "name"),
        ({"sha256": "abc"}, "sha256"),
        ({"arch_kwargs": {"in_chans": 3}}, "arch_kwargs"),
        ({"init_seed": None}, "init_seed"),
        ({"feature_dim": 0}, "feature_dim"),
    ],
)
def test_invalid_card_fields_are_named(overrides, field_name):
    with pytest.raises(ConfigError) as info:
        _card(**overrides)
    assert field_name in str(info.value) and "\n" not in str(info.value)


def test_card_is_frozen_and_hashable():
    card = get_card("tiny-vit-random")
    with pytest.raises(dataclasses.FrozenInstanceError):
        card.feature_dim = 3  # type: ignore[misc]
    assert {card: 1}[card] == 1


def test_cards_table_and_show():
    table = format_cards_table()
    header = table.splitlines()[0]
    for column in ("name", "source", "arch", "channels", "dim", "reported"):
        assert column in header
    for card in list_cards():
        assert card.name in table
    assert "0.822±0.007 fov-mlp natural" in table
    lines = {line.split()[0]: line for line in table.splitlines()[2:]}
    assert lines["imagenet-dino-vitb8"].endswith("0.818±0.007 fov-mlp imagenet-best")
    assert lines["opencell-dino-vits8"].endswith("0.810±0.015 fov-mlp natural")
    assert lines["hpa-sc-vitb16"].endswith("0.852 sc-knn natural (k#1 of 5)")  # first k, and says so
    assert lines["classical-stats"].endswith(" -")
    assert "@a35ccfc " in table  # hub revisions shortened like git

    shown = format_card("hpa-fov-vitb8")
    assert "DINO_FOV_checkpoint.pth" in shown
    assert "recorded on first download" in shown
    assert "0 microtubules (R), 1 protein (G), 2 nucleus (B), 3 er (Y)" in shown
    assert "key map-p1-n2" in shown and "sweep = 12 injective maps" in shown
    assert "z-score" in shown and "pp1_raw_self_none" in shown
    reported = shown[shown.index("reported (paper)") :].splitlines()
    assert len(reported) == 2 + len(reported_for_backbone("hpa-fov-vitb8"))  # title, header, one line per row
    assert re.search(r"0\.860±0\.013 +finetune +fine-tuned +natural +Table 2.*epochs=100, fraction=1\.0", shown)
    assert re.search(r"0\.804±0\.012 +finetune +fine-tuned +protein=0,nucleus=3 +Table 3 .*epochs=60", shown)
    assert re.search(r"0\.780 0\.759 0\.767 0\.743 0\.700 +sc-knn +fine-tuned +natural", shown)
    assert "k#1 < ... < k#5" in shown
    vits8 = format_card("imagenet-dino-vits8")
    assert re.search(r"0\.761±0\.010 +fov-mlp +zero-shot +imagenet-best +Table 1 +the paper does not say which map", vits8)
    assert "reported (paper): none" in format_card("classical-stats")
    with pytest.raises(ConfigError, match="did you mean"):
        format_card("tiny-vit-randm")


def test_list_and_show_do_not_import_torch():
    code = (
        "import sys\n"
        "from ocbench.backbones import format_cards_table, format_card, list_cards\n"
        "format_cards_table(); [format_card(c) for c in list_cards()]\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'timm' not in sys.modules, 'timm imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
