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
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import struct
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ocbench import __version__
from ocbench._io import sha256_file
from ocbench.errors import ConfigError, DataError
from ocbench.paths import cache_dir as default_cache_dir

WEIGHTS_FILENAME = "model.safetensors"
CONFIG_FILENAME = "config.json"
_COMMIT_SHA = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".pth.tar", ".ckpt")


@dataclass(frozen=True)
class ResolvedWeights:
    """Weights of one backbone on local disk (all None for a card without weights)."""

    path: Path | None  # a safetensors file
    sha256: str | None  # of that safetensors file
    revision: str | None  # resolved Hub commit sha, or the sha256 of the downloaded url file


def resolve_weights(card: Any, *, cache_dir: str | os.PathLike | None = None, progress: bool = True) -> ResolvedWeights:
    """Make the card's weights available locally (downloading/converting at most once)."""
    kind, value = parse_source(card)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if kind == "none":
        return ResolvedWeights(path=None, sha256=None, revision=None)
    if kind == "hf-hub":
        path, revision = _resolve_hf_hub(card, value)
    elif kind == "timm":
        path, revision = _resolve_hf_hub(card, _timm_hub_id(card, value))
    elif kind == "url":
        path, revision = _resolve_url(card, value, root, progress)
    else:  # local
        path, revision = _resolve_local(card, value, root), None
    check_safetensors_header(path)
    sha256 = file_sha256(path)
    if kind in ("url", "local"):  # Hub files are checked by huggingface_hub
        check_recorded_sha256(path, sha256, _name(card))
    return ResolvedWeights(path=path, sha256=sha256, revision=revision)


def parse_source(card: Any) -> tuple[str, str]:
    """``(kind, value)`` with kind one of ``hf-hub``, ``timm``, ``url``, ``local``, ``none``."""
    source = getattr(card, "source", None)
    text = (source or "").strip()
    kind, sep, value = text.partition(":")
    if not text or kind == "builtin":
        return "none", value.strip()
    if sep and kind in ("hf-hub", "timm", "url", "local") and value.strip():
        return kind, value.strip()
    raise ConfigError(
        f"card {_name(card)!r}: source {source!r} is not one of hf-hub:<org>/<name>[@rev], timm:<model>, "
        "url:<address>, local:<dir>, builtin:<what>; fix the card"
    )


