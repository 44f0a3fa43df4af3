"""Where a backbone's weights come from: one safetensors file, its sha256 and its revision.

A card's ``source`` is one of

- ``hf-hub:<org>/<name>[@<revision>]``: ``model.safetensors`` through huggingface_hub, so its
  cache (``HF_HUB_CACHE``/``HF_HOME``), ``HF_HUB_OFFLINE`` and pinned revisions all apply; the
  revision recorded is the resolved commit sha (the snapshot folder the file was found in). When
  the Hub cannot be reached (a quick TCP connect to ``HF_ENDPOINT``, or to the proxy, fails within
  ``HF_HUB_ETAG_TIMEOUT`` seconds), only the cache is used, so there is no long retry loop, and
  huggingface_hub's warnings are silenced during the call (unless ``HF_HUB_VERBOSITY`` is set).
- ``timm:<model>[.<tag>]``: the Hub repo named by timm's pretrained config, then as ``hf-hub:``.
- ``url:<address>``: downloaded once into ``<cache>/downloads/<hash of the address>/`` (progress
  bar, ``.part`` file renamed only after the sha256 matched the card's ``sha256``, or, when the card
  gives none, recorded then); a DINO ``.pth`` is converted once
  to a Hub-style folder ``<cache>/weights/<card name>/`` (see :mod:`ocbench.backbones.dino_import`)
  and later calls use that folder without touching the network. The revision recorded is the
  sha256 of the downloaded file.
- ``local:<dir>``: a Hub-style folder (``model.safetensors`` + ``config.json``) on disk. A bare
  relative name (``local:opencell-dino-vits8``) is a folder under ``<cache>/weights/`` (where
  ``ocbench backbones import`` and ocbench's own training put weights); an absolute path or one
  starting with ``~`` or ``.`` is used as it is. A ``.safetensors`` file may be named directly.
  When the folder's ``config.json`` records ``ocbench.weights_sha256`` (an imported folder), the
  weights must still have that checksum (see :func:`check_recorded_sha256`).
- ``builtin:<what>`` (random init, classical baseline): no weights file; nothing to resolve.

``<cache>`` is ``cache_dir`` when given, else :func:`ocbench.paths.cache_dir`. ``HF_HUB_OFFLINE=1``
also stops ``url:`` downloads. Failures are one-line :class:`ConfigError`/:class:`DataError`
messages that say what to do.

Provenance (:class:`ResolvedWeights` ``verified``/``note``): weights match a published checksum
when a Hub file's sha256 is the one the Hub publishes for it, or a ``url:`` file's is the card's
``sha256``. A ``url:`` card without ``sha256`` (trusted on first download), a checkpoint imported
under such a card, and local weights are "weights not matched to a published checksum".

The folder layout and checksums are :mod:`~ocbench.backbones.weights_folder`, downloads
:mod:`~ocbench.backbones.download`, checkpoint conversion :mod:`~ocbench.backbones.dino_import`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ocbench import __version__
from ocbench.backbones.card import BackboneCard
from ocbench.backbones.dino_import import fetch_and_convert, is_checkpoint_url
from ocbench.backbones.download import download_file, download_target, first_line, offline_mode
from ocbench.backbones.weights_folder import (
    CONFIG_FILENAME,
    WEIGHTS_FILENAME,
    check_recorded_sha256,
    check_safetensors_header,
    file_sha256,
    folder_for,
    local_folder,
    read_import_record,
    recorded_sha256,
)
from ocbench.errors import ConfigError
from ocbench.paths import cache_dir as default_cache_dir

__all__ = [
    "ResolvedWeights",
    "resolve_weights",
    "hub_file",
    "local_folder",
    "weights_dir",
    "UNVERIFIED_NOTE",
    # the layout helpers, re-exported for callers that used them from here
    "WEIGHTS_FILENAME",
    "CONFIG_FILENAME",
    "file_sha256",
    "recorded_sha256",
    "check_recorded_sha256",
    "check_safetensors_header",
    "offline_mode",
    "download_file",
]

_COMMIT_SHA = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")

#: What an entry (and the board) says about weights no published checksum vouches for.
UNVERIFIED_NOTE = "weights not matched to a published checksum"


@dataclass(frozen=True)
class ResolvedWeights:
    """Weights of one backbone on local disk (path, sha256 and revision None for a card without weights).

    Provenance: ``verified`` is True when the weights match a checksum their publisher published
    (the Hub's sha256 of the file, or the card's ``sha256`` of a ``url:`` download), False when
    nothing published vouches for them (a ``url:`` card without ``sha256``, a checkpoint imported
    under such a card, local weights), None without weights. ``note`` says it in words when False.
    ``source_sha256``/``source_filename``: the file the weights came from (the downloaded or
    imported checkpoint before conversion), when known.
    """

    path: Path | None  # a safetensors file
    sha256: str | None  # of that safetensors file
    revision: str | None  # resolved Hub commit sha, or the sha256 of the downloaded url file
    verified: bool | None = None
    note: str | None = None
    source_sha256: str | None = None
    source_filename: str | None = None


def _provenance(verified: bool, **source) -> dict:
    return {"verified": verified, "note": None if verified else UNVERIFIED_NOTE, **source}


def resolve_weights(
    card: BackboneCard, *, cache_dir: str | os.PathLike | None = None, progress: bool = True
) -> ResolvedWeights:
    """Make the card's weights available locally (downloading/converting at most once)."""
    if not isinstance(card, BackboneCard):
        raise ConfigError(f"resolve_weights expects a BackboneCard, got {type(card).__name__}; resolve names with get_card(name)")
    source = card.weights_source
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if source.kind == "builtin":
        return ResolvedWeights(path=None, sha256=None, revision=None)
    if source.kind == "hf-hub":
        path, revision = _resolve_hf_hub(card, source.target, source.revision)
    elif source.kind == "timm":
        path, revision = _resolve_hf_hub(card, _timm_hub_id(card, source.target), None)
    elif source.kind == "url":
        path, revision = _resolve_url(card, root, progress)
    else:  # local
        path, revision = _resolve_local(card, source.target, root), None
    check_safetensors_header(path)
    sha256 = file_sha256(path)
    if source.kind in ("url", "local"):  # Hub files are checked by huggingface_hub
        check_recorded_sha256(path, sha256, card.name)
    return ResolvedWeights(path=path, sha256=sha256, revision=revision, **_weights_provenance(card, path, sha256, revision))


