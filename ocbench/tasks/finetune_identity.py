"""How a fine-tuned backbone is named and identified: the run's identity and the derived card.

A fine-tuning run is identified by everything that decides its result (base card, channel adapter,
training settings, the dataset's listing, split and seed, :func:`run_identity`); its hash names
the derived backbone ``<base>.ft-<dataset>-f<fraction>-<hash>`` (:func:`derived_card`), so the
same run finds its finished weights and any other run gets its own name. :func:`scratch_card` is
the randomly initialised base of training from scratch, whose run on OpenCell takes the zoo's
``opencell-dino-vits8``/``-vitb8`` name instead.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from ocbench._io import json_sha256
from ocbench.data.content import listing_version
from ocbench.errors import ConfigError
from ocbench.tasks.dino_config import DinoConfig

__all__ = ["run_identity", "scratch_card", "derived_card", "run_hash", "run_key"]


def _name_part(text: str) -> str:
    """``text`` as part of a backbone card name: lowercase, only the characters a card name may hold
    (ocbench._io.slug makes file-name parts, which keep capitals and ``=``)."""
    import re

    return re.sub(r"[^a-z0-9._-]+", "-", str(text).lower()).strip("-") or "data"


def _dataset_label(dataset: Any) -> str:
    """How a card's ``training_datasets`` names the data: "OpenCell" for OpenCell, else its name."""
    return "OpenCell" if dataset.name == "opencell" else str(dataset.name)


def run_identity(base: Any, adapter: Any, cfg: DinoConfig, dataset: Any, split: Any, seed: int) -> dict:
    """Everything that makes two fine-tuning runs the same run (hashed into the derived name).

    The dataset enters by its listing (items and labels): the content of the training images is
    checked when a finished run or a checkpoint is reused (:class:`~ocbench.tasks.finetune_files.TrainFiles`), so rewritten
    pixels retrain the same backbone name, with a warning, instead of leaving old weights behind."""
    return {
        "base": json.loads(json.dumps(base.to_dict(), sort_keys=True, default=str)),
        "channels": adapter.key,
        "training": cfg.training_dict(),
        "dataset": str(dataset.name),
        "dataset_version": listing_version(dataset),
        "split_sha256": split.sha256,
        "split_track": split.track,
        "seed": int(seed),
    }


def scratch_card(arch: str, dataset_card: Any, seed: int = 0, arch_kwargs: dict | None = None) -> Any:
    """A randomly initialised ViT taking the dataset's channels (the base of training from scratch)."""
    import timm

    from ocbench.backbones.card import BackboneCard

    name = arch if timm.is_model(arch) else f"{arch}_224"
    if not timm.is_model(name):
        raise ConfigError(f"--from-scratch {arch!r}: timm has no such architecture (e.g. vit_small_patch8, vit_base_patch8)")
    probe = timm.create_model(name, pretrained=False, num_classes=0, **dict(arch_kwargs or {}))
    patch = probe.patch_embed.patch_size
    channels = tuple(dataset_card.channel_names)
    return BackboneCard(
        name=_name_part(f"scratch-{name}"),
        source="builtin:random-init",
        arch=name,
        arch_kwargs=dict(arch_kwargs or {}),
        feature_dim=int(probe.num_features),
        in_chans=len(channels),
        input_channels=channels,
        default_channels="natural",
        normalization="self",
        intensity="raw",
        input_size=int(probe.patch_embed.img_size[0]),
        patch_size=int(patch[0] if isinstance(patch, (tuple, list)) else patch),
        init_seed=int(seed),
        pretraining="none: seeded random initialization (the start of DINO training from scratch)",
        license="same as the data it is trained on",
    )


def _zoo_target(base: Any, dataset: Any) -> Any:
    """The zoo card whose local weights a from-scratch run on OpenCell produces (None otherwise)."""
    if base.source != "builtin:random-init" or dataset.name != "opencell" or base.arch_kwargs:
        return None
    from ocbench.backbones.cards import list_cards

    for card in list_cards():
        if (card.source_kind == "local" and card.arch == base.arch and card.in_chans == base.in_chans
                and card.source_target == card.name):
            return card
    return None


def derived_card(base: Any, adapter: Any, cfg: DinoConfig, dataset: Any, split: Any, seed: int) -> Any:
    """The card of the backbone this run produces (deterministic: computed before training)."""
    identity = run_identity(base, adapter, cfg, dataset, split, seed)
    digest = json_sha256(identity)[:10]
    scratch = base.source == "builtin:random-init"
    notes = json.dumps({
        "fine-tuned from" if not scratch else "trained from scratch as": base.name,
        "method": "DINO self-distillation (ocbench finetune)", "dataset": str(dataset.name),
        "dataset_version": listing_version(dataset), "split": {"track": split.track, "sha256": split.sha256},
        "seed": int(seed), "channels": adapter.spec, "config": cfg.training_dict(), "run_hash": digest,
    }, sort_keys=True)
    label = _dataset_label(dataset)
    target = _zoo_target(base, dataset)
    kind = "dino" if scratch else "ft"
    name = target.name if target is not None else f"{base.name}.{kind}-{_name_part(dataset.name)}-f{cfg.fraction:g}-{digest}"
    start = target if target is not None else base
    return dataclasses.replace(
        start,
        name=name,
        source=f"local:{name}",
        sha256=None,
        init_seed=None,
        default_channels=adapter.spec if adapter.strategy == "map" else "replicate",
        training_datasets=tuple(dict.fromkeys((*base.training_datasets, label))),
        supervision="self-supervised",
        pretraining=(f"{base.pretraining}; then " if base.pretraining and not scratch else "")
        + f"DINO {'fine-tuning' if not scratch else 'from scratch'} on {label} (train part of the {split.track} split, "
        f"fraction {cfg.fraction:g}, {cfg.epochs} epochs; trained by ocbench)",
        notes=notes,
    )


def run_hash(card: Any) -> str:
    """The settings hash a derived card records in its notes (``run_hash``)."""
    return json.loads(card.notes)["run_hash"]


def run_key(card: Any) -> str:
    """The name of the run's folder: the card name, with the settings hash appended when the name
    lacks it (a zoo card's name, from scratch on OpenCell, carries no settings hash)."""
    digest = run_hash(card)
    return card.name if digest in card.name else f"{card.name}-{digest}"
