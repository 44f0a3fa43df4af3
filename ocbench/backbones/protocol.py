"""What the runner and the embedding cache call on a loaded backbone: the :class:`Backbone` protocol.

:func:`ocbench.backbones.loader.load_backbone` returns one (``loader.Backbone``), and so may a
caller's own object (a model already in memory, a test's fake): the embedding cache asks nothing
else of it. Types only: importing this module imports neither torch nor timm.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ocbench.backbones.adapters import ChannelAdapter
    from ocbench.backbones.card import BackboneCard
    from ocbench.backbones.loader import BackboneIdentity

__all__ = ["Backbone"]


@runtime_checkable
class Backbone(Protocol):
    """A loaded backbone: its card, where and how it computes, what identifies its numbers, and
    ``embed_raw`` (uint16 images in the adapter's channel order -> (N, feature_dim * views) float32)."""

    card: "BackboneCard"
    device: "torch.device"
    #: "fp32", or "bf16" (autocast; CUDA only).
    precision: str
    weights_sha256: str | None
    revision: str | None
    #: Where the weights came from (None when the caller built the model itself).
    identity: "BackboneIdentity | None"

    @property
    def preprocess_key(self) -> str: ...

    def embed_raw(self, batch: "torch.Tensor", adapter: "ChannelAdapter | None" = None) -> "torch.Tensor": ...
