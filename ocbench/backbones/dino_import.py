"""Convert a DINO / Dino4Cells training checkpoint (``.pth``) into a Hub-style safetensors folder.

A DINO checkpoint is a torch pickle: ``{"student", "teacher", "optimizer", "epoch", "args",
"dino_loss"}`` where ``args`` is an ``argparse.Namespace``. It is read with
``torch.load(weights_only=True)`` with exactly one extra class allowed, ``argparse.Namespace``; a
file that needs any other class is refused, naming the class or function it asked for
(unpickling arbitrary classes can run code).

The backbone is the ``teacher`` entry (what DINO evaluates); its keys carry the
``MultiCropWrapper`` prefix ``backbone.`` (and ``module.`` when saved from DDP), and ``head.*`` is
the DINO projection head, which is dropped. Fallback when there is no ``teacher`` entry: a bare
backbone state dict (what DINO publishes for ImageNet, e.g. ``dino_vitbase8_pretrain.pth``) is
used as it is; otherwise pass ``checkpoint_key`` (e.g. ``"student"``).

Patch size and input channels are read from ``patch_embed.proj.weight`` (never from the file
name) and must match the card; then every key and shape must match ``build_vit(card)``.

Output folder (written atomically): ``model.safetensors``, ``config.json`` (timm's Hub config
format plus an ``ocbench`` section with the provenance and the weights' sha256, which the loader
verifies) and ``README.md`` (the Hub model card). The provenance names the converted file
(``source_filename``, ``source_sha256``) and says whether its sha256 is the checksum the card
publishes (``source_verified``): a card without one accepts any checkpoint, and entries then say
"weights not matched to a published checksum". An existing folder is replaced only when it is
empty or an earlier import (nothing but those three files, ``config.json`` with an ``ocbench``
section); anything else is refused, so a mistyped ``--out`` never deletes someone's files.

The converter takes card objects and imports neither the registry nor ``sources``; the layout
comes from ``weights_folder``, downloads from ``download``. :func:`import_backbone` is
``ocbench backbones import`` (it resolves a name once); :func:`fetch_and_convert` is what
``sources`` calls for a ``url:`` checkpoint.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from ocbench import __version__
from ocbench._io import atomic_dir, read_json_or_none, sha256_file
from ocbench.backbones.card import BackboneCard
from ocbench.backbones.download import download_file, download_target
from ocbench.backbones.weights_folder import (
    CONFIG_FILENAME,
    IMPORT_FILES,
    README_FILENAME,
    WEIGHTS_FILENAME,
    default_file_mode,
    file_sha256,
    folder_for,
    local_folder,
    read_import_record,
    recorded_sha256,
)
from ocbench.errors import ConfigError, DataError

DEFAULT_CHECKPOINT_KEY = "teacher"
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".pth.tar", ".ckpt")
_STRIPPED_PREFIXES = ("module.", "backbone.")
# What torch's weights-only unpickler names when it refuses something (its wording has changed
# across releases: "Unsupported global: GLOBAL x.y", "unsupported GLOBAL x.y whose module x is
# blocked", "unrecognized function <...>", "but got <class 'x.y'>").
_REFUSALS = (
    re.compile(r"\bGLOBAL\s+([A-Za-z_][\w.]*)"),
    re.compile(r"reduce for unrecognized function\s+(<[^>]*>|[\w.]+)"),
    re.compile(r"but got <class '([\w.]+)'>"),
)


def import_dino_checkpoint(
    pth_path: str | os.PathLike,
    card: BackboneCard,
    out_dir: str | os.PathLike | None = None,
    *,
    checkpoint_key: str = DEFAULT_CHECKPOINT_KEY,
    source_url: str | None = None,
    source_sha256: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Convert ``pth_path`` for ``card``; returns the folder (default ``<cache>/weights/<card name>``).

    ``config.json`` records the converted file's sha256 and name, and whether that sha256 is the
    checksum the card publishes (``source_verified``), so a checkpoint imported under a card without
    a published checksum stays marked as such.
    """
    _require_card(card)
    pth_path = Path(pth_path).expanduser()
    if not pth_path.is_file():
        raise ConfigError(f"{pth_path}: checkpoint file not found; pass --checkpoint PATH to the downloaded .pth")
    folder = Path(out_dir).expanduser() if out_dir is not None else folder_for(card.name, cache_dir)
    check_replaceable(folder)
    source_sha256 = source_sha256 or sha256_file(pth_path)

    checkpoint = load_dino_checkpoint(pth_path)
    state, used_key = select_backbone_state(checkpoint, pth_path, checkpoint_key)
    del checkpoint  # the optimizer state can be larger than the weights
    state = strip_backbone_prefixes(state, pth_path)
    patch_size, in_chans, dim = check_against_card(state, card, pth_path)

    config = _hub_config(card, patch_size, in_chans, dim, used_key, source_url, source_sha256, pth_path.name)
    _write_folder(folder, state, config)
    return folder


