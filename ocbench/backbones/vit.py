"""Vision Transformers built by timm, run the way the original DINO code runs them.

The DINO checkpoints we benchmark (ImageNet DINO, Dino4Cells) use timm's ``VisionTransformer``
parameter layout, so timm builds the network. What differs is the forward pass for inputs whose
patch grid is not the pretraining grid: DINO resizes the position embedding with a *scale factor*,
timm with an exact *size* (and anti-aliasing). The two give different numbers, and features must
equal the original implementation's (the seed paper's reference), so :func:`vit_cls_features` does the
DINO resize itself.

The DINO formula, as read in ``vision_transformer.py`` of facebookresearch/dino
(``VisionTransformer.interpolate_pos_encoding``) and of broadinstitute/DINO4Cells_code (its copy is
unchanged, both in ``vision_transformer.py`` and ``utils/vision_transformer.py``):

- no resize when the number of patches equals the pretraining count N *and* the input is square
  in pixels; otherwise
- the N patch embeddings are viewed as a (1, dim, sqrt(N), sqrt(N)) grid and resized with
  ``F.interpolate(mode="bicubic", scale_factor=((rows + 0.1) / sqrt(N), (cols + 0.1) / sqrt(N)))``
  where rows = H // patch and cols = W // patch (DINO names them ``w0, h0`` after
  ``B, nc, w, h = x.shape``, so its "w" is the height); align_corners and antialias are left at
  their defaults (False). The +0.1 makes ``floor(sqrt(N) * scale)`` land on rows/cols despite
  floating point error (facebookresearch/dino issue 8).

Torch versions: since torch 1.6, ``interpolate`` with a float ``scale_factor`` maps output pixels
back with that scale factor itself (``recompute_scale_factor`` unset), not with in_size/out_size;
Dino4Cells pinned torch 1.12.1, so its features were computed that way, and we pass
``recompute_scale_factor=False`` to keep it explicit. Later code derived from DINO (DINOv2 and
timm) passes ``size=`` instead, which maps with sqrt(N)/rows and shifts every sample slightly; we
implement the scale-factor form because it is what produced the published Dino4Cells and DINO
features. ``tests/test_vit_posembed.py`` checks it against an independent bicubic written out by
hand, and checks that it differs from timm's resize.
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from ocbench.backbones.card import BackboneCard
from ocbench.errors import ConfigError

# DINO adds this to the target grid before dividing by sqrt(N), see module docstring.
DINO_INTERPOLATION_OFFSET = 0.1


def build_vit(
    card_or_arch: BackboneCard | str,
    arch_kwargs: Mapping[str, Any] | None = None,
    in_chans: int | None = None,
    *,
    dynamic_img_size: bool | None = False,
) -> nn.Module:
    """Build a randomly initialised timm ViT without a classifier head.

    ``card_or_arch`` is a backbone card (its ``arch``, ``arch_kwargs`` and ``in_chans`` are used)
    or a timm model name; ``arch_kwargs``/``in_chans`` given here override the card's. Weights are
    never downloaded here (``pretrained=False``): they come from safetensors via ``sources``.
    ``dynamic_img_size``: passed to timm (None: not passed, for architectures without it, e.g. CNNs).
    """
    import timm

    if isinstance(card_or_arch, str):
        arch, card_kwargs, card_in_chans, label = card_or_arch, {}, None, card_or_arch
    else:
        card = card_or_arch
        arch = card.arch
        card_kwargs = dict(card.arch_kwargs or {})
        card_in_chans = card.in_chans
        label = f"card {card.name!r}"
    kwargs = dict(card_kwargs)
    kwargs.update(arch_kwargs or {})
    kwargs_chans = kwargs.pop("in_chans", None)
    chans = in_chans if in_chans is not None else card_in_chans
    if chans is not None and kwargs_chans is not None and kwargs_chans != chans:
        raise ConfigError(f"{label}: in_chans={chans} disagrees with arch_kwargs in_chans={kwargs_chans}; set one")
    chans = chans if chans is not None else (kwargs_chans if kwargs_chans is not None else 3)

    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(f"{label}: timm has no architecture {arch!r}{hint}")
    # dynamic_img_size=False: keep timm's fixed-size pos_embed; vit_cls_features resizes it DINO's way.
    kwargs.update(pretrained=False, num_classes=0, in_chans=chans)
    if dynamic_img_size is not None:
        kwargs["dynamic_img_size"] = dynamic_img_size
    try:
        model = timm.create_model(arch, **kwargs)
    except (TypeError, ValueError, AssertionError) as exc:
        raise ConfigError(f"{label}: timm could not build {arch!r} with arch_kwargs {card_kwargs}: {exc}") from exc
    model.eval()
    return model


def shape_mismatches(expected: dict[str, tuple], found: dict[str, tuple]) -> list[str]:
    """How a state dict's tensor shapes (``found``) differ from a model's (``expected``): short
    phrases for a one-line error, empty when they fit."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = [f"{k} {found[k]} vs model {expected[k]}" for k in expected if k in found and found[k] != expected[k]]
    problems = []
    if wrong:
        problems.append(f"{len(wrong)} tensors with the wrong shape (e.g. {'; '.join(wrong[:2])})")
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    return problems


