"""Backbone cards: one frozen description per model, registered by name (the way timm registers models).

A card says everything needed to turn OpenCell FOVs into that model's features reproducibly:
where the weights come from, which timm architecture to build, what each input channel means,
how uint16 intensities become model input. What the seed paper reported for a backbone is not
part of its card: ``ocbench.reported`` keeps the paper's numbers (looked up by card name) for the
cards and the leaderboard alike.

This module (like ``zoo`` and ``adapters``) imports no torch, so ``ocbench backbones list`` and
``show`` start fast.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from typing import Any

from ocbench.errors import ConfigError
from ocbench.reported import ReportedResult, headline, reported_for_backbone

#: Source prefixes a card may use. ``builtin:`` needs no download (classical baseline, random init).
SOURCE_KINDS: tuple[str, ...] = ("hf-hub", "timm", "url", "local", "builtin")
NORMALIZATIONS: tuple[str, ...] = ("imagenet", "self", "none")

_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


@dataclass(frozen=True)
class BackboneCard:
    """Everything ocbench needs to know about one backbone.

    Preprocessing, in order (see ``preprocess.py``): ``intensity`` turns uint16 counts into float
    per image and channel, ``resize`` is applied to the two OpenCell channels, the channel adapter
    places them into the model's ``in_chans`` inputs (others zero), then ``normalization`` is
    applied to what the model sees.
    """

    name: str
    #: ``hf-hub:<repo>[@revision]``, ``timm:<model>``, ``url:<address>``, ``local:<dir>`` or ``builtin:<what>``.
    source: str
    #: timm model name (ViTs) or the name of a built-in feature extractor.
    arch: str
    feature_dim: int
    in_chans: int
    #: What each model input channel carries, e.g. ("R", "G", "B") or ("microtubules", "protein", "nucleus", "er").
    input_channels: tuple[str, ...]
    #: Channel spec used when none is given (``adapters.parse_channels``).
    default_channels: str
    #: "imagenet" (ImageNet mean/std), "self" (per-image per-channel z-score, Dino4Cells) or "none".
    normalization: str = "imagenet"
    #: uint16 -> float rule: "percentile-<lo>-<hi>" (per image and channel, lo->0, hi->1, clipped),
    #: "raw" (counts as float32) or "unit" (counts / 65535).
    intensity: str = "percentile-0.1-99.9"
    #: "none" (native size, e.g. 600 px; ViT position embeddings are interpolated), "resize-<S>", "center-crop-<S>".
    resize: str = "none"
    #: Pretraining resolution (size of the position-embedding grid); informational when resize is "none".
    input_size: int | None = None
    patch_size: int | None = None
    #: Extra keyword arguments for ``timm.create_model`` (never in_chans / num_classes: set from the card).
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    #: Optional one-letter aliases of the input channels, e.g. ("R", "G", "B", "Y") for HPA's RGBY.
    channel_letters: tuple[str, ...] = ()
    #: Expected sha256 of a ``url:`` download; None means "not known in advance: verified against
    #: nothing on first download, then recorded and enforced from the cache".
    sha256: str | None = None
    #: Seed for ``builtin:random-init`` cards.
    init_seed: int | None = None
    pretraining: str = ""
    license: str = ""
    citation: str = ""
    notes: str = ""

    def __post_init__(self) -> None:
        _validate_card(self)

    def __hash__(self) -> int:  # arch_kwargs is a dict; names are unique in the registry anyway
        return hash(self.name)

    @property
    def source_kind(self) -> str:
        return self.source.split(":", 1)[0]

    @property
    def source_target(self) -> str:
        return self.source.split(":", 1)[1]

    @property
    def offline(self) -> bool:
        """True when the card needs neither network nor weights that ocbench must train first."""
        return self.source_kind == "builtin"

    def unavailable_reason(self) -> str | None:
        """Why this card cannot run on a fresh machine without network (None when it can)."""
        if self.source_kind in ("hf-hub", "timm", "url"):
            return f"needs network: {self.source}"
        if self.source_kind == "local":
            return f"needs local weights (e.g. trained by ocbench): {self.source}"
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists) for result entries."""
        return dataclasses.asdict(self)


