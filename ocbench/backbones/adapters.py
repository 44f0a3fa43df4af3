"""Channel adapters: how a dataset's named channels (OpenCell: protein, nucleus) enter a model's inputs.

- ``replicate``: each dataset channel alone, copied into every input channel; the views'
  features are concatenated (dim D x number of channels). Paper: "channel replication".
- ``map``: each dataset channel into one chosen input channel, the other inputs zero (dim D).
  Paper: "channel-wise embedding", written ``[1, 2] -> [a, b]``.

Channel specs (``--channels``)::

    replicate
    natural                  every dataset channel into the input channel of the same name (HPA: 1, 2)
    imagenet-best            the dataset card's map for RGB models (OpenCell: protein -> G, nucleus -> B;
                             alias best-imagenet); a card may name other presets too
    protein=1,nucleus=2      explicit; a target is a 0-based index, an input channel name or letter
    map:<any of the above maps>

The form of a spec is checked by :func:`ocbench.backbones.specs.parse_channel_spec`; here it is
resolved against a card (which input index a name or letter is) and the dataset: its card (channel
names and presets), or a bare tuple of channel names (default: the OpenCell card's).

:func:`sweep_adapters` lists every injective map. Keys (``map-p1-n2``, ``replicate``) use indices
and a short unique prefix of each channel name (OpenCell: ``p``, ``n``), so the same placement
always has the same key whichever way it was written.

No torch import here: ``apply`` only uses tensor methods.
"""

from __future__ import annotations

import difflib
import itertools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ocbench.backbones.card import BackboneCard, channel_aliases
from ocbench.backbones.specs import CHANNEL_PRESETS, CHANNEL_STRATEGIES, parse_channel_spec, spec_channel_names
from ocbench.data.cards import OPENCELL, DatasetCard
from ocbench.errors import ConfigError, DataError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["ChannelAdapter", "parse_channels", "default_adapter", "sweep_adapters", "available_presets",
           "channel_abbreviations", "STRATEGIES", "PRESETS"]

STRATEGIES: tuple[str, ...] = CHANNEL_STRATEGIES
PRESETS: tuple[str, ...] = CHANNEL_PRESETS


def channel_abbreviations(channels: tuple[str, ...]) -> tuple[str, ...]:
    """Short names used in keys: the shortest common prefix length that keeps every channel apart
    (OpenCell: ``p``, ``n``), lower case, letters and digits only."""
    cleaned = [re.sub(r"[^a-z0-9]", "", name.lower()) or f"c{i}" for i, name in enumerate(channels)]
    longest = max((len(name) for name in cleaned), default=1)
    for length in range(1, longest + 1):
        short = [name[:length] for name in cleaned]
        if len(set(short)) == len(short):
            break
    else:
        short = [f"{name}{i}" for i, name in enumerate(cleaned)]  # names equal once cleaned
    # An abbreviation ending in a digit would run into its target index: separate them.
    return tuple(f"{name}_" if name[-1].isdigit() else name for name in short)