def converted_source_sha(card: BackboneCard, folder: Path, url: str) -> str | None:
    """The source checksum recorded by an earlier conversion in ``folder``, if that conversion is of
    this card's checkpoint and for its architecture (a card edited since then converts again)."""
    meta = read_import_record(folder)
    if meta is None or not (folder / WEIGHTS_FILENAME).is_file():
        return None
    weights_recorded = recorded_sha256(folder / WEIGHTS_FILENAME)
    if weights_recorded is not None and file_sha256(folder / WEIGHTS_FILENAME) != weights_recorded:
        return None  # damaged since: convert again (from the verified download)
    same_model = (meta.get("arch"), meta.get("arch_kwargs"), meta.get("in_chans")) == (
        card.arch, dict(card.arch_kwargs or {}), card.in_chans)
    if not same_model:
        return None
    recorded = meta.get("source_sha256")
    expected = card.weights_source.sha256
    if expected is not None:
        return recorded if recorded == expected else None
    # Without a published checksum, trust a conversion of the same address.
    return recorded if meta.get("source_url") == url else None


def is_checkpoint_url(url: str) -> bool:
    """True when a ``url:`` source names a training checkpoint (converted), not a safetensors file."""
    return download_target(url, ".").name.lower().endswith(CHECKPOINT_SUFFIXES)


def fetch_and_convert(
    card: BackboneCard, *, cache_dir: str | os.PathLike | None = None, progress: bool = True
) -> tuple[Path, str]:
    """The card's ``url:`` checkpoint, converted into ``<cache>/weights/<card name>``: downloaded
    (verified against the card's ``sha256`` when it has one) and converted at most once.
    Returns ``(folder, sha256 of the checkpoint)``."""
    from ocbench.paths import cache_dir as default_cache_dir

    source = card.weights_source
    if source.kind != "url" or not is_checkpoint_url(source.target):
        raise ConfigError(f"backbone '{card.name}': {card.source} is not a .pth checkpoint; nothing to convert")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = folder_for(card.name, root)
    source_sha = converted_source_sha(card, folder, source.target)
    if source_sha is not None:  # converted before: no network, no re-conversion
        return folder, source_sha
    target = download_target(source.target, root)
    source_sha = download_file(source.target, target, source.sha256, progress=progress, card_name=card.name)
    import_dino_checkpoint(target, card, folder, source_url=source.target, source_sha256=source_sha)
    return folder, source_sha