def _validate_card(card: BackboneCard) -> None:
    def bad(field_name: str, why: str) -> ConfigError:
        return ConfigError(f"backbone card '{card.name}': field {field_name} {why}")

    if not isinstance(card.name, str) or not _NAME_PATTERN.match(card.name):
        raise bad("name", "must be lower case letters, digits, '.', '_' or '-'")
    if ":" not in card.source or card.source_kind not in SOURCE_KINDS or not card.source_target:
        raise bad("source", f"'{card.source}' must start with one of {', '.join(k + ':' for k in SOURCE_KINDS)}")
    if card.normalization not in NORMALIZATIONS:
        raise bad("normalization", f"'{card.normalization}' must be one of {', '.join(NORMALIZATIONS)}")
    if not isinstance(card.in_chans, int) or card.in_chans < 1:
        raise bad("in_chans", "must be a positive integer")
    if not isinstance(card.input_channels, tuple) or len(card.input_channels) != card.in_chans:
        raise bad("input_channels", f"must be a tuple naming each of the {card.in_chans} input channels")
    if card.channel_letters and len(card.channel_letters) != card.in_chans:
        raise bad("channel_letters", f"must have {card.in_chans} letters or be empty")
    if _alias_clash(card):
        raise bad("input_channels", f"names and letters must be unique (case-insensitive): {_alias_clash(card)}")
    if card.normalization == "imagenet" and card.in_chans != 3:
        raise bad("normalization", "'imagenet' needs 3 input channels")
    if not isinstance(card.feature_dim, int) or card.feature_dim < 1:
        raise bad("feature_dim", "must be a positive integer")
    if card.patch_size is not None and (not isinstance(card.patch_size, int) or card.patch_size < 1):
        raise bad("patch_size", "must be a positive integer or None")
    if card.sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", card.sha256):
        raise bad("sha256", "must be 64 lower-case hex digits or None")
    if {"in_chans", "num_classes"} & set(card.arch_kwargs):
        raise bad("arch_kwargs", "must not set in_chans or num_classes (they come from the card)")
    if card.source_kind == "builtin" and card.source_target == "random-init" and card.init_seed is None:
        raise bad("init_seed", "is required for builtin:random-init cards")
    from ocbench.backbones.preprocess import parse_intensity, parse_resize  # torch-free parsers

    try:
        parse_intensity(card.intensity)
        parse_resize(card.resize)
    except ConfigError as exc:
        raise bad("intensity/resize", str(exc)) from None


def channel_aliases(card: BackboneCard) -> dict[str, int]:
    """Lower-case name or letter -> input channel index (what a channel spec may use besides an index)."""
    aliases: dict[str, int] = {}
    for index, name in enumerate(card.input_channels):
        aliases.setdefault(name.lower(), index)
        if card.channel_letters:
            aliases.setdefault(card.channel_letters[index].lower(), index)
    return aliases


def _alias_clash(card: BackboneCard) -> str | None:
    seen: dict[str, int] = {}
    for index, name in enumerate(card.input_channels):
        names = {name.lower()} | ({card.channel_letters[index].lower()} if card.channel_letters else set())
        for alias in names:
            if alias.isdigit():
                return alias
            if seen.setdefault(alias, index) != index:
                return alias
    return None


# ------------------------------------------------------------------------------------------------
# Registry

_REGISTRY: dict[str, BackboneCard] = {}
_ZOO_LOADED = False


