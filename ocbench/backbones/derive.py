"""Backbones named by where their weights are, not by a card: cards derived at the edge.

``--backbone`` (and every other place that takes a card name) also accepts

- ``timm:NAME[.TAG]``: a timm model with pretrained weights on the Hugging Face Hub; the card is
  derived from timm's pretrained config, which ships inside timm (no network): architecture,
  input size, mean/std (normalization), license, and the feature dim and patch size of the
  architecture (built on torch's meta device, so no memory and no weights);
- ``hf-hub:ORG/NAME[@REVISION]``: a timm-format Hub repository (``config.json`` +
  ``model.safetensors``); the card is derived from its ``config.json`` (from the Hugging Face cache
  when offline). A repository whose config asks for custom code (``auto_map``, i.e.
  ``trust_remote_code``) is refused: ocbench never runs repository code to load weights;
- ``local:DIR``: a folder in the same layout. When it holds ``ocbench_card.json`` (the
  ``BackboneCard.to_dict()`` JSON of the card to use; what ocbench's own training writes), that card
  is used as it is, with only its ``source`` pointing at DIR; otherwise the card is derived from
  ``config.json``. A card file or a derived card whose name a registered card has, with another
  definition, is refused (entries, cache keys and the paper's reported numbers go by name);
- a name that is not registered but names a folder ``<cache>/weights/<name>/`` holding
  ``ocbench_card.json`` (weights trained by ocbench are usable by name).

:func:`resolve_backbone` is the one function that turns what a user typed into a card; the runner
and the command line call it where they resolve names. Derived cards are named after their source
(``timm-vit_small_patch14_dinov2.lvd142m``, ``hf-hub-org--name``, ``local-<folder>``), take the
``imagenet-best`` channel map when the model has 3 input channels (``replicate`` otherwise), scale
intensities like the ImageNet cards (0.1/99.9 percentiles), and record where their training data is
known from the timm tag (``lvd142m`` -> LVD-142M, ``in1k`` -> ImageNet-1k, ...).

Patch sizes that do not divide OpenCell's 600 px FOVs (14, 16) get the ``fit-<P>`` resize policy:
each side is resized to the nearest multiple of the patch size (600 -> 602 for patch 14, 608 for
16), so no strip of the image is dropped by the patch grid.

Importing this module is cheap; timm and torch are imported only to derive a timm or Hub card.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

from ocbench._io import read_json
from ocbench.backbones.adapters import default_adapter
from ocbench.backbones.card import BackboneCard, loading_arch_kwargs
from ocbench.errors import ConfigError, DataError

__all__ = [
    "CARD_FILENAME",
    "DERIVED_KINDS",
    "resolve_backbone",
    "load_card_file",
    "write_card_file",
    "card_from_timm_config",
    "training_data_from_tag",
    "refuse_remote_code",
]

#: The card file of a trained-weights folder (``BackboneCard.to_dict()`` as JSON).
CARD_FILENAME = "ocbench_card.json"
#: Source kinds a ``--backbone`` value may name directly.
DERIVED_KINDS: tuple[str, ...] = ("timm", "hf-hub", "local")
#: The image size the benchmark's own data comes in (OpenCell FOVs): patch sizes that do not divide
#: it get a ``fit-<P>`` resize.
OPENCELL_FOV_PX = 600

_MEANS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}

# timm tag fragments -> (training data, supervision). The first match wins, so more specific
# fragments come first; a tag matching none records "unknown".
_TAG_DATA: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("lvd1689m", ("LVD-1689M",), "self-supervised"),
    ("lvd142m", ("LVD-142M",), "self-supervised"),
    ("sat493m", ("SAT-493M",), "self-supervised"),
    ("dino", ("ImageNet-1k",), "self-supervised"),
    ("mae", ("ImageNet-1k",), "self-supervised"),
    ("openai", ("OpenAI WIT-400M",), "image-text contrastive"),
    ("laion2b", ("LAION-2B",), "image-text contrastive"),
    ("laion400m", ("LAION-400M",), "image-text contrastive"),
    ("datacomp", ("DataComp",), "image-text contrastive"),
    ("metaclip", ("MetaCLIP",), "image-text contrastive"),
    ("dfn", ("DFN",), "image-text contrastive"),
    ("in21k_ft_in1k", ("ImageNet-21k", "ImageNet-1k"), "class-label supervised"),
    ("in22k_ft_in1k", ("ImageNet-21k", "ImageNet-1k"), "class-label supervised"),
    ("in12k_ft_in1k", ("ImageNet-12k", "ImageNet-1k"), "class-label supervised"),
    ("in21k", ("ImageNet-21k",), "class-label supervised"),
    ("in22k", ("ImageNet-21k",), "class-label supervised"),
    ("in12k", ("ImageNet-12k",), "class-label supervised"),
    ("in1k", ("ImageNet-1k",), "class-label supervised"),
)


def training_data_from_tag(tag: str | None) -> tuple[tuple[str, ...], str]:
    """``(training_datasets, supervision)`` read from a timm pretrained tag; unknown tags say so."""
    text = (tag or "").lower()
    for fragment, datasets, supervision in _TAG_DATA:
        if fragment in text:
            # a CLIP model fine-tuned on ImageNet labels (openai_ft_in1k) saw both
            if supervision == "image-text contrastive" and "_ft_in" in text:
                return datasets + training_data_from_tag(text.split("_ft_", 1)[1])[0], "class-label supervised"
            return datasets, supervision
    return ((f"unknown (timm tag {tag})",) if tag else ()), "unknown"


def _safe_name(text: str) -> str:
    name = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")
    return name or "backbone"


# ------------------------------------------------------------------------------------------------
# the card file of a trained-weights folder


def load_card_file(path: str | os.PathLike) -> BackboneCard:
    """The card stored in ``path`` (an ``ocbench_card.json``, or a folder holding one).

    The file is ``BackboneCard.to_dict()`` as JSON; lists become tuples. A missing or malformed file
    is a one-line DataError naming it; a field the card type does not know is a ConfigError.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / CARD_FILENAME
    data = read_json(path, what="backbone card", advice="write it again",
                     missing="write it with ocbench.backbones.write_card_file(card, folder)")
    return card_from_dict(data, where=str(path))


