"""Built-in cards of recent general-purpose backbones: DINOv2 (with and without registers), DINOv3
and CLIP, all loaded through timm's Hub repositories (``timm:`` sources, so the Hub repo is the one
timm's pretrained config names).

Revisions are not pinned here (no commit hash was verified for these repositories): the loader
records the commit it resolved and checks the file against the Hub's sha256, and entries carry both.

How the images are fed:

- DINOv2 has 14 px patches, which do not divide OpenCell's 600 px FOVs: ``resize="fit-14"`` resizes
  each side to the nearest multiple of 14 (600 -> 602 px, 43 x 43 patches) instead of dropping a
  12 px strip; the 37 x 37 position grid of the 518 px pretraining is resized DINO's way (plain
  ViTs, CLS token after the final norm). The register variants (``_reg4``) go through timm's own
  forward (class token after the final norm; timm resizes the position grid).
- DINOv3 (16 px patches, RoPE position encoding, 4 register tokens) runs through timm's forward too,
  CLS token (``global_pool="token"``); 600 px becomes 608 px (``fit-16``).
- CLIP ViT-B/16 with OpenAI's weights: timm's QuickGELU variant (the activation the weights were
  trained with), CLS token after the final norm, before CLIP's 512-d image projection; CLIP's own
  mean/std. A non-self-supervised (image-text contrastive) reference.

The timm Hub ports' weights are the publishers' own; the licences are the publishers': Apache-2.0
for DINOv2, the DINOv3 License (Meta's own terms: read them before use, including for publishing
results) for DINOv3, MIT for OpenAI's CLIP release.
"""

from __future__ import annotations

from ocbench.backbones.card import BackboneCard

_DINOV2 = "Oquab et al., DINOv2: Learning Robust Visual Features without Supervision, TMLR 2024 (arXiv:2304.07193)"
_REGISTERS = "Darcet et al., Vision Transformers Need Registers, ICLR 2024 (arXiv:2309.16588)"
_DINOV3 = "Siméoni et al., DINOv3, 2025 (arXiv:2508.10104)"
_CLIP = "Radford et al., Learning Transferable Visual Models From Natural Language Supervision, ICML 2021 (arXiv:2103.00020)"

_RGB = dict(
    in_chans=3,
    input_channels=("R", "G", "B"),
    default_channels="imagenet-best",
    intensity="percentile-0.1-99.9",
)

_SIZES = {"s": ("small", 384), "b": ("base", 768), "l": ("large", 1024)}

_CARDS: list[BackboneCard] = []

for short, (size, dim) in _SIZES.items():
    for registers in (False, True):
        arch = f"vit_{size}_patch14_{'reg4_' if registers else ''}dinov2"
        _CARDS.append(BackboneCard(
            name=f"dinov2-vit{short}14" + ("-reg4" if registers else ""),
            source=f"timm:{arch}.lvd142m",
            arch=arch,
            patch_size=14,
            feature_dim=dim,
            normalization="imagenet",
            resize="fit-14",
            input_size=518,
            pretraining="LVD-142M, DINOv2 (self-supervised)" + (", 4 register tokens" if registers else ""),
            training_datasets=("LVD-142M",),
            supervision="self-supervised",
            license="apache-2.0",
            citation=_DINOV2 + ("; " + _REGISTERS if registers else ""),
            notes="600 px FOVs resized to 602 px (43 x 43 patches of 14 px)"
            + ("; features: timm's forward, class token" if registers else "; features: CLS token, DINO-style position resize"),
            **_RGB,
        ))

for short, (size, dim) in _SIZES.items():
    _CARDS.append(BackboneCard(
        name=f"dinov3-vit{short}16",
        source=f"timm:vit_{size}_patch16_dinov3.lvd1689m",
        arch=f"vit_{size}_patch16_dinov3",
        arch_kwargs={"global_pool": "token"},
        patch_size=16,
        feature_dim=dim,
        normalization="imagenet",
        resize="fit-16",
        input_size=256,
        pretraining="LVD-1689M, DINOv3 (self-supervised; distilled from the 7B model)",
        training_datasets=("LVD-1689M",),
        supervision="self-supervised",
        license="DINOv3 License (Meta; not an open-source licence: read its terms before use)",
        citation=_DINOV3,
        notes="RoPE ViT with 4 register tokens; features: timm's forward, class token; 600 px FOVs resized to 608 px",
        **_RGB,
    ))