def register_card(card: BackboneCard, *, overwrite: bool = False) -> BackboneCard:
    """Add a card to the registry (returns it). The default channel spec is checked here."""
    if not isinstance(card, BackboneCard):
        raise ConfigError(f"register_card expects a BackboneCard, got {type(card).__name__}")
    existing = _REGISTRY.get(card.name)
    if existing is not None and existing != card and not overwrite:
        raise ConfigError(f"backbone '{card.name}' is already registered with a different card; pick another name")
    from ocbench.backbones.adapters import parse_channels

    try:
        parse_channels(card.default_channels, card)
    except ConfigError as exc:
        raise ConfigError(f"backbone card '{card.name}': field default_channels: {exc}") from None
    _REGISTRY[card.name] = card
    return card


def _ensure_zoo() -> None:
    global _ZOO_LOADED
    if not _ZOO_LOADED:
        _ZOO_LOADED = True
        from ocbench.backbones import zoo  # noqa: F401  (registers the built-in cards on import)


def list_cards() -> list[BackboneCard]:
    """Registered cards in registration order (the zoo's curated order first)."""
    _ensure_zoo()
    return list(_REGISTRY.values())


def card_names() -> list[str]:
    return [card.name for card in list_cards()]


def get_card(name: str | BackboneCard) -> BackboneCard:
    """The card called ``name``; an unknown name raises ConfigError with the closest names."""
    if isinstance(name, BackboneCard):
        return name
    _ensure_zoo()
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        pass
    names = list(_REGISTRY)
    close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.5)
    if close:
        raise ConfigError(f"unknown backbone '{name}'; did you mean: {', '.join(close)}?")
    raise ConfigError(f"unknown backbone '{name}'; known: {', '.join(names)} (see: ocbench backbones list)")


# ------------------------------------------------------------------------------------------------
# Text for `ocbench backbones list` / `show`


def _short_source(source: str) -> str:
    # Hub revisions are 40-hex commits: the table shows the first 7, like git.
    match = re.match(r"^(hf-hub:[^@]+)@([0-9a-f]{40})$", source)
    if match:
        return f"{match.group(1)}@{match.group(2)[:7]}"
    if source.startswith("url:"):
        from urllib.parse import urlsplit

        parts = urlsplit(source[len("url:") :])
        filename = parts.path.rstrip("/").rsplit("/", 1)[-1]
        return f"url:{parts.netloc}/…/{filename}" if filename else source
    return source


def _channels_cell(card: BackboneCard) -> str:
    names = card.channel_letters or card.input_channels
    joined = "".join(names) if all(len(n) == 1 for n in names) else ",".join(names)
    return f"{joined} <- {card.default_channels}"


def reported_channels(result: ReportedResult, card: BackboneCard) -> str:
    """A reported row's channel handling as a channel spec this card runs: ``replicate``, the card's
    default (``natural``, ``imagenet-best``) when the map is that one, else ``protein=G,nucleus=R``."""
    if result.strategy == "replicate" or result.channel_map is None:
        return result.strategy
    from ocbench.backbones.adapters import parse_channels

    if max(result.channel_map) >= card.in_chans:  # a card that does not fit the paper's model
        return result.channels_label
    if parse_channels(card.default_channels, card).targets == result.channel_map:
        return card.default_channels
    # Letters for RGB-style cards, indices otherwise (as the paper writes HPA maps).
    names = card.input_channels if all(len(n) == 1 for n in card.input_channels) else None
    protein, nucleus = (names[i] if names else str(i) for i in result.channel_map)
    return f"protein={protein},nucleus={nucleus}"


def _headline_cell(card: BackboneCard) -> str:
    """``0.822±0.007 fov-mlp natural``; sc-knn: ``0.852 sc-knn natural (k#1 of 5)``; ``-`` when none."""
    result = headline(card.name)
    if result is None:
        return "-"
    channels = reported_channels(result, card)
    if result.per_k:  # one number per k: quote the first (smallest) k and say so
        return f"{result.per_k[0]:.3f} {result.task} {channels} (k#1 of {len(result.per_k)})"
    return f"{result.value_label()} {result.task} {channels}"


