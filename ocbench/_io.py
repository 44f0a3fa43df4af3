"""Atomic file writing, hashing and JSON reading: nothing half-written is left behind on error or
Ctrl-C, and a file that cannot be read is a one-line error naming it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from ocbench.errors import DataError, OcbenchError

#: Leftovers of writers that died without a process id in their name are removed after this long.
STALE_AFTER_S = 24 * 3600


def _host_tag() -> str:
    # A pid only means something on the machine that wrote it (a data folder may be shared).
    return hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def _temp_prefix(path: Path) -> str:
    """``.<name>.ocb<host>-<pid>.``: a later process can tell whether the writer is still alive."""
    return f".{path.name}.ocb{_host_tag()}-{os.getpid()}."


# Temp names: ours (host tag and pid), and the older form without them (mkstemp's 8 characters).
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.ocb(?P<host>[0-9a-f]{8})-(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp$")
_OLD_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0  # exists, owned by someone else (or not a pid we can ask about: keep it)
    return True


def _is_stale(entry: Path, name: str | None, max_age_s: float) -> bool:
    match = _TEMP_RE.match(entry.name)
    if match is None:
        match = _OLD_TEMP_RE.match(entry.name)
        if match is None or (name is not None and match["name"] != name):
            return False
        pid = host = None
    else:
        if name is not None and match["name"] != name:
            return False
        pid, host = int(match["pid"]), match["host"]
    if pid is not None and host == _host_tag():
        return pid != os.getpid() and not _pid_alive(pid)
    try:  # another machine's writer, or no pid recorded: only age tells
        return time.time() - entry.lstat().st_mtime > max_age_s
    except OSError:
        return False


def clean_stale_temps(
    folder: str | os.PathLike, name: str | None = None, *, max_age_s: float = STALE_AFTER_S
) -> list[Path]:
    """Remove leftovers of atomic writes into ``folder`` whose writer is gone; return what was removed.

    A writer killed with ``kill -9`` (or a power cut) cannot clean up after itself; its hidden
    ``.<name>.ocb<host>-<pid>.<random>.tmp`` file or folder stays. Such a leftover is stale when its
    pid is no longer running on this machine; one written on another machine, or by an older
    ocbench that recorded no pid, when it is older than ``max_age_s`` (a day). ``name`` limits the
    cleaning to temps of that target (``folder/name``). Best effort: what cannot be removed stays.
    The atomic helpers below call it for their own target; call it on a whole output folder at the
    start of a command that writes several targets there.
    """
    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if not _is_stale(entry, name, max_age_s):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except FileNotFoundError:
            pass  # another process cleaned it first
        except OSError:
            continue
        removed.append(entry)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_file_beside(path: Path) -> str:
    """A temporary file in ``path``'s folder, with the permissions a plain ``open`` would give
    (mkstemp makes it 0600, which would leave published files unreadable to others)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp")
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    return tmp


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path for writers that take a path (tifffile, safetensors, pandas)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path.parent, path.name)
    try:
        tmp = _temp_file_beside(path)
    except OSError as exc:
        raise _naming(exc, path) from None
    try:
        yield Path(tmp)
        # Writers that recreate the file (safetensors) reset its mode to 0600: set it again.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if _names_temp(exc, path):
            raise _naming(exc, path) from None
        raise


def _names_temp(exc: BaseException, path: Path) -> bool:
    """Is ``exc`` an OSError about a temp file or folder standing in for ``path`` (or inside one)?"""
    if not isinstance(exc, OSError) or not exc.filename:
        return False
    return any((m := _TEMP_RE.match(part)) is not None and m["name"] == path.name for part in Path(str(exc.filename)).parts)


