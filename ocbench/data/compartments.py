"""The OpenCell label vocabulary and channel names: the one place they are defined."""

from __future__ import annotations

#: The 17 localization compartments of OpenCell, in the order used for label vectors.
COMPARTMENTS: tuple[str, ...] = (
    "membrane",
    "vesicles",
    "er",
    "golgi",
    "mitochondria",
    "centrosome",
    "cytoskeleton",
    "chromatin",
    "nucleoplasm",
    "nuclear_membrane",
    "nucleolus_gc",
    "nucleolus_fc_dfc",
    "nuclear_punctae",
    "big_aggregates",
    "cell_contact",
    "focal_adhesions",
    "cytoplasmic",
)

#: Annotation grades: 3 prominent, 2 less pronounced, 1 weak.
GRADES: tuple[int, ...] = (1, 2, 3)

#: Named channels downstream of the reader, in this canonical order (the paper's "[1, 2]").
CHANNELS: tuple[str, ...] = ("protein", "nucleus")

#: Position of each named channel in a public ``_proj.tif`` file (CYX): 0 Hoechst, 1 mNeonGreen.
RAW_CHANNEL_INDEX: dict[str, int] = {"nucleus": 0, "protein": 1}
