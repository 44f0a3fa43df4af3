"""``ocbench.api.embed`` and ``ocbench.api.finetune`` called directly (what the ``embed`` and
``finetune`` commands call): the embeddings and exports they return are the data's, and a
fine-tuning run through the API equals the same run through ``finetune_backbone``, bit for bit."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ocbench import api
from ocbench.data.cards import open_dataset
from ocbench.data.demo import DemoConfig, write_demo
from ocbench.errors import ConfigError

from demo_data import labelled_demo

torch.set_num_threads(1)

TINY = dict(batch_size=8, out_dim=32, head_hidden_dim=32, head_bottleneck_dim=16, global_crop_size=32,
            local_crop_size=16, local_crops=2, warmup_epochs=1, warmup_teacher_temp_epochs=1)


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    return labelled_demo(tmp_path_factory.mktemp("data") / "demo", proteins=8, fovs_per_protein=2, size=96)


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_embed_returns_every_fov_exports_them_and_hits_the_cache_the_second_time(small_demo, cache, tmp_path):
    ds = open_dataset(str(small_demo))
    first = api.embed("classical-stats", dataset=str(small_demo), device="cpu", workers=0, export=tmp_path / "fovs.npz")
    emb = first.embeddings
    assert len(emb) == len(ds) and list(emb.fov_ids) == list(ds.ids) and emb.features.shape == (len(ds), emb.dim)
    assert np.isfinite(emb.features).all() and emb.features.std(axis=0).max() > 0  # real features, not a constant
    assert not emb.meta.get("cache_hit") and first.evaluation is None
    assert first.exported is not None and first.exported.is_file()
    with np.load(first.exported, allow_pickle=False) as saved:
        assert np.array_equal(saved["features"], emb.features) and list(saved["ids"]) == list(ds.ids)
    again = api.embed("classical-stats", dataset=str(small_demo), device="cpu", workers=0)
    assert again.embeddings.meta.get("cache_hit") and again.exported is None
    assert again.embeddings.key == emb.key and np.array_equal(again.embeddings.features, emb.features)


def test_embed_cells_returns_the_evaluation_cells_it_embedded(small_demo, cache, tmp_path):
    pytest.importorskip("skimage", reason="the demo's cells are segmented with scikit-image")
    result = api.embed("classical-stats", dataset=str(small_demo), cells=True, overrides=["crop_size=48"], device="cpu",
                       workers=0, export=tmp_path / "cells.npz")
    evaluation, emb = result.evaluation, result.embeddings
    assert evaluation is not None and len(evaluation.ids) > 0
    assert list(emb.fov_ids) == list(evaluation.ids) and emb.features.shape == (len(evaluation.ids), emb.dim)
    with np.load(result.exported, allow_pickle=False) as saved:
        assert list(saved["ids"]) == list(evaluation.ids) and np.array_equal(saved["features"], emb.features)


def test_embed_refuses_cell_settings_without_cells(small_demo, cache):
    with pytest.raises(ConfigError, match="cells=True"):
        api.embed("classical-stats", dataset=str(small_demo), overrides=["crop_size=48"])


def test_finetune_through_the_api_equals_finetune_backbone_and_is_then_reused(module_cache, cache, tmp_path):
    from ocbench.backbones.adapters import parse_channels
    from ocbench.backbones.cards import get_card
    from ocbench.benchmark.splits import make_split
    from ocbench.tasks.finetune import FineTune, finetune_backbone

    root = write_demo(module_cache / "demo-small", DemoConfig(proteins=40, size=48))
    settings = [f"{k}={v}" for k, v in TINY.items()]
    kwargs = dict(dataset=str(root), epochs=2, fraction=0.25, overrides=settings, device="cpu", workers=0, threads=1)
    outcome = api.finetune("tiny-vit-random", **kwargs)
    assert outcome.trained and outcome.card.name.startswith("tiny-vit-random.dino-demo-f0.25-")
    assert len(outcome.history) == 2 and all(np.isfinite(h["loss"]) for h in outcome.history)
    assert outcome.folder.parent == cache / "weights" and (outcome.run_dir / "loss.png").is_file()

    ds = open_dataset(str(root))
    card = get_card("tiny-vit-random")
    direct = finetune_backbone(card, parse_channels(None, card, ds.card.channel_names), ds, make_split(ds, track="paper", seed=0),
                               FineTune(epochs=2, fraction=0.25, **TINY), seed=0, cache_dir=tmp_path / "direct")
    assert direct.card == outcome.card and [h["loss"] for h in direct.history] == [h["loss"] for h in outcome.history]
    a, b = load_file(outcome.folder / "model.safetensors"), load_file(direct.folder / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    again = api.finetune("tiny-vit-random", **kwargs)
    assert not again.trained and again.folder == outcome.folder and again.card == outcome.card


@pytest.mark.parametrize("sources", [{}, {"backbone": "tiny-vit-random", "from_scratch": "vit_small_patch8"}])
def test_finetune_needs_exactly_one_of_a_backbone_and_an_architecture(sources, cache):
    with pytest.raises(ConfigError, match="exactly one"):
        api.finetune(dataset="demo", **sources)