def _naming(exc: OSError, path: Path) -> OSError:
    """The same error about ``path``, the file the user asked for, not the temp file behind it."""
    return type(exc)(exc.errno, f"could not write ({exc.strerror or exc})", str(path))


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it onto ``path`` only if the block succeeds."""
    with atomic_path(path) as tmp:
        kwargs = {"encoding": encoding} if "b" not in mode else {}
        with open(tmp, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path.parent, path.name)
    try:
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp"))
    except OSError as exc:
        raise _naming(exc, path) from None
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        _plain_modes(tmp)
        aside = None
        if path.exists() or path.is_symlink():
            # Move the old folder aside (one rename) rather than deleting it in place, so the
            # target is missing only between two renames; the aside folder has a temp name, so a
            # kill before it is deleted leaves something clean_stale_temps removes.
            aside = Path(tempfile.mkdtemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp"))
            os.replace(path, aside / path.name)
        try:
            os.replace(tmp, path)
        except BaseException:
            if aside is not None:  # put the old one back
                os.replace(aside / path.name, path)
                shutil.rmtree(aside, ignore_errors=True)
            raise
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if _names_temp(exc, path):
            raise _naming(exc, path) from None
        raise


def _plain_modes(folder: Path) -> None:
    """Give the files in ``folder`` the mode a plain ``open`` would (writers such as safetensors
    create 0600 files, which would leave a published folder unreadable to others); execute bits stay."""
    mask = _umask()
    for entry in folder.rglob("*"):
        if entry.is_file() and not entry.is_symlink():
            mode = entry.stat().st_mode & 0o777
            os.chmod(entry, ((0o666 | (mode & 0o111)) & ~mask))


def write_error(path: str | os.PathLike, exc: BaseException, what: str) -> OcbenchError:
    """A failed write (disk full, read-only or vanished folder, or a library's writer reporting one
    as a RuntimeError) as one line naming ``path`` and what it was; nothing half-written is left
    when the write went through :func:`atomic_path` or :func:`atomic_dir`."""
    text = str(exc).strip()
    reason = (exc.strerror if isinstance(exc, OSError) else None) or (text.splitlines()[0] if text else type(exc).__name__)
    return OcbenchError(f"{path}: could not write {what} ({reason}); free space on that disk, or use another cache "
                        "folder (ocbench --cache-dir DIR ...)")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def json_sha256(obj: Any, *, default: Callable[[Any], Any] | None = None) -> str:
    """sha256 of ``obj`` as JSON with sorted keys, so equal descriptions give equal keys whatever
    their dict order. ``default`` as in :func:`json.dumps` (``str`` to hash paths and the like);
    without it an object JSON cannot write is a TypeError, not a silently different key."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, default=default).encode("utf-8"))


def slug(text: Any) -> str:
    """``text`` as a readable, filesystem-safe file-name part (runs of other characters become
    ``-``); cache keys add a hash, since different texts may give the same slug."""
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", str(text)).strip("-") or "x"


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_json_bytes(
    path: str | os.PathLike,
    *,
    what: str,
    advice: str,
    missing: str | None = None,
    shown: str | None = None,
    error: type[OcbenchError] = DataError,
    missing_error: type[OcbenchError] | None = None,
) -> tuple[Any, bytes]:
    """The JSON value stored in ``path``, and the file's bytes. Anything that keeps it from being read
    is a one-line ``error`` that names the file (as ``shown``, default ``path``), says what it should
    have been (``what``: "entry", "split file", ...) and what to do (``advice``):

    - missing: ``<shown>: <what> not found; <missing or advice>`` (a ``missing_error`` if given);
    - unreadable: ``<shown>: cannot read the <what> (<reason>); <advice>``;
    - not UTF-8: ``<shown>: not UTF-8 text, so not a JSON <what>; <advice>``;
    - not JSON: ``<shown>: not valid JSON (line L, column C: <reason>), so not a JSON <what>; <advice>``.

    The value is returned as parsed; its shape is the caller's to check. :func:`read_json` is the
    same without the bytes.
    """
    shown = str(path) if shown is None else shown
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise (missing_error or error)(f"{shown}: {what} not found; {missing or advice}") from None
    except OSError as exc:
        raise error(f"{shown}: cannot read the {what} ({exc.strerror or _first_line(exc)}); {advice}") from None
    try:
        return json.loads(raw.decode("utf-8")), raw
    except UnicodeDecodeError:
        raise error(f"{shown}: not UTF-8 text, so not a JSON {what}; {advice}") from None
    except json.JSONDecodeError as exc:
        raise error(f"{shown}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}), so not a JSON "
                    f"{what}; {advice}") from None
    except ValueError as exc:  # e.g. a number too long to convert
        raise error(f"{shown}: not valid JSON ({_first_line(exc)}), so not a JSON {what}; {advice}") from None


def read_json(
    path: str | os.PathLike,
    *,
    what: str,
    advice: str,
    missing: str | None = None,
    shown: str | None = None,
    error: type[OcbenchError] = DataError,
    missing_error: type[OcbenchError] | None = None,
) -> Any:
    """The JSON value stored in ``path``; one-line errors as :func:`read_json_bytes` describes."""
    return read_json_bytes(path, what=what, advice=advice, missing=missing, shown=shown, error=error,
                           missing_error=missing_error)[0]


def read_json_or_none(path: str | os.PathLike, expect: type | tuple[type, ...] | None = None) -> Any:
    """The JSON value stored in ``path``, or None when there is none to use: the file is missing,
    unreadable or not JSON, or (with ``expect``) its value is not of that type. For records ocbench
    keeps for itself (markers, manifests, caches), where a damaged one is simply written again."""
    try:
        value = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (OSError, ValueError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    if expect is not None and not isinstance(value, expect):
        return None
    return value
