"""Cached embedding extraction: key, shards, resume, cache hits, corruption, non-finite outputs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ocbench.backbones.adapters import ChannelAdapter  # noqa: E402
from ocbench.backbones.card import BackboneCard  # noqa: E402
from ocbench.backbones.loader import Backbone  # noqa: E402
from ocbench.benchmark import embeddings as emb  # noqa: E402
from ocbench.errors import ConfigError, DataError  # noqa: E402

FAKE_CARD = BackboneCard(
    name="fake-net", source="builtin:fake", arch="fake", feature_dim=3, in_chans=2,
    input_channels=("protein", "nucleus"), default_channels="natural", normalization="none",
)


class FakeDataset:
    """Stands in for OpenCellDataset: ids, version, read(i) -> (2,H,W) uint16."""

    def __init__(self, n: int = 10, size: int = 8, version: str = "v1", bad_index: int | None = None):
        self.ids = [f"OC-FOV_G{i:02d}_ENSG{i:011d}_CID000001_FID{i:08d}" for i in range(n)]
        self.version = version
        self.size = size
        self.bad_index = bad_index

    def __len__(self) -> int:
        return len(self.ids)

    def read(self, i: int) -> np.ndarray:
        if i == self.bad_index:
            raise DataError(f"image {self.ids[i]}.tif is not a 2-channel uint16 TIFF; re-download it")
        image = np.empty((2, self.size, self.size), dtype=np.uint16)
        image[0] = 100 * i + 1  # protein: identifies the FOV
        image[1] = 7  # nucleus
        return image


class FakeBackbone(Backbone):
    """A loaded Backbone whose embed_raw counts calls; can raise or return NaN after a number of calls."""

    preprocess_key = "scale-p99"  # shadows the card-derived property

    def __init__(self, name="fake-net", raise_after=None, nan_at_call=None, exc=KeyboardInterrupt, feature_dim=3):
        super().__init__(
            card=dataclasses.replace(FAKE_CARD, name=name, feature_dim=feature_dim), model=torch.nn.Identity(),
            device=torch.device("cpu"), weights_sha256="ab" * 32, revision=None,
        )
        self.calls = 0
        self.raise_after = raise_after
        self.nan_at_call = nan_at_call
        self.exc = exc

    def embed_raw(self, images, adapter):
        assert images.dtype == torch.uint16 and images.ndim == 4 and images.shape[1] == 2
        if self.raise_after is not None and self.calls >= self.raise_after:
            raise self.exc()
        self.calls += 1
        x = images.to(torch.float32)
        protein = x[:, 0].mean(dim=(1, 2))
        out = torch.stack([protein, x[:, 1].mean(dim=(1, 2)), protein * 2], dim=1)
        if self.nan_at_call == self.calls:
            out[0, 0] = float("nan")
        return out


ADAPTER = ChannelAdapter("map", 2, (0, None))  # protein only: key map-p0


def expected_features(n: int) -> np.ndarray:
    protein = 100 * np.arange(n, dtype=np.float32) + 1
    return np.stack([protein, np.full(n, 7, np.float32), 2 * protein], axis=1)


def run(dataset, backbone, cache, adapter=ADAPTER, **kw):
    kw = {"batch_size": 2, "shard_size": 4, "progress": False, "cache_dir": cache, "device": "cpu", **kw}
    return emb.extract_embeddings(dataset, backbone, adapter, **kw)


def key_dirs(cache: Path) -> list[Path]:
    """The key folders of an embeddings cache (not its .locks folder)."""
    return sorted(p for p in cache.iterdir() if p.is_dir() and not p.name.startswith("."))


def shard_files(key_dir: Path) -> list[str]:
    return sorted(p.name for p in key_dir.glob("shard-*.safetensors"))


# ---------------------------------------------------------------------------------------------


def test_cache_key_changes_with_every_field_and_is_readable():
    base = dict(dataset_version="d1", backbone_name="tiny-vit-random", weights_sha256="w", revision=None,
                adapter_key="replicate", preprocess_key="p")
    key = emb.cache_key(**base)
    assert key == emb.cache_key(**base)
    assert key.startswith("tiny-vit-random__replicate__") and len(key.rsplit("__", 1)[1]) == 16
    variants = [{"dataset_version": "d2"}, {"backbone_name": "other"}, {"weights_sha256": "w2"},
                {"revision": "abc"}, {"adapter_key": "map-natural"}, {"preprocess_key": "p2"},
                {"card_sha256": "c2"}, {"precision": "bf16-autocast"}]
    keys = {emb.cache_key(**{**base, **change}) for change in variants}
    assert len(keys | {key}) == len(variants) + 1


def test_embedding_cache_dir_defaults_under_ocbench_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path))
    assert emb.embedding_cache_dir() == tmp_path / "embeddings"
    assert emb.embedding_cache_dir(tmp_path / "x") == tmp_path / "x"


def test_extract_writes_shards_and_manifest_in_dataset_order(tmp_path):
    ds = FakeDataset(n=10)
    backbone = FakeBackbone()
    out = run(ds, backbone, tmp_path, batch_size=3)
    np.testing.assert_array_equal(out.features, expected_features(10))
    assert out.features.dtype == np.float32
    assert out.fov_ids == ds.ids
    key_dir = tmp_path / out.key
    # shard_size 4 over 10 FOVs -> 3 shards; batches of 3 never straddle a shard: 2+2+1... per shard
    assert shard_files(key_dir) == ["shard-00000000.safetensors", "shard-00000004.safetensors", "shard-00000008.safetensors"]
    assert backbone.calls == 2 + 2 + 1
    manifest = json.loads((key_dir / "manifest.json").read_text())
    assert [s["start"] for s in manifest["shards"]] == [0, 4, 8]
    assert manifest["fov_ids"] == ds.ids
    meta = out.meta
    assert meta["backbone"] == "fake-net" and meta["adapter"] == "map-p0"
    assert meta["weights_sha256"] == "ab" * 32 and meta["preprocess"] == "scale-p99"
    assert meta["dataset_version"] == "v1" and meta["n"] == 10 and meta["dim"] == 3
    assert meta["cache_hit"] is False and meta["device"] == "cpu" and meta["images_per_s"] > 0
    assert not list(key_dir.glob(".*tmp"))


def test_second_run_is_a_cache_hit_without_calling_the_model(tmp_path):
    ds = FakeDataset(n=6)
    first = run(ds, FakeBackbone(), tmp_path)
    never = FakeBackbone(raise_after=0, exc=AssertionError)
    second = run(ds, never, tmp_path)
    assert never.calls == 0
    assert second.meta["cache_hit"] is True and second.key == first.key
    np.testing.assert_array_equal(second.features, first.features)
    # another dataset version is another key: computed again
    third = run(FakeDataset(n=6, version="v2"), FakeBackbone(), tmp_path)
    assert third.key != first.key and third.meta["cache_hit"] is False


def test_killed_run_resumes_at_first_missing_shard(tmp_path):
    ds = FakeDataset(n=10)
    # batch 2, shard 4: two calls per shard, so 4 calls finish two shards and the fifth is interrupted
    dying = FakeBackbone(raise_after=4)
    with pytest.raises(KeyboardInterrupt):
        run(ds, dying, tmp_path)
    key_dir = key_dirs(tmp_path)[0]
    assert shard_files(key_dir) == ["shard-00000000.safetensors", "shard-00000004.safetensors"]
    assert not (key_dir / "manifest.json").exists()
    assert not [p for p in key_dir.iterdir() if p.name.endswith(".tmp")]

    resumed = FakeBackbone()
    out = run(ds, resumed, tmp_path)
    assert resumed.calls == 1  # only FOVs 8-9 (one batch) were computed
    assert out.meta["n_computed"] == 2 and out.meta["n_reused"] == 8
    np.testing.assert_array_equal(out.features, expected_features(10))


def test_resume_with_another_shard_size_reuses_old_shards(tmp_path):
    ds = FakeDataset(n=10)
    with pytest.raises(KeyboardInterrupt):
        run(ds, FakeBackbone(raise_after=2), tmp_path)  # shard [0,4) done
    resumed = FakeBackbone()
    out = run(ds, resumed, tmp_path, shard_size=3, batch_size=3)
    np.testing.assert_array_equal(out.features, expected_features(10))
    assert out.meta["n_reused"] == 4 and resumed.calls == 2  # [4,7) and [7,10)
    assert emb._plan_shards(10, {0: 4, 6: 8}, 5) == [(4, 6), (8, 10)]
    assert emb._plan_shards(5, {}, 2) == [(0, 2), (2, 4), (4, 5)]


def test_corrupt_shard_is_reported_and_recompute_repairs_it(tmp_path):
    ds = FakeDataset(n=6)
    out = run(ds, FakeBackbone(), tmp_path)
    shard = tmp_path / out.key / "shard-00000004.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # flip one feature byte: header still parses
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"shard-00000004\.safetensors is corrupt") as info:
        run(ds, FakeBackbone(), tmp_path)
    message = str(info.value)
    # true for `embed` and `run` alike: the folder to delete, or --recompute; no Python keyword
    assert "\n" not in message and f"delete the folder {tmp_path / out.key} (or pass --recompute)" in message
    assert "recompute=True" not in message
    fresh = FakeBackbone()
    repaired = run(ds, fresh, tmp_path, recompute=True)
    assert fresh.calls == 3 and repaired.meta["cache_hit"] is False
    np.testing.assert_array_equal(repaired.features, expected_features(6))


def test_unreadable_manifest_or_missing_shard_is_reported(tmp_path):
    ds = FakeDataset(n=6)
    out = run(ds, FakeBackbone(), tmp_path)
    key_dir = tmp_path / out.key
    (key_dir / "shard-00000000.safetensors").unlink()
    with pytest.raises(DataError, match=r"shard-00000000\.safetensors is corrupt \(missing\)"):
        run(ds, FakeBackbone(), tmp_path)
    (key_dir / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match=r"manifest.json is unreadable.*delete the folder .*--recompute"):
        run(ds, FakeBackbone(), tmp_path)


def test_truncated_shard_during_resume_is_reported(tmp_path):
    ds = FakeDataset(n=10)
    with pytest.raises(KeyboardInterrupt):
        run(ds, FakeBackbone(raise_after=2), tmp_path)
    shard = key_dirs(tmp_path)[0] / "shard-00000000.safetensors"
    shard.write_bytes(shard.read_bytes()[:-5])
    with pytest.raises(DataError, match="shard-00000000.safetensors is corrupt"):
        run(ds, FakeBackbone(), tmp_path)


def test_non_finite_features_name_the_backbone_and_are_not_cached(tmp_path):
    ds = FakeDataset(n=10)
    with pytest.raises(DataError, match=r"backbone fake-net produced NaN/inf .*FOV OC-FOV_G06"):
        run(ds, FakeBackbone(nan_at_call=4), tmp_path)  # call 4 = FOVs 6-7, inside shard [4,8)
    key_dir = key_dirs(tmp_path)[0]
    assert shard_files(key_dir) == ["shard-00000000.safetensors"]
    assert not (key_dir / "manifest.json").exists()


def test_workers_decode_in_parallel_and_reader_errors_stay_one_line(tmp_path):
    ds = FakeDataset(n=6)
    out = run(ds, FakeBackbone(), tmp_path, num_workers=2)
    np.testing.assert_array_equal(out.features, expected_features(6))
    with pytest.raises(DataError, match=r"^image OC-FOV_G03\S+ is not a 2-channel") as info:
        run(FakeDataset(n=6, version="bad", bad_index=3), FakeBackbone(), tmp_path, num_workers=1)
    assert "\n" not in str(info.value)


def test_bad_arguments_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="batch_size"):
        run(FakeDataset(), FakeBackbone(), tmp_path, batch_size=0)
    with pytest.raises(ConfigError, match="card says|card and adapter say"):
        run(FakeDataset(), FakeBackbone(feature_dim=5), tmp_path)
    with pytest.raises(ConfigError, match="must be a BackboneCard or a loaded Backbone"):
        emb.extract_embeddings(FakeDataset(), object(), ADAPTER, cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="for 3 input channels"):
        run(FakeDataset(), FakeBackbone(), tmp_path, adapter=ChannelAdapter("map", 3, (0, 1)))


# ---------------------------------------------------------------------------------------------
# End to end: the real OpenCell reader, demo data and offline backbones


@pytest.fixture(scope="module")
def demo_dataset(tmp_path_factory):
    from ocbench.data.demo import DemoConfig, write_demo
    from ocbench.data.opencell import OpenCellDataset

    config = DemoConfig(proteins=4, fovs_per_protein=2, size=48, cell_radius=8, unlabelled_proteins=1)
    return OpenCellDataset(write_demo(tmp_path_factory.mktemp("demo"), config))


@pytest.mark.parametrize("card_name", ["classical-stats", "tiny-vit-random"])
def test_offline_backbones_end_to_end_then_cache_hit_without_loading(demo_dataset, card_name, tmp_path, monkeypatch):
    from ocbench.backbones import loader
    from ocbench.backbones.adapters import parse_channels
    from ocbench.backbones.cards import get_card

    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path))
    card = get_card(card_name)
    first = emb.extract_embeddings(demo_dataset, card, parse_channels(None, card), batch_size=4, shard_size=4, device="auto", progress=False)
    n = len(demo_dataset)
    assert first.features.shape == (n, card.feature_dim) and np.isfinite(first.features).all()
    assert first.fov_ids == demo_dataset.fov_ids
    assert (tmp_path / "embeddings" / first.key / "manifest.json").is_file()
    assert first.key.startswith(f"{card_name}__{parse_channels(None, card).key}__")
    assert first.meta["dataset_version"] == demo_dataset.version and first.meta["device"] == "cpu"

    # Same numbers as calling the backbone directly on the images in dataset order.
    backbone = loader.load_backbone(card)
    images = torch.from_numpy(np.stack([demo_dataset.read(i) for i in range(n)]))
    direct = backbone.embed_raw(images, parse_channels(None, card)).numpy()
    np.testing.assert_allclose(first.features, direct, rtol=1e-5, atol=1e-5)
    assert first.meta["revision"] == backbone.revision and first.meta["preprocess"] == backbone.preprocess_key

    def no_model(*args, **kwargs):
        raise AssertionError("a cache hit must not load the model")

    monkeypatch.setattr(loader, "load_backbone", no_model)
    again = emb.extract_embeddings(demo_dataset, card, parse_channels(None, card), progress=False)
    assert again.meta["cache_hit"] is True and again.key == first.key
    np.testing.assert_array_equal(again.features, first.features)
    with pytest.raises(AssertionError, match="must not load"):  # another adapter is another key
        emb.extract_embeddings(demo_dataset, card, parse_channels("replicate", card), progress=False)


def test_replicate_views_decoded_in_workers_match_embed_raw(demo_dataset, tmp_path):
    from ocbench.backbones import loader

    from ocbench.backbones.cards import get_card

    backbone = loader.load_backbone(get_card("tiny-vit-random"))
    adapter = backbone.adapter("replicate")
    out = emb.extract_embeddings(demo_dataset, backbone, adapter, num_workers=1, batch_size=4, cache_dir=tmp_path, progress=False)
    assert out.features.shape == (len(demo_dataset), 2 * 64)
    assert out.meta["adapter"] == "replicate" and out.meta["num_workers"] == 1
    images = torch.from_numpy(np.stack([demo_dataset.read(i) for i in range(len(demo_dataset))]))
    np.testing.assert_allclose(out.features, backbone.embed_raw(images, adapter).numpy(), rtol=1e-5, atol=1e-5)


def test_another_architecture_under_the_same_name_is_not_a_cache_hit(tmp_path, monkeypatch):
    """A random-init card has no weights to hash: its architecture must still change the key."""
    import dataclasses

    from ocbench.backbones.adapters import parse_channels
    from ocbench.backbones.cards import get_card
    from ocbench.data.demo import DemoConfig, write_demo
    from ocbench.data.opencell import OpenCellDataset

    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path / "cache"))
    ds = OpenCellDataset(write_demo(tmp_path / "demo", DemoConfig(proteins=6, fovs_per_protein=2, size=32)))
    card = get_card("tiny-vit-random")
    first = emb.extract_embeddings(ds, card, parse_channels(None, card), progress=False)
    narrower = dataclasses.replace(card, arch_kwargs={**card.arch_kwargs, "embed_dim": 32}, feature_dim=32)
    second = emb.extract_embeddings(ds, narrower, parse_channels(None, narrower), progress=False)
    assert first.key != second.key and not second.meta["cache_hit"]
    assert second.features.shape[1] == 32


def test_mixed_fov_sizes_in_a_batch_name_the_file(tmp_path, monkeypatch):
    import tifffile

    from ocbench.backbones.adapters import parse_channels
    from ocbench.backbones.cards import get_card
    from ocbench.data.demo import DemoConfig, write_demo
    from ocbench.data.opencell import OpenCellDataset
    from ocbench.errors import DataError

    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path / "cache"))
    ds = OpenCellDataset(write_demo(tmp_path / "demo", DemoConfig(proteins=6, fovs_per_protein=2, size=32)))
    odd = ds.path(3)
    card = get_card("classical-stats")
    tifffile.imwrite(odd, np.zeros((2, 40, 40), dtype=np.uint16))
    with pytest.raises(DataError, match=odd.name) as excinfo:
        emb.extract_embeddings(ds, card, parse_channels(None, card), batch_size=8, progress=False)
    assert "--batch-size 1" in str(excinfo.value)
    assert emb.extract_embeddings(ds, card, parse_channels(None, card), batch_size=1, progress=False).features.shape[0] == len(ds)


def test_default_workers_decode_beside_a_gpu_and_leave_the_cpu_to_the_model(monkeypatch):
    monkeypatch.setattr(emb.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert emb.default_workers("cpu") == 0
    assert emb.default_workers("cuda:0") == 8  # capped
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # 4 ranks share the node's 16 cores
    assert emb.default_workers("cuda:3") == 3
    monkeypatch.setattr(emb.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert emb.default_workers("cuda") == 0


def test_workers_option_takes_auto_or_a_count():
    from click.testing import CliRunner

    from ocbench.cli import cli

    result = CliRunner().invoke(cli, ["embed", "--backbone", "classical-stats", "--dataset", "demo", "--workers", "-1"])
    assert result.exit_code == 2 and "not 'auto' or a whole number" in result.output
