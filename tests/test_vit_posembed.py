"""DINO position-embedding interpolation, checked against an independent implementation.

The reference below does not call ``F.interpolate``: it writes out the bicubic resize as two
weight matrices (Keys' cubic convolution, a = -0.75, half-pixel centres, sample positions
``(i + 0.5) / scale - 0.5`` with DINO's ``scale = (n + 0.1) / sqrt(N)``, edge indices clamped), in
float64. timm's own resize (exact size, antialias) must give different numbers, so the comparison
can fail.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from ocbench.backbones.vit import ViTCLSFeatures, build_vit, dino_interpolate_pos_embed, vit_cls_features
from ocbench.errors import ConfigError

PATCH = 8
TINY_KWARGS = dict(patch_size=PATCH, embed_dim=32, depth=2, num_heads=2, img_size=32)  # 4 x 4 grid


def keys_cubic(distance: float, a: float = -0.75) -> float:
    d = abs(distance)
    if d <= 1:
        return (a + 2) * d**3 - (a + 3) * d**2 + 1
    if d < 2:
        return a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a
    return 0.0


def resize_matrix(n_in: int, n_out: int, scale: float) -> torch.Tensor:
    """(n_out, n_in) matrix of a 1-D bicubic resize with the given scale factor."""
    matrix = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        position = (i + 0.5) / scale - 0.5
        left = math.floor(position)
        for j in range(left - 1, left + 3):
            matrix[i, min(max(j, 0), n_in - 1)] += keys_cubic(position - j)
    return matrix


def reference_pos_embed(pos_embed: torch.Tensor, height: int, width: int, patch: int, offset: float = 0.1) -> torch.Tensor:
    """DINO's interpolate_pos_encoding, re-derived from its definition."""
    num = pos_embed.shape[1] - 1
    rows, cols = height // patch, width // patch
    if rows * cols == num and height == width:
        return pos_embed
    side = int(round(num**0.5))
    grid = pos_embed[0, 1:].double().reshape(side, side, -1)
    along_rows = resize_matrix(side, rows, (rows + offset) / side)
    along_cols = resize_matrix(side, cols, (cols + offset) / side)
    resized = torch.einsum("rs,ct,std->rcd", along_rows, along_cols, grid)
    return torch.cat([pos_embed[:, :1], resized.reshape(1, rows * cols, -1).to(pos_embed.dtype)], dim=1)


