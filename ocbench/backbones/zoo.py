"""The built-in backbone cards: the seed paper's backbones (the seed paper, sections 2.3-2.5) and two offline ones.

:data:`ZOO_CARDS` lists them in the curated order ``ocbench backbones list`` shows; the registry
(:mod:`ocbench.backbones.cards`) registers them on first use. The seed paper's numbers for these
backbones live in ``ocbench.reported`` (looked up by card name), not here: one place for the cards
and the leaderboard.

Hub revisions are pinned to the main-branch heads of the timm repositories on huggingface.co (the
Nov 2023 "Fixed task tag (#1)" merge commits; model.safetensors was added in May 2023); the loader
records the commit it actually resolves and checks the file against the Hub's sha256.
"""

from __future__ import annotations

from ocbench.backbones.card import BackboneCard

_CARDS: list[BackboneCard] = []


def _add(card: BackboneCard) -> None:
    _CARDS.append(card)

_SEED_PAPER = "Isselmann et al., Using Deep Learning Models Pretrained by Self-Supervised Learning for Protein Localization"
_DINO = "Caron et al., Emerging Properties in Self-Supervised Vision Transformers, ICCV 2021 (arXiv:2104.14294)"
_DINO4CELLS = (
    "Doron et al., Unbiased single-cell morphology with self-supervised vision transformers, "
    "bioRxiv 2023.06.16.545359 (Dino4Cells)"
)
_RGB = ("R", "G", "B")
_HPA = ("microtubules", "protein", "nucleus", "er")  # RGBY order of the HPA images


# ------------------------------------------------------------------------------------------------
# ImageNet-1k DINO (timm weights on the Hugging Face Hub)

_IMAGENET_COMMON = dict(
    in_chans=3,
    input_channels=_RGB,
    default_channels="imagenet-best",
    normalization="imagenet",
    intensity="percentile-0.1-99.9",
    resize="none",
    input_size=224,
    pretraining="ImageNet-1k, DINO (self-supervised)",
    training_datasets=("ImageNet-1k",),
    supervision="self-supervised",
    license="apache-2.0",
    citation=_DINO,
)

_add(BackboneCard(
    name="imagenet-dino-vits8",
    source="hf-hub:timm/vit_small_patch8_224.dino@a35ccfcf22d0da4b6bf49155c88d96d594fd4b01",
    arch="vit_small_patch8_224",
    patch_size=8,
    feature_dim=384,
    **_IMAGENET_COMMON,
))

_add(BackboneCard(
    name="imagenet-dino-vitb8",
    source="hf-hub:timm/vit_base_patch8_224.dino@943c780d9dd8362269b2abcb1cb83b984a6d229e",
    arch="vit_base_patch8_224",
    patch_size=8,
    feature_dim=768,
    **_IMAGENET_COMMON,
))

_add(BackboneCard(
    name="imagenet-dino-vitb16",
    source="hf-hub:timm/vit_base_patch16_224.dino@3ca4284a1d2db6ac0fc1a7e24e71ee0643260ec2",
    arch="vit_base_patch16_224",
    patch_size=16,
    feature_dim=768,
    notes="the paper uses it for the single-cell task only",
    **_IMAGENET_COMMON,
))

# ------------------------------------------------------------------------------------------------
# HPA DINO (Dino4Cells checkpoints on Zenodo; converted to safetensors by `ocbench backbones import`)

_HPA_COMMON = dict(
    in_chans=4,
    input_channels=_HPA,
    channel_letters=("R", "G", "B", "Y"),
    default_channels="natural",
    normalization="self",
    intensity="raw",  # z-score per image and channel: the scale of the counts does not matter
    resize="none",
    input_size=224,
    # The checkpoint's sha256 is not published next to it: None means it is recorded on first
    # download and enforced from then on (see sources.py), and entries say the weights are not
    # matched to a published checksum.
    sha256=None,
    supervision="self-supervised",
    license="as stated by the publisher on the Zenodo record (see source); check it before commercial use",
    citation=_DINO4CELLS,
)

_add(BackboneCard(
    name="hpa-fov-vitb8",
    source="url:https://zenodo.org/records/8061392/files/DINO_FOV_checkpoint.pth",
    arch="vit_base_patch8_224",
    patch_size=8,
    feature_dim=768,
    pretraining="Human Protein Atlas FOV images, DINO (Dino4Cells)",
    training_datasets=("HPA FOV",),
    notes="Zenodo record 8061392; the teacher backbone of the DINO checkpoint, DINO head dropped",
    **_HPA_COMMON,
))

_add(BackboneCard(
    name="hpa-sc-vitb16",
    source="url:https://zenodo.org/records/8061426/files/DINO_single_cell_checkpoint.pth",
    arch="vit_base_patch16_224",
    patch_size=16,
    feature_dim=768,
    pretraining="Human Protein Atlas single-cell crops, DINO (Dino4Cells)",
    training_datasets=("HPA single-cell",),
    notes="Zenodo record 8061426; the paper uses it for the single-cell task only",
    **_HPA_COMMON,
))

# ------------------------------------------------------------------------------------------------
# OpenCell from scratch: weights come from ocbench's own DINO training (the fine-tuning command)

_OPENCELL_COMMON = dict(
    in_chans=2,
    input_channels=("protein", "nucleus"),
    default_channels="natural",
    normalization="self",
    intensity="raw",
    resize="none",
    input_size=224,
    pretraining="OpenCell 90% train split, DINO from scratch (trained by ocbench)",
    training_datasets=("OpenCell",),
    supervision="self-supervised",
    license="same as the OpenCell data it is trained on",
    citation=_SEED_PAPER,
)

