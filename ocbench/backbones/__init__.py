"""Backbones: cards (what a model is), channel adapters, preprocessing, loading and conformance checks.

Importing this package is cheap (no torch): cards and adapters are torch-free, and the loader and
the conformance check are imported on first use. The seed paper's numbers per backbone are in
``ocbench.reported`` (``reported_for_backbone(name)``, ``headline(name)``)::

    from ocbench.backbones import get_card, parse_channels, load_backbone
    backbone = load_backbone("classical-stats")
    features = backbone.embed_raw(batch_uint16, parse_channels(None, backbone.card))
"""

from __future__ import annotations

from typing import Any

from ocbench.backbones.adapters import ChannelAdapter, available_presets, parse_channels, sweep_adapters
from ocbench.backbones.cards import (
    BackboneCard,
    format_card,
    format_cards_table,
    get_card,
    list_cards,
    register_card,
    reported_channels,
)

_LAZY = {
    "Backbone": "ocbench.backbones.loader",
    "load_backbone": "ocbench.backbones.loader",
    "CheckReport": "ocbench.backbones.check",
    "check_backbone": "ocbench.backbones.check",
    "format_check": "ocbench.backbones.check",
}

__all__ = [
    "BackboneCard",
    "register_card",
    "get_card",
    "list_cards",
    "format_cards_table",
    "format_card",
    "reported_channels",
    "ChannelAdapter",
    "parse_channels",
    "sweep_adapters",
    "available_presets",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    # torch-heavy parts load on first use, so `ocbench backbones list` stays fast.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ocbench.backbones' has no attribute '{name}'")
