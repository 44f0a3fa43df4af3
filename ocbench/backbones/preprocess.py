"""From uint16 dataset images (OpenCell FOVs) to what a backbone sees: intensity rule, resize policy, normalization.

Order (fixed, and part of :func:`preprocess_key`):

1. **intensity** (per image and per dataset channel, on the raw counts):
   ``percentile-<lo>-<hi>`` maps the lo-th percentile to 0 and the hi-th to 1, clipped to [0, 1]
   (numpy's linear percentile); a channel whose percentiles coincide becomes all zero.
   ``raw`` keeps counts as float32; ``unit`` divides by 65535.
2. **resize** on the dataset's channels: ``none`` (native size, e.g. 600 px), ``resize-<S>`` (bilinear,
   antialiased, to SxS), ``center-crop-<S>`` or ``fit-<P>`` (bilinear, antialiased, each side to the
   nearest multiple of P, at least P: a patch-14 ViT sees OpenCell's 600 px FOVs at 602 px, 43 x 43
   patches, instead of losing a 12 px strip to the patch grid).
3. the **channel adapter** places the channels into the model's inputs; unused inputs are zero.
4. **normalization** of the model input: ``imagenet`` ((x - mean) / std per RGB channel), ``clip``
   (OpenAI CLIP's mean/std), ``inception`` (mean 0.5, std 0.5 per channel),
   ``self`` (per-image per-channel z-score as in Dino4Cells: (x - mean) / (std + 1e-7), population
   std, so an all-zero input channel stays zero), ``min-max`` (per image over all input channels
   jointly: (x - min) / (max - min + 1e-6), as SubCell scales its input) or ``none``.

The rule parsers live in :mod:`ocbench.backbones.specs`; torch is imported inside the tensor functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ocbench.backbones.adapters import ChannelAdapter
from ocbench.backbones.card import BackboneCard
from ocbench.backbones.specs import parse_intensity, parse_resize
from ocbench.errors import ConfigError, DataError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "PREPROCESS_VERSION", "preprocess_key", "describe_preprocess", "model_inputs", "scale_intensity",
    "resize_images", "normalize", "quantiles", "parse_intensity", "parse_resize",
]

#: Bump when the meaning of any rule below changes: cached embeddings then become misses.
PREPROCESS_VERSION = 1

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: Per-channel (mean, std) of the named normalizations (the same numbers for every input channel
#: when one value is given).
MEAN_STD: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "inception": ((0.5,), (0.5,)),
}
SELF_NORM_EPS = 1e-7
MIN_MAX_EPS = 1e-6


def preprocess_key(card: BackboneCard) -> str:
    """Stable, filesystem-safe string of everything here that changes the features (cache keys)."""
    return f"pp{PREPROCESS_VERSION}_{card.intensity}_{card.normalization}_{card.resize}"


def describe_preprocess(card: BackboneCard) -> str:
    """One human line, e.g. for ``ocbench backbones show``."""
    intensity = parse_intensity(card.intensity)
    if intensity[0] == "percentile":
        first = f"per-image per-channel percentile scaling ({intensity[1]:g}th -> 0, {intensity[2]:g}th -> 1, clipped)"
    elif intensity[0] == "raw":
        first = "raw uint16 counts as float32"
    else:
        first = "counts / 65535"
    resize = parse_resize(card.resize)
    if resize[0] == "none":
        second = "native size (no resize)"
    elif resize[0] == "fit":
        second = f"resize each side to the nearest multiple of {resize[1]} px"
    else:
        second = f"{resize[0]} to {resize[1]} px"
    third = {
        "imagenet": "ImageNet mean/std",
        "clip": "OpenAI CLIP mean/std",
        "inception": "mean 0.5, std 0.5",
        "self": "per-image per-channel z-score (self-normalization)",
        "min-max": "per-image min-max over all input channels jointly",
        "none": "no normalization",
    }[card.normalization]
    return f"{first}; {second}; channel adapter (unused inputs zero); {third}"


# ------------------------------------------------------------------------------------------------
# Tensor operations (torch imported lazily)


def _ranks_of_mostly_zero_rows(array, zeros, ranks: list[int]):
    """Order statistics ``ranks`` of each non-negative row of ``array`` (rows, n), (rows, len(ranks)).

    A masked cell crop is mostly zeros: a rank below the row's count of zeros is 0, any other is
    the (rank - zeros)-th of its non-zero values, so only those are partitioned. Same values as
    partitioning the whole row.
    """
    import numpy as np

    out = np.zeros((array.shape[0], len(ranks)), dtype=array.dtype)
    for i, row in enumerate(array):
        first = next((j for j, rank in enumerate(ranks) if rank >= zeros[i]), len(ranks))
        if first < len(ranks):
            wanted = [rank - int(zeros[i]) for rank in ranks[first:]]
            out[i, first:] = np.partition(row[row != 0], wanted)[wanted]
    return out


def quantiles(flat: "torch.Tensor", qs: "list[float] | tuple[float, ...]") -> "torch.Tensor":
    """Per-row quantiles of a 2-D float tensor (rows, n), numpy's 'linear' method; shape (rows, len(qs)).
    On CPU the rows may also be integer counts (uint16 images): their quantiles come back in float32.

    No size limit (torch.quantile has one). A couple of quantiles use kthvalue (linear time); more
    share one sort.
    """
    import math

    import torch

    n = flat.shape[-1]
    if flat.device.type == "cpu":
        # np.partition puts every requested rank in place in one linear pass: several times
        # faster than torch.kthvalue on CPU, where this dominates preprocessing time.
        import numpy as np

        ranks = sorted({r for q in qs for r in (math.floor(q * (n - 1)), math.ceil(q * (n - 1)))})
        array = flat.detach().numpy()
        # Every 64th pixel tells a mostly-black crop from a field of view without a pass over all
        # of them; either path gives the same values.
        if array.ndim == 2 and (array[:, ::64] == 0).mean() > 0.5 and array.min() >= 0:
            zeros = n - np.count_nonzero(array, axis=-1)
            placed = _ranks_of_mostly_zero_rows(array, zeros, ranks)
        else:
            placed = np.partition(array, ranks, axis=-1)[..., ranks]
        # Integer counts (exact in float32 below 2**24) are partitioned as they are, without a float copy.
        placed = torch.from_numpy(placed if placed.dtype.kind == "f" else placed.astype(np.float32))
        column = {rank: j for j, rank in enumerate(ranks)}

        def kth(rank: int) -> "torch.Tensor":
            return placed[..., column[rank]]
    elif len(qs) > 2:
        ordered = flat.sort(dim=-1).values

        def kth(rank: int) -> "torch.Tensor":
            return ordered[..., rank]
    else:

        def kth(rank: int) -> "torch.Tensor":
            return torch.kthvalue(flat, rank + 1, dim=-1).values

    columns = []
    for q in qs:
        position = q * (n - 1)
        low, high = math.floor(position), math.ceil(position)
        low_value = kth(low)
        columns.append(low_value if high == low else low_value + (kth(high) - low_value) * (position - low))
    return torch.stack(columns, dim=-1)


_SCALE_CHUNK_PIXELS = 1 << 18  # pixels scaled together: 1 MB of float32, within a core's cache


def scale_intensity(images: "torch.Tensor", rule: str) -> "torch.Tensor":
    """(N, C, H, W) counts of any numeric dtype -> float32 per the card's intensity rule."""
    import torch

    parsed = parse_intensity(rule)
    if parsed[0] == "raw":
        return images.to(torch.float32, copy=True)
    if parsed[0] == "unit":
        return images.to(torch.float32) / 65535.0
    n, c, h, w = images.shape
    counts = images.reshape(n * c, h * w)
    if counts.device.type != "cpu" or counts.dtype.is_floating_point:
        counts = counts.to(torch.float32)  # the quantiles of float32 values, as scaled below; torch's sort wants floats
    bounds = quantiles(counts, (parsed[1] / 100.0, parsed[2] / 100.0))
    low = bounds[:, 0:1]
    span = bounds[:, 1:2] - low
    # A flat channel (span 0) carries no signal: map it to zeros rather than dividing by zero.
    flat_rows = ~(span[:, 0] > 0)
    safe_span = torch.where(flat_rows[:, None], torch.ones_like(span), span)
    scaled = torch.empty((n * c, h * w), dtype=torch.float32, device=images.device)
    # A few rows at a time, each converted and scaled in place while it is still in cache (the same
    # values as ((counts - low) / span).clamp(0, 1)): a whole batch of 512 px crops is tens of MB,
    # and every pass over it would go to memory and back.
    step = max(1, _SCALE_CHUNK_PIXELS // (h * w))
    for start in range(0, n * c, step):
        rows = slice(start, start + step)
        scaled[rows].copy_(counts[rows]).sub_(low[rows]).div_(safe_span[rows]).clamp_(0.0, 1.0)
    if bool(flat_rows.any()):
        scaled[flat_rows] = 0.0
    return scaled.reshape(n, c, h, w)


def resize_images(x: "torch.Tensor", policy: str) -> "torch.Tensor":
    import torch.nn.functional as F

    parsed = parse_resize(policy)
    if parsed[0] == "none":
        return x
    size = parsed[1]
    if parsed[0] == "fit":
        h, w = x.shape[-2:]
        target = tuple(max(size, round(side / size) * size) for side in (h, w))
        if target == (h, w):
            return x
        return F.interpolate(x, size=target, mode="bilinear", align_corners=False, antialias=True)
    if parsed[0] == "resize":
        if x.shape[-2:] == (size, size):
            return x
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    h, w = x.shape[-2:]
    if h < size or w < size:
        raise DataError(f"image of {h}x{w} px is smaller than the card's center crop of {size} px")
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


def normalize(x: "torch.Tensor", normalization: str) -> "torch.Tensor":
    """Normalize model inputs (N, in_chans, H, W) float32; returns a new tensor."""
    import torch

    if normalization == "none":
        return x
    if normalization in MEAN_STD:
        mean, std = MEAN_STD[normalization]
        mean = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std
    if normalization == "min-max":
        low = x.amin(dim=(-3, -2, -1), keepdim=True)
        high = x.amax(dim=(-3, -2, -1), keepdim=True)
        return (x - low) / (high - low + MIN_MAX_EPS)
    if normalization == "self":
        mean = x.mean(dim=(-2, -1), keepdim=True)
        std = x.std(dim=(-2, -1), keepdim=True, unbiased=False)
        return (x - mean) / (std + SELF_NORM_EPS)
    raise ConfigError(f"unknown normalization '{normalization}'")


def model_inputs(batch: "torch.Tensor", card: BackboneCard, adapter: ChannelAdapter) -> "list[torch.Tensor]":
    """uint16 batch (N, C, H, W) in the adapter's channel order -> one normalized model input per view."""
    channels = adapter.channels
    if batch.ndim != 4 or batch.shape[1] != len(channels):
        raise DataError(
            f"expected a batch of shape (N, {len(channels)}, H, W) in channel order {', '.join(channels)}; "
            f"got {tuple(batch.shape)}"
        )
    if adapter.in_chans != card.in_chans:
        raise ConfigError(f"channel adapter {adapter.key} is for {adapter.in_chans} input channels; {card.name} has {card.in_chans}")
    x = scale_intensity(batch, card.intensity)
    x = resize_images(x, card.resize)
    return [normalize(view, card.normalization) for view in adapter.apply(x)]