_CARDS.append(BackboneCard(
    name="clip-vitb16-openai",
    source="timm:vit_base_patch16_clip_quickgelu_224.openai",
    arch="vit_base_patch16_clip_quickgelu_224",
    patch_size=16,
    feature_dim=768,
    normalization="clip",
    resize="fit-16",
    input_size=224,
    pretraining="OpenAI WIT-400M image-text pairs, CLIP (contrastive image-text; not self-supervised)",
    training_datasets=("OpenAI WIT-400M",),
    supervision="image-text contrastive",
    license="MIT (OpenAI CLIP release; timm's Hub port lists apache-2.0)",
    citation=_CLIP,
    notes="QuickGELU as trained; CLS token after the final norm, before the 512-d image projection; 600 px FOVs resized to 608 px",
    **_RGB,
))

# ------------------------------------------------------------------------------------------------
# SubCell (microscopy): HPA single-cell ViT-B/16, the bg variants (nucleus + protein, OpenCell's channels)

_SUBCELL = (
    "Gupta et al., SubCell: Vision foundation models for microscopy capture single-cell biology, "
    "bioRxiv 2024.12.06.627299"
)
_SUBCELL_COMMON = dict(
    in_chans=2,
    input_channels=("nucleus", "protein"),  # bg: blue (DNA) then green (protein), SubCell's order
    default_channels="natural",
    normalization="min-max",
    intensity="raw",  # the min-max scaling per image makes the counts' scale irrelevant
    resize="fit-16",
    input_size=448,
    patch_size=16,
    training_datasets=("HPA single-cell",),
    # Pretext tasks only: masked reconstruction, cell- and protein-specific consistency (which images
    # show the same protein, not where it localizes); HPA's localization labels trained only the
    # release's MLP classifiers, which ocbench does not use.
    supervision="self-supervised",
    license="code MIT (CellProfiling/SubCellPortable); weights as stated by the SubCell release, check before use",
    citation=_SUBCELL,
)
_SUBCELL_IMPORT = (
    "weights: the release's bg encoder.pth, converted once with "
    "`ocbench backbones import {name} --checkpoint encoder.pth` (safe load, sha256 recorded)"
)

_CARDS.append(BackboneCard(
    name="subcell-bg-mae-pool",
    source="local:subcell-bg-mae-pool",
    arch="subcell-vit-b16-pool",
    feature_dim=1536,
    pretraining="HPA single-cell crops, MAE + cell- and protein-specific contrastive (SubCell MAE-CellS-ProtS-Pool)",
    notes="gated-attention pooling (2 heads x 768); 600 px FOVs resized to 608 px; " + _SUBCELL_IMPORT.format(name="subcell-bg-mae-pool"),
    **_SUBCELL_COMMON,
))
_CARDS.append(BackboneCard(
    name="subcell-bg-mae-cls",
    source="local:subcell-bg-mae-pool",  # the same weights, read from the pooled card's folder
    arch="subcell-vit-b16-cls",
    feature_dim=768,
    pretraining="HPA single-cell crops, MAE + cell- and protein-specific contrastive (SubCell MAE-CellS-ProtS-Pool)",
    notes="class token after the final norm, pooling unused; reads subcell-bg-mae-pool's weights folder",
    **_SUBCELL_COMMON,
))
_CARDS.append(BackboneCard(
    name="subcell-bg-vit-pool",
    source="local:subcell-bg-vit-pool",
    arch="subcell-vit-b16-pool",
    feature_dim=1536,
    pretraining="HPA single-cell crops, protein-specific contrastive (SubCell ViT-ProtS-Pool)",
    notes="gated-attention pooling (2 heads x 768); 600 px FOVs resized to 608 px; " + _SUBCELL_IMPORT.format(name="subcell-bg-vit-pool"),
    **_SUBCELL_COMMON,
))

#: Recent backbones, in the order ``ocbench backbones list`` shows them (after the seed paper's).
MODERN_CARDS: tuple[BackboneCard, ...] = tuple(_CARDS)
