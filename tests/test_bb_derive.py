"""Cards derived at the edge: timm:, hf-hub: and local: backbones, offline from a prepared Hub cache."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from click.testing import CliRunner

from bb_hub import COMMIT, add_hub_files, hub_config, offline_hub, state_bytes, timm_random  # noqa: F401
from cli_assertions import one_line_error, one_line_message
from ocbench.backbones.derive import CARD_FILENAME, load_card_file, resolve_backbone, write_card_file
from ocbench.backbones.loader import load_backbone
from ocbench.cli import cli
from ocbench.errors import ConfigError

TEST_VIT = "test_vit.r160_in1k"  # timm's own tiny test ViT (patch 16, width 64, 160 px), Hub repo timm/test_vit.r160_in1k


def invoke(*args):
    return CliRunner().invoke(cli, list(args))


def test_timm_card_is_derived_from_timms_pretrained_config():
    card = resolve_backbone("timm:vit_small_patch14_dinov2.lvd142m")
    assert (card.name, card.source, card.arch) == (
        "timm-vit_small_patch14_dinov2.lvd142m", "timm:vit_small_patch14_dinov2.lvd142m", "vit_small_patch14_dinov2")
    assert (card.feature_dim, card.patch_size, card.input_size, card.in_chans) == (384, 14, 518, 3)
    assert (card.normalization, card.resize, card.default_channels) == ("imagenet", "fit-14", "imagenet-best")
    assert (card.license, card.training_datasets, card.supervision) == ("apache-2.0", ("LVD-142M",), "self-supervised")
    clip = resolve_backbone("timm:vit_base_patch16_clip_224.openai")
    assert (clip.normalization, clip.feature_dim, clip.supervision) == ("clip", 768, "image-text contrastive")
    # no tag: timm's default tag is written into the source, so the weights are named exactly
    assert resolve_backbone("timm:test_vit").source == f"timm:{TEST_VIT}"
    assert resolve_backbone(f"timm:{TEST_VIT}").normalization == "inception"  # mean = std = 0.5


def test_unknown_timm_names_are_one_line_with_suggestions():
    with pytest.raises(ConfigError) as info:
        resolve_backbone("timm:vit_smal_patch14_dinov2.lvd142m")
    one_line_message(info, "did you mean", "vit_small_patch14_dinov2.lvd142m")
    one_line_error(invoke("backbones", "show", "timm:vit_small_patch14_dinov2.lvd"), "did you mean", "lvd142m")


def _tiny_timm_repo(cache, tmp_path, seed=0):
    model = timm_random("test_vit", seed=seed)  # with its 1000-class head, as published
    add_hub_files(cache, f"timm/{TEST_VIT}", {"model.safetensors": state_bytes(model.state_dict(), tmp_path)})
    return model


def test_timm_backbone_loads_from_the_offline_hub_cache_and_matches_timm(offline_hub, tmp_path, monkeypatch):
    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path / "oc"))
    model = _tiny_timm_repo(offline_hub, tmp_path)
    backbone = load_backbone(resolve_backbone(f"timm:{TEST_VIT}"))
    assert backbone.revision == COMMIT and backbone.identity.weights_verified is True
    x = torch.randn(2, 3, 160, 160)
    with torch.inference_mode():
        expected = model.forward_features(x)[:, 0]  # timm's own CLS token at the pretraining size
    assert torch.allclose(backbone.embed(x), expected, atol=1e-5)


def test_timm_weights_missing_offline_is_one_line_naming_the_hub(offline_hub, tmp_path, monkeypatch):
    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path / "oc"))
    result = invoke("run", "--backbone", f"timm:{TEST_VIT}", "--dataset", "demo", "--output", str(tmp_path / "out"))
    one_line_error(result, "Hugging Face Hub", "HF_HUB_OFFLINE", f"timm/{TEST_VIT}")


@pytest.mark.slow
def test_run_timm_backbone_on_the_demo_offline_end_to_end(offline_hub, module_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("OCBENCH_CACHE", str(module_cache))
    _tiny_timm_repo(offline_hub, tmp_path)
    out = tmp_path / "out"
    command = ["run", "--backbone", f"timm:{TEST_VIT}", "--dataset", "demo", "--set", "epochs=5", "--output", str(out)]
    result = invoke(*command)
    assert result.exit_code == 0, result.output
    (path,) = out.glob("*.json")
    entry = json.loads(path.read_text())
    assert path.name == f"timm-{TEST_VIT}__map-p1-n2__fov-mlp__paper.json"
    backbone = entry["backbone"]
    assert backbone["source"] == f"timm:{TEST_VIT}" and backbone["revision"] == COMMIT
    assert backbone["card"]["training_datasets"] == ["ImageNet-1k"] and backbone["weights_verified"] is True
    assert 0.0 <= entry["scores"]["test"]["macro_f1"]["mean"] <= 1.0
    # the same command again reuses the entry (same derived card, same weights)
    again = invoke(*command)
    assert again.exit_code == 0 and "skipped" in again.output.lower() + again.stderr.lower(), again.output


def test_hf_hub_repo_card_comes_from_its_config_json(offline_hub, tmp_path, monkeypatch):
    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path / "oc"))
    model = timm_random("vit_small_patch14_reg4_dinov2", seed=3, embed_dim=32, depth=1, num_heads=2, img_size=56)
    add_hub_files(offline_hub, "mylab/cells-vit", {
        "config.json": hub_config(model, "cells", embed_dim=32, depth=1, num_heads=2, img_size=56),
        "model.safetensors": state_bytes(model.state_dict(), tmp_path),
    })
    card = resolve_backbone(f"hf-hub:mylab/cells-vit@{COMMIT}")
    assert (card.name, card.source, card.feature_dim, card.patch_size) == (
        "hf-hub-mylab--cells-vit", f"hf-hub:mylab/cells-vit@{COMMIT}", 32, 14)
    assert card.training_datasets == ("unknown (timm tag cells)",) and card.supervision == "unknown"
    backbone = load_backbone(card)  # register tokens: timm's own pooled features (the class token)
    x = torch.randn(2, 3, 56, 56)
    with torch.inference_mode():
        expected = model.forward_head(model.forward_features(x), pre_logits=True)
    assert torch.allclose(backbone.embed(x), expected, atol=1e-5)


def test_hf_hub_repo_asking_for_remote_code_is_refused(offline_hub):
    config = {"architectures": ["PhenomModel"], "auto_map": {"AutoModel": "modeling.PhenomModel"}}
    add_hub_files(offline_hub, "somelab/phenom", {"config.json": json.dumps(config).encode()})
    with pytest.raises(ConfigError) as info:
        resolve_backbone("hf-hub:somelab/phenom")
    one_line_message(info, "trust_remote_code", "never runs repository code")


def _trained_folder(folder, tmp_path, seed=5):
    model = timm_random("test_vit", seed=seed, num_classes=0)
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(state_bytes(model.state_dict(), tmp_path))
    (folder / "config.json").write_bytes(hub_config(model, "trained"))
    return model


def test_local_folder_with_a_card_file_loads_exactly_that_card(tmp_path, monkeypatch):
    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path / "oc"))
    base = resolve_backbone(f"timm:{TEST_VIT}")
    trained = dataclasses.replace(
        base, name="test-vit-ft-opencell", source="local:placeholder", training_datasets=("ImageNet-1k", "OpenCell"),
        supervision="self-supervised", normalization="self", notes="fine-tuned with DINO on OpenCell",
    )
    folder = tmp_path / "oc" / "weights" / "test-vit-ft-opencell"
    model = _trained_folder(folder, tmp_path)
    write_card_file(trained, folder)
    assert load_card_file(folder / CARD_FILENAME) == trained  # the file round-trips

    by_path = resolve_backbone(f"local:{folder}")
    assert by_path == dataclasses.replace(trained, source=f"local:{folder}")
    by_name = resolve_backbone("test-vit-ft-opencell")  # not registered: found in <cache>/weights/<name>/
    assert by_name.source == "local:test-vit-ft-opencell" and by_name.training_datasets == ("ImageNet-1k", "OpenCell")
    backbone = load_backbone(by_name)
    x = torch.randn(1, 3, 160, 160)
    with torch.inference_mode():
        assert torch.allclose(backbone.embed(x), model.forward_features(x)[:, 0], atol=1e-5)

    # without the card file, the card is derived from config.json
    (folder / CARD_FILENAME).unlink()
    derived = resolve_backbone(f"local:{folder}")
    assert derived.name == "local-test-vit-ft-opencell" and derived.arch == "test_vit" and derived.feature_dim == 64


def test_bad_card_file_is_one_line_naming_the_file(tmp_path):
    path = tmp_path / CARD_FILENAME
    path.write_text(json.dumps({"name": "x", "sorce": "local:x"}))
    with pytest.raises(ConfigError) as info:
        load_card_file(path)
    one_line_message(info, str(path), "sorce", "did you mean source")


def test_check_and_embed_take_a_timm_spec_like_a_card_name(offline_hub, module_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("OCBENCH_CACHE", str(module_cache))
    _tiny_timm_repo(offline_hub, tmp_path, seed=2)
    checked = invoke("backbones", "check", f"timm:{TEST_VIT}")
    assert checked.exit_code == 0 and "FAIL" not in checked.output, checked.output
    embedded = invoke("embed", "--backbone", f"timm:{TEST_VIT}", "--dataset", "demo", "--export", str(tmp_path / "e.npz"))
    assert embedded.exit_code == 0, embedded.output
    import numpy as np

    with np.load(tmp_path / "e.npz") as saved:
        assert saved["features"].shape[1] == 64 and np.isfinite(saved["features"]).all()