def model_patch_size(model: nn.Module) -> int:
    """The (square) patch size of a timm ViT, read from its patch embedding."""
    patch = model.patch_embed.patch_size
    patch = tuple(patch) if isinstance(patch, (tuple, list)) else (patch, patch)
    if patch[0] != patch[1]:
        raise ConfigError(f"non-square patches {patch} are not supported")
    return int(patch[0])


def dino_interpolate_pos_embed(pos_embed: torch.Tensor, height: int, width: int, patch_size: int) -> torch.Tensor:
    """Position embedding (1, 1 + rows*cols, dim) for an input of ``height`` x ``width`` pixels.

    ``pos_embed`` is (1, 1 + N, dim) with the class token first and N a square pretraining grid.
    Follows DINO's ``interpolate_pos_encoding`` exactly, including its skip rule (see module doc).
    """
    num_grid = pos_embed.shape[1] - 1
    rows, cols = height // patch_size, width // patch_size
    if rows * cols == num_grid and height == width:
        return pos_embed
    side = math.isqrt(num_grid)
    if side * side != num_grid:
        raise ConfigError(f"position embedding with {num_grid} patches is not a square grid; cannot resize it")
    dim = pos_embed.shape[-1]
    class_pos, grid_pos = pos_embed[:, :1], pos_embed[:, 1:]
    grid = grid_pos.reshape(1, side, side, dim).permute(0, 3, 1, 2)
    resized = F.interpolate(
        grid,
        scale_factor=((rows + DINO_INTERPOLATION_OFFSET) / side, (cols + DINO_INTERPOLATION_OFFSET) / side),
        mode="bicubic",
        align_corners=False,
        recompute_scale_factor=False,
        antialias=False,
    )
    if tuple(resized.shape[-2:]) != (rows, cols):  # DINO asserts the same
        raise RuntimeError(f"position embedding resized to {tuple(resized.shape[-2:])}, expected {(rows, cols)}")
    resized = resized.permute(0, 2, 3, 1).reshape(1, rows * cols, dim)
    return torch.cat((class_pos, resized), dim=1)


def _plain_vit_reasons(model: nn.Module) -> list[str]:
    reasons = []
    if getattr(model, "cls_token", None) is None:
        reasons.append("no class token")
    if getattr(model, "reg_token", None) is not None:
        reasons.append("register tokens")
    if getattr(model, "no_embed_class", False):
        reasons.append("no_embed_class=True")
    if getattr(model, "pos_embed", None) is None:
        reasons.append("no absolute position embedding")
    if getattr(model, "patch_embed", None) is None or getattr(model, "blocks", None) is None:
        reasons.append("no patch embedding and blocks")
    return reasons


def is_plain_vit(model: nn.Module) -> bool:
    """A timm ViT whose CLS features :func:`vit_cls_features` computes (class token, absolute
    position embedding, no register tokens)."""
    return not _plain_vit_reasons(model)


