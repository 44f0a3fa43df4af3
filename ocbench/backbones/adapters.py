"""Channel adapters: how OpenCell's two named channels (protein, nucleus) enter a model's inputs.

- ``replicate``: each OpenCell channel alone, copied into every input channel; the two views'
  features are concatenated (dim D x 2). Paper: "channel replication".
- ``map``: each OpenCell channel into one chosen input channel, the other inputs zero (dim D).
  Paper: "channel-wise embedding", written ``[1, 2] -> [a, b]``.

Channel specs (``--channels``)::

    replicate
    natural                  protein and nucleus into the input channels of the same name (HPA: 1, 2)
    imagenet-best            protein -> G, nucleus -> B (RGB cards; alias best-imagenet)
    protein=1,nucleus=2      explicit; a target is a 0-based index, an input channel name or letter
    map:<any of the above maps>

:func:`sweep_adapters` lists every injective map. Keys (``map-p1-n2``, ``replicate``) use indices
only, so the same placement always has the same key whichever way it was written.

No torch import here: ``apply`` only uses tensor methods.
"""

from __future__ import annotations

import difflib
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ocbench.data.compartments import CHANNELS
from ocbench.errors import ConfigError, DataError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ocbench.backbones.cards import BackboneCard

STRATEGIES: tuple[str, ...] = ("replicate", "map")
PRESETS: tuple[str, ...] = ("natural", "imagenet-best")
_PRESET_ALIASES = {"best-imagenet": "imagenet-best"}
#: One-letter abbreviations used in keys: map-p1-n2.
_CHANNEL_ABBREV = {"protein": "p", "nucleus": "n"}


@dataclass(frozen=True)
class ChannelAdapter:
    """A validated placement of OpenCell channels into ``in_chans`` model inputs."""

    strategy: str
    in_chans: int
    #: For ``map``: the input index of each OpenCell channel in CHANNELS order (None: channel unused).
    targets: tuple[int | None, ...] = ()
    #: The preset it was written as, if any (informational: not part of the key).
    preset: str | None = None

    @property
    def n_views(self) -> int:
        return len(CHANNELS) if self.strategy == "replicate" else 1

    @property
    def key(self) -> str:
        """Stable, filesystem-safe: ``replicate`` or ``map-p1-n2``."""
        if self.strategy == "replicate":
            return "replicate"
        parts = [f"{_CHANNEL_ABBREV[name]}{target}" for name, target in zip(CHANNELS, self.targets) if target is not None]
        return "map-" + "-".join(parts)

    @property
    def spec(self) -> str:
        """Canonical channel spec that parses back to this adapter: ``replicate`` or ``protein=1,nucleus=2``."""
        if self.strategy == "replicate":
            return "replicate"
        return ",".join(f"{name}={target}" for name, target in zip(CHANNELS, self.targets) if target is not None)

    def describe(self, card: "BackboneCard | None" = None) -> str:
        """Human form, e.g. ``protein->G, nucleus->B`` (names from the card when given)."""
        if self.strategy == "replicate":
            return "each channel copied to all inputs, features concatenated"

        def label(index: int) -> str:
            if card is None:
                return str(index)
            name = card.input_channels[index]
            return name if len(name) == 1 else f"{index} ({name})"

        return ", ".join(f"{name}->{label(t)}" for name, t in zip(CHANNELS, self.targets) if t is not None)

    def to_dict(self) -> dict[str, Any]:
        """The entry's ``channels`` field."""
        return {"strategy": self.strategy, "key": self.key, "spec": self.spec}

    def apply(self, x: "torch.Tensor") -> "list[torch.Tensor]":
        """(N, 2, H, W) float in CHANNELS order -> list of n_views model inputs (N, in_chans, H, W)."""
        if x.ndim != 4 or x.shape[1] != len(CHANNELS):
            raise DataError(f"channel adapter expects (N, {len(CHANNELS)}, H, W) in order {', '.join(CHANNELS)}; got {tuple(x.shape)}")
        n, _, h, w = x.shape
        if self.strategy == "replicate":
            return [x[:, i : i + 1].expand(n, self.in_chans, h, w).contiguous() for i in range(len(CHANNELS))]
        out = x.new_zeros((n, self.in_chans, h, w))
        for source, target in enumerate(self.targets):
            if target is not None:
                out[:, target] = x[:, source]
        return [out]


