"""The classical baseline: hand-crafted per-image statistics, a real row on the leaderboard.

Input: model input (N, C, H, W) float (for the ``classical-stats`` card: protein and nucleus, each
percentile-scaled to [0, 1]). Output: (N, 44 * C + 4) float32. Every feature is computed per image,
in float32, with deterministic operations (sorting/selection, integer bincounts, FFT), so the
features do not depend on the batch or on the order of images.

Per channel (44):
- intensity (12): mean, std, skewness, percentiles 1/5/25/50/75/95/99, Otsu threshold, fraction
  of pixels above it;
- gradient magnitude (6): mean and std at scales 1, 2, 4 (2x2 / 4x4 average pooling);
- local contrast (6): mean and std of the 3x3 local standard deviation at scales 1, 2, 4;
- co-occurrence (12): Haralick contrast, homogeneity, energy, correlation of 8 grey levels at
  pixel distances 1, 2, 4 (horizontal + vertical, symmetric);
- spectrum (8): fraction of (mean-removed) power in 8 radial frequency bands (octaves from
  1/128 cycles/px up to Nyquist).

Across the first two channels (4): Pearson correlation, fraction of channel 0's intensity inside
channel 1's Otsu mask and vice versa, IoU of the two Otsu masks. For OpenCell this is "how much of
the protein sits in the nucleus": a strong localization cue.

Where an image is framed by rows and columns that are zero in every channel (a masked single-cell
crop: an 80 px cell in OpenCell's 512 px crop leaves over 90% of it black), the statistics describe
the smallest box holding all its non-zero pixels (at least 8 px a side): the black frame is padding,
not part of the cell, and measuring it would cost most of the time. Field-of-view images have no
such frame and are measured whole.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ocbench.backbones.preprocess import quantiles

#: Bump when any feature's definition changes (recorded as the backbone "revision").
#: 2: images framed by zeros (masked cell crops) are measured on their non-zero box.
CLASSICAL_VERSION = 2

_PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
_SCALES = (1, 2, 4)
_DISTANCES = (1, 2, 4)
_LEVELS = 8
_OTSU_BINS = 64
_BAND_EDGES = (0.0, 1 / 128, 1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, float("inf"))
_EPS = 1e-12
_GROUP_PIXELS = 1 << 20  # pixels (images x channels x H x W) measured together

PER_CHANNEL_FEATURES: tuple[str, ...] = (
    ("mean", "std", "skew")
    + tuple(f"p{p}" for p in _PERCENTILES)
    + ("otsu_threshold", "frac_above_otsu")
    + tuple(f"grad_{stat}_s{s}" for s in _SCALES for stat in ("mean", "std"))
    + tuple(f"localstd_{stat}_s{s}" for s in _SCALES for stat in ("mean", "std"))
    + tuple(f"glcm_{stat}_d{d}" for d in _DISTANCES for stat in ("contrast", "homogeneity", "energy", "correlation"))
    + tuple(f"power_band{b}" for b in range(len(_BAND_EDGES) - 1))
)
CROSS_FEATURES: tuple[str, ...] = ("pearson", "mass0_in_mask1", "mass1_in_mask0", "mask_iou")


def feature_dim(in_chans: int) -> int:
    return len(PER_CHANNEL_FEATURES) * in_chans + (len(CROSS_FEATURES) if in_chans >= 2 else 0)


def feature_names(channel_names: tuple[str, ...]) -> list[str]:
    names = [f"{channel}.{feature}" for channel in channel_names for feature in PER_CHANNEL_FEATURES]
    if len(channel_names) >= 2:
        names += [f"{channel_names[0]}~{channel_names[1]}.{feature}" for feature in CROSS_FEATURES]
    return names


# ------------------------------------------------------------------------------------------------
# Building blocks: each takes (R, H, W) float32, one row per image-channel, and returns (R, k)


def _index_dtype(bins: int) -> torch.dtype:
    """The narrowest integer type for histogram indices below ``bins``: the index arithmetic runs
    over every pixel, several times, and int16 moves a quarter of int64's bytes (same counts)."""
    return torch.int16 if bins <= 2**15 else torch.int32 if bins <= 2**31 else torch.int64


