"""load_backbone: offline backbones, safetensors-only strict loading and its one-line errors."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ocbench.backbones.adapters import parse_channels
from ocbench.backbones.cards import BackboneCard, get_card
from ocbench.backbones.check import synthetic_batch
from ocbench.backbones import vit as vit_module
from ocbench.backbones.loader import load_backbone, resolve_device, resolve_identity
from ocbench.backbones.preprocess import model_inputs
from ocbench.backbones.vit import build_vit, vit_cls_features
from ocbench.errors import ConfigError, DataError, OcbenchError

TINY = get_card("tiny-vit-random")
CLASSICAL = get_card("classical-stats")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path / "cache"))


def _batch(n=3, size=32, seed=0) -> torch.Tensor:
    return torch.from_numpy(synthetic_batch(n, size, seed))


def _tiny_card(**overrides) -> BackboneCard:
    fields = dict(
        name="tiny-local",
        source="local:unused",
        arch=TINY.arch,
        arch_kwargs=dict(TINY.arch_kwargs),
        patch_size=8,
        feature_dim=64,
        in_chans=3,
        input_channels=("R", "G", "B"),
        default_channels="imagenet-best",
    )
    fields.update(overrides)
    return BackboneCard(**fields)


def _save_tiny_weights(path, seed=1, **arch_kwargs) -> dict:
    torch.manual_seed(seed)
    vit = build_vit(TINY, arch_kwargs=arch_kwargs or None)
    state = {k: v.contiguous() for k, v in vit.state_dict().items()}
    save_file(state, str(path))
    return state


def _one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------------------------
# Offline backbones


def test_classical_backbone_embeds_uint16_fovs():
    backbone = load_backbone(CLASSICAL)
    assert (backbone.weights_sha256, backbone.revision) == (None, "classical-v2")
    assert backbone.preprocess_key == "pp1_percentile-0.1-99.9_none_none"
    batch = _batch()
    features = backbone.embed_raw(batch, parse_channels(None, backbone.card))
    assert features.shape == (3, 92) and features.dtype == torch.float32
    replicated = backbone.embed_raw(batch, backbone.adapter("replicate"))
    assert replicated.shape == (3, 184)
    # int32 input (e.g. from a loader that widened uint16) gives the same numbers
    assert torch.equal(backbone.embed_raw(batch.to(torch.int32)), features)


def test_tiny_vit_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = load_backbone(TINY)
    assert torch.equal(torch.rand(3), expected_next)
    second = load_backbone(TINY)
    assert first.weights_sha256 is None  # no weights file: the seed and the versions identify the init
    assert first.revision == second.revision and first.revision.startswith("random-init-seed0-timm")
    batch = _batch()
    assert torch.equal(first.embed_raw(batch), second.embed_raw(batch))


def test_embed_raw_is_preprocess_then_cls_features():
    backbone = load_backbone(TINY)
    batch = _batch(2, 48)
    adapter = parse_channels("protein=R,nucleus=G", TINY)
    (view,) = model_inputs(batch, TINY, adapter)
    # independent path: the timm model inside, DINO-style CLS forward
    expected = vit_cls_features(backbone.model.vit, view, 8)
    assert torch.allclose(backbone.embed_raw(batch, adapter), expected, atol=1e-6)
    assert torch.allclose(backbone.embed(view), expected, atol=1e-6)


def test_replicate_concatenates_the_views_in_channel_order():
    backbone = load_backbone(TINY)
    batch = _batch(2)
    replicate = backbone.adapter("replicate")
    both = backbone.embed_raw(batch, replicate)
    protein_view, nucleus_view = backbone.prepare(batch, replicate)
    assert both.shape == (2, 128)
    assert torch.equal(both[:, :64], backbone.embed(protein_view))
    assert torch.equal(both[:, 64:], backbone.embed(nucleus_view))


# ------------------------------------------------------------------------------------------------
# Weights from safetensors


def test_weights_override_loads_exactly(tmp_path):
    path = tmp_path / "model.safetensors"
    state = _save_tiny_weights(path)
    backbone = load_backbone(_tiny_card(), weights=path)
    assert backbone.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    for key, value in backbone.model.vit.state_dict().items():
        assert torch.equal(value, state[key])


def test_local_source_folder(tmp_path):
    folder = tmp_path / "my-backbone"
    folder.mkdir()
    _save_tiny_weights(folder / "model.safetensors")
    backbone = load_backbone(_tiny_card(source=f"local:{folder}"))
    assert backbone.weights_path.name == "model.safetensors"
    assert backbone.weights_sha256 == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert backbone.embed_raw(_batch()).shape == (3, 64)


def test_identity_is_known_without_building_the_model(tmp_path, monkeypatch):
    folder = tmp_path / "w"
    folder.mkdir()
    _save_tiny_weights(folder / "model.safetensors")
    card = _tiny_card(source=f"local:{folder}")
    loaded = load_backbone(card)
    for name_or_card in (card, CLASSICAL, TINY):
        expected = loaded if name_or_card is card else load_backbone(name_or_card)

        def no_build(*args, **kwargs):
            raise AssertionError("resolve_identity must not build the model")

        with monkeypatch.context() as patched:
            patched.setattr(vit_module, "build_vit", no_build)
            identity = resolve_identity(name_or_card)
        assert (identity.weights_sha256, identity.revision, identity.preprocess_key) == (
            expected.weights_sha256, expected.revision, expected.preprocess_key,
        )


def test_hf_hub_source_from_a_prefilled_offline_cache(tmp_path, monkeypatch):
    commit = "0123456789abcdef0123456789abcdef01234567"
    hub = tmp_path / "hub"
    snapshot = hub / "models--ocbench-test--tiny-vit" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (hub / "models--ocbench-test--tiny-vit" / "refs").mkdir()
    (hub / "models--ocbench-test--tiny-vit" / "refs" / "main").write_text(commit)
    state = _save_tiny_weights(snapshot / "model.safetensors", seed=5)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    backbone = load_backbone(_tiny_card(name="tiny-hub", source=f"hf-hub:ocbench-test/tiny-vit@{commit}"))
    assert backbone.revision == commit
    assert torch.equal(backbone.model.vit.pos_embed, state["pos_embed"])


def test_corrupt_safetensors_is_one_line_naming_the_file(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(DataError) as info:
        load_backbone(_tiny_card(), weights=path)
    assert str(path) in _one_line_error(info)


def test_truncated_safetensors_is_one_line_naming_the_file(tmp_path):
    path = tmp_path / "model.safetensors"
    _save_tiny_weights(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(OcbenchError) as info:
        load_backbone(_tiny_card(), weights=path)
    assert str(path) in _one_line_error(info)


def test_truncated_local_source_is_caught(tmp_path):
    folder = tmp_path / "w"
    folder.mkdir()
    _save_tiny_weights(folder / "model.safetensors")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:-100])
    with pytest.raises(OcbenchError) as info:
        load_backbone(_tiny_card(source=f"local:{folder}"))
    assert "model.safetensors" in _one_line_error(info)


def _imported_folder(tmp_path, card: BackboneCard):
    """A folder made by `ocbench backbones import` (its config.json records the weights' sha256)."""
    from ocbench.backbones.dino_import import import_dino_checkpoint

    torch.manual_seed(3)
    teacher = {"backbone." + k: v.contiguous() for k, v in build_vit(card).state_dict().items()}
    pth = tmp_path / "ckpt.pth"
    torch.save({"teacher": teacher, "epoch": 1}, pth)
    return import_dino_checkpoint(pth, card, tmp_path / "imported")


def test_imported_weights_with_a_flipped_byte_are_refused(tmp_path):
    import json
    import os

    folder = _imported_folder(tmp_path, _tiny_card())
    weights = folder / "model.safetensors"
    card = _tiny_card(source=f"local:{folder}")
    intact = load_backbone(card)
    assert intact.weights_sha256 == json.loads((folder / "config.json").read_text())["ocbench"]["weights_sha256"]
    assert load_backbone(_tiny_card(), weights=weights).weights_sha256 == intact.weights_sha256

    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # in the tensor data: safetensors itself would load it without a word
    stat = weights.stat()
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    for kwargs in ({}, {"weights": weights}):
        with pytest.raises(DataError) as info:
            load_backbone(card if not kwargs else _tiny_card(), **kwargs)
        message = _one_line_error(info)
        assert str(weights) in message and "weights_sha256" in message and "re-import" in message
        with pytest.raises(DataError):
            resolve_identity(card if not kwargs else _tiny_card(), **kwargs)


def test_wrong_shape_weights_are_refused(tmp_path):
    path = tmp_path / "wide.safetensors"
    _save_tiny_weights(path, embed_dim=32)  # a different width than the card
    with pytest.raises(ConfigError) as info:
        load_backbone(_tiny_card(), weights=path)
    message = _one_line_error(info)
    assert str(path) in message and "wrong shape" in message and "cls_token (1, 1, 32) vs model (1, 1, 64)" in message


def test_wrong_channel_count_is_refused(tmp_path):
    path = tmp_path / "four.safetensors"
    torch.manual_seed(0)
    save_file(dict(build_vit(TINY, in_chans=4).state_dict()), str(path))
    with pytest.raises(ConfigError, match=r"patch_embed\.proj\.weight \(64, 4, 8, 8\) vs model \(64, 3, 8, 8\)"):
        load_backbone(_tiny_card(), weights=path)


def test_missing_and_unexpected_keys_are_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    state = _save_tiny_weights(path)
    state.pop("norm.weight")
    state["head.weight"] = torch.zeros(10, 64)
    save_file(state, str(path))
    with pytest.raises(ConfigError) as info:
        load_backbone(_tiny_card(), weights=path)
    message = _one_line_error(info)
    assert "1 missing (e.g. norm.weight)" in message and "1 unexpected (e.g. head.weight)" in message


def test_missing_weights_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_backbone(_tiny_card(), weights=tmp_path / "nope.safetensors")


# ------------------------------------------------------------------------------------------------
# Bad input


def test_names_are_resolved_at_the_edge_not_here():
    for call in (load_backbone, resolve_identity):
        with pytest.raises(ConfigError) as info:
            call("tiny-vit-random")
        assert "expects a BackboneCard" in _one_line_error(info) and "get_card" in str(info.value)
    backbone = load_backbone(TINY)
    with pytest.raises(ConfigError, match="must be a ChannelAdapter"):
        backbone.embed_raw(_batch(1), "replicate")


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("protein=7", "out of range"),
        ("protein=G,nucleus=G", "both go to input channel 1"),
        ("dna=B", "unknown dataset channel 'dna'"),
        ("natural", "needs input channels named protein and nucleus"),
    ],
)
def test_bad_channel_spec(spec, expected):
    backbone = load_backbone(TINY)
    with pytest.raises(ConfigError) as info:
        backbone.embed_raw(_batch(1), backbone.adapter(spec))
    assert expected in _one_line_error(info)


