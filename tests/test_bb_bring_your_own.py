"""Bringing your own backbone: plugins by module name, in-memory model identity, malformed
config.json / ocbench_card.json, user cards with a built-in card's name, imports into a local: source."""

from __future__ import annotations

import json
import sys

import pytest
from click.testing import CliRunner

from cli_assertions import one_line_error
from ocbench.backbones.cards import BACKBONES
from ocbench.cli import cli


def invoke(*args):
    return CliRunner().invoke(cli, list(args))


# ------------------------------------------------------------------------------------------------
# --plugin MODULE


PLUGIN_CARD = '''
from ocbench.backbones import BackboneCard, register_card
register_card(BackboneCard(name="mylab-plugin-by-name", source="local:/nonexistent/w", arch="vit_tiny_patch16_224",
  patch_size=16, feature_dim=192, in_chans=3, input_channels=("R", "G", "B"), default_channels="imagenet-best",
  training_datasets=("ImageNet-1k",), supervision="self-supervised", license="MIT"))
'''


def test_plugin_given_as_a_module_name_is_imported(tmp_path, monkeypatch):
    (tmp_path / "mylab_byo_cards.py").write_text(PLUGIN_CARD)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        result = invoke("--plugin", "mylab_byo_cards", "backbones", "show", "mylab-plugin-by-name")
        assert result.exit_code == 0, result.output
        assert "mylab-plugin-by-name" in result.output
    finally:
        BACKBONES.unregister("mylab-plugin-by-name")
        sys.modules.pop("mylab_byo_cards", None)


def test_plugin_module_that_does_not_exist_says_so(tmp_path, monkeypatch):
    one_line_error(invoke("--plugin", "ocbench_no_such_plugin_mod", "backbones", "list"),
                   "no module named 'ocbench_no_such_plugin_mod'")
    # a module that exists but imports a missing one names what is missing, not the plugin
    (tmp_path / "mylab_needs_missing.py").write_text("import mylab_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    one_line_error(invoke("--plugin", "mylab_needs_missing", "backbones", "list"), "mylab_missing_dependency")


# ------------------------------------------------------------------------------------------------
# in-memory models: behaviour outside the state_dict


def _stat_card(**changes):
    from ocbench.backbones.card import BackboneCard

    fields = dict(name="mylab-stat", source="memory:x", arch="mylab-stat", feature_dim=6, in_chans=3,
                  input_channels=("R", "G", "B"), default_channels="imagenet-best", training_datasets=(),
                  supervision="none", license="MIT")
    return BackboneCard(**dict(fields, **changes))


def _stat_module(parameters: bool):
    import torch
    from torch import nn

    class Stat(nn.Module):  # behaviour set by a plain attribute (like timm's global_pool)
        def __init__(self, mode):
            super().__init__()
            self.mode = mode
            if parameters:
                self.scale = nn.Parameter(torch.ones(1))

        def forward(self, x):
            if self.mode == "mean":
                out = torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)
            else:
                out = torch.cat([x.amax((2, 3)), x.amin((2, 3))], 1)
            return out * self.scale if parameters else out

    return Stat


def test_in_memory_modules_differing_outside_the_state_dict_get_different_tokens():
    from ocbench.backbones.loader import resolve_identity
    from ocbench.backbones.memory import MEMORY_NOTE_CALLABLE, in_memory_card

    stateless = _stat_module(parameters=False)
    a, b = in_memory_card(stateless("mean"), _stat_card()), in_memory_card(stateless("mean"), _stat_card())
    assert a.source != b.source  # an empty state_dict: unique per call, like a plain callable
    identity = resolve_identity(a)
    assert identity.weights_sha256 is None and identity.weights_note == MEMORY_NOTE_CALLABLE

    with_weights = _stat_module(parameters=True)
    mean, same = with_weights("mean"), with_weights("mean")
    assert in_memory_card(mean, _stat_card()).source == in_memory_card(same, _stat_card()).source  # reusable
    assert in_memory_card(with_weights("max"), _stat_card()).source != in_memory_card(mean, _stat_card()).source


@pytest.mark.slow
def test_evaluate_never_serves_a_stateless_module_another_modules_embeddings(module_cache, tmp_path):
    import torch

    import ocbench

    torch.manual_seed(0)
    stateless = _stat_module(parameters=False)
    common = dict(card=_stat_card(), task="fov-linear", dataset="demo", overrides=("epochs=5",), device="cpu",
                  cache_dir=tmp_path / "cache")
    first = ocbench.evaluate(stateless("mean"), output_dir=tmp_path / "a", **common)
    shared = ocbench.evaluate(stateless("max"), output_dir=tmp_path / "b", **common)
    fresh = ocbench.evaluate(stateless("max"), output_dir=tmp_path / "c", **dict(common, cache_dir=tmp_path / "fresh"))
    assert shared.main.mean == fresh.main.mean != first.main.mean