def weights_dir(card: Any, cache_dir: str | os.PathLike | None = None) -> Path:
    """Hub-style folder where converted weights of ``card`` live: ``<cache>/weights/<card name>``."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / "weights" / _name(card)


def expected_sha256(card: Any) -> str | None:
    """The published checksum the card gives for a ``url:`` checkpoint (lower-case hex), if any."""
    value = getattr(card, "sha256", None)
    if not value:
        return None
    value = str(value).strip().lower()
    if not _SHA256.fullmatch(value):
        raise ConfigError(f"card {_name(card)!r}: sha256 {value!r} is not 64 hex digits; fix the card")
    return value


def offline_mode() -> bool:
    """``HF_HUB_OFFLINE`` as set now (huggingface_hub itself reads it once, at import)."""
    from_env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    try:
        from huggingface_hub import constants

        return from_env or bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        return from_env


_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, remembered per (real path, size, mtime) so repeated loads hash once."""
    real = os.path.realpath(path)
    stat = os.stat(real)
    key = (real, stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_MEMO:
        _SHA_MEMO[key] = sha256_file(real)
    return _SHA_MEMO[key]


def recorded_sha256(path: str | os.PathLike) -> str | None:
    """The ``ocbench.weights_sha256`` that ``config.json`` beside a ``model.safetensors`` records, if any."""
    path = Path(path)
    if path.name != WEIGHTS_FILENAME:
        return None
    try:
        meta = json.loads((path.parent / CONFIG_FILENAME).read_text(encoding="utf-8")).get("ocbench")
    except (OSError, ValueError, AttributeError):
        return None  # no config (or not ours): nothing recorded
    value = meta.get("weights_sha256") if isinstance(meta, dict) else None
    return value.lower() if isinstance(value, str) and _SHA256.fullmatch(value.lower()) else None


def check_recorded_sha256(path: str | os.PathLike, sha256: str, card_name: str | None = None) -> None:
    """Refuse weights whose sha256 differs from the one their folder's ``config.json`` records."""
    recorded = recorded_sha256(path)
    if recorded is not None and sha256 != recorded:
        path = Path(path)
        raise DataError(
            f"{path}: sha256 {sha256[:12]}... differs from weights_sha256 {recorded[:12]}... recorded in {path.parent / CONFIG_FILENAME} "
            f"(damaged or changed after the import); re-import it with `ocbench backbones import {card_name or 'NAME'}` "
            "(same --checkpoint/--out as before)"
        )


def default_file_mode() -> int:
    """The mode a plain ``open(..., "w")`` gives a new file (0666 less the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def check_safetensors_header(path: Path) -> None:
    """Cheap integrity check (header only): a truncated or foreign file fails here, not deep in torch."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise ValueError("file shorter than the 8-byte header length")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > size - 8 or header_len > 100_000_000:
                raise ValueError(f"header length {header_len} exceeds the file size {size}")
            header = json.loads(fh.read(header_len))
        ends = [info["data_offsets"][1] for key, info in header.items() if key != "__metadata__"]
        if ends and max(ends) > size - 8 - header_len:
            raise ValueError("tensor data runs past the end of the file (truncated?)")
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: not a valid safetensors file ({reason}); delete it and fetch/import the weights again") from exc


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


def _resolve_hf_hub(card: Any, repo_ref: str) -> tuple[Path, str | None]:
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.utils import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id, _, revision = repo_ref.partition("@")
    where = f"card {_name(card)!r}: hf-hub:{repo_ref}"
    offline = offline_mode()
    unreachable = None  # the address that refused us, when the quick probe failed
    try:
        pinned_and_cached = bool(_COMMIT_SHA.fullmatch(revision)) and isinstance(
            try_to_load_from_cache(repo_id, WEIGHTS_FILENAME, cache_dir=_hf_cache_dir(), revision=revision), str
        )
        if not offline and not pinned_and_cached:  # a pinned cached file needs no network at all
            reachable, address = _hub_reachable()
            unreachable = None if reachable else address
        with _quiet_hub_logging():
            found = hf_hub_download(
                repo_id,
                WEIGHTS_FILENAME,
                revision=revision or None,
                cache_dir=_hf_cache_dir(),
                local_files_only=offline or unreachable is not None,
                library_name="ocbench",
                library_version=__version__,
            )
    except LocalEntryNotFoundError as exc:
        why = "HF_HUB_OFFLINE is set" if offline else "the Hub" + (f" ({unreachable})" if unreachable else "") + " could not be reached"
        command = f"hf download {repo_id} {WEIGHTS_FILENAME}" + (f" --revision {revision}" if revision else "")
        raise ConfigError(
            f"{where}: {WEIGHTS_FILENAME} is not in the Hugging Face cache and {why}; connect once, or pre-fill the cache "
            f"(`{command}` on a connected machine, then copy HF_HUB_CACHE)"
        ) from exc
    except GatedRepoError as exc:
        raise ConfigError(f"{where}: the repository is gated; accept its terms on the Hub and log in (`hf auth login`)") from exc
    except RepositoryNotFoundError as exc:
        raise ConfigError(f"{where}: repository not found (or private); check the card source or log in (`hf auth login`)") from exc
    except RevisionNotFoundError as exc:
        raise ConfigError(f"{where}: revision {revision!r} not found; fix the @revision in the card source") from exc
    except EntryNotFoundError as exc:
        raise ConfigError(
            f"{where}: the repository has no {WEIGHTS_FILENAME}; ocbench loads weights only from safetensors "
            "(convert with `ocbench backbones import` and push with `ocbench backbones push`)"
        ) from exc
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise ConfigError(f"{where}: could not fetch {WEIGHTS_FILENAME} ({_first_line(exc)}); check the network or pre-fill the cache") from exc
    path = Path(found)
    # hf_hub_download returns <cache>/models--org--name/snapshots/<commit sha>/<file>.
    snapshot = path.parent
    resolved = snapshot.name if snapshot.parent.name == "snapshots" and _COMMIT_SHA.fullmatch(snapshot.name) else None
    return path, resolved


def _timm_hub_id(card: Any, model_name: str) -> str:
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(model_name)
    except RuntimeError as exc:  # unknown tag
        raise ConfigError(f"card {_name(card)!r}: timm has no pretrained weights {model_name!r} ({_first_line(exc)})") from exc
    if cfg is None or not getattr(cfg, "hf_hub_id", None):
        raise ConfigError(
            f"card {_name(card)!r}: timm's pretrained config for {model_name!r} names no Hugging Face Hub repo; "
            "use an hf-hub: or url: source"
        )
    return cfg.hf_hub_id


# ------------------------------------------------------------------------------------------ url


def _resolve_url(card: Any, url: str, root: Path, progress: bool) -> tuple[Path, str | None]:
    expected = expected_sha256(card)
    url_path = urllib.parse.unquote(urllib.parse.urlsplit(url).path)
    filename = Path(url_path).name or "download"
    is_checkpoint = filename.lower().endswith(_CHECKPOINT_SUFFIXES)

    if is_checkpoint:
        folder = weights_dir(card, root)
        source_sha = _converted_source_sha(card, folder, url, expected)
        if source_sha is not None:  # converted before: no network, no re-conversion
            return folder / WEIGHTS_FILENAME, source_sha

    # One folder per address, so two sources with the same file name never share a download.
    target = root / "downloads" / hashlib.sha256(url.encode("utf-8")).hexdigest()[:16] / filename
    source_sha = download_file(url, target, expected, progress=progress, card_name=_name(card))
    if not is_checkpoint:
        return target, source_sha

    from ocbench.backbones.dino_import import import_dino_checkpoint

    folder = import_dino_checkpoint(target, card, weights_dir(card, root), source_url=url, source_sha256=source_sha)
    return folder / WEIGHTS_FILENAME, source_sha


def _converted_source_sha(card: Any, folder: Path, url: str, expected: str | None) -> str | None:
    """The source checksum recorded in an earlier conversion, if that conversion is of this checkpoint
    and for this card's architecture (a card edited since then converts again)."""
    config_path = folder / CONFIG_FILENAME
    if not (config_path.is_file() and (folder / WEIGHTS_FILENAME).is_file()):
        return None
    try:
        meta = json.loads(config_path.read_text(encoding="utf-8")).get("ocbench", {})
    except (OSError, ValueError, AttributeError):
        return None
    weights_recorded = recorded_sha256(folder / WEIGHTS_FILENAME)
    if weights_recorded is not None and file_sha256(folder / WEIGHTS_FILENAME) != weights_recorded:
        return None  # damaged since: convert again (from the verified download)
    recorded = meta.get("source_sha256")
    same_model = (meta.get("arch"), meta.get("arch_kwargs"), meta.get("in_chans")) == (
        getattr(card, "arch", None), dict(getattr(card, "arch_kwargs", {}) or {}), getattr(card, "in_chans", None))
    if not same_model:
        return None
    if expected is not None:
        return recorded if recorded == expected else None
    # Without a published checksum, trust a conversion of the same address.
    return recorded if meta.get("source_url") == url else None


def download_file(
    url: str,
    target: Path,
    expected_sha256: str | None = None,
    *,
    progress: bool = True,
    card_name: str | None = None,
    timeout: float = 60.0,
) -> str:
    """Download ``url`` to ``target`` once; returns the file's sha256.

    An existing ``target`` with the right checksum is reused. The download goes to a ``.part``
    file beside ``target`` that is renamed only after the checksum matched; on any failure nothing
    is left behind.
    """
    import urllib.error
    import urllib.request

    from tqdm.auto import tqdm

    target = Path(target)
    if target.is_file():
        have = sha256_file(target)
        if expected_sha256 is None or have == expected_sha256:
            return have
        target.unlink()  # stale or corrupted copy: fetch again
    hint = f"`ocbench backbones import {card_name} --checkpoint PATH`" if card_name else f"put the file at {target}"
    if offline_mode():
        raise ConfigError(f"{url}: not downloaded yet and HF_HUB_OFFLINE is set; unset it, or pre-fill the cache with {hint}")

    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    os.fchmod(fd, default_file_mode())  # mkstemp makes 0600; a shared cache needs the usual mode
    part = Path(tmp_name)
    digest = hashlib.sha256()
    request = urllib.request.Request(url, headers={"User-Agent": f"ocbench/{__version__}"})
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            written = 0
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=target.name,
                      disable=None if progress else True) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
            if total is not None and written != total:
                raise ConfigError(f"{url}: download stopped after {written} of {total} bytes; run the command again")
        got = digest.hexdigest()
        if expected_sha256 is not None and got != expected_sha256:
            raise DataError(
                f"{url}: downloaded file has sha256 {got} but the card expects {expected_sha256}; nothing was cached "
                "(the file changed upstream or the download was corrupted)"
            )
        os.replace(part, target)
        return got
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        if isinstance(exc, urllib.error.HTTPError):
            reason = f"HTTP {exc.code} {exc.reason}"
        raise ConfigError(f"{url}: download failed ({_first_line(reason)}); check the network, or pre-fill the cache with {hint}") from exc
    finally:
        if part.exists():
            part.unlink()


# ---------------------------------------------------------------------------------------- local


def _resolve_local(card: Any, location: str, root: Path) -> Path:
    path = Path(location).expanduser()
    if not (path.is_absolute() or location.startswith((".", "~"))):
        path = root / "weights" / location
    if path.is_file() and path.suffix == ".safetensors":
        return path
    weights = path / WEIGHTS_FILENAME
    if not path.is_dir():
        raise ConfigError(
            f"card {_name(card)!r}: local weights folder {path} does not exist; train the model with ocbench or run "
            f"`ocbench backbones import {_name(card)} --checkpoint PATH`"
        )
    if not weights.is_file():
        raise ConfigError(f"card {_name(card)!r}: {path} has no {WEIGHTS_FILENAME}; a local source is a Hub-style folder")
    return weights


# --------------------------------------------------------------------------------------- helpers


def _name(card: Any) -> str:
    return str(getattr(card, "name", card))


def _first_line(exc: object) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