def test_bad_batch_shapes():
    backbone = load_backbone(CLASSICAL)
    with pytest.raises(DataError, match=r"\(N, 2, H, W\)"):
        backbone.embed_raw(torch.zeros(1, 3, 32, 32, dtype=torch.int32))
    with pytest.raises(DataError, match=r"expects model input \(N, 2, H, W\)"):
        backbone.embed(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ConfigError, match="for 3 input channels"):
        backbone.embed_raw(_batch(1), parse_channels(None, TINY))


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present")
def test_cuda_without_cuda_is_a_config_error():
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_features_match_cpu_in_fp32_and_within_bf16_tolerance():
    batch = _batch(2, 64)
    cpu = load_backbone(TINY, device="cpu").embed_raw(batch)
    gpu32 = load_backbone(TINY, device="cuda").embed_raw(batch).cpu()
    assert gpu32.dtype == torch.float32
    assert (gpu32 - cpu).abs().max() <= 1e-3 * cpu.abs().max()  # fp32 is the default on CUDA too
    bf16 = load_backbone(TINY, device="cuda", precision="bf16")
    assert bf16.precision == "bf16" and bf16.autocast_bf16
    gpu = bf16.embed_raw(batch).cpu()
    assert gpu.dtype == torch.float32
    assert (gpu - cpu).abs().max() <= 0.05 * cpu.abs().max()
    classical_cpu = load_backbone(CLASSICAL, device="cpu").embed_raw(batch)
    classical_gpu = load_backbone(CLASSICAL, device="cuda").embed_raw(batch).cpu()
    np.testing.assert_allclose(classical_gpu.numpy(), classical_cpu.numpy(), rtol=1e-3, atol=1e-4)