def import_backbone(
    name_or_card: str | BackboneCard,
    checkpoint: str | os.PathLike | None = None,
    *,
    out_dir: str | os.PathLike | None = None,
    checkpoint_key: str = DEFAULT_CHECKPOINT_KEY,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> Path:
    """``ocbench backbones import NAME [--checkpoint PATH]``: returns the converted folder.

    Without ``checkpoint`` the card's ``url:`` checkpoint is downloaded (once) and converted. With
    it, that file is converted into ``out_dir``, by default the folder the card's weights are read
    from (:func:`default_import_folder`); when it goes to that folder (``out_dir`` not given)
    its sha256 must equal the card's published ``sha256`` (when the card has one), because the
    loader trusts that folder as the card's weights. A different checkpoint can still be converted
    with an explicit ``out_dir`` (and then used through a ``local:<out_dir>`` card). A card without
    a published checksum accepts any checkpoint, recorded as not matched to one.

    The command line's entry point: a name is resolved here, once.
    """
    if isinstance(name_or_card, BackboneCard):
        card = name_or_card
    else:
        from ocbench.backbones.cards import get_card

        card = get_card(name_or_card)
    source = card.weights_source
    if not source.needs_weights:
        raise ConfigError(
            f"backbone '{card.name}' has no weights to import (source {card.source}); to convert a checkpoint, "
            "use a card with a url: or local: source"
        )
    if checkpoint is None:
        if source.kind != "url":
            raise ConfigError(
                f"backbone '{card.name}' has source {card.source}: only url: checkpoints are imported "
                "(hf-hub/timm weights load directly); pass --checkpoint PATH to convert a local .pth"
            )
        folder, _ = fetch_and_convert(card, cache_dir=cache_dir, progress=progress)
        return folder

    checkpoint = Path(checkpoint).expanduser()
    if not checkpoint.is_file():
        raise ConfigError(f"--checkpoint {checkpoint}: file not found")
    folder = Path(out_dir).expanduser() if out_dir is not None else default_import_folder(card, cache_dir)
    have = sha256_file(checkpoint)
    published = source.sha256
    if out_dir is None and published is not None and have != published:
        raise DataError(
            f"{checkpoint}: sha256 {have} differs from the published {published} of '{card.name}'; pass the published "
            "checkpoint, or give --out DIR to convert this one elsewhere (and use it through a local: card)"
        )
    return import_dino_checkpoint(
        checkpoint,
        card,
        folder,
        checkpoint_key=checkpoint_key,
        source_url=source.target if source.kind == "url" else None,
        source_sha256=have,
        cache_dir=cache_dir,
    )


def default_import_folder(card: BackboneCard, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where ``backbones import NAME --checkpoint PATH`` writes without ``--out``: the folder the
    card's weights are read from (``<cache>/weights/<name>`` for a ``url:`` card, the ``local:``
    folder for a local card). Other sources never read a converted folder: refused."""
    source = card.weights_source
    if source.kind == "url":
        return folder_for(card.name, cache_dir)
    if source.kind == "local":
        folder = local_folder(source.target, cache_dir)
        if folder.suffix == ".safetensors":
            raise ConfigError(
                f"backbone '{card.name}': its source {card.source} is a weights file, not a folder to convert into; "
                "pass --out DIR and use the result through local:DIR"
            )
        return folder
    raise ConfigError(
        f"backbone '{card.name}' loads its weights from {card.source}, never from a converted folder; "
        "pass --out DIR and use the result through local:DIR"
    )


def _require_card(card: object) -> None:
    if not isinstance(card, BackboneCard):
        raise ConfigError(f"expected a BackboneCard, got {type(card).__name__}; resolve names with get_card(name)")


def refused_global(message: str) -> str | None:
    """The global (class or function) torch's weights-only unpickler refused, named in ``message``."""
    for pattern in _REFUSALS:
        found = pattern.search(message)
        if found:
            return found.group(1)
    return None


def load_dino_checkpoint(path: Path) -> Any:
    """``torch.load(weights_only=True)`` allowing ``argparse.Namespace`` and nothing else."""
    import argparse
    import pickle

    import torch

    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is None:  # torch < 2.5
        raise ConfigError(f"importing {path.name} needs torch >= 2.5 (safe unpickling of argparse.Namespace); upgrade torch")
    try:
        with safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = refused_global(str(exc))
        if refused:
            raise DataError(
                f"{path}: refused to unpickle {refused}; a DINO checkpoint may hold only tensors, plain "
                "containers and argparse.Namespace (nothing else is loaded, as unpickling other classes can run code)"
            ) from exc
        raise _unreadable_checkpoint(path, exc) from exc
    except Exception as exc:  # anything else from parsing untrusted bytes (struct.error, EOFError, zip errors...)
        raise _unreadable_checkpoint(path, exc) from exc


def _unreadable_checkpoint(path: Path, exc: BaseException) -> DataError:
    return DataError(f"{path}: not a readable torch checkpoint (truncated or wrong file): {_short_reason(exc)}; download it again")


def _short_reason(exc: BaseException) -> str:
    """The gist of a torch.load failure, without torch's advice (it suggests weights_only=False,
    which would run whatever code the file carries)."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1].split("Check the documentation", 1)[0]
    text = " ".join(text.split())
    text = text.split(". ", 1)[0].rstrip(".")  # first sentence; the rest is hints
    if not text or "weights_only" in text:
        return type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def select_backbone_state(checkpoint: Any, path: Path, checkpoint_key: str = DEFAULT_CHECKPOINT_KEY) -> tuple[dict, str | None]:
    """The state dict to convert and the entry it came from (None for a bare state dict)."""
    import torch

    if not isinstance(checkpoint, dict):
        raise DataError(f"{path}: expected a dict checkpoint, found {type(checkpoint).__name__}")
    if checkpoint_key in checkpoint:
        state = checkpoint[checkpoint_key]
        if not isinstance(state, dict):
            raise DataError(f"{path}: entry {checkpoint_key!r} is a {type(state).__name__}, not a state dict")
        return state, checkpoint_key
    is_bare = checkpoint and all(torch.is_tensor(v) for v in checkpoint.values()) and any(
        str(k).endswith("patch_embed.proj.weight") for k in checkpoint
    )
    if is_bare:
        return checkpoint, None
    keys = ", ".join(sorted(map(str, checkpoint))[:8])
    raise DataError(f"{path}: no {checkpoint_key!r} entry (top-level keys: {keys}); pass the entry holding the backbone (e.g. student)")


def strip_backbone_prefixes(state: dict, path: Path) -> dict:
    """Drop ``module.``/``backbone.`` prefixes and the DINO head; tensors become contiguous copies."""
    import torch

    cleaned: dict[str, Any] = {}
    for key, value in state.items():
        name = str(key)
        while name.startswith(_STRIPPED_PREFIXES):
            name = name.split(".", 1)[1]
        if name.startswith("head.") or name == "head":
            continue
        if not torch.is_tensor(value):
            raise DataError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
        if name in cleaned:
            raise DataError(f"{path}: two entries become {name!r} after removing prefixes")
        # clone: safetensors refuses tensors that share storage (and views of the optimizer state).
        cleaned[name] = value.detach().to("cpu").contiguous().clone()
    if not cleaned:
        raise DataError(f"{path}: no backbone weights left after dropping the DINO head")
    return cleaned


def check_against_card(state: dict, card: BackboneCard, path: Path) -> tuple[int, int, int]:
    """Patch size, in_chans and dim read from the weights, checked against the card and its timm model."""
    from ocbench.backbones.vit import build_vit, shape_mismatches

    proj = state.get("patch_embed.proj.weight")
    if proj is None or proj.ndim != 4 or proj.shape[-1] != proj.shape[-2]:
        raise DataError(f"{path}: no square patch_embed.proj.weight; this is not a ViT backbone checkpoint")
    dim, in_chans, patch_size = int(proj.shape[0]), int(proj.shape[1]), int(proj.shape[2])
    card_patch, card_chans = card.patch_size, card.in_chans
    found = []
    if card_patch is not None and patch_size != card_patch:
        found.append(f"patch size {patch_size} (card: {card_patch})")
    if card_chans is not None and in_chans != card_chans:
        found.append(f"{in_chans} input channels (card: {card_chans})")
    if found:
        raise DataError(
            f"{path}: weights have {' and '.join(found)}, read from patch_embed.proj.weight {tuple(proj.shape)}; "
            f"this is not a '{card.name}' checkpoint: pass the right file or fix the card"
        )

    expected = {key: tuple(value.shape) for key, value in build_vit(card).state_dict().items()}
    problems = shape_mismatches(expected, {key: tuple(value.shape) for key, value in state.items()})
    if problems:
        raise DataError(f"{path}: weights do not fit '{card.name}' (timm {card.arch} {dict(card.arch_kwargs)}): {'; '.join(problems)}")
    return patch_size, in_chans, dim


def _hub_config(card: BackboneCard, patch_size: int, in_chans: int, dim: int, used_key: str | None,
                source_url: str | None, source_sha256: str, source_filename: str) -> dict[str, Any]:
    import timm
    import torch

    model_args = {**dict(card.arch_kwargs or {}), "in_chans": in_chans}
    pretrained_cfg: dict[str, Any] = {"num_classes": 0, "first_conv": "patch_embed.proj", "classifier": "head"}
    if card.license:
        pretrained_cfg["license"] = card.license
    if card.normalization == "imagenet":
        pretrained_cfg.update(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    return {
        # timm's Hub format: timm.create_model("hf-hub:<repo>", pretrained=True) rebuilds the model.
        "architecture": card.arch,
        "num_classes": 0,
        "num_features": dim,
        "model_args": model_args,
        "pretrained_cfg": pretrained_cfg,
        "ocbench": {
            "card": card.name,
            "arch": card.arch,
            "arch_kwargs": dict(card.arch_kwargs or {}),
            "in_chans": in_chans,
            "patch_size": patch_size,
            "feature_dim": dim,
            "input_channels": list(card.input_channels),
            "normalization": card.normalization,
            "input_size": card.input_size,
            "pretraining": card.pretraining,
            "source": card.source,
            "source_url": source_url,
            "source_sha256": source_sha256,
            # The converted file's name and whether its sha256 is the one the card publishes: an
            # import under a card without a published checksum accepts any checkpoint.
            "source_filename": source_filename,
            "source_verified": card.sha256 is not None and source_sha256 == card.sha256,
            "checkpoint_key": used_key,
            "position_embedding": "dino-bicubic-scale-factor",
            "license": card.license,
            "citation": card.citation,
            "ocbench_version": __version__,
            "torch_version": torch.__version__.split("+")[0],
            "timm_version": timm.__version__,
        },
    }


def check_replaceable(folder: Path) -> None:
    """Refuse an output folder that holds anything but an earlier import (it is replaced whole)."""
    if folder.is_symlink():
        raise ConfigError(f"{folder}: is a symbolic link; give --out the real folder (or a new one)")
    if not folder.exists():
        return
    if not folder.is_dir():
        raise ConfigError(f"{folder}: exists and is not a folder; give --out a new or empty folder")
    entries = sorted(entry.name for entry in folder.iterdir())
    if not entries:
        return
    why = _not_an_import(folder, entries)
    if why:
        raise ConfigError(
            f"{folder}: folder is not empty and is not an earlier ocbench import ({why}); nothing was written: "
            "give --out a new or empty folder, or move its files away yourself"
        )


def _not_an_import(folder: Path, entries: list[str]) -> str | None:
    """Why ``folder`` is not an earlier import's output, or None when it is one (and may be replaced)."""
    others = [name for name in entries if name not in IMPORT_FILES]
    if others:
        more = f" and {len(others) - 1} more" if len(others) > 1 else ""
        return f"it holds {others[0]}{more}"
    if not (folder / WEIGHTS_FILENAME).is_file():
        return f"no {WEIGHTS_FILENAME}"
    config = read_json_or_none(folder / CONFIG_FILENAME)
    if config is None:
        return f"no readable {CONFIG_FILENAME}"
    if not isinstance(config, dict) or not isinstance(config.get("ocbench"), dict):
        return f"{CONFIG_FILENAME} has no ocbench section"
    return None


def _write_folder(folder: Path, state: dict, config: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    from ocbench.backbones.model_card import render_model_card

    with atomic_dir(folder) as tmp:
        # Fixed metadata (no timestamps): the same .pth always gives byte-identical safetensors.
        save_file(state, str(tmp / WEIGHTS_FILENAME), metadata={"format": "pt"})
        os.chmod(tmp / WEIGHTS_FILENAME, default_file_mode())  # safetensors writes 0600 files
        config["ocbench"]["weights_sha256"] = sha256_file(tmp / WEIGHTS_FILENAME)
        (tmp / CONFIG_FILENAME).write_text(json.dumps(config, indent=2, sort_keys=False) + "\n", encoding="utf-8")
        (tmp / README_FILENAME).write_text(render_model_card(config), encoding="utf-8")

