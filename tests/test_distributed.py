"""Extraction and runs spread over processes with torchrun (2 CPU processes, gloo): each item is
embedded once by one rank, the merged result equals a one-process run bit for bit, a partly
computed cache resumes, and only rank 0 writes entries."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from demo_data import labelled_demo
from ocbench.benchmark import distributed

pytest.importorskip("torch.distributed.run", reason="needs torch with torch.distributed")

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import numpy as np
    from ocbench.benchmark import distributed
    from ocbench.backbones.adapters import parse_channels
    from ocbench.benchmark.embeddings import extract_embeddings
    from ocbench.benchmark.runner import RunOptions, RunSpec, run_grid
    from ocbench.backbones.cards import get_card
    from ocbench.data.cards import open_dataset

    data, cache, out = (Path(a) for a in sys.argv[1:4])
    device = distributed.setup("cpu")
    world = distributed.world()
    ds = open_dataset(str(data))
    emb = extract_embeddings(ds, get_card("tiny-vit-random"), parse_channels(None, get_card("tiny-vit-random"), ds.card), device=device, cache_dir=cache,
                             shard_size=5, batch_size=5, progress=False)
    np.save(out / f"features-rank{world.rank}.npy", emb.features)
    options = RunOptions(output_dir=out / "entries", device=device, cache_dir=cache, progress=False, threads=1)
    outcomes = run_grid([RunSpec("classical-stats", "fov-linear", None, "paper", ("epochs=20",))], ds, options)
    (out / f"rank{world.rank}.json").write_text(json.dumps({
        "world": world.size, "meta": {k: emb.meta[k] for k in ("n_computed", "n_reused", "cache_hit")},
        "wrote": [str(o.path) for o in outcomes if world.main],
    }))
    """
)


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    return labelled_demo(tmp_path_factory.mktemp("data") / "demo", proteins=12, fovs_per_protein=3, size=32)


def _torchrun(tmp_path, data, cache, out, nproc=2):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OCBENCH_CACHE": str(tmp_path / "ocbench-cache")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           str(script), str(data), str(cache), str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]


def _one_process(data, cache, out):
    from ocbench.backbones.cards import get_card
    from ocbench.backbones.adapters import parse_channels
    from ocbench.benchmark.embeddings import extract_embeddings
    from ocbench.benchmark.entry import load_entry
    from ocbench.benchmark.runner import RunOptions, RunSpec, run_grid
    from ocbench.data.cards import open_dataset

    ds = open_dataset(str(data))
    emb = extract_embeddings(ds, get_card("tiny-vit-random"), parse_channels(None, get_card("tiny-vit-random"), ds.card), device="cpu", cache_dir=cache, shard_size=5,
                             batch_size=5, progress=False)
    options = RunOptions(output_dir=out, device="cpu", cache_dir=cache, progress=False, threads=1)
    (outcome,) = run_grid([RunSpec("classical-stats", "fov-linear", None, "paper", ("epochs=20",))], ds, options)
    return emb, load_entry(outcome.path)


@pytest.mark.slow
def test_two_ranks_equal_one_process_and_rank0_alone_writes(small_demo, tmp_path):
    from ocbench.benchmark.entry import load_entry

    cache = tmp_path / "cache-2"
    reports = _torchrun(tmp_path, small_demo, cache, tmp_path / "two")
    assert [r["world"] for r in reports] == [2, 2]
    ref, ref_entry = _one_process(small_demo, tmp_path / "cache-1", tmp_path / "one")

    # Every rank holds the merged embeddings, equal to one process's bit for bit.
    for rank in (0, 1):
        np.testing.assert_array_equal(np.load(tmp_path / "two" / f"features-rank{rank}.npy"), ref.features)
    (key_dir,) = cache.glob("tiny-vit-random*")
    manifest = json.loads((key_dir / "manifest.json").read_text())
    assert manifest["meta"]["processes"] == 2 and manifest["fov_ids"] == ref.fov_ids
    spans = [(s["start"], s["stop"]) for s in manifest["shards"]]
    assert spans == [(i, min(i + 5, len(ref))) for i in range(0, len(ref), 5)]  # each item once, no padding
    assert reports[0]["meta"]["n_computed"] == len(ref)

    # One entry, written by rank 0, with the one-process scores.
    entries = list((tmp_path / "two" / "entries").glob("*.json"))
    assert len(entries) == 1 and reports[1]["wrote"] == []
    entry = load_entry(entries[0])
    assert entry.main.values == ref_entry.main.values


def test_two_ranks_resume_a_partly_computed_cache(small_demo, tmp_path):
    cache = tmp_path / "cache"
    ref, _ = _one_process(small_demo, cache, tmp_path / "one")
    (key_dir,) = cache.glob("tiny-vit-random*")
    (key_dir / "manifest.json").unlink()  # as if killed: no manifest, some shards missing
    shards = sorted(key_dir.glob("shard-*.safetensors"))
    for path in shards[1::2]:
        path.unlink()
    reports = _torchrun(tmp_path, small_demo, cache, tmp_path / "two")
    kept = sum(1 for _ in shards[0::2])
    assert reports[0]["meta"]["n_reused"] > 0 and reports[0]["meta"]["n_reused"] + reports[0]["meta"]["n_computed"] == len(ref)
    assert kept * 5 >= reports[0]["meta"]["n_reused"]
    np.testing.assert_array_equal(np.load(tmp_path / "two" / "features-rank1.npy"), ref.features)


def test_without_torchrun_everything_is_one_process():
    world = distributed.world()
    assert (world.rank, world.size, world.main, world.active) == (0, 1, True, False)
    assert distributed.broadcast({"a": 1}) == {"a": 1}
    assert distributed.rank_share([1, 2, 3]) == [1, 2, 3]
    assert distributed.setup("cpu") == "cpu"  # WORLD_SIZE unset: nothing to join


def test_new_shards_give_every_rank_a_similar_share():
    from ocbench.benchmark.embedding_cache import _plan_shards
    from ocbench.benchmark.embeddings import SHARDS_PER_RANK, rank_shard_size

    assert rank_shard_size(256, 417, 1) == 256 and rank_shard_size(5, 36, 2) == 5
    for n, ranks in [(417, 2), (850, 2), (1700, 2), (1700, 8), (3, 2)]:
        size = rank_shard_size(256, n, ranks)
        todo = _plan_shards(n, {}, size)
        shares = [sum(stop - start for start, stop in todo[rank::ranks]) for rank in range(ranks)]
        assert sum(shares) == n and max(shares) - min(shares) <= size
        assert len(todo) >= min(n, ranks * SHARDS_PER_RANK)
    # 417 items in shards of 256 on two ranks would give the first 256 and the second 161
    assert max(sum(b - a for a, b in _plan_shards(417, {}, rank_shard_size(256, 417, 2))[r::2]) for r in range(2)) <= 0.52 * 417
