"""Several processes under torchrun (or a faked two-rank group): only rank 0 writes, an error is one line on
every rank, rank 0 fills a cache before the others read it, and two ranks give what one process gives."""

from __future__ import annotations

import os
import sys

import pytest
from click.testing import CliRunner

from ocbench.cli import cli

from demo_data import labelled_demo


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    return labelled_demo(tmp_path_factory.mktemp("data") / "demo", proteins=8, fovs_per_protein=2, size=96)


def test_only_the_main_rank_writes_the_cell_embeddings_export(small_demo, tmp_path, monkeypatch):
    pytest.importorskip("skimage", reason="the demo's cells are segmented with scikit-image")
    from ocbench.benchmark import distributed

    args = ["--cache-dir", str(tmp_path / "cache"), "embed", "--backbone", "classical-stats", "--dataset", str(small_demo),
            "--cells", "--set", "crop_size=48", "--device", "cpu", "--workers", "0"]
    monkeypatch.setattr(distributed, "is_main", lambda: False)  # what every rank but 0 sees under torchrun
    result = CliRunner().invoke(cli, [*args, "--export", str(tmp_path / "rank1.npz")])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "rank1.npz").exists()
    monkeypatch.setattr(distributed, "is_main", lambda: True)
    result = CliRunner().invoke(cli, [*args, "--export", str(tmp_path / "rank0.npz")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "rank0.npz").stat().st_size > 0


def test_under_torchrun_an_error_rank0_finds_is_one_line_on_every_rank(tmp_path):
    """A damaged cache shard, which rank 0 alone inspects: every rank says the same line, none dies
    with a traceback from a broken process group."""
    import subprocess

    pytest.importorskip("torch.distributed.run", reason="needs torch with torch.distributed")
    data = labelled_demo(tmp_path / "demo", proteins=12, fovs_per_protein=3, size=32)
    cache = tmp_path / "cache"
    embed = ["embed", "--backbone", "tiny-vit-random", "--dataset", str(data), "--workers", "0", "--device", "cpu"]
    result = CliRunner().invoke(cli, ["--cache-dir", str(cache), *embed])
    assert result.exit_code == 0, result.output
    (key_dir,) = [p for p in (cache / "embeddings").glob("tiny-vit-random__*") if p.is_dir()]
    (key_dir / "manifest.json").unlink()
    shard = sorted(key_dir.glob("shard-*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:1000])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         "-m", "ocbench", "--cache-dir", str(cache), *embed],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) >= 1 and all("is corrupt" in line and shard.name in line for line in errors), done.stderr[-3000:]
    assert "[rank1]" not in done.stderr and "Connection closed" not in done.stderr, done.stderr[-3000:]


def test_under_torchrun_an_entry_in_the_way_is_one_line_on_every_rank(small_demo, tmp_path):
    import subprocess

    pytest.importorskip("torch.distributed.run", reason="needs torch with torch.distributed")
    run = ["run", "--backbone", "classical-stats", "--dataset", str(small_demo), "--task", "fov-linear", "--device", "cpu",
           "--workers", "0", "--output", str(tmp_path / "out")]
    result = CliRunner().invoke(cli, ["--cache-dir", str(tmp_path / "cache"), *run, "--set", "epochs=2"])
    assert result.exit_code == 0, result.output
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         "-m", "ocbench", "--cache-dir", str(tmp_path / "cache"), *run, "--set", "epochs=3"],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert errors and all("other task settings" in line for line in errors), done.stderr[-3000:]
    assert "[rank1]" not in done.stderr and "Connection closed" not in done.stderr, done.stderr[-3000:]


def _fake_world(monkeypatch, rank, sent):
    """A 2-process group as seen from ``rank``: broadcast records what rank 0 sends, and hands the
    other rank what rank 0 sent (``sent``)."""
    from ocbench.benchmark import distributed

    monkeypatch.setattr(distributed, "_initialized", lambda: True)
    monkeypatch.setattr(distributed, "world", lambda: distributed.World(rank=rank, size=2))
    log = []

    def broadcast(value):
        log.append(value)
        return value if rank == 0 else sent

    monkeypatch.setattr(distributed, "broadcast", broadcast)
    return log


def test_from_main_stops_every_rank_whatever_rank_0_fails_with(monkeypatch):
    from ocbench.benchmark import distributed
    from ocbench.errors import DataError, OcbenchError

    def boom():
        raise RuntimeError("disk on fire")

    log = _fake_world(monkeypatch, 0, None)
    with pytest.raises(RuntimeError, match="disk on fire"):  # rank 0 keeps its own traceback
        distributed.from_main(boom)
    [(kind, (cls, message))] = log
    assert kind == "error" and cls is OcbenchError and "RuntimeError: disk on fire" in message

    _fake_world(monkeypatch, 1, ("error", (DataError, "cache shard is corrupt")))
    with pytest.raises(DataError, match="cache shard is corrupt"):
        distributed.from_main(boom)  # rank 1 never runs decide; it raises what rank 0 sent
    _fake_world(monkeypatch, 1, ("value", 42))
    assert distributed.from_main(boom) == 42


def test_main_first_lets_rank_0_fill_the_cache_before_the_others_read_it(monkeypatch):
    from ocbench.benchmark import distributed

    calls = []
    log = _fake_world(monkeypatch, 0, None)
    assert distributed.main_first(lambda: calls.append("rank 0 works") or "table") == "table"
    assert calls == ["rank 0 works"] and log == [("value", None)]  # the others are told only that it is done

    calls.clear()
    monkeypatch.setattr(distributed, "broadcast", lambda value: calls.append("told rank 0 is done") or ("value", None))
    monkeypatch.setattr(distributed, "world", lambda: distributed.World(rank=1, size=2))
    assert distributed.main_first(lambda: calls.append("rank 1 works") or "table") == "table"
    assert calls == ["told rank 0 is done", "rank 1 works"]


def test_cell_embeddings_under_torchrun_equal_one_process(small_demo, tmp_path):
    import subprocess

    import numpy as np

    pytest.importorskip("skimage", reason="the demo's cells are segmented with scikit-image")
    pytest.importorskip("torch.distributed.run", reason="needs torch with torch.distributed")
    embed = ["embed", "--backbone", "classical-stats", "--dataset", str(small_demo), "--cells", "--set", "crop_size=48",
             "--device", "cpu", "--workers", "0"]
    one = CliRunner().invoke(cli, ["--cache-dir", str(tmp_path / "one"), *embed, "--export", str(tmp_path / "one.npz")])
    assert one.exit_code == 0, one.output
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "ocbench",
         "--cache-dir", str(tmp_path / "ranks"), *embed, "--export", str(tmp_path / "ranks.npz")],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(tmp_path / "one.npz") as a, np.load(tmp_path / "ranks.npz") as b:
        assert list(a["ids"]) == list(b["ids"]) and np.array_equal(a["features"], b["features"])