_add(BackboneCard(
    name="opencell-dino-vits8",
    source="local:opencell-dino-vits8",
    arch="vit_small_patch8_224",
    patch_size=8,
    feature_dim=384,
    notes="needs training: weights are produced by ocbench's DINO training on OpenCell",
    **_OPENCELL_COMMON,
))

_add(BackboneCard(
    name="opencell-dino-vitb8",
    source="local:opencell-dino-vitb8",
    arch="vit_base_patch8_224",
    patch_size=8,
    feature_dim=768,
    notes="needs training: weights are produced by ocbench's DINO training on OpenCell",
    **_OPENCELL_COMMON,
))

# ------------------------------------------------------------------------------------------------
# Offline backbones (no download): the classical and CellProfiler baselines and a random-init control

_add(BackboneCard(
    name="classical-stats",
    source="builtin:classical-stats",
    arch="classical-stats",
    in_chans=2,
    input_channels=("protein", "nucleus"),
    default_channels="natural",
    normalization="none",
    intensity="percentile-0.1-99.9",
    resize="none",
    feature_dim=92,
    pretraining="none: hand-crafted intensity, texture, spectral and co-localization statistics",
    license="MIT (part of ocbench)",
    citation="ocbench classical baseline (features listed by ocbench.backbones.classical.feature_names)",
    role="baseline",
    # 92 statistics of very different magnitudes: without it a cosine k-NN sees a few large ones only
    feature_standardization="robust",
    notes=(
        "per channel: mean, std, skewness, 7 percentiles, Otsu threshold and fraction above it, gradient "
        "magnitude and local std at 3 scales, co-occurrence contrast/homogeneity/energy/correlation at 3 "
        "distances, 8 radial power-spectrum bands; plus protein-nucleus correlation and mask overlaps; "
        "a masked cell crop is measured on the box of its non-zero pixels"
    ),
))

_add(BackboneCard(
    name="cellprofiler",
    source="builtin:cellprofiler",
    arch="cellprofiler",
    in_chans=2,
    input_channels=("protein", "nucleus"),
    default_channels="natural",
    normalization="none",
    # raw counts: crops are told from FOVs by their zeros, and FOVs are segmented on the counts the
    # single-cell track segments; each channel is stretched per image before measuring
    intensity="raw",
    resize="none",
    feature_dim=455,
    pretraining="none: CellProfiler measurements (cp-measure) per cell, median and MAD per image",
    license="MIT (part of ocbench); measurements by cp-measure (MIT)",
    citation=(
        "Stirling et al., CellProfiler 4: improvements in speed, utility and usability, BMC Bioinformatics 2021; "
        "measurements via cp-measure (github.com/afermg/cp_measure)"
    ),
    role="baseline",
    # areas in pixels beside correlations in [-1, 1]: profiling standardises each feature robustly
    feature_standardization="robust",
    notes=(
        "needs pip install 'ocbench[cellprofiler]'. Per cell: size/shape, Feret; per channel intensity, "
        "Haralick texture (distance 3, 16 grey levels), granularity (8 steps, half resolution), radial "
        "distribution (4 rings); protein-nucleus Pearson, Manders, RWC. Reduced for speed: no Zernike, no "
        "Costes, 16 grey levels instead of 256. Cell crops are one cell; FOVs are segmented with the classical "
        "backend and profiled by the median and MAD over their cells, plus the cell count"
    ),
))

_add(BackboneCard(
    name="tiny-vit-random",
    source="builtin:random-init",
    arch="vit_small_patch8_224",
    arch_kwargs={"embed_dim": 64, "depth": 2, "num_heads": 2},
    patch_size=8,
    init_seed=0,
    in_chans=3,  # RGB on purpose: exercises channel maps (imagenet-best, 6-map sweep) offline
    input_channels=_RGB,
    default_channels="imagenet-best",
    normalization="imagenet",
    intensity="percentile-0.1-99.9",
    resize="none",
    input_size=224,
    feature_dim=64,
    pretraining="none: seeded random initialization (a control)",
    license="MIT (part of ocbench)",
    citation="ocbench random-init control",
    notes="ViT-S/8 layout shrunk to width 64, depth 2, 2 heads; timm's init with torch seed 0",
    role="baseline",
))

# ------------------------------------------------------------------------------------------------
# Untrained twins of the seed paper's architectures: the same timm model, input size, channel
# preset and preprocessing as the ImageNet DINO cards, with seeded random weights (no download),
# so each pretrained row can be read against what its architecture gives without any training.

_RANDOM_COMMON = {
    **{k: v for k, v in _IMAGENET_COMMON.items() if k not in ("pretraining", "training_datasets", "supervision", "license", "citation")},
    "source": "builtin:random-init",
    "init_seed": 0,
    "pretraining": "none: seeded random initialization (untrained twin of the ImageNet DINO card)",
    "license": "MIT (part of ocbench)",
    "citation": "ocbench untrained baseline",
    "role": "baseline",
}

for _name, _arch, _patch, _dim, _twin in (
    ("random-vits8", "vit_small_patch8_224", 8, 384, "imagenet-dino-vits8"),
    ("random-vitb8", "vit_base_patch8_224", 8, 768, "imagenet-dino-vitb8"),
    ("random-vitb16", "vit_base_patch16_224", 16, 768, "imagenet-dino-vitb16"),
):
    _add(BackboneCard(
        name=_name, arch=_arch, patch_size=_patch, feature_dim=_dim,
        notes=f"{_arch} with timm's init under torch seed 0; the untrained twin of {_twin}",
        **_RANDOM_COMMON,
    ))


#: The built-in cards, in the order ``ocbench backbones list`` shows them.
ZOO_CARDS: tuple[BackboneCard, ...] = tuple(_CARDS)