# ------------------------------------------------------------------------------------------------
# malformed config.json of a local: / hf-hub: folder

VIT = "vit_tiny_patch16_224"


@pytest.mark.parametrize("config, field, advice", [
    ({"architecture": VIT, "model_args": ["a"], "pretrained_cfg": {}}, "field model_args", "JSON object"),
    ({"architecture": VIT, "pretrained_cfg": ["x"]}, "field pretrained_cfg", "JSON object"),
    ({"architecture": VIT, "model_args": {"in_chans": "three"}, "pretrained_cfg": {}}, "field model_args.in_chans",
     "positive integer"),
    ({"architecture": VIT, "pretrained_cfg": {"mean": 0.5, "std": 0.5}}, "field pretrained_cfg.mean", "list of numbers"),
    ({"architecture": VIT, "pretrained_cfg": {"mean": [0.5] * 3, "std": [0.5]}}, "field pretrained_cfg.mean/std",
     "same length"),
    ({"architecture": VIT, "pretrained_cfg": {"input_size": "224"}}, "field pretrained_cfg.input_size",
     "[3, 224, 224]"),
    ({"architecture": VIT, "pretrained_cfg": {"tag": 5}}, "field pretrained_cfg.tag", "string"),
])
def test_malformed_config_json_is_one_line_naming_file_and_field(tmp_path, config, field, advice):
    folder = tmp_path / "myvit"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    one_line_error(invoke("backbones", "show", f"local:{folder}"), str(folder / "config.json"), field, advice)


# ------------------------------------------------------------------------------------------------
# ocbench_card.json validation


def _user_card_dict(**changes):
    from ocbench.backbones.card import BackboneCard

    card = BackboneCard(name="mylab-vit", source="local:placeholder", arch=VIT, feature_dim=192, in_chans=3,
                        input_channels=("R", "G", "B"), default_channels="imagenet-best", patch_size=16,
                        input_size=224, training_datasets=("ImageNet-1k",), supervision="self-supervised", license="MIT")
    return dict(card.to_dict(), **changes)


def _card_folder(tmp_path, data, name="card"):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "ocbench_card.json").write_text(json.dumps(data))
    return folder


@pytest.mark.parametrize("change, field", [
    ({"input_channels": [1, 2, 3]}, "field input_channels"),
    ({"channel_letters": [1, 2, 3]}, "field channel_letters"),
    ({"default_channels": "bogus"}, "field default_channels"),
    ({"default_channels": "protein=Q,nucleus=B"}, "field default_channels"),  # no input channel Q
    ({"default_channels": 3}, "field default_channels"),
    ({"arch_kwargs": ["x"]}, "field arch_kwargs"),
    ({"in_chans": True}, "field in_chans"),
    ({"input_size": "224"}, "field input_size"),
    ({"sha256": 5}, "field sha256"),
    ({"license": ["MIT"]}, "field license"),
])
def test_bad_card_file_field_is_one_line_naming_file_and_field(tmp_path, change, field):
    folder = _card_folder(tmp_path, _user_card_dict(**change))
    one_line_error(invoke("backbones", "show", f"local:{folder}"), str(folder / "ocbench_card.json"), field)


# ------------------------------------------------------------------------------------------------
# a user's card may not take a registered card's name


def test_card_file_with_a_registered_name_is_refused(tmp_path, monkeypatch):
    from ocbench.backbones.derive import resolve_backbone
    from ocbench.errors import ConfigError

    data = _user_card_dict(name="hpa-fov-vitb8")
    folder = _card_folder(tmp_path, data)
    result = invoke("backbones", "show", f"local:{folder}")
    one_line_error(result, str(folder / "ocbench_card.json"), "'hpa-fov-vitb8'", "another name")
    assert "0.822" not in result.output  # the paper's numbers of the real model are never shown for it

    # found by name in <cache>/weights/<name>/: the same rule
    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path / "oc"))
    (tmp_path / "oc" / "weights").mkdir(parents=True)
    trained = _card_folder(tmp_path / "oc" / "weights", data, name="my-trained")
    with pytest.raises(ConfigError, match="already a registered backbone") as info:
        resolve_backbone("my-trained")
    assert str(trained / "ocbench_card.json") in str(info.value)