def _words(names: tuple[str, ...]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _check_channels(channels: tuple[str, ...]) -> tuple[str, ...]:
    channels = tuple(channels)
    if not channels or not all(isinstance(name, str) and name for name in channels):
        raise ConfigError(f"dataset channel names must be non-empty strings, got {channels!r}")
    if len({name.lower() for name in channels}) != len(channels):
        raise ConfigError(f"dataset channel names must be unique (case-insensitive), got {', '.join(channels)}")
    return channels


@dataclass(frozen=True)
class ChannelAdapter:
    """A validated placement of a dataset's channels into ``in_chans`` model inputs."""

    strategy: str
    in_chans: int
    #: For ``map``: the input index of each dataset channel in ``channels`` order (None: channel unused).
    targets: tuple[int | None, ...] = ()
    #: The preset it was written as, if any (informational: not part of the key).
    preset: str | None = None
    #: The dataset's channel names, in the order its images hold them.
    channels: tuple[str, ...] = OPENCELL.channel_names

    @property
    def n_views(self) -> int:
        return len(self.channels) if self.strategy == "replicate" else 1

    @property
    def key(self) -> str:
        """Stable, filesystem-safe: ``replicate`` or ``map-p1-n2``."""
        if self.strategy == "replicate":
            return "replicate"
        abbrev = channel_abbreviations(self.channels)
        parts = [f"{short}{target}" for short, target in zip(abbrev, self.targets) if target is not None]
        return "map-" + "-".join(parts)

    @property
    def spec(self) -> str:
        """Canonical channel spec that parses back to this adapter: ``replicate`` or ``protein=1,nucleus=2``."""
        if self.strategy == "replicate":
            return "replicate"
        return ",".join(f"{name}={target}" for name, target in zip(self.channels, self.targets) if target is not None)

    def describe(self, card: BackboneCard | None = None) -> str:
        """Human form, e.g. ``protein->G, nucleus->B`` (names from the card when given)."""
        if self.strategy == "replicate":
            return "each channel copied to all inputs, features concatenated"

        def label(index: int) -> str:
            if card is None:
                return str(index)
            name = card.input_channels[index]
            return name if len(name) == 1 else f"{index} ({name})"

        return ", ".join(f"{name}->{label(t)}" for name, t in zip(self.channels, self.targets) if t is not None)

    def to_dict(self) -> dict[str, Any]:
        """The entry's ``channels`` field."""
        return {"strategy": self.strategy, "key": self.key, "spec": self.spec}

    def apply(self, x: "torch.Tensor") -> "list[torch.Tensor]":
        """(N, C, H, W) float in ``channels`` order -> list of n_views model inputs (N, in_chans, H, W).

        A map that moves no channel and pads none returns ``x`` itself (no copy)."""
        if x.ndim != 4 or x.shape[1] != len(self.channels):
            raise DataError(
                f"channel adapter expects (N, {len(self.channels)}, H, W) in order {', '.join(self.channels)}; "
                f"got {tuple(x.shape)}"
            )
        n, _, h, w = x.shape
        if self.strategy == "replicate":
            return [x[:, i : i + 1].expand(n, self.in_chans, h, w).contiguous() for i in range(len(self.channels))]
        if tuple(self.targets) == tuple(range(self.in_chans)):  # already in the model's order, nothing padded
            return [x]
        out = x.new_zeros((n, self.in_chans, h, w))
        for source, target in enumerate(self.targets):
            if target is not None:
                out[:, target] = x[:, source]
        return [out]


# ------------------------------------------------------------------------------------------------
# Resolving a spec against a card and a dataset's channels


def _card_channels(card: BackboneCard) -> str:
    return ", ".join(
        f"{i} {name}" + (f"/{card.channel_letters[i]}" if card.channel_letters and card.channel_letters[i] != name else "")
        for i, name in enumerate(card.input_channels)
    )


#: What a dataset is to an adapter: its card, or a bare tuple of its channel names.
DatasetChannels = DatasetCard | tuple[str, ...]


def _dataset_channels(dataset: DatasetChannels) -> tuple[tuple[str, ...], dict[str, dict[str, str]]]:
    """Channel names and channel presets of ``dataset``. A bare tuple of names gets the OpenCell
    card's presets (each applies only where the dataset has the channels it places)."""
    if isinstance(dataset, DatasetCard):
        return _check_channels(dataset.channel_names), dict(dataset.channel_presets)
    return _check_channels(tuple(dataset)), dict(OPENCELL.channel_presets)


def _preset_targets(preset: str, card: BackboneCard, channels: tuple[str, ...],
                    presets: dict[str, dict[str, str]]) -> tuple[int | None, ...]:
    """Input indices for a preset on this card and dataset, or ConfigError saying why it does not apply."""
    upper = [name.upper() for name in card.input_channels]
    lowered = [name.lower() for name in channels]
    if preset == "natural":  # every dataset channel into the input channel of the same name
        if all(name.upper() in upper for name in channels):
            return tuple(upper.index(name.upper()) for name in channels)
        raise ConfigError(
            f"channel preset 'natural' needs input channels named {_words(channels)}; {card.name} has "
            f"{_card_channels(card)}: use replicate or an explicit map such as {channels[0]}=0"
        )
    mapping = {name.lower(): token for name, token in presets.get(preset, {}).items()}
    if not mapping:
        raise ConfigError(
            f"channel preset '{preset}' is not defined for this dataset (its card defines "
            f"{', '.join(['natural', *presets]) }): use replicate or an explicit map such as {channels[0]}=0"
        )
    missing = [name for name in mapping if name not in lowered]
    if missing:
        raise ConfigError(
            f"channel preset '{preset}' places {_words(tuple(mapping))}; the dataset's channels are "
            f"{', '.join(channels)}: use replicate or an explicit map such as {channels[0]}=0"
        )
    # A preset names input channels (R, G, B): it applies to backbones whose inputs carry those names.
    if not all(token.upper() in upper for token in mapping.values()):
        wanted = ", ".join(f"{name}->{token}" for name, token in mapping.items())
        raise ConfigError(
            f"channel preset '{preset}' ({wanted}) needs input channels named {', '.join(mapping.values())}; {card.name} "
            f"has {_card_channels(card)}: use replicate or an explicit map such as {channels[0]}=0"
        )
    return tuple(upper.index(mapping[name].upper()) if name in mapping else None for name in lowered)


def available_presets(card: BackboneCard, dataset: DatasetChannels = OPENCELL) -> list[str]:
    """Presets that apply to this card and dataset."""
    channels, presets = _dataset_channels(dataset)
    valid = []
    for preset in ("natural", *presets):
        try:
            _preset_targets(preset, card, channels, presets)
        except ConfigError:
            continue
        valid.append(preset)
    return valid


def _parse_target(token: str, channel: str, card: BackboneCard, spec: str) -> int:
    if token.lstrip("-").isdigit():
        index = int(token)
        if not 0 <= index < card.in_chans:
            raise ConfigError(
                f"channel spec '{spec}': {channel}={token} is out of range; {card.name} has {card.in_chans} input "
                f"channels ({_card_channels(card)})"
            )
        return index
    aliases = channel_aliases(card)
    if token.lower() in aliases:
        return aliases[token.lower()]
    close = difflib.get_close_matches(token.lower(), list(aliases), n=2, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ConfigError(
        f"channel spec '{spec}': unknown input channel '{token}' for {card.name}{hint}; "
        f"use an index or a name: {_card_channels(card)}"
    )


def parse_channels(spec: str | None, card: BackboneCard, dataset: DatasetChannels = OPENCELL) -> ChannelAdapter:
    """Validate a channel spec against a card and the dataset (its card, or a tuple of its channel
    names; None spec -> the backbone card's default). Errors are one line and name the dataset's channels."""
    if not isinstance(card, BackboneCard):
        raise ConfigError(f"parse_channels expects a BackboneCard, got {type(card).__name__}; resolve names with get_card(name)")
    channels, presets = _dataset_channels(dataset)
    text = card.default_channels if spec is None else spec
    if str(text).strip().lower() in presets:  # a preset the dataset's card defines
        preset = str(text).strip().lower()
        targets = _preset_targets(preset, card, channels, presets)
        return ChannelAdapter("map", card.in_chans, targets, preset=preset, channels=channels)
    parsed = parse_channel_spec(text)
    if parsed.kind == "replicate":
        return ChannelAdapter("replicate", card.in_chans, channels=channels)
    if parsed.kind == "preset":
        targets = _preset_targets(parsed.preset, card, channels, presets)
        return ChannelAdapter("map", card.in_chans, targets, preset=parsed.preset, channels=channels)
    lowered = [name.lower() for name in channels]
    resolved: dict[str, int] = {}
    for name, token in parsed.pairs:
        if name not in lowered:
            close = difflib.get_close_matches(name, lowered, n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(
                f"channel spec '{parsed.text}': unknown dataset channel '{name}'{hint}; "
                f"the dataset's channels are {', '.join(channels)}"
            )
        resolved[name] = _parse_target(token, name, card, parsed.text)
    used: dict[int, str] = {}
    for name, target in resolved.items():
        if target in used:
            raise ConfigError(
                f"channel spec '{parsed.text}': {used[target]} and {name} both go to input channel {target}; "
                f"each input channel takes one dataset channel"
            )
        used[target] = name
    return ChannelAdapter("map", card.in_chans, tuple(resolved.get(name) for name in lowered), channels=channels)


def default_adapter(card: BackboneCard, dataset: DatasetChannels | None = None) -> ChannelAdapter:
    """The card's default channel spec as an adapter: for ``dataset`` when given, else for the
    channels an explicit default map names (a card written for another dataset), else OpenCell's."""
    if dataset is None:
        dataset = spec_channel_names(card.default_channels) or OPENCELL
    return parse_channels(None, card, dataset)


def sweep_adapters(card: BackboneCard, dataset: DatasetChannels = OPENCELL) -> list[ChannelAdapter]:
    """Every injective map of the dataset's channels into the card's inputs, in index order
    (none when the dataset has more channels than the card has inputs)."""
    channels, _ = _dataset_channels(dataset)
    return [
        ChannelAdapter("map", card.in_chans, targets, channels=channels)
        for targets in itertools.permutations(range(card.in_chans), len(channels))
    ]
