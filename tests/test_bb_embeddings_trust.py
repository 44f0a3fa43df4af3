"""Embedding cache trust: changed image files, concurrent extractions, full disks, precision, channels."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import threading
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ocbench.backbones.adapters import ChannelAdapter, parse_channels  # noqa: E402
from ocbench.backbones.card import BackboneCard  # noqa: E402
from ocbench.backbones.loader import Backbone  # noqa: E402
from ocbench.benchmark import embeddings as emb  # noqa: E402
from ocbench.errors import ConfigError, OcbenchError  # noqa: E402

CARD = BackboneCard(
    name="fake-file-net", source="builtin:fake", arch="fake", feature_dim=2, in_chans=3,
    input_channels=("R", "G", "B"), default_channels="replicate", normalization="none",
)


class FileDataset:
    """Items stored one raw uint16 file each: ``path(i)`` and ``read(i)`` like OpenCellDataset."""

    def __init__(self, root: Path, n: int = 10, size: int = 8, channels: tuple[str, ...] = ("protein", "nucleus")):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.ids = [f"item{i:03d}" for i in range(n)]
        self.version = "v1"
        self.size = size
        self.card = SimpleNamespace(channel_names=channels)
        for i in range(n):
            self.write(i, 100 * i + 1)

    def __len__(self) -> int:
        return len(self.ids)

    def path(self, i: int) -> Path:
        return self.root / f"{self.ids[i]}.raw"

    def write(self, i: int, value: int, keep_times: bool = False) -> None:
        path = self.path(i)
        stat = path.stat() if keep_times and path.exists() else None
        image = np.full((len(self.card.channel_names), self.size, self.size), 7, dtype=np.uint16)
        image[0] = value
        image.tofile(path)
        if stat is not None:  # same size and mtime: only the ctime tells
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    def read(self, i: int) -> np.ndarray:
        data = np.fromfile(self.path(i), dtype=np.uint16)
        return data.reshape(len(self.card.channel_names), self.size, self.size)


class CountingBackbone(Backbone):
    """Features: (mean of channel 0, mean of the last channel); counts calls; can be slowed down."""

    def __init__(self, delay: float = 0.0, raise_after: int | None = None):
        super().__init__(card=CARD, model=torch.nn.Identity(), device=torch.device("cpu"), weights_sha256=None, revision="v")
        self.calls = 0
        self.delay = delay
        self.raise_after = raise_after

    def embed_raw(self, images, adapter):
        if self.raise_after is not None and self.calls >= self.raise_after:
            raise KeyboardInterrupt
        self.calls += 1
        time.sleep(self.delay)
        x = images.to(torch.float32)
        features = torch.stack([x[:, 0].mean(dim=(1, 2)), x[:, -1].mean(dim=(1, 2))], dim=1)
        return features.repeat(1, adapter.n_views)  # one block per view, like replicate


ADAPTER = ChannelAdapter("map", 3, (0, 1))


def run(dataset, cache, backbone=None, adapter=ADAPTER, **kw):
    kw = {"batch_size": 2, "shard_size": 4, "progress": False, "cache_dir": cache, "device": "cpu", **kw}
    return emb.extract_embeddings(dataset, backbone or CountingBackbone(), adapter, **kw)


def caught(call):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        result = call()
    return result, [str(w.message) for w in seen]


# ---------------------------------------------------------------------------------------------
# Changed image files (issue 17 item 1)


def test_changed_image_content_is_computed_again_not_a_cache_hit(tmp_path):
    ds = FileDataset(tmp_path / "data")
    first = run(ds, tmp_path / "cache")
    assert first.meta["content_checked"] is True and first.meta["n_changed_files"] == 0
    assert run(ds, tmp_path / "cache").meta["cache_hit"] is True

    ds.write(5, 9999, keep_times=True)  # same name, size and mtime; other pixels
    backbone = CountingBackbone()
    again, messages = caught(lambda: run(ds, tmp_path / "cache", backbone))
    assert again.meta["cache_hit"] is False
    assert again.meta["n_changed_files"] == 1 and again.meta["changed_files"] == ["item005.raw"]
    assert again.meta["n_computed"] == 4 and again.meta["n_reused"] == 6 and backbone.calls == 2  # shard [4, 8)
    assert again.features[5, 0] == 9999 and again.features[4, 0] == 401
    assert len(messages) == 1 and "1 image file(s) changed" in messages[0] and "item005.raw" in messages[0]
    hit, messages = caught(lambda: run(ds, tmp_path / "cache"))
    assert hit.meta["cache_hit"] is True and messages == []
    np.testing.assert_array_equal(hit.features, again.features)


def test_many_changed_files_are_named_first_few_and_counted(tmp_path):
    ds = FileDataset(tmp_path / "data", n=12)
    run(ds, tmp_path / "cache")
    for i in range(12):
        ds.write(i, 0)  # every file overwritten with other pixels
    again, messages = caught(lambda: run(ds, tmp_path / "cache"))
    assert again.meta["n_changed_files"] == 12 and again.meta["n_computed"] == 12
    assert again.meta["changed_files"] == [f"item{i:03d}.raw" for i in range(5)]
    assert "12 image file(s) changed" in messages[0] and "and 7 more" in messages[0]
    assert not again.features[:, 0].any()


def test_touched_file_with_the_same_content_is_still_a_hit(tmp_path):
    ds = FileDataset(tmp_path / "data")
    run(ds, tmp_path / "cache")
    stat = ds.path(3).stat()
    os.utime(ds.path(3), ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    hit, messages = caught(lambda: run(ds, tmp_path / "cache", CountingBackbone(raise_after=0)))
    assert hit.meta["cache_hit"] is True and messages == []
    key_dir = tmp_path / "cache" / hit.key
    record = json.loads((key_dir / "manifest.json").read_text())["files"][3]
    assert record[1] == stat.st_mtime_ns + 5_000_000_000  # new times recorded: not hashed again next time


def test_file_changed_before_a_resume_is_computed_again(tmp_path):
    ds = FileDataset(tmp_path / "data")
    with pytest.raises(KeyboardInterrupt):
        run(ds, tmp_path / "cache", CountingBackbone(raise_after=3))  # shard [0, 4) written
    ds.write(1, 4242)
    resumed = CountingBackbone()
    out, messages = caught(lambda: run(ds, tmp_path / "cache", resumed))
    assert out.features[1, 0] == 4242 and resumed.calls == 5  # shard [0, 4) computed again
    assert out.meta["n_changed_files"] == 1 and "item001.raw" in messages[0]


def test_cache_without_file_records_is_extracted_again_once(tmp_path):
    ds = FileDataset(tmp_path / "data")
    first = run(ds, tmp_path / "cache")
    manifest_path = tmp_path / "cache" / first.key / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["files"]  # what an older ocbench wrote
    manifest_path.write_text(json.dumps(manifest))
    backbone = CountingBackbone()
    again, messages = caught(lambda: run(ds, tmp_path / "cache", backbone))
    assert again.meta["cache_hit"] is False and backbone.calls == 5
    assert "without image-file checksums" in messages[0]
    assert run(ds, tmp_path / "cache").meta["cache_hit"] is True


def test_demo_tiff_overwritten_with_zeros_is_not_a_cache_hit(tmp_path, monkeypatch):
    """The reported case: overwrite every TIFF of a dataset with zeros (same names), run again."""
    import tifffile

    from ocbench.backbones.cards import get_card
    from ocbench.data.demo import DemoConfig, write_demo
    from ocbench.data.opencell import OpenCellDataset

    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path / "cache"))
    ds = OpenCellDataset(write_demo(tmp_path / "demo", DemoConfig(proteins=4, fovs_per_protein=2, size=32)))
    card = get_card("classical-stats")
    first = emb.extract_embeddings(ds, card, parse_channels(None, card), progress=False)
    for i in range(len(ds)):
        tifffile.imwrite(ds.path(i), np.zeros((2, 32, 32), dtype=np.uint16))
    again, messages = caught(lambda: emb.extract_embeddings(ds, card, parse_channels(None, card), progress=False))
    assert again.key == first.key and again.meta["cache_hit"] is False
    assert again.meta["n_changed_files"] == len(ds) and "changed since their embeddings were cached" in messages[0]
    assert not np.allclose(again.features, first.features)


def test_dataset_without_files_is_not_content_checked(tmp_path):
    class InMemory:
        ids = [f"m{i}" for i in range(4)]
        version = "mem"

        def __len__(self):
            return 4

        def read(self, i):
            return np.full((2, 8, 8), i + 1, dtype=np.uint16)

    out = run(InMemory(), tmp_path / "cache")
    assert out.meta["content_checked"] is False
    assert run(InMemory(), tmp_path / "cache").meta["cache_hit"] is True


# ---------------------------------------------------------------------------------------------
# Concurrent extractions of one key (issue 17 item 2)


def test_two_extractions_of_one_key_at_once_compute_it_once(tmp_path, capfd):
    ds = FileDataset(tmp_path / "data")
    backbones = [CountingBackbone(delay=0.2), CountingBackbone(delay=0.2)]
    results: dict[int, object] = {}

    def work(k: int):
        results[k] = run(ds, tmp_path / "cache", backbones[k])

    threads = [threading.Thread(target=work, args=(k,)) for k in (0, 1)]
    threads[0].start()
    time.sleep(0.3)
    threads[1].start()
    for thread in threads:
        thread.join(60)
    assert sorted(b.calls for b in backbones) == [0, 5]  # one computed, the other waited and read it
    hits = sorted(results[k].meta["cache_hit"] for k in (0, 1))
    assert hits == [False, True]
    np.testing.assert_array_equal(results[0].features, results[1].features)
    assert "waiting for another ocbench process" in capfd.readouterr().err


def test_lock_timeout_is_a_one_line_error(tmp_path):
    from ocbench._lock import file_lock

    ds = FileDataset(tmp_path / "data")
    key = run(ds, tmp_path / "cache").key
    with file_lock(tmp_path / "cache" / ".locks" / f"{key}.lock"):
        with pytest.raises(OcbenchError) as info:
            run(ds, tmp_path / "cache", lock_timeout=0.2)
    assert "\n" not in str(info.value) and key in str(info.value)


# ---------------------------------------------------------------------------------------------
# A full disk while writing (issue 17 item 8)


@pytest.mark.parametrize("kind", ["oserror", "safetensors"])
def test_full_disk_while_writing_a_shard_is_one_line_naming_it(tmp_path, monkeypatch, kind):
    import safetensors.numpy
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        if kind == "oserror":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')

    monkeypatch.setattr(safetensors.numpy, "save_file", full)
    ds = FileDataset(tmp_path / "data")
    with pytest.raises(OcbenchError) as info:
        run(ds, tmp_path / "cache")
    message = str(info.value)
    assert "\n" not in message and "shard-00000000.safetensors" in message and "could not write" in message
    assert "No space left on device" in message and "--cache-dir" in message
    key_dir = next(p for p in (tmp_path / "cache").iterdir() if not p.name.startswith("."))
    assert not [p for p in key_dir.iterdir() if p.name.endswith(".tmp")]


def test_full_disk_through_the_command_line_exits_2_in_one_line(tmp_path, monkeypatch):
    import safetensors.numpy
    from click.testing import CliRunner
    from safetensors import SafetensorError

    from ocbench.cli import cli
    from ocbench.data.demo import DemoConfig, write_demo

    root = write_demo(tmp_path / "demo", DemoConfig(proteins=4, fovs_per_protein=2, size=32))
    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path / "cache"))

    def full(*args, **kwargs):  # what safetensors raises on a full disk (not an OSError)
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')

    monkeypatch.setattr(safetensors.numpy, "save_file", full)
    result = CliRunner().invoke(cli, ["embed", "--backbone", "classical-stats", "--dataset", str(root)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "shard-00000000.safetensors" in lines[0]
    assert "Traceback" not in result.output


# ---------------------------------------------------------------------------------------------
# Precision (issue 17 item 5) and the dataset's channels (issue 12 item 3)


def test_precision_is_in_the_meta_and_bf16_needs_cuda(tmp_path):
    from ocbench.backbones.cards import get_card

    ds = FileDataset(tmp_path / "data")
    out = run(ds, tmp_path / "cache")
    assert out.meta["precision"] == "fp32"
    card = get_card("tiny-vit-random")
    with pytest.raises(ConfigError) as info:
        emb.extract_embeddings(ds, card, parse_channels(None, card), device="cpu", precision="bf16", cache_dir=tmp_path)
    assert "precision bf16 runs on CUDA only" in str(info.value) and "\n" not in str(info.value)
    if torch.cuda.is_available():  # a model loaded in fp32 is not silently run in bf16
        from ocbench.backbones.loader import load_backbone

        loaded = load_backbone(card, device="cuda")
        with pytest.raises(ConfigError, match="loaded with precision fp32"):
            emb.extract_embeddings(ds, loaded, parse_channels(None, card), precision="bf16", cache_dir=tmp_path)
    keys = {emb.cache_key(dataset_version="d", backbone_name="b", weights_sha256=None, revision=None, adapter_key="a",
                          preprocess_key="p", precision=p) for p in ("fp32", "bf16-autocast")}
    assert len(keys) == 2


def test_adapter_must_match_the_datasets_channels(tmp_path):
    three = FileDataset(tmp_path / "data3", channels=("protein", "nucleus", "membrane"))
    with pytest.raises(ConfigError) as info:
        run(three, tmp_path / "cache")  # an adapter for OpenCell's two channels
    assert "protein, nucleus, membrane" in str(info.value) and "\n" not in str(info.value)
    adapter = parse_channels("protein=R,nucleus=G,membrane=B", CARD, three.card.channel_names)
    out = run(three, tmp_path / "cache", adapter=adapter)
    assert out.meta["adapter"] == "map-p0-n1-m2" and out.features[2, 0] == 201
    replicate = run(three, tmp_path / "cache", adapter=parse_channels("replicate", CARD, three.card.channel_names))
    assert replicate.features.shape == (10, 6)
    # a spec string is parsed at the edge (`ocbench embed --channels`), never by the cache
    with pytest.raises(ConfigError, match="must be a ChannelAdapter"):
        run(three, tmp_path / "cache", adapter="membrane=0")
    assert dataclasses.replace(adapter).channels == ("protein", "nucleus", "membrane")
