"""SubCell (Gupta et al., CellProfiling/SubCellPortable, MIT code): a ViT-B/16 encoder trained on
Human Protein Atlas single-cell images, with gated-attention pooling; written here from the
published description, not from its code.

The network, as the SubCell release describes and runs it:

- a ViT in Hugging Face ``ViTModel`` form: 16 px patch convolution, a class token, learned
  position embeddings for a 448 px grid (28 x 28), resized with bicubic interpolation to the input's
  grid (``size=``, ``align_corners=False``; none when the grid and aspect are the pretraining ones);
  12 pre-norm blocks (LayerNorm eps 1e-12, multi-head attention with q/k/v biases, exact-GELU MLP
  of width 3072), a final LayerNorm;
- gated-attention pooling over all tokens (class token included): for each token, the scores of
  ``heads`` (2) attention heads are ``W_s (tanh(W_v x) * gelu(W_g x))``, softmax over tokens, and
  each head's weighted sum of tokens is concatenated: 2 x 768 = 1536 features. The ``-cls`` cards
  take the class token after the final norm instead (768 features).

Inputs (``bg`` models): input 0 nucleus (DNA), input 1 protein, exactly OpenCell's channels (the
``natural`` preset). Each image is min-max scaled over all its channels jointly (the card's
``min-max`` normalization), as SubCellPortable does before the model.

Checkpoint layout (``encoder.pth``, a flat state dict): ``encoder.<ViTModel key>`` for the ViT,
``pool_model.attention_v.<i>.{weight,bias}``, ``pool_model.attention_u.<i>.*`` and
``pool_model.attention.*`` for the pooling; other keys (e.g. an MAE decoder) are not used.
:func:`import_subcell` loads it with ``torch.load(weights_only=True)`` (plain tensors only; nothing
from the file is executed), renames the keys to this module's layout (the ViT keys become exactly
``ViTModel``'s, so ``transformers`` can load the same file), checks every shape, and writes a
Hub-style folder (``model.safetensors`` + ``config.json`` recording the checkpoint's sha256 and file
name, and the safetensors' sha256, which is enforced on every later load).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from ocbench.backbones.card import BackboneCard
from ocbench.errors import ConfigError, DataError

__all__ = ["SUBCELL_ARCHS", "is_subcell", "SubCellViT", "build_subcell", "convert_subcell_state", "import_subcell"]

#: Architectures this module builds: gated-attention pooled features, or the class token.
SUBCELL_ARCHS: dict[str, str] = {"subcell-vit-b16-pool": "gated", "subcell-vit-b16-cls": "cls"}

#: ViT-B/16 at 448 px with SubCell's pooling (its published configuration).
DEFAULTS: dict[str, Any] = dict(
    hidden_size=768, depth=12, heads=12, mlp_dim=3072, image_size=448, patch_size=16, layer_norm_eps=1e-12,
    pool_dim=512, pool_heads=2,
)


def is_subcell(card: BackboneCard) -> bool:
    return card.arch in SUBCELL_ARCHS


class _PatchEmbeddings(nn.Module):
    def __init__(self, in_chans: int, dim: int, patch: int):
        super().__init__()
        self.projection = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)


class _Embeddings(nn.Module):
    def __init__(self, in_chans: int, dim: int, patch: int, image_size: int):
        super().__init__()
        grid = image_size // patch
        self.patch = patch
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.position_embeddings = nn.Parameter(torch.zeros(1, 1 + grid * grid, dim))
        self.patch_embeddings = _PatchEmbeddings(in_chans, dim, patch)

    def positions(self, rows: int, cols: int) -> torch.Tensor:
        table = self.position_embeddings
        side = math.isqrt(table.shape[1] - 1)
        if rows == side and cols == side:
            return table
        dim = table.shape[-1]
        grid = table[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(rows, cols), mode="bicubic", align_corners=False)
        return torch.cat((table[:, :1], grid.permute(0, 2, 3, 1).reshape(1, rows * cols, dim)), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embeddings.projection(x)  # a remainder smaller than a patch is dropped
        rows, cols = patches.shape[-2:]
        tokens = patches.flatten(2).transpose(1, 2)
        tokens = torch.cat((self.cls_token.expand(tokens.shape[0], -1, -1), tokens), dim=1)
        return tokens + self.positions(rows, cols)


class _Linear(nn.Module):
    """A Linear inside a named holder (``<name>.dense``), the key layout ViTModel uses."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)


