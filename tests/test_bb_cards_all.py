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
