"""Tables of a lab's own images for tests: TIFFs or one PNG per channel, labels by class-specific
patterns in the second channel, written in a few seconds."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

CLASSES = ("alpha", "beta", "gamma", "delta", "epsilon")


def _image(rng: np.random.Generator, k: int, size: int, channels: int) -> np.ndarray:
    """(channels, size, size) uint16: noise everywhere, class ``k`` as the texture of channel 1."""
    yy, xx = np.mgrid[0:size, 0:size]
    image = rng.normal(1000, 50, size=(channels, size, size))
    frequency = 2 * np.pi * (k + 1) / size
    image[1] += 3000 * (1 + np.sin(frequency * xx + rng.uniform(0, 6.3))) * (1 + k) / len(CLASSES)
    image[0] += 2000 * np.exp(-((yy - size / 2) ** 2 + (xx - size / 2) ** 2) / (size / 4) ** 2)
    return np.clip(image, 0, 65535).astype(np.uint16)


def write_tiff_table(root: str | Path, *, per_class: int = 40, size: int = 32, groups: int = 4, multilabel: bool = False,
                     seed: int = 0, name: str = "my_images.csv") -> Path:
    """A table of ``per_class`` 3-channel TIFFs per class (single-label, or two classes per image
    with ``multilabel``), with a ``group`` column of ``groups`` groups per class."""
    import tifffile

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for k, c in enumerate(CLASSES):
        for j in range(per_class):
            file = f"images/{c}_{j:03d}.tif"
            tifffile.imwrite(root / file, _image(rng, k, size, 3), photometric="minisblack")
            label = f"{c}|{CLASSES[(k + 1) % len(CLASSES)]}" if multilabel else c
            rows.append({"path": file, "label": label, "group": f"{c}-g{j % groups}"})
    table = root / name
    with open(table, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label", "group"])
        writer.writeheader()
        writer.writerows(rows)
    return table


def write_channel_table(root: str | Path, *, per_class: int = 8, size: int = 32, seed: int = 0,
                        channels: tuple[str, ...] = ("dna", "protein"), groups: int = 0) -> Path:
    """A multi-label table with one PNG per channel (``path:dna``, ``path:protein``: the first holds
    a nucleus-like blob, the second the class texture); a ``group`` column of ``groups`` groups per
    class when ``groups`` > 0, else none."""
    from PIL import Image

    root = Path(root)
    (root / "png").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for k, c in enumerate(CLASSES):
        for j in range(per_class):
            image = _image(rng, k, size, len(channels))
            files = {}
            for ch, channel in enumerate(channels):
                file = f"png/{c}_{j:03d}_{channel}.png"
                Image.fromarray(image[ch]).save(root / file)
                files[f"path:{channel}"] = file
            group = {"group": f"{c}-g{j % groups}"} if groups else {}
            rows.append({**files, "label": f"{c}|{CLASSES[(k + 2) % len(CLASSES)]}", **group})
    table = root / "cells.tsv"
    with open(table, "w", newline="") as fh:
        columns = [f"path:{channel}" for channel in channels] + ["label"] + (["group"] if groups else [])
        writer = csv.DictWriter(fh, fieldnames=columns, delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    return table