def _weights_provenance(card: BackboneCard, path: Path, sha256: str, revision: str | None) -> dict:
    source = card.weights_source
    if source.kind in ("hf-hub", "timm"):
        # The Hub cache stores a file as blobs/<etag>, and an LFS file's etag is the sha256 the Hub
        # publishes for it: equal means these are the published bytes.
        blob = Path(os.path.realpath(path)).name
        return _provenance(bool(_SHA256.fullmatch(blob)) and blob == sha256)
    if source.kind == "url":
        record = read_import_record(path.parent) if path.name == WEIGHTS_FILENAME else None
        if record is not None and record.get("source_sha256") == revision:  # a converted checkpoint
            filename = record.get("source_filename") or download_target(source.target, ".").name
        else:
            filename = path.name
        # revision is the sha256 of the downloaded (or imported) file; download_file and the
        # conversion check hold it to the card's sha256 when the card publishes one.
        return _provenance(source.sha256 is not None and revision == source.sha256,
                           source_sha256=revision, source_filename=filename)
    record = read_import_record(path.parent) if path.name == WEIGHTS_FILENAME else None
    return _provenance(
        False,
        source_sha256=(record or {}).get("source_sha256"),
        source_filename=(record or {}).get("source_filename"),
    )


def weights_dir(card: BackboneCard, cache_dir: str | os.PathLike | None = None) -> Path:
    """Hub-style folder where converted weights of ``card`` live: ``<cache>/weights/<card name>``."""
    return folder_for(card.name, cache_dir)


# --------------------------------------------------------------------------------------- hf-hub


def _hf_cache_dir() -> str | None:
    # Read at call time so a changed HF_HUB_CACHE is honoured after huggingface_hub was imported.
    return os.environ.get("HF_HUB_CACHE") or None


_REACHABLE: set[tuple[str, int]] = set()


def _hub_address() -> tuple[str, int, str]:
    """``(host, port, what)`` that a Hub request connects to first: the endpoint, or its proxy."""
    from huggingface_hub import constants

    endpoint = urllib.parse.urlsplit(constants.ENDPOINT)
    scheme, host = endpoint.scheme or "https", endpoint.hostname or "huggingface.co"
    port = endpoint.port or (443 if scheme == "https" else 80)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(host):
        parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if parts.hostname:
            default = {"https": 443, "socks5": 1080, "socks5h": 1080, "socks4": 1080}.get(parts.scheme, 80)
            proxy_port = parts.port or default
            return parts.hostname, proxy_port, f"proxy {parts.hostname}:{proxy_port}"
    return host, port, f"{host}:{port}"


def _hub_reachable() -> tuple[bool, str]:
    """A quick TCP connect to the Hub (or the proxy): huggingface_hub itself retries an unreachable Hub
    for about half a minute before falling back to the cache."""
    from huggingface_hub import constants

    host, port, what = _hub_address()
    if (host, port) in _REACHABLE:
        return True, what
    timeout = float(getattr(constants, "HF_HUB_ETAG_TIMEOUT", 10) or 10)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError:
        return False, what
    _REACHABLE.add((host, port))
    return True, what


@contextlib.contextmanager
def _quiet_hub_logging() -> Iterator[None]:
    """huggingface_hub logs each retry and fallback as a warning; ocbench reports failures in one line."""
    if os.environ.get("HF_HUB_VERBOSITY"):  # asked for explicitly
        yield
        return
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        logger.setLevel(level)


def _resolve_hf_hub(card: BackboneCard, repo_id: str, revision: str | None) -> tuple[Path, str | None]:
    return hub_file(f"card {card.name!r}", repo_id, revision, WEIGHTS_FILENAME)