# ------------------------------------------------------------------------------------------------
# Precision and provenance


def test_precision_defaults_to_fp32_and_bf16_is_cuda_only():
    from ocbench.backbones.loader import PRECISIONS, effective_precision

    assert PRECISIONS == ("fp32", "bf16")
    backbone = load_backbone(TINY)
    assert backbone.precision == "fp32" and not backbone.autocast_bf16
    with pytest.raises(ConfigError) as info:
        load_backbone(TINY, device="cpu", precision="bf16")
    assert "precision bf16 runs on CUDA only" in _one_line_error(info)
    with pytest.raises(ConfigError, match="precision 'fp16' is not one of fp32, bf16"):
        load_backbone(TINY, precision="fp16")
    # the classical statistics always compute in float32, and say so
    assert effective_precision(CLASSICAL, "cuda", "bf16") == "fp32"
    assert effective_precision(TINY, "cuda", "bf16") == "bf16"
    assert effective_precision(TINY, "cuda") == "fp32"


def test_identity_says_whether_weights_match_a_published_checksum(tmp_path):
    from ocbench.backbones.sources import UNVERIFIED_NOTE

    assert UNVERIFIED_NOTE == "weights not matched to a published checksum"
    builtin = resolve_identity(TINY)
    assert builtin.weights_verified is None and builtin.weights_note is None
    path = tmp_path / "mine.safetensors"
    _save_tiny_weights(path)
    given = resolve_identity(_tiny_card(), weights=path)
    assert (given.weights_verified, given.weights_note, given.source_filename) == (False, UNVERIFIED_NOTE, "mine.safetensors")
    assert given.provenance() == {
        "weights_verified": False, "weights_note": UNVERIFIED_NOTE,
        "weights_source_sha256": None, "weights_source_file": "mine.safetensors",
    }
    folder = _imported_folder(tmp_path, _tiny_card())
    local = load_backbone(_tiny_card(source=f"local:{folder}")).identity
    assert local.weights_verified is False and local.source_filename == "ckpt.pth"
    assert local.source_sha256 == hashlib.sha256((tmp_path / "ckpt.pth").read_bytes()).hexdigest()