def reference_block(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A DINO transformer block written from its definition (pre-norm attention + GELU MLP),
    reading timm's parameters but not running timm's forward."""
    batch, tokens, dim = x.shape
    heads = block.attn.num_heads
    h = F.layer_norm(x, (dim,), block.norm1.weight, block.norm1.bias, eps=1e-6)
    qkv = F.linear(h, block.attn.qkv.weight, block.attn.qkv.bias).reshape(batch, tokens, 3, heads, dim // heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    attn = ((q @ k.transpose(-2, -1)) * (dim // heads) ** -0.5).softmax(dim=-1)
    x = x + F.linear((attn @ v).transpose(1, 2).reshape(batch, tokens, dim), block.attn.proj.weight, block.attn.proj.bias)
    h = F.layer_norm(x, (dim,), block.norm2.weight, block.norm2.bias, eps=1e-6)
    h = F.linear(F.gelu(F.linear(h, block.mlp.fc1.weight, block.mlp.fc1.bias)), block.mlp.fc2.weight, block.mlp.fc2.bias)
    return x + h


def reference_cls_features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """DINO's prepare_tokens + blocks + final norm + CLS, with the reference position embedding."""
    tokens = F.conv2d(x, model.patch_embed.proj.weight, model.patch_embed.proj.bias, stride=PATCH)
    tokens = tokens.flatten(2).transpose(1, 2)
    tokens = torch.cat([model.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)
    tokens = tokens + reference_pos_embed(model.pos_embed, x.shape[-2], x.shape[-1], PATCH)
    for block in model.blocks:
        tokens = reference_block(block, tokens)
    dim = tokens.shape[-1]
    return F.layer_norm(tokens, (dim,), model.norm.weight, model.norm.bias, eps=1e-6)[:, 0]


@pytest.fixture()
def pos_embed() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(1, 1 + 16, 32, generator=generator)


@pytest.fixture()
def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_vit("vit_tiny_patch16_224", TINY_KWARGS, 4)
    with torch.no_grad():
        model.pos_embed.normal_()  # timm's init is tiny; make the position embedding matter
    return model.eval()


@pytest.mark.parametrize(
    "height, width",
    [(48, 64), (64, 48), (40, 40), (24, 32), (50, 70), (32, 39), (16, 80), (96, 96)],
)
def test_matches_independent_dino_formula(pos_embed, height, width):
    ours = dino_interpolate_pos_embed(pos_embed, height, width, PATCH)
    expected = reference_pos_embed(pos_embed, height, width, PATCH)
    assert ours.shape == (1, 1 + (height // PATCH) * (width // PATCH), 32)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)
    assert torch.equal(ours[:, 0], pos_embed[:, 0])  # class token position is never resized


@pytest.mark.parametrize("size", [32, 39])
def test_no_interpolation_when_grid_matches(pos_embed, size):
    assert dino_interpolate_pos_embed(pos_embed, size, size, PATCH) is pos_embed


def test_differs_from_exact_size_resizes(pos_embed):
    """timm (antialiased, size=) and size=-based code give other numbers: the choice matters."""
    from timm.layers import resample_abs_pos_embed

    ours = dino_interpolate_pos_embed(pos_embed, 48, 64, PATCH)
    timm_resized = resample_abs_pos_embed(pos_embed, new_size=[6, 8], num_prefix_tokens=1)
    grid = pos_embed[:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    by_size = F.interpolate(grid, size=(6, 8), mode="bicubic", align_corners=False)
    by_size = torch.cat([pos_embed[:, :1], by_size.permute(0, 2, 3, 1).reshape(1, 48, 32)], dim=1)
    without_offset = reference_pos_embed(pos_embed, 48, 64, PATCH, offset=0.0)
    for other in (timm_resized, by_size, without_offset):
        assert other.shape == ours.shape
        assert (other - ours).abs().max() > 1e-3


def test_cls_features_match_reference_forward(tiny_model):
    x = torch.randn(2, 4, 48, 64)
    with torch.inference_mode():
        ours = vit_cls_features(tiny_model, x, PATCH)
        expected = reference_cls_features(tiny_model, x)
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)
        assert torch.equal(ViTCLSFeatures(tiny_model)(x), ours)

        # timm's own dynamic-size forward (same weights) resizes differently.
        import timm

        dynamic = timm.create_model("vit_tiny_patch16_224", num_classes=0, in_chans=4, dynamic_img_size=True, **TINY_KWARGS)
        dynamic.load_state_dict(tiny_model.state_dict())
        assert (dynamic.eval()(x) - ours).abs().max() > 1e-4


def test_native_grid_equals_timm_forward(tiny_model):
    x = torch.randn(3, 4, 32, 32)
    with torch.inference_mode():
        ours = vit_cls_features(tiny_model, x)
        assert torch.equal(ours, tiny_model(x))
        torch.testing.assert_close(ours, reference_cls_features(tiny_model, x), rtol=0, atol=1e-5)


def test_bad_inputs(tiny_model):
    with pytest.raises(ConfigError, match="patch size 16"):
        vit_cls_features(tiny_model, torch.randn(1, 4, 32, 32), 16)
    with pytest.raises(ConfigError, match="smaller than one"):
        vit_cls_features(tiny_model, torch.randn(1, 4, 4, 32))
    with pytest.raises(ConfigError, match="did you mean"):
        build_vit("vit_tiny_patch16_2244", {}, 3)
