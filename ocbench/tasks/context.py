"""What a task receives: the run context (dataset, split, backbone, cached embeddings, device, seed).

The runner builds one :class:`RunContext` per grid cell from objects it resolved once (dataset
card, backbone card, channel adapter, split) and hands it to ``task.evaluate(context)``. A task asks
the context for what it needs: ``context.embed()`` for the FOV embeddings (cached and resumable,
the backbone is loaded only on a cache miss), ``context.dataset`` for images and labels,
``context.split`` for the test part and folds. Whatever the task fetched is noted in
``context.inputs`` so the entry records it (weights sha256 and revision, precision, extraction
time, cache hit), whichever kind of input the task used.

A task that scores another backbone than the one it was given (``finetune`` trains one from it)
embeds through ``context.with_backbone(card)``; the runner then records that card as the entry's
backbone (the task names it beforehand through ``derived_backbone``, so the entry's key is known
before any work).

No torch here: the embedding function is the runner's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence, TypeVar

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from ocbench.backbones.adapters import ChannelAdapter
    from ocbench.backbones.card import BackboneCard
    from ocbench.data.base import ImageSplit, ItemSet

__all__ = ["RunContext", "Progress", "Inputs", "EmbeddingsLike"]

_T = TypeVar("_T")


class EmbeddingsLike(Protocol):
    """What ``context.embed()`` returns (``ocbench.benchmark.embeddings.Embeddings``)."""

    features: "np.ndarray"  # (N, D) float32
    fov_ids: Sequence[str]
    key: str
    meta: dict[str, Any]


class MainFirst(Protocol):
    """``main_first(work)`` -> ``work()``, rank 0 first under torchrun."""

    def __call__(self, work: Callable[[], _T]) -> _T: ...


def _one_process(work: Callable[[], _T]) -> _T:
    return work()


@dataclass
class Inputs:
    """Provenance of the inputs a task fetched through ``context.embed`` (read by the entry writer):
    the metadata of the dataset's embeddings, and of each other item set embedded (cell crops)."""

    embeddings: dict[str, Any] | None = None
    item_embeddings: list[dict[str, Any]] = field(default_factory=list)

    def as_details(self) -> dict[str, object]:
        """What was embedded, for a run's printed details (only what was fetched)."""
        out: dict[str, object] = {}
        if self.embeddings is not None:
            out["embeddings"] = self.embeddings
        if self.item_embeddings:
            out["item_embeddings"] = self.item_embeddings
        return out

    @property
    def last(self) -> dict[str, Any]:
        """The FOV embeddings' metadata, else the last item set's (cell crops); {} when none."""
        if self.embeddings:
            return self.embeddings
        return self.item_embeddings[-1] if self.item_embeddings else {}


class Progress:
    """Where a task reports progress, prefixed with the grid cell ("cell 3/8 · tiny-vit-random ·
    map-p1-n2 · fov-mlp · protein").

    On a terminal, ``bar(total, desc)`` is a live tqdm bar; without one (a log file, a batch job)
    bars are silent and ``step(text)`` prints one line per finished step instead, so a log shows
    how far a run got. ``note(text)`` always prints (when progress is on).
    """

    def __init__(self, enabled: bool = True, prefix: str = "") -> None:
        self.enabled = enabled
        self.prefix = prefix

    @property
    def interactive(self) -> bool:
        import sys

        return self.enabled and sys.stderr.isatty()

    def describe(self, what: str) -> str:
        return f"{self.prefix} · {what}" if self.prefix else what

    def bar(self, total: int, desc: str, unit: str = "it"):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=self.describe(desc), unit=unit, leave=False, disable=not self.interactive)

    def step(self, text: str) -> None:
        """A finished step, printed as a line only when there is no live bar to show it."""
        if self.enabled and not self.interactive:
            self.note(text)

    def note(self, text: str) -> None:
        if self.enabled:
            import sys

            print(self.describe(text), file=sys.stderr, flush=True)


@dataclass
class RunContext:
    """Everything a task may ask for in one grid cell."""

    #: The dataset's items: ``.card`` (DatasetCard), ``.name``, ``.version``, ``.ids``, ``.groups``,
    #: ``.labels`` (N, C) 0/1, ``.read(i)`` -> (channels, H, W) in ``card.channel_names`` order.
    dataset: "ItemSet"
    #: Split of the dataset's images: ``.indices_of(items) -> (test_idx, [fold_idx, ...])``.
    split: "ImageSplit"
    #: BackboneCard and the ChannelAdapter placing the dataset's channels into its inputs.
    backbone: "BackboneCard"
    adapter: "ChannelAdapter"
    #: ``embed_fn(context, items)`` -> Embeddings (``features`` (N, D) float32, ``fov_ids``, ``meta``).
    embed_fn: Callable[["RunContext", "ItemSet | None"], EmbeddingsLike]
    device: str = "cpu"
    seed: int = 0
    progress: Progress = field(default_factory=lambda: Progress(False))
    #: Provenance of the inputs the task fetched (filled by ``embed``; read by the entry writer).
    inputs: Inputs = field(default_factory=Inputs)
    #: How the run computes (tasks that train use them): DataLoader workers, "fp32" or "bf16".
    num_workers: int | None = None  # None: each consumer picks for its device (decoding, augmentation)
    precision: str = "fp32"
    #: The backbone whose features the result scores, when a task derived one from ``backbone``
    #: (fine-tuning); set by :meth:`with_backbone`. The entry records it instead of ``backbone``.
    scored_backbone: "BackboneCard | None" = None
    #: ``main_first(work)`` -> work(): under torchrun rank 0 does ``work`` before the other ranks, for
    #: work that fills a shared cache (segmentation) the others then only read; one process: work().
    main_first: MainFirst = _one_process

    def with_backbone(self, card: "BackboneCard", adapter: "ChannelAdapter | None" = None) -> "RunContext":
        """A context that embeds with ``card`` (and ``adapter``, default this one's), e.g. a backbone
        the task just trained. The result is then about ``card``: this context remembers it so the
        entry records it. Both contexts share ``inputs`` (one provenance record per entry)."""
        self.scored_backbone = card
        return dataclasses.replace(self, backbone=card, adapter=adapter if adapter is not None else self.adapter,
                                   scored_backbone=None)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.dataset.card.class_names)

    @property
    def labels(self):
        return self.dataset.labels

    def embed(self, items: "ItemSet | None" = None) -> EmbeddingsLike:
        """The backbone's embeddings (cached by key; see ``ocbench embed``) of every item of the
        dataset, or of ``items``: another :class:`~ocbench.data.base.ItemSet`, e.g. cell crops cut
        on the fly; its ``version`` must change whenever its pixels would."""
        return self.embed_fn(self, items)