def _otsu(flat: torch.Tensor) -> torch.Tensor:
    """Per-row Otsu threshold on a 64-bin histogram between the row's min and max."""
    rows = flat.shape[0]
    low = flat.min(dim=1, keepdim=True).values
    high = flat.max(dim=1, keepdim=True).values
    span = (high - low).clamp_min(_EPS)
    index_dtype = _index_dtype(rows * _OTSU_BINS)
    bins = ((flat - low) / span * _OTSU_BINS).to(index_dtype).clamp_(0, _OTSU_BINS - 1)
    bins += (torch.arange(rows, device=flat.device, dtype=index_dtype) * _OTSU_BINS).unsqueeze(1)
    hist = torch.bincount(bins.reshape(-1), minlength=rows * _OTSU_BINS).reshape(rows, _OTSU_BINS)
    prob = hist.to(torch.float64) / flat.shape[1]
    centers = torch.arange(_OTSU_BINS, device=flat.device, dtype=torch.float64)
    weight0 = prob.cumsum(dim=1)
    mean0 = (prob * centers).cumsum(dim=1)
    total_mean = mean0[:, -1:]
    between = (total_mean * weight0 - mean0) ** 2 / (weight0 * (1 - weight0)).clamp_min(1e-18)
    between = torch.where((weight0 > 0) & (weight0 < 1), between, torch.zeros_like(between))
    cut = between.argmax(dim=1, keepdim=True)  # first maximum: deterministic
    return (low + (cut.to(flat.dtype) + 1) / _OTSU_BINS * (high - low)).squeeze(1)