def test_card_file_identical_to_a_registered_card_is_that_card(tmp_path):
    from ocbench.backbones.card import BackboneCard
    from ocbench.backbones.cards import register_card
    from ocbench.backbones.derive import resolve_backbone

    folder = tmp_path / "card"
    card = BackboneCard(**{**_user_card_dict(name="mylab-same-card", source=f"local:{folder}"),
                           "input_channels": ("R", "G", "B"), "training_datasets": ("ImageNet-1k",)})
    _card_folder(tmp_path, card.to_dict())
    register_card(card)
    try:
        assert resolve_backbone(f"local:{folder}") == card
    finally:
        BACKBONES.unregister("mylab-same-card")


def test_derived_card_whose_name_is_registered_is_refused(tmp_path):
    from ocbench.backbones.card import BackboneCard
    from ocbench.backbones.cards import register_card

    folder = tmp_path / "myvit"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architecture": VIT, "pretrained_cfg": {"tag": "in1k"}}))
    register_card(BackboneCard(**{**_user_card_dict(name="local-myvit"), "input_channels": ("R", "G", "B")}))
    try:
        one_line_error(invoke("backbones", "show", f"local:{folder}"), "'local-myvit'", "rename the folder")
    finally:
        BACKBONES.unregister("local-myvit")


def test_evaluate_never_writes_under_a_registered_cards_name(module_cache, tmp_path):
    import torch

    import ocbench
    from ocbench.backbones.cards import get_card
    from ocbench.errors import ConfigError

    weights = torch.randn(3, 64, generator=torch.Generator().manual_seed(0))

    def features(x):
        return x.mean(dim=(2, 3)) @ weights

    entry = ocbench.evaluate(features, card="tiny-vit-random", task="fov-linear", dataset="demo", output_dir=tmp_path,
                             overrides=("epochs=5",), device="cpu")
    assert entry.key.startswith("tiny-vit-random-in-memory__") and entry.backbone.name == "tiny-vit-random-in-memory"
    with pytest.raises(ConfigError, match="another name"):
        ocbench.evaluate(features, card=get_card("tiny-vit-random"), task="fov-linear", dataset="demo",
                         output_dir=tmp_path, overrides=("epochs=5",), device="cpu")


# ------------------------------------------------------------------------------------------------
# backbones import NAME --checkpoint for a card with a local: source


def _tiny_dino_checkpoint(path):
    import torch

    from ocbench.backbones.vit import build_vit

    torch.manual_seed(0)
    model = build_vit(VIT, dict(patch_size=8, embed_dim=32, depth=2, num_heads=2, img_size=32), 3)
    torch.save({"teacher": {"backbone." + k: v for k, v in model.state_dict().items()}, "epoch": 3}, path)


def test_import_into_a_local_cards_folder_is_where_the_card_reads(tmp_path, monkeypatch):
    from ocbench.backbones.card import BackboneCard
    from ocbench.backbones.cards import register_card
    from ocbench.backbones.loader import resolve_identity
    from ocbench.errors import ConfigError

    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path / "cache"))
    later = tmp_path / "later"
    card = BackboneCard(name="mylab-later", source=f"local:{later}", arch=VIT, feature_dim=32, in_chans=3,
                        input_channels=("R", "G", "B"), default_channels="imagenet-best", patch_size=8, input_size=32,
                        arch_kwargs=dict(patch_size=8, embed_dim=32, depth=2, num_heads=2, img_size=32))
    register_card(card)
    try:
        with pytest.raises(ConfigError, match="backbones import mylab-later --checkpoint") as info:
            resolve_identity(card)  # the loader's advice ...
        assert str(later) in str(info.value)
        pth = tmp_path / "ck.pth"
        _tiny_dino_checkpoint(pth)
        result = invoke("backbones", "import", "mylab-later", "--checkpoint", str(pth))
        assert result.exit_code == 0, result.output
        assert f"wrote {later}" in result.output  # ... leads to the folder the card reads
        assert not (tmp_path / "cache" / "weights" / "mylab-later").exists()
        assert resolve_identity(card).weights_path == later / "model.safetensors"
    finally:
        BACKBONES.unregister("mylab-later")


def test_import_without_out_for_a_card_that_never_reads_a_converted_folder_is_refused(tmp_path, monkeypatch):
    from ocbench.backbones.card import BackboneCard
    from ocbench.backbones.dino_import import import_backbone

    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path / "cache"))
    pth = tmp_path / "ck.pth"
    pth.write_bytes(b"not read")
    fields = dict(name="mylab-hub", arch=VIT, feature_dim=192, in_chans=3, input_channels=("R", "G", "B"),
                  default_channels="imagenet-best")
    for source in ("hf-hub:org/name", f"local:{tmp_path / 'w' / 'model.safetensors'}"):
        with pytest.raises(Exception, match="pass --out DIR"):
            import_backbone(BackboneCard(source=source, **fields), pth)
    assert not (tmp_path / "cache" / "weights").exists()
