"""SubCell: checkpoint conversion (safe load), the encoder's numerics against independent
implementations on tiny random weights, the cards, and `backbones check` offline."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

from cli_assertions import one_line_message
from ocbench.backbones.adapters import parse_channels
from ocbench.backbones.cards import get_card
from ocbench.backbones.check import check_backbone
from ocbench.backbones.loader import load_backbone, load_safetensors
from ocbench.backbones.preprocess import model_inputs
from ocbench.backbones.subcell import SubCellViT, build_subcell, import_subcell
from ocbench.errors import ConfigError, DataError

TINY = dict(hidden_size=32, depth=2, heads=2, mlp_dim=64, image_size=32, patch_size=8, pool_dim=16, pool_heads=2)


def tiny_card(folder, arch="subcell-vit-b16-pool", **changes):
    base = get_card("subcell-bg-mae-pool" if arch.endswith("pool") else "subcell-bg-mae-cls")
    fields = dict(name="subcell-tiny" + ("" if arch.endswith("pool") else "-cls"), source=f"local:{folder}", arch=arch,
                  arch_kwargs=dict(TINY), patch_size=8, feature_dim=64 if arch.endswith("pool") else 32)
    fields.update(changes)
    return dataclasses.replace(base, **fields)


def published_checkpoint(model: SubCellViT) -> dict[str, torch.Tensor]:
    """The key layout of SubCell's encoder.pth: ViTModel keys under `encoder.`, the pooling under
    `pool_model.` (its Linear layers at index 1 of their Sequential), plus an unused MAE decoder key."""
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("pool."):
            part, kind = key.split(".")[1:]
            name = {"value": "attention_v.1", "gate": "attention_u.1", "score": "attention"}[part]
            out[f"pool_model.{name}.{kind}"] = value.clone()
        else:
            out[f"encoder.{key}"] = value.clone()
    out["decoder.decoder_embed.weight"] = torch.randn(4, 4)
    return out


@pytest.fixture()
def imported(tmp_path, monkeypatch):
    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path / "oc"))
    torch.manual_seed(0)
    source = SubCellViT(2, "gated", **TINY)
    pth = tmp_path / "encoder.pth"
    torch.save(published_checkpoint(source), pth)
    folder = tmp_path / "subcell-tiny"
    card = tiny_card(folder)
    assert import_subcell(card, pth) == folder
    return card, source, folder


# ------------------------------------------------------------------------------------ references


def reference_hidden_states(state: dict, x: torch.Tensor, heads: int, patch: int, eps: float = 1e-12) -> torch.Tensor:
    """ViTModel's last_hidden_state written out step by step (explicit attention, no fused kernels)."""
    w = lambda k: state[k].double()  # noqa: E731
    x = x.double()
    patches = F.conv2d(x, w("embeddings.patch_embeddings.projection.weight"), w("embeddings.patch_embeddings.projection.bias"), stride=patch)
    n, d, rows, cols = patches.shape
    tokens = torch.cat([w("embeddings.cls_token").expand(n, 1, d), patches.flatten(2).transpose(1, 2)], dim=1)
    table = w("embeddings.position_embeddings")
    side = int(round(math.sqrt(table.shape[1] - 1)))
    if (rows, cols) != (side, side):
        grid = table[:, 1:].reshape(1, side, side, d).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(rows, cols), mode="bicubic", align_corners=False)
        table = torch.cat([table[:, :1], grid.permute(0, 2, 3, 1).reshape(1, rows * cols, d)], dim=1)
    h = tokens + table
    layers = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.layer.")})
    for i in layers:
        p = f"encoder.layer.{i}."
        a = F.layer_norm(h, (d,), w(p + "layernorm_before.weight"), w(p + "layernorm_before.bias"), eps)
        q, k, v = (F.linear(a, w(p + f"attention.attention.{m}.weight"), w(p + f"attention.attention.{m}.bias")) for m in ("query", "key", "value"))
        split = lambda t: t.view(n, -1, heads, d // heads).permute(0, 2, 1, 3)  # noqa: E731
        scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(d // heads)
        mixed = (scores.softmax(-1) @ split(v)).permute(0, 2, 1, 3).reshape(n, -1, d)
        h = h + F.linear(mixed, w(p + "attention.output.dense.weight"), w(p + "attention.output.dense.bias"))
        b = F.layer_norm(h, (d,), w(p + "layernorm_after.weight"), w(p + "layernorm_after.bias"), eps)
        mid = F.linear(b, w(p + "intermediate.dense.weight"), w(p + "intermediate.dense.bias"))
        mid = 0.5 * mid * (1.0 + torch.erf(mid / math.sqrt(2.0)))
        h = h + F.linear(mid, w(p + "output.dense.weight"), w(p + "output.dense.bias"))
    return F.layer_norm(h, (d,), w("layernorm.weight"), w("layernorm.bias"), eps)


def reference_pool(state: dict, tokens: torch.Tensor) -> torch.Tensor:
    """Gated attention pooling by its formula: per head, softmax over tokens of W_s(tanh(W_v t) * gelu(W_g t))."""
    w = lambda k: state[k].double()  # noqa: E731
    tokens = tokens.double()
    v = torch.tanh(tokens @ w("pool.value.weight").T + w("pool.value.bias"))
    g = tokens @ w("pool.gate.weight").T + w("pool.gate.bias")
    g = 0.5 * g * (1.0 + torch.erf(g / math.sqrt(2.0)))
    scores = (v * g) @ w("pool.score.weight").T + w("pool.score.bias")  # (N, T, heads)
    weights = torch.exp(scores - scores.max(dim=1, keepdim=True).values)
    weights = weights / weights.sum(dim=1, keepdim=True)
    heads = [(weights[:, :, h : h + 1] * tokens).sum(dim=1) for h in range(weights.shape[-1])]
    return torch.cat(heads, dim=1)


# ------------------------------------------------------------------------------------ tests


class _Payload:
    def __reduce__(self):
        return (print, ("unpickled unsafely",))



def test_conversion_keeps_every_tensor_and_records_the_checkpoint(imported, tmp_path):
    card, source, folder = imported
    state = load_safetensors(folder / "model.safetensors")
    assert set(state) == set(source.state_dict()) and all(torch.equal(state[k], v) for k, v in source.state_dict().items())
    record = json.loads((folder / "config.json").read_text())["ocbench"]
    import hashlib

    assert record["source_sha256"] == hashlib.sha256((tmp_path / "encoder.pth").read_bytes()).hexdigest()
    assert record["source_filename"] == "encoder.pth" and len(record["weights_sha256"]) == 64


@pytest.mark.parametrize("size", [(32, 32), (48, 40)])  # the pretraining grid, and one the position table is resized to
def test_features_match_an_independent_implementation(imported, size):
    card, _, folder = imported
    state = load_safetensors(folder / "model.safetensors")
    backbone = load_backbone(card)
    torch.manual_seed(1)
    x = torch.randn(3, 2, *size)
    tokens = reference_hidden_states(state, x, heads=2, patch=8)
    expected = reference_pool(state, tokens)
    got = backbone.embed(x)
    assert got.shape == (3, 64)
    assert torch.allclose(got.double(), expected, atol=1e-5), (got.double() - expected).abs().max()
    cls = load_backbone(tiny_card(folder, arch="subcell-vit-b16-cls")).embed(x)
    assert torch.allclose(cls.double(), tokens[:, 0], atol=1e-5)


def test_encoder_matches_transformers_vit(imported):
    transformers = pytest.importorskip("transformers")
    card, _, folder = imported
    state = load_safetensors(folder / "model.safetensors")
    config = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8,
        num_channels=2, qkv_bias=True, layer_norm_eps=1e-12, hidden_act="gelu", hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    reference = transformers.ViTModel(config, add_pooling_layer=False).eval()
    vit_state = {k: v for k, v in state.items() if not k.startswith("pool.")}
    if not any(k.startswith("encoder.layer.") for k in reference.state_dict()):
        # transformers >= 5 names the block's parts differently; SubCell's checkpoints use the 4.x names
        renames = (("encoder.layer.", "layers."), ("attention.attention.query", "attention.q_proj"),
                   ("attention.attention.key", "attention.k_proj"), ("attention.attention.value", "attention.v_proj"),
                   ("attention.output.dense", "attention.o_proj"), ("intermediate.dense", "mlp.fc1"), ("output.dense", "mlp.fc2"))
        for old, new in renames:
            vit_state = {k.replace(old, new): v for k, v in vit_state.items()}
    reference.load_state_dict(vit_state, strict=True)
    backbone = load_backbone(card)
    for size in ((32, 32), (48, 40)):
        x = torch.randn(2, 2, *size)
        with torch.inference_mode():
            hidden = reference(pixel_values=x, interpolate_pos_encoding=True).last_hidden_state
        assert torch.allclose(backbone.model.hidden_states(x), hidden, atol=1e-5)
        assert torch.allclose(backbone.embed(x).double(), reference_pool(state, hidden), atol=1e-5)


def test_preprocessing_is_joint_min_max_with_nucleus_then_protein(imported):
    card, _, _ = imported
    adapter = parse_channels(None, card)  # natural: nucleus -> input 0, protein -> input 1
    assert adapter.targets == (1, 0)  # dataset order (protein, nucleus)
    raw = torch.randint(100, 4000, (2, 2, 32, 32), dtype=torch.int32).to(torch.uint16)
    (x,) = model_inputs(raw, card, adapter)
    counts = raw.to(torch.float32)[:, [1, 0]]
    low = counts.amin(dim=(1, 2, 3), keepdim=True)
    high = counts.amax(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(x, (counts - low) / (high - low + 1e-6))


def test_backbones_check_passes_offline(imported):
    card, _, _ = imported
    report = check_backbone(card, image_size=32)
    assert report.ok, [(r.name, r.detail) for r in report.results if r.passed is not True]


def test_unsafe_or_foreign_checkpoints_are_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path / "oc"))
    card = tiny_card(tmp_path / "out")
    evil = tmp_path / "evil.pth"
    torch.save({"encoder.x": _Payload()}, evil)  # would call print() if unpickled without weights_only
    with pytest.raises(DataError) as info:
        import_subcell(card, evil)
    one_line_message(info, str(evil))
    wrong = tmp_path / "wrong.pth"
    torch.save({"encoder.embeddings.cls_token": torch.zeros(1, 1, 7)}, wrong)
    with pytest.raises(DataError) as info:
        import_subcell(card, wrong)
    one_line_message(info, str(wrong), "SubCell encoder")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError) as info:
        import_subcell(card, None)
    one_line_message(info, "--checkpoint")


def test_published_cards_describe_subcell():
    for name, dim in (("subcell-bg-mae-pool", 1536), ("subcell-bg-vit-pool", 1536), ("subcell-bg-mae-cls", 768)):
        card = get_card(name)
        assert (card.feature_dim, card.in_chans, card.input_size, card.patch_size) == (dim, 2, 448, 16)
        assert card.input_channels == ("nucleus", "protein") and card.normalization == "min-max"
        assert card.training_datasets == ("HPA single-cell",)
        with torch.device("meta"):
            model = build_subcell(card)
        assert model.feature_dim == dim and sum(p.numel() for p in model.parameters()) > 85_000_000
