"""The demo's settings and its synthetic proteins.

:class:`DemoConfig` says what ``ocbench data demo`` writes (how many proteins, FOVs, pixels, the
seed); :func:`scaled_config` and :func:`parse_fraction` turn ``--scale`` into one sized like a
fraction of OpenCell. :class:`DemoProtein` is one synthetic target, and :func:`demo_proteins`
draws them all, with their graded localization labels, deterministically from the seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ocbench.data.compartments import COMPARTMENTS
from ocbench.data.layout import FovName
from ocbench.errors import ConfigError

#: How often a protein has 1, 2 or 3 labels (about 2.4 on average; OpenCell has 2.1). Each class
#: is then positive in about 14% of the FOVs: a probe trained at the protocol's learning rate for
#: 300 steps gets enough positives of every class to learn from.
_LABEL_COUNT_P = (0.1, 0.4, 0.5)


@dataclass(frozen=True)
class DemoConfig:
    """What ``ocbench data demo`` writes.

    ``proteins`` counts protein folders (with images); the last ``unlabelled_proteins`` of them get
    no annotation rows. ``annotation_only_proteins`` extra proteins have annotation rows but no
    images, and ``name_joined_proteins`` labelled proteins carry a different ENSG id in the
    annotation table than in their file names (as 36 real targets do), so the reader must join
    them by name. All of them give ``ocbench data info`` something to count.
    """

    proteins: int = 232
    fovs_per_protein: int = 5
    size: int = 64
    seed: int = 0
    cell_radius: float = 13.0
    unlabelled_proteins: int = 2
    annotation_only_proteins: int = 1
    name_joined_proteins: int = 1
    #: When above ``fovs_per_protein``, each protein gets a count drawn uniformly from
    #: ``fovs_per_protein..fovs_per_protein_max`` (OpenCell has 4-6 per protein); 0 = all equal.
    fovs_per_protein_max: int = 0
    #: Fraction of the demo's packing density: 1 packs cells so most touch (the demo's dense
    #: clumps); below 1 leaves gaps, as in OpenCell's fields (about 23 cells per 600 px FOV).
    cell_density: float = 1.0

    def __post_init__(self) -> None:
        checks = [
            (self.proteins >= 1, "proteins must be >= 1"),
            (self.fovs_per_protein >= 1, "fovs_per_protein must be >= 1"),
            (32 <= self.size <= 4096, "size must be between 32 and 4096 pixels"),
            (4.0 <= self.cell_radius <= self.size, "cell_radius must be between 4 px and the image size"),
            (0 <= self.unlabelled_proteins < self.proteins, "unlabelled_proteins must be >= 0 and < proteins"),
            (self.annotation_only_proteins >= 0, "annotation_only_proteins must be >= 0"),
            (
                0 <= self.name_joined_proteins <= self.proteins - self.unlabelled_proteins,
                "name_joined_proteins must be between 0 and the number of labelled proteins",
            ),
            (self.seed >= 0, "seed must be >= 0"),
            (
                self.fovs_per_protein_max == 0 or self.fovs_per_protein <= self.fovs_per_protein_max <= 16,
                "fovs_per_protein_max must be 0 or between fovs_per_protein and 16",
            ),
            (0.05 <= self.cell_density <= 1.0, "cell_density must be between 0.05 and 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"demo config: {message} (got {self})")

    @property
    def labelled_proteins(self) -> int:
        return self.proteins - self.unlabelled_proteins

    def fov_count(self, protein_index: int) -> int:
        """How many FOVs protein ``protein_index`` gets (its own draw, so independent of the others)."""
        if self.fovs_per_protein_max <= self.fovs_per_protein:
            return self.fovs_per_protein
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0xF0C, protein_index]))
        return int(rng.integers(self.fovs_per_protein, self.fovs_per_protein_max + 1))

    @property
    def n_fovs(self) -> int:
        """Number of image files written."""
        return sum(self.fov_count(index) for index in range(self.proteins))


@dataclass(frozen=True)
class DemoProtein:
    """One synthetic target: names, ids and its labels as {compartment: grade}."""

    index: int
    gene: str
    ensg: str
    annotation_ensg: str
    cid: int
    labels: dict[str, int] = field(default_factory=dict)
    has_images: bool = True

    def fov_names(self, fovs_per_protein: int) -> list[FovName]:
        # FIDs are unique over the whole demo, like OpenCell's.
        return [
            FovName(gene=self.gene, ensg=self.ensg, cid=self.cid, fid=10_000 + 16 * self.index + j)
            for j in range(fovs_per_protein)
        ]


#: OpenCell's real size, for :func:`scaled_config`: proteins with images, FOV size (px), cell
#: diameter (px at 0.2 um) and FOVs per protein (4-6, about 6,550 FOVs in all; OpenCell has ~6,800).
OPENCELL_PROTEINS = 1310
OPENCELL_FOV_SIZE = 600
OPENCELL_CELL_DIAMETER = 80.0
OPENCELL_FOVS_PER_PROTEIN = (4, 6)
#: Packing density that gives about 23 cells per 600 px FOV (OpenCell: ~157k cells in ~6,800 FOVs).
_OPENCELL_CELL_DENSITY = 0.38


def scaled_config(fraction: float, seed: int = 0, size: int = OPENCELL_FOV_SIZE) -> DemoConfig:
    """A demo at ``fraction`` of OpenCell's real size: ``round(fraction * 1,310)`` proteins (at least
    the 17 classes' worth, so main labels still cover every class), 4-6 FOVs each, 600 px fields
    with cells about 80 px across. ``fraction=1`` is about 6,550 FOVs, 150k cells and 9 GB.

    A smaller ``size`` shrinks the cells with the field (same cells per FOV): a quick look only."""
    if not (0 < fraction <= 1):
        raise ConfigError(f"demo scale must be a fraction in (0, 1], like 1/16 or 0.25 (got {fraction})")
    proteins = max(len(COMPARTMENTS) + 2, round(fraction * OPENCELL_PROTEINS))
    low, high = OPENCELL_FOVS_PER_PROTEIN
    return DemoConfig(
        proteins=proteins,
        fovs_per_protein=low,
        fovs_per_protein_max=high,
        size=size,
        cell_radius=OPENCELL_CELL_DIAMETER / 2 * size / OPENCELL_FOV_SIZE,
        cell_density=_OPENCELL_CELL_DENSITY,
        seed=seed,
    )


def parse_fraction(text: str) -> float:
    """``"1/16"``, ``"0.0625"`` or ``"1"`` as a float; a ConfigError names the bad text."""
    try:
        if "/" in text:
            numerator, denominator = text.split("/", 1)
            value = float(numerator) / float(denominator)
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"demo scale: expected a fraction like 1/16 or 0.25, got {text!r}") from None
    if not (0 < value <= 1):
        raise ConfigError(f"demo scale must be in (0, 1], like 1/16 or 0.25 (got {text!r})")
    return value


# --------------------------------------------------------------------------------------------
# Proteins and labels
# --------------------------------------------------------------------------------------------


def _gene_name(index: int) -> str:
    # Mostly DEMO<n>; every few proteins a name shaped like the awkward real ones (C12orf57,
    # H1-0, HLA-A, antisense -AS1) so the file name parser meets lower case and dashes.
    special = index % 9
    if special == 2:
        return f"C{index % 22 + 1}orf{40 + index}"
    if special == 5:
        return f"H1-{index}"
    if special == 7:
        return f"DEMO{index + 1}-as1"
    return f"DEMO{index + 1}"


def _ensg(index: int, offset: int = 0) -> str:
    # "ENSG9..." is not a real Ensembl id range: nobody mistakes these for real genes.
    return f"ENSG9{offset + index + 1:010d}"


def _draw_labels(rng: np.random.Generator, n_labelled: int) -> list[dict[str, int]]:
    """1-3 graded labels per protein; main labels cycle through the compartments evenly."""
    n_classes = len(COMPARTMENTS)
    # Main labels: every class equally often (rounds of a shuffled vocabulary), so the rare real
    # classes still have enough proteins for every fold and test part of both split tracks.
    # Extra labels are drawn uniformly too: a balanced demo, unlike OpenCell (where cytoplasmic
    # and nucleoplasm dominate), so that macro-F1 over 17 classes reflects every pattern.
    rounds = -(-n_labelled // n_classes)
    main = [str(c) for _ in range(rounds) for c in rng.permutation(COMPARTMENTS)][:n_labelled]
    main = [str(c) for c in rng.permutation(main)]

    labels = []
    for primary in main:
        grades = {primary: 3 if rng.random() < 0.85 else 2}
        n_labels = int(rng.choice([1, 2, 3], p=_LABEL_COUNT_P))
        while len(grades) < n_labels:
            extra = str(rng.choice(COMPARTMENTS))
            if extra not in grades:
                grades[extra] = int(rng.choice([3, 2, 1], p=[0.3, 0.4, 0.3]))
        labels.append(grades)
    return labels


def demo_proteins(config: DemoConfig) -> list[DemoProtein]:
    """The proteins (with their labels) that ``write_demo`` writes for this config."""
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 0x1ABE1]))
    # Proteins with images get the class coverage; annotation-only ones are drawn on their own.
    all_labels = _draw_labels(rng, config.labelled_proteins) + _draw_labels(rng, config.annotation_only_proteins)
    proteins = []
    n_total = config.proteins + config.annotation_only_proteins
    for index in range(n_total):
        has_images = index < config.proteins
        labelled = index < config.labelled_proteins or not has_images
        labels = all_labels.pop(0) if labelled else {}
        # The first labelled proteins with images are the name-joined ones.
        name_joined = has_images and index < config.name_joined_proteins
        proteins.append(
            DemoProtein(
                index=index,
                gene=_gene_name(index),
                ensg=_ensg(index),
                annotation_ensg=_ensg(index, offset=500_000_000) if name_joined else _ensg(index),
                cid=100 + index,
                labels=labels,
                has_images=has_images,
            )
        )
    return proteins

