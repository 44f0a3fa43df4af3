"""Every registered card builds (on the meta device: no memory, no weights) with the feature dim and
input channels it declares; the recent cards pass `backbones check` with tiny random weights in their
published key layout, offline."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bb_hub import add_hub_files, offline_hub, state_bytes, timm_random  # noqa: F401
from ocbench.backbones.cards import get_card, list_cards
from ocbench.backbones.check import check_backbone
from ocbench.backbones.loader import _build_network


def _input_conv(network: torch.nn.Module) -> torch.nn.Conv2d:
    return next(m for m in network.modules() if isinstance(m, torch.nn.Conv2d))


@pytest.mark.parametrize("card", [c for c in list_cards() if c.source_kind != "builtin"], ids=lambda c: c.name)
def test_card_architecture_has_the_declared_feature_dim_and_inputs(card):
    with torch.device("meta"):
        model, network = _build_network(card)
        size = card.input_size or 224
        out = model(torch.empty(2, card.in_chans, size, size))
    assert tuple(out.shape) == (2, card.feature_dim)
    assert _input_conv(network).in_channels == card.in_chans
    if card.patch_size is not None:
        assert tuple(_input_conv(network).kernel_size) == (card.patch_size, card.patch_size)


# Tiny versions of each family (same architecture and key layout, fewer and narrower layers).
TINY = {
    "dinov2-vits14": dict(embed_dim=32, depth=1, num_heads=2, img_size=56),
    "dinov2-vits14-reg4": dict(embed_dim=32, depth=1, num_heads=2, img_size=56),
    "dinov3-vits16": dict(embed_dim=32, depth=1, num_heads=2, img_size=64),
    "clip-vitb16-openai": dict(embed_dim=32, depth=1, num_heads=2, img_size=64),
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_recent_cards_pass_backbones_check_with_tiny_published_weights(name, offline_hub, tmp_path, monkeypatch):
    from timm.models import get_pretrained_cfg

    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path / "oc"))
    card = get_card(name)
    cfg = get_pretrained_cfg(card.source_target)
    kwargs = {**dict(card.arch_kwargs), **TINY[name]}
    # the published checkpoint keeps timm's classifier / CLIP's projection when the config has one
    published = timm_random(card.arch, seed=1, num_classes=cfg.num_classes or 0, **kwargs)
    add_hub_files(offline_hub, cfg.hf_hub_id, {"model.safetensors": state_bytes(published.state_dict(), tmp_path)})
    tiny = dataclasses.replace(card, arch_kwargs=kwargs, feature_dim=32)
    report = check_backbone(tiny)
    assert report.ok, [(r.name, r.detail) for r in report.results if r.passed is not True]


def test_fit_resize_makes_each_side_the_nearest_multiple_of_the_patch():
    from ocbench.backbones.preprocess import resize_images

    image = torch.rand(1, 2, 600, 600)
    assert resize_images(image, "fit-14").shape[-2:] == (602, 602)
    assert resize_images(image, "fit-16").shape[-2:] == (608, 608)
    assert resize_images(image, "fit-8") is image  # 600 is a multiple of 8: untouched
    assert resize_images(torch.rand(1, 2, 64, 40), "fit-14").shape[-2:] == (70, 42)
    constant = torch.full((1, 1, 600, 600), 0.25)
    assert torch.allclose(resize_images(constant, "fit-14"), torch.full((1, 1, 602, 602), 0.25))


def test_backbones_list_shows_sources_training_data_and_licences():
    from click.testing import CliRunner

    from ocbench.cli import cli

    result = CliRunner().invoke(cli, ["backbones", "list"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.output.splitlines()[2:]}
    assert "timm:vit_small_patch14_dinov2.lvd142m" in rows["dinov2-vits14"] and "LVD-142M (SSL)" in rows["dinov2-vits14"]
    assert "DINOv3 License" in rows["dinov3-vitb16"] and "apache-2.0" in rows["dinov2-vitl14-reg4"]
    assert "OpenAI WIT-400M (image-text)" in rows["clip-vitb16-openai"] and "HPA single-cell (SSL)" in rows["subcell-bg-mae-pool"]
    assert "OpenCell (SSL)" in rows["opencell-dino-vits8"]