def card_from_dict(data: Any, *, where: str = "card") -> BackboneCard:
    """A card from ``BackboneCard.to_dict()`` output (lists -> tuples); one-line errors naming ``where``."""
    if not isinstance(data, dict):
        raise DataError(f"{where}: a card is a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(BackboneCard)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(fields), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"{where}: unknown card field {unknown[0]!r}{hint}")
    values = {}
    for key, value in data.items():
        if key in ("input_channels", "channel_letters", "training_datasets") and isinstance(value, list):
            value = tuple(value)
        values[key] = value
    try:
        card = BackboneCard(**values)
    except TypeError as exc:  # a required field missing
        raise ConfigError(f"{where}: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    try:  # the default channel spec must fit the card's inputs (as for a registered card)
        default_adapter(card)
    except ConfigError as exc:
        raise ConfigError(f"{where}: backbone card '{card.name}': field default_channels: {exc}") from None
    return card


def write_card_file(card: BackboneCard, folder: str | os.PathLike) -> Path:
    """Write ``card`` as ``<folder>/ocbench_card.json`` (atomically); returns the file."""
    from ocbench._io import atomic_write

    if not isinstance(card, BackboneCard):
        raise ConfigError(f"write_card_file expects a BackboneCard, got {type(card).__name__}")
    target = Path(folder) / CARD_FILENAME
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(target) as fh:
        fh.write(json.dumps(card.to_dict(), indent=2, default=str) + "\n")
    return target


# ------------------------------------------------------------------------------------------------
# deriving a card from timm's configuration


def refuse_remote_code(config: Mapping[str, Any], where: str) -> None:
    """A repository whose config asks for its own code (transformers' ``auto_map`` /
    ``trust_remote_code``) is refused: loading it would run code from the repository."""
    if "auto_map" in config or config.get("trust_remote_code"):
        raise ConfigError(
            f"{where}: the repository asks for custom code (trust_remote_code); ocbench never runs repository code "
            "to load weights: export the model as timm-format safetensors, or evaluate it in memory with ocbench.evaluate"
        )


def _normalization(mean, std) -> str | None:
    if mean is None or std is None:
        return None
    for name, (m, s) in _MEANS.items():
        if len(mean) == len(m) and all(abs(a - b) < 1e-6 for a, b in zip(mean, m)) and all(abs(a - b) < 1e-6 for a, b in zip(std, s)):
            return name
    return None


def _inspect_architecture(arch: str, arch_kwargs: Mapping[str, Any], in_chans: int, where: str) -> tuple[int, int | None]:
    """(feature dim, patch size or None) of a timm architecture, built on the meta device (no memory)."""
    import timm
    import torch

    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"{where}: timm has no architecture {arch!r}{hint}")
    try:
        with torch.device("meta"):
            model = timm.create_model(arch, pretrained=False, num_classes=0, in_chans=in_chans, **dict(arch_kwargs))
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
        raise ConfigError(f"{where}: timm could not build {arch!r} with {dict(arch_kwargs)} ({str(exc).splitlines()[0]})") from None
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if isinstance(patch, (tuple, list)):
        patch = int(patch[0]) if patch[0] == patch[-1] else None
    return int(model.num_features), (int(patch) if patch else None)


def _checked_config(config: Mapping[str, Any], where: str) -> tuple[dict, dict]:
    """``(pretrained_cfg, model_args)`` of a config, each field's type checked: a malformed field is
    a one-line ConfigError naming ``where`` (the file), the field and what to write."""

    def bad(field: str, why: str) -> ConfigError:
        return ConfigError(f"{where}: field {field} {why}")

    hub_layout = "pretrained_cfg" in config or "model_args" in config
    pretrained = config.get("pretrained_cfg") if hub_layout else config
    kwargs = config.get("model_args") if hub_layout else None
    if pretrained is not None and not isinstance(pretrained, Mapping):
        raise bad("pretrained_cfg", 'must be a JSON object, e.g. {"input_size": [3, 224, 224], "mean": [...], "std": [...]}')
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise bad("model_args", 'must be a JSON object of timm.create_model keyword arguments, e.g. {"in_chans": 3}')
    pretrained, kwargs = dict(pretrained or {}), dict(kwargs or {})
    prefix = "pretrained_cfg." if hub_layout else ""
    loading = loading_arch_kwargs(kwargs)
    if loading:  # refused before timm sees them: timm would torch.load or download what they name
        raise bad(f"model_args.{loading[0]}", "would make timm load a file or code; ocbench loads weights only from "
                  "the repository's model.safetensors: remove the field")
    in_chans = kwargs.get("in_chans")
    if in_chans is not None and (isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1):
        raise bad("model_args.in_chans", f"must be a positive integer (e.g. 3), got {in_chans!r}")
    size = pretrained.get("input_size")
    if size is not None and not (
        isinstance(size, (list, tuple)) and len(size) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        raise bad(f"{prefix}input_size", f"must be [channels, height, width] of positive integers (e.g. [3, 224, 224]), got {size!r}")
    mean, std = pretrained.get("mean"), pretrained.get("std")
    for field, value in (("mean", mean), ("std", std)):
        if value is not None and not (
            isinstance(value, (list, tuple)) and value
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        ):
            raise bad(f"{prefix}{field}", f"must be a list of numbers, one per input channel (e.g. [0.485, 0.456, 0.406]), got {value!r}")
    if mean is not None and std is not None and len(mean) != len(std):
        raise bad(f"{prefix}mean/std", f"must have the same length (one number per input channel), got {len(mean)} and {len(std)}")
    tag = pretrained.get("tag")
    if tag is not None and not isinstance(tag, str):
        raise bad(f"{prefix}tag", f"must be a string naming the pretrained weights (e.g. \"in1k\"), got {tag!r}")
    return pretrained, kwargs


def card_from_timm_config(
    config: Mapping[str, Any], *, name: str, source: str, where: str, arch_kwargs: Mapping[str, Any] | None = None
) -> BackboneCard:
    """A card from a timm pretrained config (``pretrained_cfg`` dict, or a Hub ``config.json`` with
    ``architecture``, ``model_args`` and ``pretrained_cfg``). ``where`` names the config in errors
    (for a file: ``<folder>/config.json``)."""
    refuse_remote_code(config, where)
    pretrained, kwargs = _checked_config(config, where)
    arch = config.get("architecture") or pretrained.get("architecture")
    if not isinstance(arch, str) or not arch:
        raise ConfigError(f"{where}: config names no timm architecture ('architecture'); is it a timm-format model?")
    kwargs.update(arch_kwargs or {})
    kwargs.pop("num_classes", None)
    if loading_arch_kwargs(kwargs):
        raise ConfigError(f"{where}: arch_kwargs.{loading_arch_kwargs(kwargs)[0]} would make timm load a file or code; remove it")
    input_size = pretrained.get("input_size") or (3, None, None)
    in_chans = int(kwargs.pop("in_chans", None) or input_size[0] or 3)
    feature_dim, patch = _inspect_architecture(arch, kwargs, in_chans, where)
    normalization = _normalization(pretrained.get("mean"), pretrained.get("std")) if in_chans == 3 else None
    if normalization is None:
        # mean/std that no named rule matches (or no RGB input): the model still sees a per-image
        # z-score, which keeps inputs in a comparable range; stated on the card.
        normalization = "self"
    tag = pretrained.get("tag")
    datasets, supervision = training_data_from_tag(tag)
    rgb = in_chans == 3
    resize = f"fit-{patch}" if patch and OPENCELL_FOV_PX % patch else "none"
    pretrained_name = f"{arch}.{tag}" if tag else arch
    notes = f"card derived at run time from {'the timm pretrained config' if source.startswith('timm:') else 'config.json'}"
    if normalization == "self" and pretrained.get("mean") is not None and in_chans == 3:
        notes += f"; its mean/std {tuple(pretrained.get('mean'))}/{tuple(pretrained.get('std'))} match no named rule, so per-image z-score"
    return BackboneCard(
        name=name,
        source=source,
        arch=arch,
        arch_kwargs=kwargs,
        feature_dim=feature_dim,
        in_chans=in_chans,
        input_channels=("R", "G", "B") if rgb else tuple(f"c{i}" for i in range(in_chans)),
        default_channels="imagenet-best" if rgb else "replicate",
        normalization=normalization,
        intensity="percentile-0.1-99.9",
        resize=resize,
        input_size=int(input_size[-1]) if input_size[-1] else None,
        patch_size=patch,
        pretraining=f"timm pretrained weights {pretrained_name}",
        training_datasets=datasets,
        supervision=supervision,
        license=str(pretrained.get("license") or "not stated by timm; check the weights' source"),
        citation=str(pretrained.get("paper_ids") or pretrained.get("origin_url") or ""),
        notes=notes,
    )


def _timm_card(target: str) -> BackboneCard:
    import timm
    from timm.models import get_pretrained_cfg

    where = f"backbone 'timm:{target}'"
    try:
        cfg = get_pretrained_cfg(target)
    except RuntimeError as exc:  # a known architecture with an unknown tag
        arch = target.split(".", 1)[0]
        close = difflib.get_close_matches(target, timm.list_pretrained(f"{arch}*"), n=3, cutoff=0.3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"{where}: timm has no pretrained weights {target!r} ({str(exc).splitlines()[0]}){hint}") from None
    if cfg is None:
        close = difflib.get_close_matches(target, timm.list_pretrained(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else " (see timm.list_pretrained())"
        raise ConfigError(f"{where}: timm knows no pretrained model {target!r}{hint}")
    if not getattr(cfg, "hf_hub_id", None):
        raise ConfigError(f"{where}: timm's pretrained config names no Hugging Face Hub repo; use a url: card instead")
    full = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture
    return card_from_timm_config(cfg.to_dict(), name=_safe_name(f"timm-{full}"), source=f"timm:{full}", where=where)


def _read_config(path: Path, where: str) -> dict:
    config = read_json(path, shown=f"{where}: {path}", what="timm config", advice="write it again, or download the model again",
                       missing="a timm-format folder holds config.json and model.safetensors", missing_error=ConfigError)
    if not isinstance(config, dict):
        raise DataError(f"{where}: {path} is not a JSON object")
    return config


def _hub_card(target: str) -> BackboneCard:
    from ocbench.backbones.sources import hub_file
    from ocbench.backbones.specs import parse_source

    where = f"backbone 'hf-hub:{target}'"
    source = parse_source(f"hf-hub:{target}")  # an empty '@revision' is refused here, in the source's words
    repo_id, revision = source.target, source.revision
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ConfigError(f"{where}: write hf-hub:ORG/NAME[@REVISION]")
    path, _ = hub_file(f"backbone {repo_id!r}", repo_id, revision or None, "config.json")
    config = _read_config(path, where)
    return card_from_timm_config(config, name=_safe_name(f"hf-hub-{repo_id.replace('/', '--')}"),
                                 source=f"hf-hub:{target}", where=f"{where}: {path}")


def _local_card(target: str, cache_dir: str | os.PathLike | None) -> BackboneCard:
    from ocbench.backbones.sources import local_folder

    folder = local_folder(target, cache_dir)
    where = f"backbone 'local:{target}'"
    if not folder.is_dir():
        raise ConfigError(f"{where}: folder {folder} does not exist (a bare name is a folder under <cache>/weights/)")
    if (folder / CARD_FILENAME).is_file():
        card = load_card_file(folder / CARD_FILENAME)
        own = _registered_owner(card.name, folder, cache_dir)
        if own is not None:  # a registered card's own weights folder (e.g. written by ocbench finetune)
            return own
        return _file_card(dataclasses.replace(card, source=f"local:{target}"), folder / CARD_FILENAME)
    config = _read_config(folder / "config.json", where)
    card = card_from_timm_config(config, name=_safe_name(f"local-{folder.name}"), source=f"local:{target}",
                                 where=f"{where}: {folder / 'config.json'}")
    return _unregistered(card, where, "rename the folder, or give it an ocbench_card.json with another name")


def _registered_owner(name: str, folder: Path, cache_dir: str | os.PathLike | None) -> BackboneCard | None:
    """The registered card named ``name`` when ``folder`` is the folder its ``local:`` source reads."""
    from ocbench.backbones.cards import BACKBONES
    from ocbench.backbones.sources import local_folder

    if name not in BACKBONES:
        return None
    registered = BACKBONES.get(name)
    if registered.source_kind != "local":
        return None
    return registered if local_folder(registered.source_target, cache_dir).resolve() == folder.resolve() else None


def _unregistered(card: BackboneCard, where: str, advice: str) -> BackboneCard:
    """``card``, refused when a registered card has its name but another definition: entries, cache
    keys and the paper's reported numbers go by name, so they would be attributed to that model."""
    from ocbench.backbones.cards import BACKBONES

    if card.name in BACKBONES and BACKBONES.get(card.name) != card:
        raise ConfigError(
            f"{where}: the card name '{card.name}' is already a registered backbone with a different definition; {advice}"
        )
    return card


def _file_card(card: BackboneCard, path: Path) -> BackboneCard:
    return _unregistered(card, str(path), f"set its field name to another name (e.g. '{card.name}-mine')")


def resolve_backbone(spec: str | BackboneCard, *, cache_dir: str | os.PathLike | None = None) -> BackboneCard:
    """What a user typed for ``--backbone`` -> a card (see the module docstring).

    A card is returned as it is; a registered name gives its card; ``timm:``, ``hf-hub:`` and
    ``local:`` specs derive one; an unregistered name whose ``<cache>/weights/<name>/`` holds
    ``ocbench_card.json`` gives that card. Anything else is a one-line ConfigError with the closest
    names.
    """
    if isinstance(spec, BackboneCard):
        return spec
    from ocbench.backbones.cards import BACKBONES

    text = str(spec).strip()
    kind, sep, target = text.partition(":")
    if sep and kind in DERIVED_KINDS:
        target = target.strip()
        if not target:
            raise ConfigError(f"backbone {text!r}: write {kind}:<what> (e.g. timm:vit_small_patch14_dinov2.lvd142m)")
        if kind == "timm":
            return _unregistered(_timm_card(target), f"backbone {text!r}", "unregister or rename that card")
        if kind == "hf-hub":
            return _unregistered(_hub_card(target), f"backbone {text!r}", "unregister or rename that card")
        return _local_card(target, cache_dir)
    if text in BACKBONES:
        return BACKBONES.get(text)
    from ocbench.backbones.weights_folder import folder_for

    trained = folder_for(text, cache_dir) / CARD_FILENAME if text and "/" not in text else None
    if trained is not None and trained.is_file():
        card = load_card_file(trained)
        return _file_card(dataclasses.replace(card, source=f"local:{text}"), trained)
    raise BACKBONES.unknown(text, extra="; or name weights directly: timm:NAME[.TAG], hf-hub:ORG/NAME[@REV], local:DIR")