def hub_file(label: str, repo_id: str, revision: str | None, filename: str) -> tuple[Path, str | None]:
    """``filename`` of a Hub repo through huggingface_hub's cache -> (local path, resolved commit).

    ``label`` starts every error message (e.g. ``card 'x'``). Offline, or with the Hub out of reach,
    only the cache is used; failures are one-line ConfigErrors that name the Hub and what to do.
    """
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.utils import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    revision = revision or ""
    repo_ref = f"{repo_id}@{revision}" if revision else repo_id
    where = f"{label}: hf-hub:{repo_ref}"
    offline = offline_mode()
    unreachable = None  # the address that refused us, when the quick probe failed
    try:
        pinned_and_cached = bool(_COMMIT_SHA.fullmatch(revision)) and isinstance(
            try_to_load_from_cache(repo_id, filename, cache_dir=_hf_cache_dir(), revision=revision), str
        )
        if not offline and not pinned_and_cached:  # a pinned cached file needs no network at all
            reachable, address = _hub_reachable()
            unreachable = None if reachable else address
        with _quiet_hub_logging():
            found = hf_hub_download(
                repo_id,
                filename,
                revision=revision or None,
                cache_dir=_hf_cache_dir(),
                local_files_only=offline or unreachable is not None,
                library_name="ocbench",
                library_version=__version__,
            )
    except LocalEntryNotFoundError as exc:
        why = "HF_HUB_OFFLINE is set" if offline else "the Hub" + (f" ({unreachable})" if unreachable else "") + " could not be reached"
        command = f"hf download {repo_id} {filename}" + (f" --revision {revision}" if revision else "")
        raise ConfigError(
            f"{where}: {filename} is not in the Hugging Face cache and {why}; connect once to the Hugging Face Hub, "
            "or pre-fill the cache "
            f"(`{command}` on a connected machine, then copy HF_HUB_CACHE)"
        ) from exc
    except GatedRepoError as exc:
        raise ConfigError(f"{where}: the repository is gated; accept its terms on the Hub and log in (`hf auth login`)") from exc
    except RepositoryNotFoundError as exc:
        raise ConfigError(f"{where}: repository not found (or private); check the card source or log in (`hf auth login`)") from exc
    except RevisionNotFoundError as exc:
        raise ConfigError(f"{where}: revision {revision!r} not found; fix the @revision in the card source") from exc
    except EntryNotFoundError as exc:
        if filename != WEIGHTS_FILENAME:
            raise ConfigError(f"{where}: the repository has no {filename}; is it a timm-format model repository?") from exc
        raise ConfigError(
            f"{where}: the repository has no {WEIGHTS_FILENAME}; ocbench loads weights only from safetensors "
            "(convert with `ocbench backbones import` and push with `ocbench backbones push`)"
        ) from exc
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise ConfigError(f"{where}: could not fetch {filename} ({first_line(exc)}); check the network or pre-fill the cache") from exc
    path = Path(found)
    # hf_hub_download returns <cache>/models--org--name/snapshots/<commit sha>/<file>.
    snapshot = path.parent
    resolved = snapshot.name if snapshot.parent.name == "snapshots" and _COMMIT_SHA.fullmatch(snapshot.name) else None
    return path, resolved


def _timm_hub_id(card: BackboneCard, model_name: str) -> str:
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(model_name)
    except RuntimeError as exc:  # unknown tag
        raise ConfigError(f"card {card.name!r}: timm has no pretrained weights {model_name!r} ({first_line(exc)})") from exc
    if cfg is None or not getattr(cfg, "hf_hub_id", None):
        raise ConfigError(
            f"card {card.name!r}: timm's pretrained config for {model_name!r} names no Hugging Face Hub repo; "
            "use an hf-hub: or url: source"
        )
    return cfg.hf_hub_id


# ------------------------------------------------------------------------------------------ url


def _resolve_url(card: BackboneCard, root: Path, progress: bool) -> tuple[Path, str | None]:
    source = card.weights_source
    if is_checkpoint_url(source.target):  # a training checkpoint: converted once, then read from the folder
        folder, source_sha = fetch_and_convert(card, cache_dir=root, progress=progress)
        return folder / WEIGHTS_FILENAME, source_sha
    target = download_target(source.target, root)
    return target, download_file(source.target, target, source.sha256, progress=progress, card_name=card.name)


# ---------------------------------------------------------------------------------------- local


def _resolve_local(card: BackboneCard, location: str, root: Path) -> Path:
    path = local_folder(location, root)
    if path.is_file() and path.suffix == ".safetensors":
        return path
    weights = path / WEIGHTS_FILENAME
    if path.suffix == ".safetensors" and not path.exists():
        raise ConfigError(f"card {card.name!r}: local weights file {path} does not exist; put the model's safetensors file there")
    if not path.is_dir():
        raise ConfigError(
            f"card {card.name!r}: local weights folder {path} does not exist; put {WEIGHTS_FILENAME} and {CONFIG_FILENAME} "
            f"there, or convert a DINO checkpoint into it with `ocbench backbones import {card.name} --checkpoint PATH`"
        )
    if not weights.is_file():
        raise ConfigError(f"card {card.name!r}: {path} has no {WEIGHTS_FILENAME}; a local source is a Hub-style folder")
    return weights