# ------------------------------------------------------------------------------------------------
# Parsing


def _card_channels(card: "BackboneCard") -> str:
    return ", ".join(
        f"{i} {name}" + (f"/{card.channel_letters[i]}" if card.channel_letters and card.channel_letters[i] != name else "")
        for i, name in enumerate(card.input_channels)
    )


def _preset_targets(preset: str, card: "BackboneCard") -> tuple[int, ...]:
    """Input indices for a preset on this card, or ConfigError saying why it does not apply."""
    if preset == "natural":
        wanted = CHANNELS  # the input channels named like the OpenCell channels
        applies = all(name in card.input_channels for name in CHANNELS)
    else:  # imagenet-best: the paper's best map for RGB models
        wanted = ("G", "B")
        applies = tuple(name.upper() for name in card.input_channels) == ("R", "G", "B")
    if not applies:
        need = "input channels named protein and nucleus" if preset == "natural" else "RGB input channels"
        raise ConfigError(
            f"channel preset '{preset}' needs {need}; {card.name} has {_card_channels(card)}: "
            f"use replicate or an explicit map such as protein=0,nucleus=1"
        )
    upper = [name.upper() for name in card.input_channels]
    return tuple(upper.index(w.upper()) for w in wanted)


def available_presets(card: "BackboneCard") -> list[str]:
    """Presets that apply to this card."""
    valid = []
    for preset in PRESETS:
        try:
            _preset_targets(preset, card)
        except ConfigError:
            continue
        valid.append(preset)
    return valid


def _parse_target(token: str, channel: str, card: "BackboneCard", spec: str) -> int:
    from ocbench.backbones.cards import channel_aliases

    token = token.strip()
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


def parse_channels(spec: str | None, card: "BackboneCard") -> ChannelAdapter:
    """Validate a channel spec against a card (None -> the card's default). Errors are one line."""
    if spec is None:
        spec = card.default_channels
    original = spec
    text = str(spec).strip()
    if text.startswith("map:"):
        text = text[len("map:") :].strip()
    lowered = text.lower()
    if lowered == "replicate":
        if original.strip().startswith("map:"):
            raise ConfigError(f"channel spec '{original}': replicate is a strategy of its own, not a map")
        return ChannelAdapter("replicate", card.in_chans)
    preset = _PRESET_ALIASES.get(lowered, lowered)
    if preset in PRESETS:
        targets = _preset_targets(preset, card)
        return ChannelAdapter("map", card.in_chans, tuple(targets), preset=preset)
    if "=" not in text:
        options = ", ".join(["replicate", *PRESETS])
        close = difflib.get_close_matches(lowered, ["replicate", *PRESETS, *_PRESET_ALIASES], n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ConfigError(
            f"channel spec '{original}' not understood; {hint}use {options} or an explicit map like protein=1,nucleus=2"
        )
    targets: dict[str, int] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise ConfigError(f"channel spec '{original}': '{part.strip()}' is not of the form channel=input")
        name, token = (piece.strip() for piece in part.split("=", 1))
        name = name.lower()
        if name not in CHANNELS:
            close = difflib.get_close_matches(name, CHANNELS, n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(
                f"channel spec '{original}': unknown OpenCell channel '{name}'{hint}; channels are {', '.join(CHANNELS)}"
            )
        if name in targets:
            raise ConfigError(f"channel spec '{original}': {name} is given twice")
        targets[name] = _parse_target(token, name, card, original)
    if not targets:
        raise ConfigError(f"channel spec '{original}' maps no channel; write e.g. protein=1,nucleus=2")
    used: dict[int, str] = {}
    for name, target in targets.items():
        if target in used:
            raise ConfigError(
                f"channel spec '{original}': {used[target]} and {name} both go to input channel {target}; "
                f"each input channel takes one OpenCell channel"
            )
        used[target] = name
    return ChannelAdapter("map", card.in_chans, tuple(targets.get(name) for name in CHANNELS))


def sweep_adapters(card: "BackboneCard") -> list[ChannelAdapter]:
    """Every injective map of (protein, nucleus) into the card's inputs, in index order."""
    return [
        ChannelAdapter("map", card.in_chans, targets)
        for targets in itertools.permutations(range(card.in_chans), len(CHANNELS))
    ]
