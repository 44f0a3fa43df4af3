"""The backbone registry on ocbench.registry.Registry: zoo on first use, errors, entry-point plugins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ocbench.backbones import cards as cards_module
from ocbench.backbones.card import BackboneCard, WeightsSource
from ocbench.backbones.cards import card_names, get_card, list_cards, register_card
from ocbench.errors import ConfigError
from ocbench.registry import Registry

PLUGIN_CARD = """
from ocbench.backbones.card import BackboneCard

CARD = BackboneCard(
    name="{name}", source="builtin:random-init", init_seed=1, arch="vit_small_patch8_224",
    arch_kwargs={{"embed_dim": 32, "depth": 1, "num_heads": 2}}, feature_dim=32, in_chans=3,
    input_channels=("R", "G", "B"), default_channels="imagenet-best", patch_size=8,
    license="MIT", citation="plugin test",
)
"""


def make_distribution(site: Path, name: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    """A minimal installed distribution: ``<name>-1.0.dist-info`` with METADATA and entry_points.txt."""
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = ["[ocbench.backbones]", *(f"{ep} = {value}" for ep, value in entry_points.items())]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for module, source in modules.items():
        (site / f"{module}.py").write_text(textwrap.dedent(source))


def run_with(site: Path, code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=120)


def test_registry_is_the_shared_registry_type_with_the_zoo_first():
    assert isinstance(cards_module.BACKBONES, Registry)
    assert cards_module.BACKBONES.kind == "backbone"
    assert cards_module.BACKBONES.entry_point_group == "ocbench.backbones"
    names = card_names()
    assert names[:2] == ["imagenet-dino-vits8", "imagenet-dino-vitb8"]
    assert [c.name for c in list_cards()] == names
    assert "tiny-vit-random" in cards_module.BACKBONES


def test_errors_keep_their_wording():
    with pytest.raises(ConfigError, match=r"^unknown backbone 'tiny-vit-randon'; did you mean: tiny-vit-random\?$"):
        get_card("tiny-vit-randon")
    with pytest.raises(ConfigError, match=r"\(see: ocbench backbones list\)"):
        get_card("zzzz")
    with pytest.raises(ConfigError, match="expects a BackboneCard"):
        register_card("tiny-vit-random")  # type: ignore[arg-type]


def test_entry_points_register_a_card_object_and_a_module(tmp_path):
    site = tmp_path / "site"
    make_distribution(
        site,
        "ocbench_cards_demo",
        {"plugin-card-object": "plugin_cards_obj:CARD", "plugin-module": "plugin_cards_mod"},
        {
            "plugin_cards_obj": PLUGIN_CARD.format(name="plugin-card-object"),
            "plugin_cards_mod": PLUGIN_CARD.format(name="plugin-card-from-module")
            + "\nfrom ocbench.backbones.cards import register_card\nregister_card(CARD)\n",
        },
    )
    result = run_with(site, """
        import json
        from ocbench.backbones import get_card, card_names
        names = card_names()
        print(json.dumps({"names": names, "object": get_card("plugin-card-object").name,
                          "module": get_card("plugin-card-from-module").feature_dim}))
    """)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["object"] == "plugin-card-object" and found["module"] == 32
    # built-in cards first, plugins after
    assert found["names"][0] == "imagenet-dino-vits8"
    assert {"plugin-card-object", "plugin-card-from-module"} <= set(found["names"][-2:])


def test_a_broken_plugin_warns_and_the_rest_works(tmp_path):
    site = tmp_path / "site"
    make_distribution(site, "ocbench_broken", {"broken": "plugin_not_there:CARD"}, {})
    result = run_with(site, """
        import warnings
        warnings.simplefilter("always")
        from ocbench.backbones import get_card
        print(get_card("classical-stats").name)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "classical-stats"
    assert "plugin_not_there" in result.stderr and "failed to load" in result.stderr


def test_entry_point_named_unlike_its_card_is_registered_under_the_cards_name(tmp_path):
    site = tmp_path / "site"
    make_distribution(site, "ocbench_renamed", {"other-name": "plugin_cards_renamed:CARD"},
                      {"plugin_cards_renamed": PLUGIN_CARD.format(name="real-name")})
    result = run_with(site, """
        import warnings
        warnings.simplefilter("always")
        from ocbench.backbones import get_card, card_names
        print(get_card("real-name").name, "other-name" in card_names())
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["real-name", "False"]
    assert "registered as 'real-name'" in result.stderr


def test_weights_source_typed_fields_and_string_form_kept():
    card = get_card("imagenet-dino-vits8")
    source = card.weights_source
    assert source == WeightsSource("hf-hub", "timm/vit_small_patch8_224.dino", "a35ccfcf22d0da4b6bf49155c88d96d594fd4b01", None)
    assert str(source) == card.source and card.to_dict()["source"] == card.source
    assert "weights_source" not in card.to_dict()
    hpa = get_card("hpa-fov-vitb8").weights_source
    assert (hpa.kind, hpa.target, hpa.revision, hpa.sha256) == (
        "url", "https://zenodo.org/records/8061392/files/DINO_FOV_checkpoint.pth", None, None)
    assert get_card("classical-stats").weights_source.needs_weights is False
    assert WeightsSource.parse("url:https://x/y.pth", "A" * 64).sha256 == "a" * 64
    for bad in ("s3://bucket", "hf-hub:", "hf-hub:org/name@", "ftp:x"):
        with pytest.raises(ConfigError):
            WeightsSource.parse(bad)


def test_no_card_wording_talks_about_a_machine():
    for card in list_cards():
        for text in (card.license, card.notes, card.pretraining, card.citation):
            assert "machine" not in text and "unverified from" not in text
    import ocbench.backbones.zoo as zoo

    assert "machine" not in (zoo.__doc__ or "")
    assert "check it before commercial use" in get_card("hpa-fov-vitb8").license


def test_plugin_card_for_another_dataset_may_default_to_its_channels():
    card = BackboneCard(
        name="three-channel-plugin", source="builtin:random-init", init_seed=0, arch="vit_small_patch8_224",
        feature_dim=64, in_chans=3, input_channels=("R", "G", "B"),
        default_channels="protein=G,nucleus=B,membrane=R", normalization="imagenet",
    )
    try:
        assert register_card(card) is card
        assert get_card("three-channel-plugin") is card
        shown = cards_module.format_card("three-channel-plugin")
        assert "key map-p1-n2-m0" in shown and "sweep = 6 injective maps" in shown
        assert "three-channel-plugin" in cards_module.format_cards_table()
    finally:
        cards_module.BACKBONES.unregister("three-channel-plugin")
