"""The backbone card type: one frozen description per model (what :mod:`cards` registers by name).

A card says everything needed to turn dataset images into that model's features reproducibly:
where the weights come from (``source``, also as typed fields: :attr:`BackboneCard.weights_source`),
which timm architecture to build, what each input channel means, how uint16 intensities become
model input. What the seed paper reported for a backbone is not part of its card:
``ocbench.reported`` keeps the paper's numbers (looked up by card name).

Imports only :mod:`ocbench.backbones.specs` from this package (and no torch).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from ocbench.backbones.specs import (
    SOURCE_KINDS,
    WeightsSource,
    parse_channel_spec,
    parse_intensity,
    parse_resize,
    parse_source,
)
from ocbench.errors import ConfigError

__all__ = [
    "BackboneCard", "SOURCE_KINDS", "loading_arch_kwargs", "NORMALIZATIONS", "SUPERVISIONS", "ROLES", "FEATURE_STANDARDIZATIONS",
    "TASK_SIDE_FIELDS", "WeightsSource", "channel_aliases",
]

NORMALIZATIONS: tuple[str, ...] = ("imagenet", "clip", "inception", "self", "min-max", "none")
#: Normalizations with fixed per-channel RGB numbers (need 3 input channels).
RGB_NORMALIZATIONS: tuple[str, ...] = ("imagenet", "clip")
#: Kinds of training signal a card may declare. "protein-label supervised" means trained with
#: localization labels of proteins (which may be the benchmark's own proteins).
SUPERVISIONS: tuple[str, ...] = (
    "none", "self-supervised", "image-text contrastive", "class-label supervised", "protein-label supervised",
    "unknown",
)

#: What a card stands for on the board: a model to rank, or a baseline every model is measured
#: against (untrained networks, classical and CellProfiler features; the "vs best baseline" column).
ROLES: tuple[str, ...] = ("model", "baseline")
#: What a task does to the features before it uses them: nothing, or a robust per-feature
#: standardisation (median and interquartile range; constant and non-finite features dropped) fitted
#: on the training part for probes and on all evaluated items for the k-NN. Hand-made features of
#: very different magnitudes need it before a cosine k-NN.
FEATURE_STANDARDIZATIONS: tuple[str, ...] = ("none", "robust")
#: Card fields that only change what a task does with the features, never the features: left out
#: of the embedding cache key, so declaring them does not re-extract anything.
TASK_SIDE_FIELDS: tuple[str, ...] = ("role", "feature_standardization")

_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]*$")

#: ``timm.create_model`` arguments that read files, download or pick code (``checkpoint_path`` is
#: ``torch.load``-ed, ``pretrained_cfg``/``_overlay`` may name a file, url or Hub repo, ...). A card or
#: ``config.json`` never sets them: ocbench loads weights itself, from safetensors only.
_LOADING_ARCH_KWARG = re.compile(
    r"^pretrained|checkpoint|cache|filter_fn|^pruned$|(^|_)(file|url|dir|hub|hub_id|path|uri)$", re.IGNORECASE
)


def loading_arch_kwargs(kwargs: Any) -> list[str]:
    """The keys of ``kwargs`` (timm model arguments) that would make timm load a file or code."""
    return sorted(k for k in kwargs if isinstance(k, str) and _LOADING_ARCH_KWARG.search(k)) if isinstance(kwargs, dict) else []


@dataclass(frozen=True)
class BackboneCard:
    """Everything ocbench needs to know about one backbone.

    Preprocessing, in order (see ``preprocess.py``): ``intensity`` turns uint16 counts into float
    per image and channel, ``resize`` is applied to the dataset's channels, the channel adapter
    places them into the model's ``in_chans`` inputs (others zero), then ``normalization`` is
    applied to what the model sees.
    """

    name: str
    #: ``hf-hub:<repo>[@revision]``, ``timm:<model>``, ``url:<address>``, ``local:<dir>``, ``builtin:<what>``
    #: or ``memory:<token>`` (a model handed to ``ocbench.evaluate``).
    source: str
    #: timm model name (ViTs) or the name of a built-in feature extractor.
    arch: str
    feature_dim: int
    in_chans: int
    #: What each model input channel carries, e.g. ("R", "G", "B") or ("microtubules", "protein", "nucleus", "er").
    input_channels: tuple[str, ...]
    #: Channel spec used when none is given (``adapters.parse_channels``).
    default_channels: str
    #: "imagenet" (ImageNet mean/std), "clip" (OpenAI CLIP mean/std), "inception" (0.5/0.5), "self"
    #: (per-image per-channel z-score, Dino4Cells), "min-max" (per image over all inputs jointly, SubCell)
    #: or "none".
    normalization: str = "imagenet"
    #: uint16 -> float rule: "percentile-<lo>-<hi>" (per image and channel, lo->0, hi->1, clipped),
    #: "raw" (counts as float32) or "unit" (counts / 65535).
    intensity: str = "percentile-0.1-99.9"
    #: "none" (native size, e.g. 600 px; ViT position embeddings are interpolated), "resize-<S>", "center-crop-<S>",
    #: "fit-<P>" (each side to the nearest multiple of P: patch-14 ViTs).
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
    #: Image collections the weights were trained on, in order (e.g. ("ImageNet-1k",), ("LVD-142M",),
    #: ("HPA FOV",), ("HPA FOV", "OpenCell") for a fine-tuned card). Empty: no training (random, hand-made).
    training_datasets: tuple[str, ...] = ()
    #: How the weights were trained: one of :data:`SUPERVISIONS`.
    supervision: str = "none"
    license: str = ""
    citation: str = ""
    notes: str = ""
    #: One of :data:`ROLES`: "baseline" for untrained, classical and profiling backbones.
    role: str = "model"
    #: One of :data:`FEATURE_STANDARDIZATIONS`, applied by the tasks and recorded in the entry.
    feature_standardization: str = "none"

    def __post_init__(self) -> None:
        _validate_card(self)

    def __hash__(self) -> int:  # arch_kwargs is a dict; names are unique in the registry anyway
        return hash(self.name)

    @cached_property
    def weights_source(self) -> WeightsSource:
        """``source`` (and ``sha256``) as typed fields: kind, target, revision, sha256.

        Not a dataclass field: ``to_dict()`` (entries, cache keys) keeps the ``source`` string.
        """
        return parse_source(self.source, self.sha256)

    @property
    def source_kind(self) -> str:
        return self.weights_source.kind

    @property
    def source_target(self) -> str:
        """Everything after ``kind:`` (with ``@revision`` for a pinned Hub source), as written."""
        return self.source.split(":", 1)[1].strip()

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
        if self.source_kind == "memory":
            return "an in-memory model: exists only in the Python process that evaluates it"
        if self.source == "builtin:cellprofiler":
            if not _installed("cp_measure"):
                return "needs the Python package cp-measure: pip install 'ocbench[cellprofiler]'"
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists) for result entries."""
        return dataclasses.asdict(self)

    def extraction_dict(self) -> dict[str, Any]:
        """``to_dict()`` without :data:`TASK_SIDE_FIELDS`: what the features depend on (cache keys)."""
        return {k: v for k, v in self.to_dict().items() if k not in TASK_SIDE_FIELDS}