def format_cards_table(cards: list[BackboneCard] | None = None) -> str:
    """The ``ocbench backbones list`` table: name, source, arch, channels, dim, and the paper's
    headline number for the card's default configuration (from ``ocbench.reported``)."""
    from tabulate import tabulate

    cards = list_cards() if cards is None else cards
    rows = []
    for card in cards:
        reported = _headline_cell(card)
        rows.append([card.name, _short_source(card.source), card.arch, _channels_cell(card), card.feature_dim, reported])
    return tabulate(rows, headers=["name", "source", "arch", "channels", "dim", "reported (paper)"], tablefmt="simple")


def format_card(card: BackboneCard | str) -> str:
    """The ``ocbench backbones show NAME`` text: every card field, preprocessing and channel options."""
    from ocbench.backbones.adapters import available_presets, parse_channels, sweep_adapters
    from ocbench.backbones.preprocess import describe_preprocess, preprocess_key

    card = get_card(card)
    default = parse_channels(card.default_channels, card)
    channels = ", ".join(
        f"{i} {name}" + (f" ({card.channel_letters[i]})" if card.channel_letters and card.channel_letters[i] != name else "")
        for i, name in enumerate(card.input_channels)
    )
    revision = None
    match = re.match(r"^hf-hub:[^@]+@(.+)$", card.source)
    if match:
        revision = match.group(1)
    lines = [
        f"name:            {card.name}",
        f"source:          {card.source}",
    ]
    if card.source_kind == "hf-hub":
        lines.append(f"revision:        {revision or 'unpinned (resolved commit recorded at load time)'}")
    if card.source_kind == "url":
        lines.append(f"sha256:          {card.sha256 or 'not published: recorded on first download, enforced afterwards'}")
    reason = card.unavailable_reason()
    lines += [
        f"availability:    {reason or 'offline (no download)'}",
        f"pretraining:     {card.pretraining or '-'}",
        f"arch:            {card.arch}" + (f" {card.arch_kwargs}" if card.arch_kwargs else ""),
        f"patch size:      {card.patch_size or '-'}",
        f"input size:      {card.input_size or '-'} (resize policy: {card.resize})",
        f"input channels:  {card.in_chans}: {channels}",
        f"feature dim:     {card.feature_dim} per view",
        f"default channels: {card.default_channels} -> {default.describe(card)} (key {default.key}, "
        f"dim {card.feature_dim * default.n_views})",
        f"presets:         {', '.join(available_presets(card)) or '-'}; replicate; sweep = "
        f"{len(sweep_adapters(card))} injective maps",
        f"preprocessing:   {describe_preprocess(card)}",
        f"preprocess key:  {preprocess_key(card)}",
        f"license:         {card.license or '-'}",
        f"citation:        {card.citation or '-'}",
    ]
    if card.notes:
        lines.append(f"notes:           {card.notes}")
    lines += _format_reported(card)
    return "\n".join(lines)


def _format_reported(card: BackboneCard) -> list[str]:
    """Every number the paper reports for this backbone, one line each."""
    from tabulate import tabulate

    results = reported_for_backbone(card.name)
    if not results:
        return ["reported (paper): none"]
    rows = []
    for r in results:
        details = "; ".join(part for part in (r.config_label, r.note) if part)
        rows.append([r.value_label(), r.task, r.setting, reported_channels(r, card), r.source, details])
    table = tabulate(rows, headers=["macro-F1", "task", "setting", "channels", "source", "details"], tablefmt="plain")
    knn = "; sc-knn: one value per k, k#1 < ... < k#5 (the paper's k are not legible)" if any(r.per_k for r in results) else ""
    return [
        f"reported (paper): macro-F1 mean ± std over the paper's 5 folds{knn}",
        *[f"  {line}" for line in table.splitlines()],
    ]