def _intensity(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Intensity features (R, 12) and the Otsu masks (R, H, W)."""
    rows = images.shape[0]
    flat = images.reshape(rows, -1)
    mean = flat.mean(dim=1)
    centered = flat - mean.unsqueeze(1)
    std = centered.pow(2).mean(dim=1).sqrt()
    skew = centered.pow(3).mean(dim=1) / std.pow(3).clamp_min(_EPS)
    skew = torch.where(std > 1e-6, skew, torch.zeros_like(skew))
    pct = quantiles(flat, [p / 100 for p in _PERCENTILES])
    threshold = _otsu(flat)
    mask = flat > threshold.unsqueeze(1)
    frac = mask.to(flat.dtype).mean(dim=1)
    features = torch.cat([torch.stack([mean, std, skew], 1), pct, torch.stack([threshold, frac], 1)], dim=1)
    return features, mask.reshape(images.shape)


def _pooled(images: torch.Tensor, scale: int) -> torch.Tensor:
    x = images.unsqueeze(1)
    return x if scale == 1 else F.avg_pool2d(x, scale)


def _gradient(images: torch.Tensor) -> torch.Tensor:
    out = []
    for scale in _SCALES:
        x = _pooled(images, scale)[:, 0]
        gx = x[:, :-1, 1:] - x[:, :-1, :-1]
        gy = x[:, 1:, :-1] - x[:, :-1, :-1]
        magnitude = (gx * gx + gy * gy).sqrt().reshape(x.shape[0], -1)
        out += [magnitude.mean(dim=1), magnitude.std(dim=1, unbiased=False)]
    return torch.stack(out, dim=1)


def _local_contrast(images: torch.Tensor) -> torch.Tensor:
    out = []
    for scale in _SCALES:
        x = _pooled(images, scale)
        local_mean = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        local_sq = F.avg_pool2d(x * x, 3, stride=1, padding=1, count_include_pad=False)
        local_std = (local_sq - local_mean * local_mean).clamp_min(0).sqrt().reshape(x.shape[0], -1)
        out += [local_std.mean(dim=1), local_std.std(dim=1, unbiased=False)]
    return torch.stack(out, dim=1)


def _cooccurrence(images: torch.Tensor) -> torch.Tensor:
    rows = images.shape[0]
    flat = images.reshape(rows, -1)
    low = flat.min(dim=1).values.view(rows, 1, 1)
    span = (flat.max(dim=1).values.view(rows, 1, 1) - low).clamp_min(_EPS)
    index_dtype = _index_dtype(rows * _LEVELS * _LEVELS)
    levels = ((images - low) / span * _LEVELS).to(index_dtype).clamp_(0, _LEVELS - 1)
    offsets = (torch.arange(rows, device=images.device, dtype=index_dtype) * _LEVELS * _LEVELS).view(rows, 1, 1)
    grid = torch.arange(_LEVELS, device=images.device, dtype=torch.float64)
    i_index, j_index = grid.view(1, -1, 1), grid.view(1, 1, -1)
    out = []
    for distance in _DISTANCES:
        pairs = [
            (levels[:, :, :-distance], levels[:, :, distance:]),  # horizontal
            (levels[:, :-distance, :], levels[:, distance:, :]),  # vertical
        ]
        counts = torch.zeros(rows * _LEVELS * _LEVELS, dtype=torch.int64, device=images.device)
        for a, b in pairs:
            if a.numel() == 0:
                continue
            index = a * _LEVELS + b
            index += offsets
            counts += torch.bincount(index.reshape(-1), minlength=rows * _LEVELS * _LEVELS)
        matrix = counts.reshape(rows, _LEVELS, _LEVELS).to(torch.float64)
        matrix = matrix + matrix.transpose(1, 2)  # symmetric: a->b and b->a
        prob = matrix / matrix.sum(dim=(1, 2), keepdim=True).clamp_min(1)
        diff = i_index - j_index
        contrast = (prob * diff * diff).sum(dim=(1, 2))
        homogeneity = (prob / (1 + diff.abs())).sum(dim=(1, 2))
        energy = (prob * prob).sum(dim=(1, 2))
        mean_i = (prob * i_index).sum(dim=(1, 2))
        var_i = (prob * (i_index - mean_i.view(-1, 1, 1)) ** 2).sum(dim=(1, 2))
        cov = (prob * (i_index - mean_i.view(-1, 1, 1)) * (j_index - mean_i.view(-1, 1, 1))).sum(dim=(1, 2))
        # symmetric matrix: both marginals are equal; a flat image has no variance -> correlation 0
        correlation = torch.where(var_i > 1e-12, cov / var_i.clamp_min(1e-12), torch.zeros_like(cov))
        out += [contrast, homogeneity, energy, correlation]
    return torch.stack(out, dim=1).to(images.dtype)


def _spectrum(images: torch.Tensor) -> torch.Tensor:
    rows, h, w = images.shape
    centered = images - images.mean(dim=(1, 2), keepdim=True)
    power = torch.fft.rfft2(centered.to(torch.float64)).abs() ** 2
    fy = torch.fft.fftfreq(h, device=images.device, dtype=torch.float64).view(-1, 1)
    fx = torch.fft.rfftfreq(w, device=images.device, dtype=torch.float64).view(1, -1)
    radius = (fy * fy + fx * fx).sqrt()
    total = power.sum(dim=(1, 2)).clamp_min(1e-30)
    bands = []
    for low, high in zip(_BAND_EDGES[:-1], _BAND_EDGES[1:]):
        band = ((radius > low) & (radius <= high)).to(torch.float64)
        bands.append((power * band).sum(dim=(1, 2)) / total)
    return torch.stack(bands, dim=1).to(images.dtype)


def _cross(first: torch.Tensor, second: torch.Tensor, mask_first: torch.Tensor, mask_second: torch.Tensor) -> torch.Tensor:
    n = first.shape[0]
    a, b = first.reshape(n, -1), second.reshape(n, -1)
    ma, mb = mask_first.reshape(n, -1).to(a.dtype), mask_second.reshape(n, -1).to(a.dtype)
    ac, bc = a - a.mean(dim=1, keepdim=True), b - b.mean(dim=1, keepdim=True)
    denominator = (ac.pow(2).sum(dim=1) * bc.pow(2).sum(dim=1)).sqrt()
    pearson = torch.where(denominator > 1e-12, (ac * bc).sum(dim=1) / denominator.clamp_min(1e-12), torch.zeros_like(denominator))
    mass_a, mass_b = a.clamp_min(0).sum(dim=1), b.clamp_min(0).sum(dim=1)
    a_in_b = torch.where(mass_a > 0, (a.clamp_min(0) * mb).sum(dim=1) / mass_a.clamp_min(_EPS), torch.zeros_like(mass_a))
    b_in_a = torch.where(mass_b > 0, (b.clamp_min(0) * ma).sum(dim=1) / mass_b.clamp_min(_EPS), torch.zeros_like(mass_b))
    union = ((ma + mb) > 0).to(a.dtype).sum(dim=1)
    iou = torch.where(union > 0, (ma * mb).sum(dim=1) / union.clamp_min(1), torch.zeros_like(union))
    return torch.stack([pearson, a_in_b, b_in_a, iou], dim=1)


def content_boxes(x: torch.Tensor, min_side: int) -> list[tuple[int, int, int, int] | None]:
    """Per image of (N, C, H, W): (top, bottom, left, right) of the smallest box holding every pixel
    that is non-zero in some channel, widened to ``min_side`` inside the image; None where that box
    is the whole image (or the image is all zero, which is measured whole)."""
    n, c, h, w = x.shape
    # numpy's elementwise passes are several times faster than torch's bool reductions here
    nonzero = x.detach().cpu().numpy() != 0
    occupied = nonzero[:, 0].copy()
    for channel in range(1, c):
        occupied |= nonzero[:, channel]
    row_used, col_used = occupied.any(axis=2), occupied.any(axis=1)
    boxes: list[tuple[int, int, int, int] | None] = []
    for i in range(n):
        rows, cols = np.flatnonzero(row_used[i]), np.flatnonzero(col_used[i])
        if rows.size == 0:
            boxes.append(None)
            continue
        top, bottom = _widen(int(rows[0]), int(rows[-1]) + 1, min_side, h)
        left, right = _widen(int(cols[0]), int(cols[-1]) + 1, min_side, w)
        boxes.append(None if (top, bottom, left, right) == (0, h, 0, w) else (top, bottom, left, right))
    return boxes


def _widen(start: int, stop: int, min_side: int, size: int) -> tuple[int, int]:
    missing = min_side - (stop - start)
    if missing <= 0:
        return start, stop
    start = max(0, min(start - missing // 2, size - min_side))
    return start, start + min_side


def _image_features(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) float32 -> (N, feature_dim(C)), every image measured whole."""
    n, c, h, w = x.shape
    images = x.reshape(n * c, h, w)
    intensity, masks = _intensity(images)
    per_row = torch.cat([intensity, _gradient(images), _local_contrast(images), _cooccurrence(images), _spectrum(images)], dim=1)
    features = [per_row.reshape(n, c * per_row.shape[1])]
    if c >= 2:
        images = images.reshape(n, c, h, w)
        masks = masks.reshape(n, c, h, w)
        features.append(_cross(images[:, 0], images[:, 1], masks[:, 0], masks[:, 1]))
    return torch.cat(features, dim=1).to(torch.float32)


class ClassicalFeatures(torch.nn.Module):
    """Parameter-free feature extractor: (N, C, H, W) -> (N, feature_dim(C)) float32."""

    def __init__(self, in_chans: int = 2):
        super().__init__()
        self.in_chans = in_chans

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"classical features expect (N, {self.in_chans}, H, W); got {tuple(x.shape)}")
        if min(x.shape[-2:]) < 2 * max(_SCALES):
            raise ValueError(f"images of {tuple(x.shape[-2:])} px are too small for classical features (min {2 * max(_SCALES)} px)")
        x = x.to(torch.float32)
        min_side = 2 * max(_SCALES)
        boxes = content_boxes(x, min_side)
        whole = [i for i, box in enumerate(boxes) if box is None]
        out = torch.empty(x.shape[0], feature_dim(self.in_chans), dtype=torch.float32, device=x.device)
        # Whole images in groups of at most _GROUP_PIXELS (a 600 px FOV alone): a batch's float64
        # intermediates would be tens of MB each, memory the allocator returns to the system and
        # takes back, zeroed, at every operation; and threads would split a batch's reductions
        # differently from one image's, so the last bits of a feature would depend on the batch.
        group = max(1, _GROUP_PIXELS // (x.shape[1] * x.shape[2] * x.shape[3]))
        for start in range(0, len(whole), group):
            chosen = whole[start : start + group]
            out[chosen] = _image_features(x[chosen])
        for i, box in enumerate(boxes):
            if box is not None:  # each cell on its own box: sizes differ, and padding would change them
                top, bottom, left, right = box
                out[i] = _image_features(x[i : i + 1, :, top:bottom, left:right])[0]
        return out
