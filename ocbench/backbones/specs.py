"""Parsers of the small text specs a backbone card and a command line use: intensity rule, resize
policy, weights source and the syntax of a channel spec.

A leaf: nothing from ``ocbench.backbones`` is imported here, so cards, adapters and preprocessing
all build on it without importing each other. What a channel spec *means* for a given card and
dataset (which input index a name or letter is) is resolved in :mod:`ocbench.backbones.adapters`;
here only its form is checked.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from ocbench.errors import ConfigError

__all__ = [
    "SOURCE_KINDS",
    "WeightsSource",
    "parse_source",
    "parse_intensity",
    "parse_resize",
    "ChannelSpec",
    "parse_channel_spec",
    "spec_channel_names",
    "CHANNEL_STRATEGIES",
    "CHANNEL_PRESETS",
]

# ------------------------------------------------------------------------------------------------
# Weights source

#: Source prefixes a card may use. ``builtin:`` needs no download (classical baseline, random init);
#: ``memory:`` is a model handed to ``ocbench.evaluate`` in this process (never in a registered card).
SOURCE_KINDS: tuple[str, ...] = ("hf-hub", "timm", "url", "local", "builtin", "memory")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class WeightsSource:
    """A card's ``source`` string as typed fields.

    ``kind``: one of :data:`SOURCE_KINDS`. ``target``: the Hub repo (``org/name``, without the
    revision), the timm model name, the address, the folder or the built-in's name. ``revision``:
    the pinned Hub commit or branch (``hf-hub:org/name@rev``), else None. ``sha256``: the published
    checksum of a ``url:`` file (the card's ``sha256`` field), else None.
    """

    kind: str
    target: str
    revision: str | None = None
    sha256: str | None = None

    @classmethod
    def parse(cls, text: str, sha256: str | None = None) -> "WeightsSource":
        """``"hf-hub:org/name@rev"`` (etc.) -> WeightsSource; ConfigError naming the forms otherwise."""
        return parse_source(text, sha256)

    @property
    def needs_weights(self) -> bool:
        """False for ``builtin:`` sources (nothing to fetch)."""
        return self.kind != "builtin"

    def __str__(self) -> str:  # the string form it was parsed from
        revision = f"@{self.revision}" if self.revision else ""
        return f"{self.kind}:{self.target}{revision}"


def parse_source(text: str, sha256: str | None = None) -> WeightsSource:
    """Parse ``kind:target[@revision]``; the revision part is read for ``hf-hub`` only."""
    source = str(text or "").strip()
    kind, sep, value = source.partition(":")
    value = value.strip()
    if not sep or kind not in SOURCE_KINDS or not value:
        raise ConfigError(
            f"source '{text}' must start with one of {', '.join(k + ':' for k in SOURCE_KINDS)} "
            "(hf-hub:<org>/<name>[@rev], timm:<model>, url:<address>, local:<dir>, builtin:<what>)"
        )
    revision = None
    if kind == "hf-hub" and "@" in value:
        value, _, revision = value.partition("@")
        if not value:
            raise ConfigError(f"source '{text}': the repository before '@' is empty; write hf-hub:<org>/<name>@<revision>")
        if not revision.strip():
            raise ConfigError(
                f"source '{text}': the revision after '@' is empty; write a branch, tag or commit after it "
                f"(e.g. hf-hub:{value}@main), or leave out the '@' for the default branch"
            )
    if sha256 is not None:
        sha256 = str(sha256).strip().lower()
        if not _SHA256.fullmatch(sha256):
            raise ConfigError(f"sha256 '{sha256}' must be 64 lower-case hex digits or None")
    return WeightsSource(kind, value, revision, sha256)


# ------------------------------------------------------------------------------------------------
# Intensity and resize

_NUMBER = r"(\d+(?:\.\d+)?)"


def parse_intensity(rule: str) -> tuple:
    """``("percentile", lo, hi)``, ``("raw",)`` or ``("unit",)``; ConfigError otherwise."""
    if rule in ("raw", "unit"):
        return (rule,)
    match = re.fullmatch(rf"percentile-{_NUMBER}-{_NUMBER}", str(rule))
    if match:
        lo, hi = float(match.group(1)), float(match.group(2))
        if 0.0 <= lo < hi <= 100.0:
            return ("percentile", lo, hi)
    raise ConfigError(f"intensity rule '{rule}' is not one of: raw, unit, percentile-<lo>-<hi> with 0 <= lo < hi <= 100")


def parse_resize(policy: str) -> tuple:
    """``("none",)``, ``("resize", size)``, ``("center-crop", size)`` or ``("fit", multiple)``;
    ConfigError otherwise. ``fit-<P>`` resizes each side to the nearest multiple of P (ViTs whose
    patch size does not divide the image: OpenCell's 600 px becomes 602 px for patch 14)."""
    if policy == "none":
        return ("none",)
    match = re.fullmatch(r"(resize|center-crop|fit)-(\d+)", str(policy))
    if match and int(match.group(2)) > 0:
        return (match.group(1), int(match.group(2)))
    raise ConfigError(f"resize policy '{policy}' is not one of: none, resize-<size>, center-crop-<size>, fit-<multiple>")


# ------------------------------------------------------------------------------------------------
# Channel spec syntax

CHANNEL_STRATEGIES: tuple[str, ...] = ("replicate", "map")
CHANNEL_PRESETS: tuple[str, ...] = ("natural", "imagenet-best")
_PRESET_ALIASES = {"best-imagenet": "imagenet-best"}


@dataclass(frozen=True)
class ChannelSpec:
    """The form of a channel spec, before it is resolved against a card and a dataset.

    ``kind``: ``"replicate"``, ``"preset"`` (``preset`` names it) or ``"map"`` (``pairs`` holds
    ``(dataset channel name, lower case; input channel token as written)`` in the order written).
    ``text``: the spec as the user wrote it (quoted in errors).
    """

    kind: str
    text: str
    preset: str | None = None
    pairs: tuple[tuple[str, str], ...] = ()


def parse_channel_spec(spec: str) -> ChannelSpec:
    """Check a channel spec's form (``replicate``, a preset, ``[map:]name=target,...``); one-line errors."""
    original = str(spec)
    text = original.strip()
    is_map = text.startswith("map:")
    if is_map:
        text = text[len("map:") :].strip()
    lowered = text.lower()
    if lowered == "replicate":
        if is_map:
            raise ConfigError(f"channel spec '{original}': replicate is a strategy of its own, not a map")
        return ChannelSpec("replicate", original)
    preset = _PRESET_ALIASES.get(lowered, lowered)
    if preset in CHANNEL_PRESETS:
        return ChannelSpec("preset", original, preset=preset)
    if "=" not in text:
        options = ", ".join(["replicate", *CHANNEL_PRESETS])
        close = difflib.get_close_matches(lowered, ["replicate", *CHANNEL_PRESETS, *_PRESET_ALIASES], n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ConfigError(
            f"channel spec '{original}' not understood; {hint}use {options} or an explicit map like protein=1,nucleus=2"
        )
    pairs: list[tuple[str, str]] = []
    for part in text.split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise ConfigError(f"channel spec '{original}': '{part.strip()}' is not of the form channel=input")
        name, token = (piece.strip() for piece in part.split("=", 1))
        name = name.lower()
        if not name or not token:
            raise ConfigError(f"channel spec '{original}': '{part.strip()}' is not of the form channel=input")
        if any(name == seen for seen, _ in pairs):
            raise ConfigError(f"channel spec '{original}': {name} is given twice")
        pairs.append((name, token))
    if not pairs:
        raise ConfigError(f"channel spec '{original}' maps no channel; write e.g. protein=1,nucleus=2")
    return ChannelSpec("map", original, pairs=tuple(pairs))


def spec_channel_names(spec: str) -> tuple[str, ...] | None:
    """The dataset channel names an explicit map names (``protein=1,membrane=2`` -> (protein,
    membrane)), or None for replicate and presets (they fit any dataset's names)."""
    parsed = parse_channel_spec(spec)
    return tuple(name for name, _ in parsed.pairs) if parsed.kind == "map" else None
