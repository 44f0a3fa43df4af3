"""The provenance blocks of an entry: which backbone, channel adapter, dataset, split and machine
produced it, how long it took, and what is kept beside it (predictions, chance references,
warnings), with :func:`entry_key`, the key and file stem built from its parts.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from ocbench.benchmark.entry_scores import Scores, _OmitsUnset, _Strict

_SHA256 = r"^[0-9a-f]{64}$"


class BackboneInfo(_OmitsUnset):
    name: str = Field(min_length=1, description="card name, e.g. hpa-fov-vitb8")
    source: str = Field(min_length=1, description="where the weights come from (hf-hub:, timm:, url:, local:, builtin:)")
    arch: str = Field(min_length=1)
    card: dict[str, Any] = Field(description="the full backbone card as a dict")
    weights_sha256: str | None = Field(default=None, pattern=_SHA256, description="null for weight-free backbones")
    revision: str | None = Field(default=None, description="resolved commit of the weights, when the source has one")
    weights_verified: bool | None = Field(
        default=None,
        description="true: the weights matched a checksum the card pins; false: they did not (e.g. a "
        "checkpoint imported for a card without a published checksum); null: weight-free or unknown",
    )
    weights_note: str | None = Field(default=None, description="what a reader should know about the weights' provenance")
    not_zero_shot: list[str] | None = Field(
        default=None,
        description="why the backbone is not zero-shot on this dataset (it was trained on these images or "
        "their labels), in words; [] = zero-shot; null = unknown (entries written before this was recorded)",
    )

    _OMIT_NONE: ClassVar[frozenset[str]] = frozenset({"not_zero_shot"})


class ChannelsInfo(_Strict):
    strategy: str = Field(min_length=1, description="replicate or map")
    key: str = Field(min_length=1, pattern=r"^[^/\\\s]+$", description="adapter key (filesystem safe)")
    spec: str | None = Field(default=None, description="the channel spec as given (natural, replicate, ...)")


class DatasetInfo(_OmitsUnset):
    name: str = Field(min_length=1, description="opencell, demo, or local:<folder> for a user's own data")
    version: str = Field(pattern=_SHA256, description="sha256 of the dataset's manifest (items, labels) and its files' content")
    n_items: int = Field(ge=1)
    min_grade: int = Field(default=1, ge=1, le=3, description="lowest annotation grade counted as a positive label")
    annotations: str | None = Field(default=None, description="file name of the annotation table used")
    annotations_sha256: str | None = Field(default=None, pattern=_SHA256, description="sha256 of that table")
    card: dict[str, Any] | None = Field(default=None, description="the dataset card (channel and class names, group column)")
    label_mode: Literal["multilabel", "single"] | None = Field(
        default=None, description="multilabel (any number of classes per item) or single (exactly one); "
        "absent in entries from before label modes, which were multilabel"
    )
    reader_options: dict[str, Any] | None = Field(default=None, description="the options the dataset was read with")

    _OMIT_NONE: ClassVar[frozenset[str]] = frozenset({"label_mode", "reader_options"})

    @property
    def labels(self) -> str:
        """The label mode (``multilabel`` for entries from before label modes)."""
        return self.label_mode or "multilabel"
    synthetic: bool = Field(default=False, description="true for generated data (the demo): not evidence about real cells")


class SplitInfo(_Strict):
    track: str = Field(min_length=1, pattern=r"^[a-z0-9-]+$", description="paper (by image) or protein (grouped)")
    seed: int
    sha256: str = Field(pattern=_SHA256, description="sha256 of the split file")


class EnvironmentInfo(_Strict):
    ocbench: str
    torch: str | None = None
    timm: str | None = None
    python: str
    platform: str
    device: str
    precision: str = Field(default="fp32", description="numeric precision of the backbone: fp32 or bf16")
    threads: int | None = Field(default=None, ge=1, description="CPU threads torch used")


class Timings(_Strict):
    extraction_s: float | None = Field(default=None, ge=0, description="embedding extraction, as first computed")
    extraction_cached: bool | None = Field(default=None, description="true when this run reused cached embeddings")
    task_s: float = Field(ge=0)
    # What the extraction cost, for the board's cost column (as first computed, like extraction_s).
    extraction_items: int | None = Field(default=None, ge=0, description="items (FOVs or cell crops) embedded")
    extraction_images_per_s: float | None = Field(default=None, ge=0, description="images per second over all processes")
    extraction_device: str | None = Field(default=None, description="device the embeddings were computed on")
    extraction_processes: int | None = Field(default=None, ge=1, description="processes (torchrun ranks) that shared the extraction")
    peak_host_memory_gib: float | None = Field(default=None, ge=0, description="peak resident memory of the process, GiB")
    peak_device_memory_gib: float | None = Field(default=None, ge=0, description="peak GPU memory allocated by torch, GiB")

    @property
    def device_seconds_per_1000(self) -> float | None:
        """Extraction cost: device-seconds per 1,000 embedded images (FOVs, or cell crops for a
        single-cell task), from the extraction's throughput: processes / images per second over all
        of them. Loading the model and checking the cache are left out (a cost per run, not per
        image), and so are images reused from an interrupted run. None when not recorded."""
        if not self.extraction_images_per_s:
            return None
        return 1000.0 * (self.extraction_processes or 1) / self.extraction_images_per_s


def entry_key(backbone: str, channels_key: str, task: str, track: str, seed: int = 0) -> str:
    """The entry's key and file stem: ``<backbone>__<channels>__<task>__<track>``, with
    ``__seed<N>`` appended for seeds other than 0 (each seed of a repeated run is its own entry)."""
    base = f"{backbone}__{channels_key}__{task}__{track}"
    return base if not seed else f"{base}__seed{seed}"


class PredictionsRef(_Strict):
    """The per-item predictions file kept beside the entry (:mod:`ocbench.predictions`)."""

    file: str = Field(pattern=r"^[^/\\\s]+\.npz$", description="file name, in the entry's folder")
    sha256: str = Field(pattern=_SHA256)
    eval_set: str = Field(min_length=1, description="the scored set the predictions are of (test, loo)")
    n_items: int = Field(ge=1)
    n_groups: int = Field(ge=1)
    group: str = Field(min_length=1, description="the group the interval resamples (protein)")


class Reference(_Strict):
    """A chance reference of the entry (:mod:`ocbench.chance`): never ranked, shown beside it."""

    name: str = Field(min_length=1, description="all-positive, majority-class, class-prior, shuffled-labels")
    description: str = Field(min_length=1, description="what the reference predicts, in words")
    scores: Scores = Field(min_length=1, description="{eval_set: {metric: summary}}, the entry's repetitions")
    draws: int | None = Field(default=None, ge=1, description="seeded draws averaged (random references)")
    standard_error: dict[str, float] | None = Field(
        default=None, description="{eval_set: standard error of the mean over the draws} (random references)"
    )


class EntryWarning(_Strict):
    """Something about the entry's predictions a reader must know (:func:`ocbench.chance.collapse_warnings`)."""

    kind: str = Field(min_length=1, description="constant-predictions, few-classes-predicted, chance-level")
    message: str = Field(min_length=1, description="the reason, in words")
