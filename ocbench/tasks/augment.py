"""Multi-crop augmentation for 2-channel 16-bit microscopy, on tensors (DINO views of one FOV).

Per FOV: the card's intensity rule on the whole image (uint16 -> float, per image and channel,
as for embedding), then ``2`` global and ``local_crops`` local views, each

1. a random resized crop: area fraction drawn uniformly from the crop's scale range, aspect
   ratio log-uniform in [3/4, 4/3] (up to 10 tries, else the largest centred square), resized
   with antialiasing (a 600 px FOV region becomes 224 or 96 px without aliasing);
2. a horizontal and a vertical flip, each with probability ``flip_p`` (microscopy has no up);
3. with probability ``warp_p``, cell warping: a smooth random displacement field (a 4x4 grid of
   random offsets, upsampled bicubically) plus a small random rotation/shear, applied with
   ``grid_sample`` (reflection at the border) so cells bend without tearing;
4. per-channel intensity jitter: gain and offset (relative to the channel's spread) and a gamma,
   each in ``1 +- intensity_jitter``. Under the z-score ("self") normalisation of the Dino4Cells
   and OpenCell cards gain and offset cancel and the gamma is what changes the input. No colour
   jitter, grayscale or solarisation: those are meant for RGB photographs.

then the channel adapter (dataset channels into the model's inputs, unused inputs zero) and the
card's normalisation, per crop. Every random number comes from a ``torch.Generator`` seeded with
``item_seed(seed, epoch, position)``, so an item's views do not depend on which DataLoader worker
or process made them: that is what lets a resumed or multi-process run repeat a single one.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from ocbench.errors import DataError

__all__ = ["MultiCropAugment", "CropDataset"]


def _uniform(g: torch.Generator, low: float, high: float, n: int = 1) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g, dtype=torch.float64)


class MultiCropAugment:
    """Callable ``(x (C, H, W) float, generator) -> [global, global, local, ...]`` crops (C, s, s)."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    def box(self, g: torch.Generator, height: int, width: int, scale: tuple[float, float]) -> tuple[int, int, int, int]:
        """(top, left, h, w) of a random resized crop, as torchvision's RandomResizedCrop draws it."""
        area = height * width
        log_ratio = (math.log(3 / 4), math.log(4 / 3))
        for _ in range(10):
            target = area * float(_uniform(g, *scale))
            ratio = math.exp(float(_uniform(g, *log_ratio)))
            w = int(round(math.sqrt(target * ratio)))
            h = int(round(math.sqrt(target / ratio)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,), generator=g))
                left = int(torch.randint(0, width - w + 1, (1,), generator=g))
                return top, left, h, w
        side = min(height, width)
        return (height - side) // 2, (width - side) // 2, side, side

    def crop(self, x: torch.Tensor, g: torch.Generator, size: int, scale: tuple[float, float]) -> torch.Tensor:
        cfg = self.cfg
        top, left, h, w = self.box(g, x.shape[-2], x.shape[-1], scale)
        out = F.interpolate(x[None, :, top : top + h, left : left + w], size=(size, size), mode="bilinear",
                            align_corners=False, antialias=True)
        flips = torch.rand(2, generator=g)
        if flips[0] < cfg.flip_p:
            out = out.flip(-1)
        if flips[1] < cfg.flip_p:
            out = out.flip(-2)
        if float(torch.rand(1, generator=g)) < cfg.warp_p and cfg.warp_strength > 0:
            out = self.warp(out, g)
        return self.jitter(out[0], g)

    def warp(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Smooth random deformation of (1, C, s, s); displacements up to ``warp_strength`` of the crop."""
        s = x.shape[-1]
        strength = 2.0 * self.cfg.warp_strength  # grid units span 2 per crop side
        coarse = (torch.rand(1, 2, 4, 4, generator=g) * 2 - 1) * strength
        field = F.interpolate(coarse, size=(s, s), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
        angle, shear = (float(v) for v in (torch.rand(2, generator=g) * 2 - 1) * strength)
        theta = torch.tensor([[[math.cos(angle), -math.sin(angle) + shear, 0.0],
                               [math.sin(angle), math.cos(angle), 0.0]]], dtype=x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False) + field.to(x.dtype)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def jitter(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        j = self.cfg.intensity_jitter
        if j <= 0:
            return x
        c = x.shape[0]
        gain, gamma = (1 + (torch.rand(2, c, 1, 1, generator=g) * 2 - 1) * j).to(x.dtype)
        offset = ((torch.rand(c, 1, 1, generator=g) * 2 - 1) * j).to(x.dtype)
        low = x.amin(dim=(-2, -1), keepdim=True)
        span = (x.amax(dim=(-2, -1), keepdim=True) - low).clamp_min(1e-6)
        unit = ((x - low) / span).clamp_(0, 1) ** gamma
        return (unit * gain + offset) * span + low

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> list[torch.Tensor]:
        cfg = self.cfg
        crops = [self.crop(x, g, cfg.global_crop_size, tuple(cfg.global_crop_scale)) for _ in range(2)]
        crops += [self.crop(x, g, cfg.local_crop_size, tuple(cfg.local_crop_scale)) for _ in range(cfg.local_crops)]
        return crops


class CropDataset(torch.utils.data.Dataset):
    """Training items of a dataset: ``self[(epoch, position)]`` -> the crops of one FOV (and one
    adapter view: a ``replicate`` adapter makes each FOV one item per channel).

    ``indices``: dataset positions to train on. ``forbidden_ids``: item ids that must never be
    trained on (the split's test part); any overlap is refused here, before any image is read.
    """

    def __init__(self, dataset: Any, indices: Sequence[int], card: Any, adapter: Any, cfg: Any, seed: int,
                 forbidden_ids: Sequence[str] = ()) -> None:
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64)
        ids = list(dataset.ids)
        leaked = sorted(set(ids[i] for i in self.indices) & set(map(str, forbidden_ids)))
        if leaked:
            raise DataError(
                f"{len(leaked)} test-split FOVs (e.g. {leaked[0]}) were about to enter training; "
                "fine-tuning may use the split's train part only"
            )
        self.card, self.adapter, self.seed = card, adapter, seed
        self.augment = MultiCropAugment(cfg)
        self.views = adapter.n_views

    def __len__(self) -> int:
        return len(self.indices) * self.views

    def __getitem__(self, key: tuple[int, int]) -> list[torch.Tensor]:
        from ocbench.backbones.preprocess import normalize, scale_intensity
        from ocbench.tasks.dino_ssl import item_seed

        epoch, position = key
        index = int(self.indices[position // self.views])
        view = position % self.views
        g = torch.Generator().manual_seed(item_seed(self.seed, epoch, position))
        image = np.asarray(self.dataset.read(index))
        x = scale_intensity(torch.from_numpy(image.astype(np.float32))[None], self.card.intensity)[0]
        crops = []
        for crop in self.augment(x, g):
            model_input = self.adapter.apply(crop[None])[view]
            crops.append(normalize(model_input, self.card.normalization)[0].contiguous())
        return crops
