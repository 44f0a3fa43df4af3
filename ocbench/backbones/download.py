"""Downloading one file over HTTP(S) into ocbench's cache, verified, atomically, once.

Shared by :mod:`~ocbench.backbones.sources` (``url:`` weights) and
:mod:`~ocbench.backbones.dino_import` (``ocbench backbones import NAME`` without ``--checkpoint``),
so neither imports the other for it. ``HF_HUB_OFFLINE=1`` stops downloads here too.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from ocbench import __version__
from ocbench._io import sha256_file
from ocbench.backbones.weights_folder import default_file_mode
from ocbench.errors import ConfigError, DataError

__all__ = ["offline_mode", "download_file", "download_target", "first_line"]


def offline_mode() -> bool:
    """``HF_HUB_OFFLINE`` as set now (huggingface_hub itself reads it once, at import)."""
    from_env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    try:
        from huggingface_hub import constants

        return from_env or bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        return from_env


def first_line(exc: object) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def download_target(url: str, root: str | os.PathLike) -> Path:
    """``<root>/downloads/<hash of the address>/<file name>``: one folder per address, so two
    sources with the same file name never share a download."""
    import urllib.parse

    filename = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name or "download"
    return Path(root) / "downloads" / hashlib.sha256(url.encode("utf-8")).hexdigest()[:16] / filename


def _make_parents(folder: Path) -> list[Path]:
    """``mkdir -p folder``; returns the folders it created, deepest first (to undo on failure)."""
    created = []
    current = folder
    while not current.exists():
        created.append(current)
        current = current.parent
    folder.mkdir(parents=True, exist_ok=True)
    return created


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # deepest first; a folder another process filled meanwhile stays
        try:
            folder.rmdir()
        except OSError:
            return


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
    is left behind, not even the folders this call created.
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

    created = _make_parents(target.parent)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    os.fchmod(fd, default_file_mode())  # mkstemp makes 0600; a shared cache needs the usual mode
    part = Path(tmp_name)
    digest = hashlib.sha256()
    request = urllib.request.Request(url, headers={"User-Agent": f"ocbench/{__version__}"})
    finished = False
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
        finished = True
        return got
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        if isinstance(exc, urllib.error.HTTPError):
            reason = f"HTTP {exc.code} {exc.reason}"
        raise ConfigError(f"{url}: download failed ({first_line(reason)}); check the network, or pre-fill the cache with {hint}") from exc
    finally:
        if part.exists():
            part.unlink()
        if not finished:
            _remove_empty(created)
