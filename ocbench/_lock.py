"""One process at a time per cache key or entry: an advisory lock on a ``.lock`` file.

``with file_lock(path, what="embeddings tiny-vit-random__map-p1-n2__..."):`` takes an exclusive
``fcntl.flock`` on ``path`` (created if missing, never deleted: deleting a lock file while another
process waits on it would let two processes in). A second ocbench process wanting the same lock
says once on stderr that it waits, then waits; with ``timeout`` (seconds) it gives up with a
one-line :class:`~ocbench.errors.OcbenchError`. The kernel drops the lock when its holder exits,
even on kill -9, so a crashed run never blocks the next one.

Where ``fcntl`` does not exist (Windows) the lock is a no-op. Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Iterator

from ocbench.errors import OcbenchError

__all__ = ["file_lock", "LockTimeout"]

#: Seconds between attempts while another process holds the lock.
POLL_S = 0.2


class LockTimeout(OcbenchError):
    """Another ocbench process held the lock for longer than the timeout."""


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, timeout: float | None = None, what: str = "this cache entry") -> Iterator[Path]:
    """Hold an exclusive lock on ``path`` (a ``.lock`` file) for the ``with`` block; yields ``path``.

    ``timeout``: None waits as long as it takes; a number of seconds raises :class:`LockTimeout`
    after that long (0: fail at once when the lock is taken). ``what`` names the locked thing in
    the messages.
    """
    path = Path(path)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX: no advisory locks, run unguarded
        yield path
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        started = time.monotonic()
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = time.monotonic() - started
                if timeout is not None and waited >= timeout:
                    raise LockTimeout(
                        f"{what}: another ocbench process is still working on it after {waited:.0f} s (lock {path}); "
                        "wait for it to finish and run again"
                    ) from None
                if not told:
                    print(f"waiting for another ocbench process working on {what} (lock {path})", file=sys.stderr, flush=True)
                    told = True
                time.sleep(POLL_S if timeout is None else max(0.0, min(POLL_S, timeout - waited)))
        try:
            yield path
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
