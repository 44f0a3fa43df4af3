import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from ocbench._io import atomic_dir, atomic_path, atomic_write, json_sha256, read_json, read_json_bytes, read_json_or_none, slug
from ocbench.errors import ConfigError, DataError


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as fh:
            fh.write("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_ctrl_c_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "f.bin") as tmp:
            tmp.write_bytes(b"x")
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "a").write_text("x")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_files_get_the_permissions_of_a_plain_open(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "a.txt") as fh:
            fh.write("x")
        with atomic_path(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"x")
        with atomic_dir(tmp_path / "c"):
            pass
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.txt") == 0o644
    assert _mode(tmp_path / "b.bin") == 0o644
    assert _mode(tmp_path / "c") == 0o755


# -- leftovers of killed writers (issue 17 item 12) ----------------------------------------------

import signal
import subprocess
import sys
import textwrap
import time

from ocbench._io import STALE_AFTER_S, clean_stale_temps

_KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from ocbench._io import atomic_dir, atomic_path
    target = Path(sys.argv[1])
    with atomic_path(target.parent / "board.csv") as f:
        f.write_bytes(b"half")
        with atomic_dir(target) as tmp:
            (tmp / "half.txt").write_text("x")
            os.kill(os.getpid(), signal.SIGKILL)
    """
)


def _kill_a_writer(target) -> list[str]:
    """Run a writer that is killed with SIGKILL inside atomic_dir/atomic_path; return the leftovers."""
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(target)], capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    return sorted(p.name for p in target.parent.iterdir())


def test_a_killed_writers_leftovers_are_removed_by_the_next_write(tmp_path):
    target = tmp_path / "out"
    leftovers = _kill_a_writer(target)
    assert len(leftovers) == 2 and all(name.endswith(".tmp") for name in leftovers), leftovers
    # The next write of each target removes the dead writer's temps (its pid is gone).
    with atomic_dir(target) as tmp:
        (tmp / "done.txt").write_text("ok")
    with atomic_write(tmp_path / "board.csv") as fh:
        fh.write("ok")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["board.csv", "out"]


def test_clean_stale_temps_removes_dead_writers_only(tmp_path):
    _kill_a_writer(tmp_path / "out")
    (tmp_path / ".notes.tmp").write_text("a user's own hidden file")  # not one of ours: kept
    with atomic_path(tmp_path / "live.bin") as live:  # this process is alive: kept
        removed = clean_stale_temps(tmp_path)
        assert live.exists()
    assert len(removed) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [".notes.tmp", "live.bin"]


def test_clean_stale_temps_limits_itself_to_one_target(tmp_path):
    _kill_a_writer(tmp_path / "out")
    removed = clean_stale_temps(tmp_path, "out")
    assert [p.name.startswith(".out.") for p in removed] == [True]
    assert len([p for p in tmp_path.iterdir() if p.name.startswith(".board.csv.")]) == 1


def test_temps_without_a_pid_are_removed_after_a_day(tmp_path):
    old, fresh = tmp_path / ".demo.k3j9x_2a.tmp", tmp_path / ".demo.q8w7e6r5.tmp"  # older ocbench's names
    old.mkdir()
    fresh.mkdir()
    day_ago = time.time() - STALE_AFTER_S - 60
    os.utime(old, (day_ago, day_ago))
    assert clean_stale_temps(tmp_path) == [old]
    assert fresh.exists()


def test_replacing_a_folder_keeps_no_aside_copy(tmp_path):
    for text in ("one", "two"):
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "f").write_text(text)
    assert (tmp_path / "d" / "f").read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


def test_json_sha256_is_the_sorted_json_digest_every_cache_key_was_made_with():
    # the expression each cache, split and dataset key used before there was one helper: keys on
    # disk stay valid only while these agree
    for obj in ({"b": 1, "a": [1, 2.5, {"z": "é", "y": None}]}, ["x", 3], "s", {}):
        reference = hashlib.sha256(json.dumps(obj, sort_keys=True).encode("utf-8")).hexdigest()
        assert json_sha256(obj) == json_sha256(obj, default=str) == reference
    assert json_sha256({"a": 1, "b": 2}) == json_sha256({"b": 2, "a": 1})
    with_path = {"root": Path("/data/x"), "n": 1}
    assert json_sha256(with_path, default=str) == hashlib.sha256(
        json.dumps(with_path, sort_keys=True, default=str).encode("utf-8")).hexdigest()
    with pytest.raises(TypeError):  # no silent str() of an object unless the caller asks for it
        json_sha256(with_path)


def test_slug_keeps_names_readable_and_filesystem_safe():
    assert slug("dino vits8/RGB+DAPI (3ch)") == "dino-vits8-RGB-DAPI-3ch"
    assert slug("vit_small.dino=v2-x") == "vit_small.dino=v2-x"
    assert slug("--é--") == slug("") == "x"
    assert slug(3.5) == "3.5"


# -- reading JSON -------------------------------------------------------------------------------


def _read_error(path, **kwargs):
    kwargs = {"what": "split file", "advice": "write it again", **kwargs}
    with pytest.raises(DataError) as excinfo:
        read_json(path, **kwargs)
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_read_json_returns_the_value_and_the_bytes(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('{"x": [1, 2]}', encoding="utf-8")
    assert read_json(path, what="thing", advice="-") == {"x": [1, 2]}
    assert read_json_bytes(path, what="thing", advice="-") == ({"x": [1, 2]}, path.read_bytes())


def test_read_json_errors_are_one_line_naming_the_file_and_what_to_do(tmp_path):
    missing = _read_error(tmp_path / "absent.json", missing="write one with `ocbench data split`")
    assert missing == f"{tmp_path / 'absent.json'}: split file not found; write one with `ocbench data split`"
    bad = tmp_path / "bad.json"
    bad.write_text('{"x": 1,\n oops}', encoding="utf-8")
    assert _read_error(bad).startswith(f"{bad}: not valid JSON (line 2, column 2: ")
    assert _read_error(bad).endswith("so not a JSON split file; write it again")
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00")
    assert _read_error(binary, shown="entries/binary.json") == (
        "entries/binary.json: not UTF-8 text, so not a JSON split file; write it again")
    folder = tmp_path / "folder.json"
    folder.mkdir()
    assert _read_error(folder).startswith(f"{folder}: cannot read the split file (")


def test_read_json_error_types(tmp_path):
    with pytest.raises(ConfigError):
        read_json(tmp_path / "absent.json", what="card", advice="-", missing_error=ConfigError)
    (tmp_path / "bad.json").write_text("{", encoding="utf-8")
    with pytest.raises(ConfigError):
        read_json(tmp_path / "bad.json", what="card", advice="-", error=ConfigError)


def test_read_json_or_none(tmp_path):
    path = tmp_path / "a.json"
    assert read_json_or_none(path) is None
    path.write_bytes(b"\xff")
    assert read_json_or_none(path) is None
    path.write_text("[1", encoding="utf-8")
    assert read_json_or_none(path) is None
    path.write_text("[1]", encoding="utf-8")
    assert read_json_or_none(path) == [1]
    assert read_json_or_none(path, dict) is None
    assert read_json_or_none(tmp_path) is None  # a folder