class _QKV(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ConfigError(f"SubCell ViT: hidden size {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.attention = _QKV(dim)
        self.output = _Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape

        def split(linear: nn.Linear) -> torch.Tensor:
            return linear(x).view(n, t, self.heads, d // self.heads).transpose(1, 2)

        mixed = F.scaled_dot_product_attention(split(self.attention.query), split(self.attention.key), split(self.attention.value))
        return self.output.dense(mixed.transpose(1, 2).reshape(n, t, d))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_dim: int, eps: float):
        super().__init__()
        self.layernorm_before = nn.LayerNorm(dim, eps=eps)
        self.attention = _Attention(dim, heads)
        self.layernorm_after = nn.LayerNorm(dim, eps=eps)
        self.intermediate = _Linear(dim, mlp_dim)
        self.output = _Linear(mlp_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.layernorm_before(x))
        return x + self.output.dense(F.gelu(self.intermediate.dense(self.layernorm_after(x))))


class _Encoder(nn.Module):
    def __init__(self, depth: int, dim: int, heads: int, mlp_dim: int, eps: float):
        super().__init__()
        self.layer = nn.ModuleList(_Block(dim, heads, mlp_dim, eps) for _ in range(depth))


class GatedAttentionPool(nn.Module):
    """``heads`` attention distributions over tokens, each from a tanh branch gated by a GELU
    branch; the heads' weighted token sums, concatenated."""

    def __init__(self, dim: int, pool_dim: int, heads: int):
        super().__init__()
        self.value = nn.Linear(dim, pool_dim)
        self.gate = nn.Linear(dim, pool_dim)
        self.score = nn.Linear(pool_dim, heads)
        self.heads = heads

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        scores = self.score(torch.tanh(self.value(tokens)) * F.gelu(self.gate(tokens)))  # (N, T, heads)
        weights = scores.softmax(dim=1)
        pooled = torch.einsum("nth,ntd->nhd", weights, tokens)
        return pooled.reshape(tokens.shape[0], -1)


class SubCellViT(nn.Module):
    """SubCell's encoder; ``forward`` gives the card's features (pooled, or the class token)."""

    def __init__(self, in_chans: int, pooling: str = "gated", **config: Any):
        super().__init__()
        unknown = sorted(set(config) - set(DEFAULTS))
        if unknown:
            raise ConfigError(f"SubCell ViT: unknown arch_kwargs {', '.join(unknown)} (known: {', '.join(DEFAULTS)})")
        cfg = {**DEFAULTS, **config}
        dim = cfg["hidden_size"]
        self.pooling = pooling
        self.patch_size = cfg["patch_size"]
        self.embeddings = _Embeddings(in_chans, dim, cfg["patch_size"], cfg["image_size"])
        self.encoder = _Encoder(cfg["depth"], dim, cfg["heads"], cfg["mlp_dim"], cfg["layer_norm_eps"])
        self.layernorm = nn.LayerNorm(dim, eps=cfg["layer_norm_eps"])
        self.pool = GatedAttentionPool(dim, cfg["pool_dim"], cfg["pool_heads"]) if pooling == "gated" else None
        self.feature_dim = dim * cfg["pool_heads"] if pooling == "gated" else dim
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # A plain truncated-normal init: only random-weight models (tests, checks) ever keep it.
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.embeddings.cls_token, std=0.02)
        nn.init.trunc_normal_(self.embeddings.position_embeddings, std=0.02)

    def hidden_states(self, x: torch.Tensor) -> torch.Tensor:
        """Every token after the final LayerNorm (ViTModel's ``last_hidden_state``)."""
        tokens = self.embeddings(x)
        for block in self.encoder.layer:
            tokens = block(tokens)
        return self.layernorm(tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.hidden_states(x)
        return tokens[:, 0] if self.pool is None else self.pool(tokens)


def build_subcell(card: BackboneCard) -> SubCellViT:
    if not is_subcell(card):
        raise ConfigError(f"card {card.name!r}: {card.arch!r} is not a SubCell architecture ({', '.join(SUBCELL_ARCHS)})")
    model = SubCellViT(card.in_chans, SUBCELL_ARCHS[card.arch], **dict(card.arch_kwargs or {}))
    if model.feature_dim != card.feature_dim:
        raise ConfigError(f"backbone card '{card.name}': feature_dim {card.feature_dim} but the model gives {model.feature_dim}")
    if card.patch_size is not None and card.patch_size != model.patch_size:
        raise ConfigError(f"backbone card '{card.name}': patch_size {card.patch_size} but the model has {model.patch_size}")
    return model.eval()


_POOL_KEY = re.compile(r"^pool_model\.(attention_v|attention_u)\.\d+\.(weight|bias)$")
_POOL_NAMES = {"attention_v": "pool.value", "attention_u": "pool.gate"}


def convert_subcell_state(checkpoint: Mapping[str, Any], model: SubCellViT, where: str) -> dict[str, torch.Tensor]:
    """A published ``encoder.pth`` state dict -> this module's keys, checked against ``model``.

    One-line errors name ``where`` (the file) and the first missing or mis-shaped tensors."""
    from ocbench.backbones.vit import shape_mismatches

    if not isinstance(checkpoint, Mapping) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise DataError(f"{where}: not a SubCell encoder checkpoint (expected a flat dict of tensors)")
    state: dict[str, torch.Tensor] = {}
    for key, value in checkpoint.items():
        if key.startswith("encoder."):
            state[key[len("encoder."):]] = value
        elif _POOL_KEY.match(key):
            branch, kind = _POOL_KEY.match(key).groups()
            state[f"{_POOL_NAMES[branch]}.{kind}"] = value
        elif key in ("pool_model.attention.weight", "pool_model.attention.bias"):
            state["pool.score." + key.rsplit(".", 1)[1]] = value
    if model.pool is None:  # the class-token variant reads the same file and leaves the pooling out
        state = {k: v for k, v in state.items() if not k.startswith("pool.")}
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = shape_mismatches(expected, {k: tuple(v.shape) for k, v in state.items()})
    if problems:
        raise DataError(f"{where}: does not fit the SubCell encoder ({'; '.join(problems)}); is it a bg encoder.pth?")
    return {k: v.detach().to(torch.float32).contiguous() for k, v in state.items()}


def import_subcell(card: BackboneCard, checkpoint: str | os.PathLike | None, *, out_dir: str | os.PathLike | None = None) -> Path:
    """Convert SubCell's ``encoder.pth`` (safe load) into the card's weights folder; returns it."""
    from ocbench._io import sha256_file
    from ocbench.backbones.dino_import import _write_folder, check_replaceable, load_dino_checkpoint
    from ocbench.backbones.sources import local_folder

    if checkpoint is None:
        raise ConfigError(
            f"{card.name}: give --checkpoint encoder.pth (the SubCell release's bg encoder; ocbench knows no public "
            "address for it)"
        )
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise ConfigError(f"--checkpoint {path}: no such file")
    if out_dir is not None:
        folder = Path(out_dir)
    elif card.source_kind == "local":
        folder = local_folder(card.source_target)
    else:
        raise ConfigError(f"{card.name}: its source {card.source} is not a local folder; pass --out")
    if SUBCELL_ARCHS.get(card.arch) == "cls":
        raise ConfigError(f"{card.name}: import the checkpoint under its pooled card; this class-token card reads that folder")
    check_replaceable(folder)
    model = build_subcell(card)
    state = convert_subcell_state(load_dino_checkpoint(path), model, str(path))
    config = {
        "architecture": card.arch,
        "num_features": model.feature_dim,
        "model_args": {**dict(card.arch_kwargs or {}), "in_chans": card.in_chans},
        "ocbench": {
            "card": card.name, "arch": card.arch, "arch_kwargs": dict(card.arch_kwargs or {}), "in_chans": card.in_chans,
            "patch_size": model.patch_size, "feature_dim": model.feature_dim,
            "input_channels": list(card.input_channels), "normalization": card.normalization,
            "input_size": card.input_size, "pretraining": card.pretraining, "source": card.source,
            "source_sha256": sha256_file(path), "source_filename": path.name, "source_verified": False,
            "license": card.license, "citation": card.citation,
            "torch_version": torch.__version__.split("+")[0],
        },
    }
    _write_folder(folder, state, config)
    return folder