def _check_supported(model: nn.Module) -> None:
    reasons = _plain_vit_reasons(model)
    if reasons:
        raise ConfigError(f"{type(model).__name__}: DINO-style CLS features need a plain ViT ({', '.join(reasons)})")


def vit_cls_features(model: nn.Module, x: torch.Tensor, patch_size: int | None = None) -> torch.Tensor:
    """CLS token after the final norm, (N, dim), with DINO's position-embedding resize.

    Same layers as timm's ``forward_features`` (patch embedding, cls token, pos-embed, blocks,
    norm); only the position embedding differs, and only when the patch grid differs from the
    pretraining grid. ``patch_size`` is checked against the model's when given.
    """
    _check_supported(model)
    patch = model_patch_size(model)
    if patch_size is not None and int(patch_size) != patch:
        raise ConfigError(f"patch size {patch_size} does not match the model's patch size {patch}")
    height, width = x.shape[-2:]
    if height < patch or width < patch:
        raise ConfigError(f"input of {height}x{width} pixels is smaller than one {patch}x{patch} patch")

    embed = model.patch_embed
    tokens = embed.proj(x)  # (N, dim, rows, cols); like DINO, a remainder smaller than a patch is dropped
    tokens = tokens.flatten(2).transpose(1, 2)  # row-major, the order DINO and timm use
    tokens = embed.norm(tokens)
    cls = model.cls_token.expand(tokens.shape[0], -1, -1)
    tokens = torch.cat((cls, tokens), dim=1)
    tokens = tokens + dino_interpolate_pos_embed(model.pos_embed, height, width, patch)
    tokens = model.pos_drop(tokens)
    tokens = model.patch_drop(tokens)
    tokens = model.norm_pre(tokens)
    tokens = model.blocks(tokens)
    tokens = model.norm(tokens)
    return tokens[:, 0]


class ViTCLSFeatures(nn.Module):
    """``nn.Module`` whose forward is :func:`vit_cls_features` (for loaders that want ``model(x)``).

    Load weights into the wrapped timm model (``.vit``) before wrapping: the wrapper's own state
    dict keys carry a ``vit.`` prefix.
    """

    def __init__(self, vit: nn.Module):
        super().__init__()
        _check_supported(vit)
        self.vit = vit
        self.patch_size = model_patch_size(vit)
        self.feature_dim = int(vit.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return vit_cls_features(self.vit, x, self.patch_size)


class TimmPooledFeatures(nn.Module):
    """Features of timm models that are not plain ViTs (register tokens, RoPE ViTs such as DINOv3's
    Eva, CNNs): timm's own ``forward_features`` then the pooling of ``forward_head(pre_logits=True)``
    (the model's ``global_pool``: the class token for ``"token"``, the mean of patch tokens for
    ``"avg"``). ViTs are built with ``dynamic_img_size=True``, so timm resizes (or, for RoPE,
    recomputes) position encodings for the input size."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.feature_dim = int(model.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


def build_features(card: BackboneCard) -> tuple[nn.Module, nn.Module]:
    """``(features module, the timm model to load weights into)`` for a timm card: DINO-style CLS
    features (:class:`ViTCLSFeatures`) for plain ViTs, :class:`TimmPooledFeatures` otherwise."""
    with torch.device("meta"):  # which kind of model: no memory, no init
        probe = build_vit(card, dynamic_img_size=None)
    if is_plain_vit(probe):
        vit = build_vit(card)
        return ViTCLSFeatures(vit), vit
    dynamic = True if getattr(probe, "patch_embed", None) is not None else None
    model = build_vit(card, dynamic_img_size=dynamic)
    return TimmPooledFeatures(model), model


def drop_unused_classifier(model: nn.Module, state: dict) -> dict:
    """A published checkpoint's classifier (timm's pretrained ``classifier``, e.g. ``head`` or CLIP's
    projection) when the model was built without one (``num_classes=0``): features are taken before it."""
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or "head"
    prefixes = tuple(f"{name}." for name in ((classifier,) if isinstance(classifier, str) else classifier))
    keys = set(model.state_dict())
    return {k: v for k, v in state.items() if k in keys or not k.startswith(prefixes)}