def _validate_card(card: BackboneCard) -> None:
    def bad(field_name: str, why: str) -> ConfigError:
        return ConfigError(f"backbone card '{card.name}': field {field_name} {why}")

    if not isinstance(card.name, str) or not _NAME_PATTERN.match(card.name):
        raise bad("name", "must be lower case letters, digits, '.', '_' or '-'")
    try:
        source = parse_source(card.source)
    except ConfigError:
        raise bad("source", f"'{card.source}' must start with one of {', '.join(k + ':' for k in SOURCE_KINDS)}") from None
    if not isinstance(card.training_datasets, tuple) or not all(isinstance(d, str) and d for d in card.training_datasets):
        raise bad("training_datasets", "must be a tuple of dataset names, e.g. (\"ImageNet-1k\",)")
    if card.supervision not in SUPERVISIONS:
        raise bad("supervision", f"'{card.supervision}' must be one of {', '.join(SUPERVISIONS)}")
    if card.role not in ROLES:
        raise bad("role", f"'{card.role}' must be one of {', '.join(ROLES)}")
    if card.feature_standardization not in FEATURE_STANDARDIZATIONS:
        raise bad("feature_standardization", f"'{card.feature_standardization}' must be one of {', '.join(FEATURE_STANDARDIZATIONS)}")
    if card.normalization not in NORMALIZATIONS:
        raise bad("normalization", f"'{card.normalization}' must be one of {', '.join(NORMALIZATIONS)}")
    if not _positive_int(card.in_chans):
        raise bad("in_chans", "must be a positive integer")
    if (
        not isinstance(card.input_channels, tuple) or len(card.input_channels) != card.in_chans
        or not all(isinstance(c, str) and c for c in card.input_channels)
    ):
        raise bad("input_channels", f"must be a tuple of {card.in_chans} names, one per input channel, e.g. (\"R\", \"G\", \"B\")")
    if not isinstance(card.channel_letters, tuple) or (card.channel_letters and (
        len(card.channel_letters) != card.in_chans or not all(isinstance(c, str) and c for c in card.channel_letters)
    )):
        raise bad("channel_letters", f"must be a tuple of {card.in_chans} letters (strings) or be empty")
    if _alias_clash(card):
        raise bad("input_channels", f"names and letters must be unique (case-insensitive): {_alias_clash(card)}")
    if card.normalization in RGB_NORMALIZATIONS and card.in_chans != 3:
        raise bad("normalization", f"'{card.normalization}' needs 3 input channels")
    if not _positive_int(card.feature_dim):
        raise bad("feature_dim", "must be a positive integer")
    for name in ("patch_size", "input_size"):
        if getattr(card, name) is not None and not _positive_int(getattr(card, name)):
            raise bad(name, "must be a positive integer or None")
    if card.init_seed is not None and (isinstance(card.init_seed, bool) or not isinstance(card.init_seed, int)):
        raise bad("init_seed", "must be an integer or None")
    if card.sha256 is not None and not (isinstance(card.sha256, str) and re.fullmatch(r"[0-9a-f]{64}", card.sha256)):
        raise bad("sha256", "must be 64 lower-case hex digits or None")
    if not isinstance(card.arch, str) or not card.arch:
        raise bad("arch", "must be a timm model name or the name of a built-in feature extractor")
    for name in ("pretraining", "license", "citation", "notes"):
        if not isinstance(getattr(card, name), str):
            raise bad(name, "must be a string")
    if not isinstance(card.arch_kwargs, dict) or not all(isinstance(k, str) for k in card.arch_kwargs):
        raise bad("arch_kwargs", 'must be an object of timm.create_model keyword arguments, e.g. {"global_pool": "token"}')
    if {"in_chans", "num_classes"} & set(card.arch_kwargs):
        raise bad("arch_kwargs", "must not set in_chans or num_classes (they come from the card)")
    loading = loading_arch_kwargs(card.arch_kwargs)
    if loading:
        raise bad(f"arch_kwargs.{loading[0]}", "would make timm load a file or code; remove it "
                  "(ocbench loads weights itself, from the card's source, as safetensors only)")
    if source.kind == "builtin" and source.target == "random-init" and card.init_seed is None:
        raise bad("init_seed", "is required for builtin:random-init cards")
    if not isinstance(card.default_channels, str):
        raise bad("default_channels", "must be a channel spec string, e.g. \"imagenet-best\" or \"replicate\"")
    try:  # the form here; what the names and indices mean is checked against the inputs by the adapters
        parse_channel_spec(card.default_channels)
    except ConfigError as exc:
        raise bad("default_channels", f"is not a channel spec: {exc}") from None
    try:
        parse_intensity(card.intensity)
        parse_resize(card.resize)
    except ConfigError as exc:
        raise bad("intensity/resize", str(exc)) from None


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    import sys
    from importlib.util import find_spec

    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


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


