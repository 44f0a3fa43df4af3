"""The backbone registry: cards by name (the way timm registers models).

Built on :class:`ocbench.registry.Registry`: the built-in cards (``zoo``) are registered on first
use; a third-party package adds cards through an ``ocbench.backbones`` entry point whose value is
either a :class:`BackboneCard` (registered under the entry point's name, which must be the card's
name) or a module that calls :func:`register_card` when imported; ``ocbench --plugin MODULE``
imports a user's module for one command. Unknown names fail in one line with the closest names.

The card type itself is :mod:`ocbench.backbones.card`; its text for ``backbones list``/``show``
is :mod:`ocbench.backbones.describe` (:func:`format_card` and :func:`format_cards_table` here
resolve names and call it). No torch.
"""

from __future__ import annotations

from typing import Any

from ocbench.backbones.adapters import default_adapter
from ocbench.backbones.card import NORMALIZATIONS, SOURCE_KINDS, BackboneCard, WeightsSource, channel_aliases
from ocbench.errors import ConfigError
from ocbench.registry import Registry

__all__ = [
    "BackboneCard",
    "WeightsSource",
    "SOURCE_KINDS",
    "NORMALIZATIONS",
    "BACKBONES",
    "register_card",
    "get_card",
    "list_cards",
    "card_names",
    "channel_aliases",
    "format_card",
    "format_cards_table",
    "reported_channels",
]


def _check_card(card: Any) -> BackboneCard:
    """A card about to be registered: the right type, and a default channel spec that parses."""
    if not isinstance(card, BackboneCard):
        raise ConfigError(f"register_card expects a BackboneCard, got {type(card).__name__}")
    # The default spec is checked for OpenCell's channels, unless it is an explicit map, which
    # names the dataset channels it is written for (a card for another dataset).
    try:
        default_adapter(card)
    except ConfigError as exc:
        raise ConfigError(f"backbone card '{card.name}': field default_channels: {exc}") from None
    return card


def _register_zoo() -> None:
    from ocbench.backbones.zoo import ZOO_CARDS
    from ocbench.backbones.zoo_modern import MODERN_CARDS

    for card in (*ZOO_CARDS, *MODERN_CARDS):
        BACKBONES.register(card.name, card)


class _BackboneRegistry(Registry[BackboneCard]):
    """A Registry whose names are the cards' own names (entries and cache keys use ``card.name``)."""

    def register(self, name: str, obj: BackboneCard | str, *, overwrite: bool = False) -> BackboneCard | str:
        if isinstance(obj, BackboneCard) and obj.name != name:
            # Only an entry point can get here (register_card uses the card's name): keep the card
            # findable under its own name rather than failing every command.
            import warnings

            warnings.warn(
                f"backbone entry point '{name}' holds the card '{obj.name}'; registered as '{obj.name}' "
                "(name the entry point like the card)",
                stacklevel=2,
            )
            name = obj.name
        return super().register(name, obj, overwrite=overwrite)

    def _plugin_name(self, entry_point_name: str, obj: object) -> tuple[str, str]:
        if isinstance(obj, BackboneCard) and obj.name != entry_point_name:
            # entries and cache keys use the card's own name: the card is found under that
            return obj.name, f" (it holds the card '{obj.name}')"
        return entry_point_name, ""

    def get(self, name: str) -> BackboneCard:
        card = super().get(name)
        if card.name != name:  # a lazy "module:attr" entry that named another card
            raise ConfigError(f"backbone '{name}' resolves to a card named '{card.name}'; register it under its own name")
        return card


#: Every known backbone card, by name.
BACKBONES: Registry[BackboneCard] = _BackboneRegistry(
    "backbone",
    entry_point_group="ocbench.backbones",
    check=_check_card,
    list_command="ocbench backbones list",
    on_first_use=_register_zoo,
)


def register_card(card: BackboneCard, *, overwrite: bool = False) -> BackboneCard:
    """Add a card to the registry (returns it). The default channel spec is checked here; the same
    card again is a no-op, another card under a taken name is refused unless ``overwrite``."""
    _check_card(card)
    BACKBONES.names()  # the built-in cards first, so a plugin card cannot take a built-in's name silently
    BACKBONES.register(card.name, card, overwrite=overwrite)
    return card


def list_cards() -> list[BackboneCard]:
    """Registered cards in registration order (the zoo's curated order first)."""
    return [card for _, card in BACKBONES.items()]


def card_names() -> list[str]:
    return BACKBONES.names()


def get_card(name: str | BackboneCard) -> BackboneCard:
    """The card called ``name`` (a card is returned as it is); an unknown name raises ConfigError
    with the closest names."""
    if isinstance(name, BackboneCard):
        return name
    return BACKBONES.get(name)


# ------------------------------------------------------------------------------------------------
# The command line's text (names resolved here, rendering in ``describe``)


def format_card(card: str | BackboneCard) -> str:
    """``ocbench backbones show NAME``."""
    from ocbench.backbones import describe

    return describe.format_card(get_card(card))


def format_cards_table(cards: list[BackboneCard] | None = None) -> str:
    """``ocbench backbones list`` (every registered card when ``cards`` is None)."""
    from ocbench.backbones import describe

    return describe.format_cards_table(list_cards() if cards is None else list(cards))


def reported_channels(result, card: BackboneCard) -> str:
    """See :func:`ocbench.backbones.describe.reported_channels`."""
    from ocbench.backbones import describe

    return describe.reported_channels(result, card)
