"""Conformance check over every registered backbone that runs offline (like timm's model tests)."""

from __future__ import annotations

import pytest
import torch

from ocbench.backbones.cards import BackboneCard, get_card, list_cards
from ocbench.backbones.check import check_backbone, format_check, synthetic_batch
from ocbench.backbones.loader import Backbone

CHECKS = [
    "loads",
    "embeds",
    "shape",
    "finite",
    "varies",
    "deterministic",
    "batch-invariant",
    "protein-sensitive",
    "adapters",
]


def _card_params():
    params = []
    for card in list_cards():
        reason = card.unavailable_reason()
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        params.append(pytest.param(card.name, marks=marks, id=card.name))
    return params


@pytest.mark.parametrize("name", _card_params())
def test_backbone_passes_conformance(name, tmp_path, monkeypatch):
    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path))
    report = check_backbone(name, device="cpu")
    text = format_check(report)
    assert [result.name for result in report.results] == CHECKS
    assert report.ok, text
    assert text.splitlines()[-1] == f"ok: {len(CHECKS)} passed, 0 failed, 0 not run"
    card = get_card(name)
    assert f"dim {card.feature_dim} x 1 view" in report["shape"].detail


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["classical-stats", "tiny-vit-random"])
def test_offline_backbones_pass_on_cuda(name):
    report = check_backbone(name, device="cuda")
    assert report.ok, format_check(report)


def test_small_models_check_every_map():
    report = check_backbone("tiny-vit-random")
    detail = report["adapters"].detail
    assert detail.startswith("7 adapters")  # replicate + 6 injective RGB maps (imagenet-best among them)
    assert "map-p2-n0" in detail


def test_check_catches_non_finite_features(monkeypatch):
    real_embed = Backbone.embed

    def broken(self, x):
        out = real_embed(self, x)
        out[:, 0] = float("nan")
        return out

    monkeypatch.setattr(Backbone, "embed", broken)
    report = check_backbone("classical-stats")
    assert not report.ok
    assert report["finite"].passed is False and "NaN/inf" in report["finite"].detail
    assert report["shape"].passed is True
    assert "FAIL  finite" in format_check(report)
    assert format_check(report).splitlines()[-1].startswith("FAILED:")


def test_check_catches_nondeterminism_and_batch_dependence(monkeypatch):
    real_embed = Backbone.embed

    def noisy(self, x):
        out = real_embed(self, x)
        return out + torch.randn_like(out) * out.abs().max() * 1e-2 + x.shape[0]

    monkeypatch.setattr(Backbone, "embed", noisy)
    report = check_backbone("tiny-vit-random")
    assert report["deterministic"].passed is False
    assert report["batch-invariant"].passed is False


def test_check_catches_an_adapter_that_ignores_the_protein_channel(monkeypatch):
    real_embed = Backbone.embed

    def nucleus_only(self, x):
        x = x.clone()
        x[:, 1] = 0  # tiny-vit-random's default map puts protein into G (index 1)
        return real_embed(self, x)

    monkeypatch.setattr(Backbone, "embed", nucleus_only)
    report = check_backbone("tiny-vit-random")
    assert report["protein-sensitive"].passed is False


def test_check_reports_a_backbone_that_does_not_load(tmp_path):
    card = BackboneCard(
        name="missing-local",
        source=f"local:{tmp_path / 'nothing-here'}",
        arch="vit_small_patch8_224",
        arch_kwargs={"embed_dim": 64, "depth": 2, "num_heads": 2},
        patch_size=8,
        feature_dim=64,
        in_chans=3,
        input_channels=("R", "G", "B"),
        default_channels="imagenet-best",
    )
    report = check_backbone(card)
    assert report["loads"].passed is False and "nothing-here" in report["loads"].detail
    assert all(result.passed is None for result in report.results[1:])
    assert format_check(report).splitlines()[-1] == "FAILED: 0 passed, 1 failed, 8 not run"


def test_synthetic_batch_is_deterministic_uint16():
    a, b = synthetic_batch(3, 32, seed=1), synthetic_batch(3, 32, seed=1)
    assert a.dtype.name == "uint16" and a.shape == (3, 2, 32, 32)
    assert (a == b).all() and not (a == synthetic_batch(3, 32, seed=2)).all()
