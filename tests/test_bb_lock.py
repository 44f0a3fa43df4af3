"""ocbench._lock.file_lock: one holder at a time, a waiting message once, a one-line timeout."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import pytest

from ocbench._lock import LockTimeout, file_lock
from ocbench.errors import OcbenchError


def test_second_holder_waits_and_says_so_once(tmp_path, capfd):
    lock = tmp_path / "sub" / "key.lock"
    order: list[str] = []
    taken = threading.Event()

    def first():
        with file_lock(lock, what="the test key"):
            order.append("first in")
            taken.set()
            time.sleep(0.8)
            order.append("first out")

    thread = threading.Thread(target=first)
    thread.start()
    taken.wait(5)
    with file_lock(lock, what="the test key"):
        order.append("second in")
    thread.join()
    assert order == ["first in", "first out", "second in"]
    err = capfd.readouterr().err
    assert err.count("waiting for another ocbench process working on the test key") == 1
    assert str(lock) in err and lock.exists()


def test_timeout_is_one_line(tmp_path):
    lock = tmp_path / "key.lock"
    with file_lock(lock):
        started = time.monotonic()
        with pytest.raises(LockTimeout) as info:
            with file_lock(lock, timeout=0.3, what="the embeddings X"):
                pass
        assert time.monotonic() - started < 3
    message = str(info.value)
    assert isinstance(info.value, OcbenchError) and "\n" not in message
    assert message.startswith("the embeddings X: another ocbench process is still working on it") and str(lock) in message
    with file_lock(lock, timeout=0):  # free again
        pass


def test_lock_of_a_killed_process_is_free(tmp_path):
    lock = tmp_path / "key.lock"
    code = textwrap.dedent(f"""
        import os
        from ocbench._lock import file_lock
        with file_lock({str(lock)!r}):
            os._exit(0)  # dies holding the lock
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    with file_lock(lock, timeout=0):
        pass
