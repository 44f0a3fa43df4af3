"""Backbones: cards (what a model is), channel adapters, preprocessing, loading and conformance checks.

Importing this package is cheap (no torch): cards and adapters are torch-free, and the loader and
the conformance check are imported on first use. The seed paper's numbers per backbone are in
``ocbench.reported`` (``reported_for_backbone(name)``, ``headline(name)``). Names are resolved
once, at the edge; everything below takes card and adapter objects::

    from ocbench.backbones import get_card, parse_channels, load_backbone
    card = get_card("classical-stats")
    backbone = load_backbone(card)
    features = backbone.embed_raw(batch_uint16, parse_channels(None, card, dataset.card.channel_names))

A ``--backbone`` value that is not a card name (``timm:NAME[.TAG]``, ``hf-hub:ORG/NAME@REV``,
``local:DIR``, or a trained-weights folder's name) resolves to a card derived at the edge:
:func:`resolve_backbone` (``derive``). Trained-weights folders carry their card as
``ocbench_card.json`` (:func:`load_card_file`, :func:`write_card_file`).

Modules, lowest first (an import only goes down this list): ``specs`` (spec and source parsers),
``weights_folder`` (the weights folder layout), ``model_card``; ``card`` (the card type);
``provenance`` (zero-shot or not); ``adapters``; ``preprocess``; ``describe`` (text); ``zoo`` and
``zoo_modern`` (built-in cards); ``cards`` (the registry); ``archs`` (architecture families:
timm, SubCell, the baselines, plugins' ``register_arch``); ``download``; ``vit``, ``classical``,
``subcell``, ``memory`` (in-memory models); ``dino_import`` (checkpoint conversion); ``sources``
(weights); ``derive`` (cards from timm/Hub/local configs); ``hub`` (publishing); ``loader``; ``check``.
"""

from __future__ import annotations

from typing import Any

from ocbench.backbones.adapters import ChannelAdapter, available_presets, parse_channels, sweep_adapters
from ocbench.backbones.card import BackboneCard, WeightsSource
from ocbench.backbones.cards import (
    BACKBONES,
    card_names,
    format_card,
    format_cards_table,
    get_card,
    list_cards,
    register_card,
    reported_channels,
)
from ocbench.backbones.derive import CARD_FILENAME, load_card_file, resolve_backbone, write_card_file
from ocbench.backbones.provenance import not_zero_shot_reasons

_LAZY = {
    "Backbone": "ocbench.backbones.loader",
    "BackboneIdentity": "ocbench.backbones.loader",
    "load_backbone": "ocbench.backbones.loader",
    "resolve_identity": "ocbench.backbones.loader",
    "CheckReport": "ocbench.backbones.check",
    "check_backbone": "ocbench.backbones.check",
    "format_check": "ocbench.backbones.check",
}

__all__ = [
    "BackboneCard",
    "WeightsSource",
    "BACKBONES",
    "card_names",
    "register_card",
    "get_card",
    "list_cards",
    "format_cards_table",
    "format_card",
    "reported_channels",
    "resolve_backbone",
    "load_card_file",
    "write_card_file",
    "CARD_FILENAME",
    "not_zero_shot_reasons",
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
