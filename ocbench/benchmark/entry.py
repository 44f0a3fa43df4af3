"""The result entry: one JSON file per (backbone, channel strategy, task, split track).

This module is the single definition of the entry format. ``benchmark/`` writes entries with
:func:`write_entry`; ``leaderboard/`` reads them with :func:`load_entry` /
:func:`entry_from_dict`. It imports only pydantic and the standard library (never torch or
timm), so a board builds on a machine without them.

Format rules
------------
- ``schema_version`` says which layout a file has. The current one is :data:`SCHEMA_VERSION`.
  Older files are upgraded on load by the registered upgraders (``UPGRADERS`` entry ``"v"`` turns a
  version ``v`` dict into a version ``v + 1`` dict); a version this ocbench does not know is an
  error, never a guess.
- Unknown fields are an error at every level (``extra="forbid"``): a typo is not silently kept.
- Besides the JSON Schema (:func:`export_json_schema`, published as
  ``ocbench/leaderboard/entry.schema.json``), the model checks what a schema cannot: aggregates
  agree with the values, per-class rows have one value per class, ``key`` is built from its
  parts, an entry with overrides is marked off-protocol, ``created`` is an ISO date-time not in the
  future (of two same-key entries the newer is shown).

Schema version history
----------------------
- **0** (pre-release draft; no files of it were published, kept so the upgrade path is real and
  tested): flat layout. ``backbone`` was the card name with ``card``, ``weights_sha256`` and
  ``revision`` at top level; ``channels`` was the channel spec string; ``dataset_name``,
  ``dataset_version``, ``n_items``, ``split_track``, ``split_seed`` and ``split_sha256`` at top
  level; ``metrics.macro_f1.<val|test>`` was the plain list of fold scores and per-class scores
  sat in ``metrics.per_class``; ``versions`` (ocbench, torch, timm, python), ``platform`` and
  ``device`` at top level; ``wall_time_s`` = ``{"extraction": s, "task": s}``; ``date`` instead of
  ``created``; no ``protocol_version`` (every draft run was ``fov-probe/1``), no ``off_protocol``
  (implied by non-empty ``overrides``) and no ``key``.
- **1** (ocbench 0.1): FOV probes only. ``metrics`` held ``macro_f1.<val|test>`` (per-fold
  summaries with ``per_fold``), ``per_class.<set>.<f1|precision|recall>.<compartment>`` and
  ``per_fold_per_class``; the 17 OpenCell compartments were implied.
- **2**: the layout of :class:`Entry`: generic ``scores`` as ``{eval_set: {metric: summary}}``
  (summaries hold ``values``), the task's ``main_score``, ``class_names`` from the dataset card,
  ``per_class`` / ``per_class_values`` keyed by them, an optional ``axis`` (k, fraction), and
  provenance added for trust: ``off_protocol_reasons``, ``backbone.weights_verified`` /
  ``weights_note``, ``dataset.card`` / ``synthetic``, ``environment.precision`` / ``threads``.
- **3**: per-item predictions kept beside the entry (``predictions``: file name and sha256 of
  ``<key>.predictions.npz``, see :mod:`ocbench.predictions`); the evaluated set's main score
  carries its 95% interval by cluster bootstrap over the dataset's groups (``scores.<set>.<metric>
  .interval``, per axis point too); ``backbone.not_zero_shot`` (reasons the backbone saw the
  evaluation data or its labels in training; empty = zero-shot, absent = unknown); ``key`` ends
  in ``__seed<N>`` for seeds other than 0, so repeated seeds are separate entries. Version-2
  entries upgrade unchanged: they have no predictions and no intervals, and boards say so.
- **4**: ``references``: chance references computed from the labels alone on the same split and
  items (all-positive or majority-class, class-prior with its draws and standard error, shuffled
  labels through the task's own probe; :mod:`ocbench.chance`), scored like the entry on every set,
  with the same interval on the predictions' set; ``warnings``: what looks wrong with the
  predictions (constant, no positive for most classes, an interval that reaches the best chance
  reference), each with a ``kind`` and a ``message`` in words; ``feature_standardization``: what
  was done to the features before the task saw them (a card's declaration, recorded). Version-3
  entries upgrade with none of these (empty lists, null): they were never checked.
"""

from __future__ import annotations

import json
import math
import os
import platform as _platform
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator

from ocbench._io import atomic_write, read_json
from ocbench.data.cards import OPENCELL
from ocbench.errors import DataError
from ocbench.registry import Registry
from ocbench.summaries import summarize, summary_mean, summary_std

if TYPE_CHECKING:  # pragma: no cover
    from ocbench.tasks.base import Task, TaskResult

__all__ = [
    "SCHEMA_VERSION",
    "SCHEMA_PATH",
    "Entry",
    "MetricSummary",
    "entry_key",
    "entry_from_dict",
    "entry_to_json",
    "write_entry",
    "load_entry",
    "upgrade_entry_data",
    "register_upgrader",
    "known_schema_versions",
    "entry_json_schema",
    "export_json_schema",
    "environment_info",
    "now_iso",
]

SCHEMA_VERSION = 4

#: Where the published JSON Schema of the current version lives (package data, committed).
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "leaderboard" / "entry.schema.json"

_SHA256 = r"^[0-9a-f]{64}$"
_EVAL_SETS = ("val", "test")
# Aggregates must match the per-fold values up to rounding (a writer may round to 4 digits).
_AGGREGATE_TOLERANCE = 5e-4
#: How far ``created`` may lie ahead of this machine's clock (another machine's clock may run fast).
_CLOCK_SKEW = timedelta(days=1)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class _OmitsUnset(_Strict):
    """Leaves the optional fields of newer schema versions (``_OMIT_NONE``) out of the file while
    they are null, so an entry without them reads the same as before they existed."""

    _OMIT_NONE: ClassVar[frozenset[str]] = frozenset()
    _OMIT_EMPTY: ClassVar[frozenset[str]] = frozenset()  # lists left out while empty

    @model_serializer(mode="wrap")
    def _omit_nulls(self, handler: Any) -> Any:
        data = handler(self)
        for name in self._OMIT_NONE:
            if isinstance(data, dict) and data.get(name, 0) is None:
                del data[name]
        for name in self._OMIT_EMPTY:
            if isinstance(data, dict) and data.get(name, 0) == []:
                del data[name]
        return data


# ---------------------------------------------------------------------------------------------
# scores
# ---------------------------------------------------------------------------------------------
class IntervalInfo(_Strict):
    """A confidence interval of a score, and what it is (see :mod:`ocbench.stats`)."""

    estimate: float = Field(description="the score the interval is about (equals the summary's mean)")
    low: float
    high: float
    level: float = Field(gt=0, lt=1, description="confidence level, e.g. 0.95")
    method: str = Field(min_length=1, description="e.g. cluster bootstrap (percentile)")
    group: str = Field(min_length=1, description="what one resampled unit is (protein)")
    n_groups: int = Field(ge=1, description="number of groups in the evaluated set")
    n_resamples: int = Field(ge=1)
    seed: int = Field(ge=0, description="seed of the resampling")

    @model_validator(mode="after")
    def _ordered(self) -> "IntervalInfo":
        if not self.low <= self.high:
            raise ValueError(f"interval low {self.low} is above high {self.high}")
        return self

    def describe(self, digits: int = 3) -> str:
        """``0.822 [0.801, 0.843] 95% CI, protein bootstrap, 131 proteins``."""
        from ocbench.stats import Interval

        return Interval(**self.model_dump()).describe(digits)


class MetricSummary(_OmitsUnset):
    """One score over repetitions (cross-validation folds, fold models on the test set, seeds):
    the values and their mean and sample std (see :mod:`ocbench.summaries`), and where per-item
    predictions were kept, the interval of the mean."""

    values: list[float] = Field(min_length=1, description="one score per repetition (fold), in order")
    mean: float
    std: float | None = Field(description="standard deviation with `ddof`; null when n <= ddof")
    ddof: int = Field(ge=0, le=1)
    n: int = Field(ge=1, description="number of values")
    interval: IntervalInfo | None = Field(default=None, description="95% interval of the mean on the evaluated items")

    _OMIT_NONE: ClassVar[frozenset[str]] = frozenset({"interval"})

    @model_validator(mode="after")
    def _aggregates_match_values(self) -> "MetricSummary":
        if self.interval is not None and abs(self.interval.estimate - self.mean) > _AGGREGATE_TOLERANCE:
            raise ValueError(f"interval estimate {self.interval.estimate} does not match the mean {self.mean}")
        if self.n != len(self.values):
            raise ValueError(f"n is {self.n} but values has {len(self.values)} items")
        if not all(math.isfinite(v) for v in self.values):
            raise ValueError("values must be finite numbers")
        try:
            mean, std = summary_mean(self.values), summary_std(self.values, self.ddof)
        except OverflowError:
            raise ValueError("values are too large to be scores") from None
        if abs(mean - self.mean) > _AGGREGATE_TOLERANCE:
            raise ValueError(f"mean {self.mean} does not match the values (their mean is {mean:.6f})")
        if std is None:
            if self.std is not None:
                raise ValueError(f"std must be null when n ({self.n}) <= ddof ({self.ddof})")
        elif self.std is None or abs(std - self.std) > _AGGREGATE_TOLERANCE:
            raise ValueError(f"std {self.std} does not match the values (ddof={self.ddof} gives {std:.6f})")
        return self

    @property
    def per_fold(self) -> list[float]:  # the schema-1 name, kept for readers
        return self.values


#: ``{eval_set: {metric: summary}}``, e.g. ``{"val": {"macro_f1": ...}, "test": {...}}``.
Scores = dict[str, dict[str, MetricSummary]]


class MainScore(_Strict):
    """Which score ranks an entry: ``scores[eval_set][metric].mean``, higher is better unless
    ``higher_is_better`` is false (a loss, an error rate: then lower ranks first)."""

    eval_set: str = Field(min_length=1)
    metric: str = Field(min_length=1)
    #: Left out of the file while true (the default), so entries of higher-is-better tasks read as before.
    higher_is_better: bool = Field(default=True, description="false: lower is better (omitted when true)")

    @model_serializer(mode="wrap")
    def _omit_default_direction(self, handler: Any) -> Any:
        data = handler(self)
        if isinstance(data, dict) and data.get("higher_is_better") is True:
            del data["higher_is_better"]
        return data

    @property
    def label(self) -> str:
        return f"{self.metric} ({self.eval_set})"


class AxisPoint(_Strict):
    """The scores at one value of the entry's axis (e.g. k = 20)."""

    value: float
    scores: Scores = Field(min_length=1)
    per_class: dict[str, dict[str, dict[str, float]]] = Field(default_factory=dict)


class Axis(_Strict):
    """A named setting swept within one entry (k of a k-NN, fraction of fine-tuning data).

    ``points`` hold the scores at each value; the entry's top-level ``scores`` are those of the
    point at ``main`` (the value that ranks)."""

    name: str = Field(min_length=1, pattern=r"^[a-z][a-z0-9_]*$")
    main: float
    points: list[AxisPoint] = Field(min_length=1)

    @model_validator(mode="after")
    def _main_is_a_point(self) -> "Axis":
        values = [p.value for p in self.points]
        if len(set(values)) != len(values):
            raise ValueError(f"axis {self.name}: repeated values {values}")
        if self.main not in values:
            raise ValueError(f"axis {self.name}: main value {self.main} is not one of the points {values}")
        return self

    def point(self, value: float) -> AxisPoint:
        return next(p for p in self.points if p.value == value)


#: Metrics that are fractions: their values (and per-class values) must lie in [0, 1].
UNIT_INTERVAL_METRICS = frozenset({"macro_f1", "macro_f1_all", "f1", "precision", "recall", "accuracy"})


def _recorded_not_zero_shot_reasons(card: Mapping[str, Any], dataset_card: Mapping[str, Any]) -> list[str]:
    """The zero-shot rule (``backbones.provenance``) applied to the cards an entry records."""
    from types import SimpleNamespace

    from ocbench.backbones.provenance import not_zero_shot_reasons

    names = card.get("training_datasets") or ()
    extra = dataset_card.get("extra") or {}
    aliases = extra.get("training_data_names", ()) if isinstance(extra, Mapping) else None
    if (isinstance(names, str) or not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names)
            or not isinstance(aliases, (list, tuple))):
        raise ValueError("backbone.card.training_datasets and dataset.card.extra.training_data_names must be lists of "
                         "names; the entry was edited: run `ocbench run` again")
    backbone = SimpleNamespace(training_datasets=tuple(names), supervision=card.get("supervision"))
    dataset = SimpleNamespace(name=str(dataset_card.get("name", "")), extra=extra)
    return not_zero_shot_reasons(backbone, dataset)


def _check_scores_in_range(scores: Mapping[str, Mapping[str, "MetricSummary"]], where: str) -> None:
    for part, metrics in scores.items():
        for metric, summary in metrics.items():
            if metric in UNIT_INTERVAL_METRICS:
                for i, v in enumerate(summary.values):
                    if not 0.0 <= v <= 1.0:
                        raise ValueError(f"{where}.{part}.{metric}: value {i} ({v}) is outside [0, 1]")


def _check_per_class(per_class: Mapping[str, Mapping[str, Mapping[str, float]]], class_names: list[str], where: str) -> None:
    known = set(class_names)
    for part, kinds in per_class.items():
        for kind, scores in kinds.items():
            unknown = sorted(set(scores) - known)
            if unknown:
                raise ValueError(f"{where}.{part}.{kind}: unknown class(es) {unknown}; the entry's class_names are {class_names}")
            for name, v in scores.items():
                if not math.isfinite(v):
                    raise ValueError(f"{where}.{part}.{kind}: {name} is not a finite number")
                if kind in UNIT_INTERVAL_METRICS and not 0.0 <= v <= 1.0:
                    raise ValueError(f"{where}.{part}.{kind}: {name} score {v} is outside [0, 1]")


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def _check_aggregates_agree(
    scores: Mapping[str, Mapping[str, "MetricSummary"]],
    per_class: Mapping[str, Mapping[str, Mapping[str, float]]],
    per_class_values: Mapping[str, Mapping[str, list[list[float]]]],
    class_names: list[str],
) -> None:
    """Every recorded aggregate agrees with the entry's own per-fold, per-class numbers: each fold's
    ``macro_f1`` is the mean F1 over that fold's classes with positives (``support`` > 0) and its
    ``macro_f1_all`` the mean over all classes; each ``per_class`` value is the mean of its class's
    column over the folds where the class had positives. A score edited with its mean but not its
    per-class rows (or the other way round) is caught here."""

    def edited(what: str) -> ValueError:
        return ValueError(f"{what}; the entry was edited after `ocbench run` wrote it: run it again")

    for part, kinds in per_class_values.items():
        f1, support = kinds.get("f1"), kinds.get("support")
        summaries = scores.get(part, {})
        if f1:
            for metric, summary in summaries.items():
                if metric in ("macro_f1", "macro_f1_all") and len(f1) != summary.n:
                    raise edited(f"per_class_values.{part}.f1 has {len(f1)} rows but scores.{part}.{metric} has {summary.n} values")
            for i, row in enumerate(f1):
                present = [v for v, n in zip(row, support[i]) if n > 0] if support and i < len(support) else None
                expected = {"macro_f1_all": _mean(row), "macro_f1": _mean(present) if present else None}
                for metric, value in expected.items():
                    summary = summaries.get(metric)
                    if summary is None or value is None or (metric == "macro_f1" and present is None):
                        continue
                    if abs(summary.values[i] - value) > _AGGREGATE_TOLERANCE:
                        over = "all classes" if metric == "macro_f1_all" else "the classes with positives"
                        raise edited(
                            f"scores.{part}.{metric} value {i} is {summary.values[i]} but per_class_values.{part}.f1 row {i} "
                            f"gives {value:.6f} (the mean over {over})"
                        )
        if support and len(support) != len(f1 or support):
            raise edited(f"per_class_values.{part}.support has {len(support)} rows, f1 has {len(f1 or [])}")
        for kind, rows in kinds.items():
            means = per_class.get(part, {}).get(kind)
            if kind == "support" or not means or not rows:
                continue
            for j, name in enumerate(class_names):
                if name not in means:
                    continue
                column = [row[j] for i, row in enumerate(rows) if not support or i >= len(support) or support[i][j] > 0]
                if not column:
                    raise edited(f"per_class.{part}.{kind}.{name} is recorded but no row of per_class_values.{part}.support has a positive item of it")
                if abs(means[name] - _mean(column)) > _AGGREGATE_TOLERANCE:
                    raise edited(
                        f"per_class.{part}.{kind}.{name} is {means[name]} but its per_class_values rows average {_mean(column):.6f}"
                    )


def _check_point_agrees(point: "AxisPoint", where: str) -> None:
    """At an axis point scored by one model (n = 1), ``macro_f1`` is the mean of the per-class F1
    recorded there (those classes are the ones with positives)."""
    for part, metrics in point.scores.items():
        summary, f1 = metrics.get("macro_f1"), point.per_class.get(part, {}).get("f1")
        if summary is not None and summary.n == 1 and f1 and abs(summary.values[0] - _mean(list(f1.values()))) > _AGGREGATE_TOLERANCE:
            raise ValueError(
                f"{where}.scores.{part}.macro_f1 is {summary.values[0]} but the mean of {where}.per_class.{part}.f1 is "
                f"{_mean(list(f1.values())):.6f}; the entry was edited after `ocbench run` wrote it: run it again"
            )


# ---------------------------------------------------------------------------------------------
# provenance blocks
# ---------------------------------------------------------------------------------------------
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


class Entry(_OmitsUnset):
    """One benchmark result (schema version 4). Build with ``Entry.model_validate(dict)``."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,
        title=f"ocbench entry (schema_version {SCHEMA_VERSION})",
    )

    schema_version: Literal[4] = SCHEMA_VERSION
    protocol_version: str = Field(pattern=r"^[a-z0-9-]+/[0-9]+$", description="e.g. fov-probe/2")
    task: str = Field(min_length=1)
    task_config: dict[str, Any]
    overrides: dict[str, Any] = Field(default_factory=dict, description="settings changed from the protocol (--set)")
    off_protocol: bool
    off_protocol_reasons: list[str] = Field(default_factory=list, description="why the entry is off-protocol, in words")
    main_score: MainScore
    scores: Scores = Field(min_length=1, description="{eval_set: {metric: summary}}")
    class_names: list[str] = Field(min_length=1, description="the dataset's classes, in label-vector order")
    per_class: dict[str, dict[str, dict[str, float]]] = Field(
        default_factory=dict, description="{eval_set: {metric: {class name: mean over repetitions}}}"
    )
    per_class_values: dict[str, dict[str, list[list[float]]]] = Field(
        default_factory=dict,
        description="{eval_set: {metric: one row per repetition, one value per class in class_names order}}; "
        "metric 'support' holds the number of positive items per class",
    )
    axis: Axis | None = None
    backbone: BackboneInfo
    channels: ChannelsInfo
    dataset: DatasetInfo
    split: SplitInfo
    seed: int
    environment: EnvironmentInfo
    timings: Timings
    created: str = Field(description="ISO 8601 date-time of the run")
    key: str = Field(description="<backbone>__<channels>__<task>__<track>[__seed<N>]; the file is <key>.json")
    predictions: PredictionsRef | None = Field(default=None, description="per-item predictions beside the entry")
    references: list[Reference] = Field(
        default_factory=list, description="chance references on the same split and items (never ranked)"
    )
    warnings: list[EntryWarning] = Field(default_factory=list, description="collapse and chance-level warnings")
    feature_standardization: dict[str, Any] | None = Field(
        default=None, description="what was done to the features before the task (the card's declaration)"
    )

    _OMIT_NONE: ClassVar[frozenset[str]] = frozenset({"predictions", "feature_standardization"})
    _OMIT_EMPTY: ClassVar[frozenset[str]] = frozenset({"references", "warnings"})

    @field_validator("created")
    @classmethod
    def _iso_datetime(cls, value: str) -> str:
        try:
            stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{value!r} is not an ISO 8601 date-time (e.g. 2025-01-31T12:00:00+00:00)") from None
        stamp = stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)
        # the newest of two same-key entries is shown: a date in the future would always win
        if stamp > datetime.now(timezone.utc) + _CLOCK_SKEW:
            raise ValueError(f"{value!r} is in the future; a run cannot have been made after now: fix the date")
        return value

    @model_validator(mode="after")
    def _derived_fields_agree(self) -> "Entry":
        if self.overrides and not self.off_protocol:
            raise ValueError("overrides are set but off_protocol is false; an overridden run is off-protocol")
        if self.off_protocol_reasons and not self.off_protocol:
            raise ValueError("off_protocol_reasons are given but off_protocol is false")
        main = self.main_score
        if main.metric not in self.scores.get(main.eval_set, {}):
            raise ValueError(f"main_score {main.eval_set}/{main.metric} is not in scores")
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError("class_names has duplicates")
        _check_scores_in_range(self.scores, "scores")
        _check_per_class(self.per_class, self.class_names, "per_class")
        for part, kinds in self.per_class_values.items():
            for kind, rows in kinds.items():
                for i, row in enumerate(rows):
                    if len(row) != len(self.class_names):
                        raise ValueError(
                            f"per_class_values.{part}.{kind}[{i}] has {len(row)} values, expected {len(self.class_names)}"
                        )
                    if any(not math.isfinite(v) for v in row):
                        raise ValueError(f"per_class_values.{part}.{kind}[{i}] has a value that is not finite")
                    low, high = (0.0, 1.0) if kind in UNIT_INTERVAL_METRICS else (0.0 if kind == "support" else -math.inf, math.inf)
                    if any(not low <= v <= high for v in row):
                        raise ValueError(f"per_class_values.{part}.{kind}[{i}] has a value outside [{low}, {high}]")
                n = self.scores.get(part, {}).get(main.metric)
                if n is not None and len(rows) != n.n:
                    raise ValueError(f"per_class_values.{part}.{kind} has {len(rows)} rows, scores.{part}.{main.metric}.n is {n.n}")
        _check_aggregates_agree(self.scores, self.per_class, self.per_class_values, self.class_names)
        if self.axis is not None:
            point = self.axis.point(self.axis.main)
            if point.scores != self.scores:
                raise ValueError(f"scores must equal the axis point at {self.axis.name}={self.axis.main}")
            for p in self.axis.points:
                _check_scores_in_range(p.scores, f"axis.points[{p.value}].scores")
                _check_per_class(p.per_class, self.class_names, f"axis.points[{p.value}].per_class")
                _check_point_agrees(p, f"axis.points[{p.value}]")
        if self.backbone.not_zero_shot == [] and self.dataset.card is not None:
            reasons = _recorded_not_zero_shot_reasons(self.backbone.card, self.dataset.card)
            if reasons:
                raise ValueError(f"backbone.not_zero_shot is [] (zero-shot) but the recorded card says: {'; '.join(reasons)}")
        expected = entry_key(self.backbone.name, self.channels.key, self.task, self.split.track, self.seed)
        # entries of schema <= 2 had no seed in their key
        if self.key not in (expected, entry_key(self.backbone.name, self.channels.key, self.task, self.split.track)):
            raise ValueError(f"key {self.key!r} does not match its parts; expected {expected!r}")
        if any(c in self.key for c in "/\\ ") or self.key.startswith("."):
            raise ValueError(f"key {self.key!r} cannot be a file name")
        return self

    # Convenience accessors used by the leaderboard and the run summary.
    @property
    def main(self) -> MetricSummary:
        """The summary that ranks this entry."""
        return self.scores[self.main_score.eval_set][self.main_score.metric]

    def score(self, eval_set: str, metric: str | None = None) -> MetricSummary | None:
        """``scores[eval_set][metric or the main metric]``, None when absent."""
        return self.scores.get(eval_set, {}).get(metric or self.main_score.metric)

    @property
    def val(self) -> MetricSummary | None:
        return self.score("val")

    @property
    def test(self) -> MetricSummary | None:
        return self.score("test")


# ---------------------------------------------------------------------------------------------
# upgrades
# ---------------------------------------------------------------------------------------------
Upgrader = Callable[[dict], dict]
#: Upgraders by the version they read ("0" turns a version-0 dict into version 1).
UPGRADERS: Registry[Upgrader] = Registry("schema upgrader")


def register_upgrader(from_version: int) -> Callable[[Upgrader], Upgrader]:
    """Register ``fn(data_v) -> data_v_plus_1``; chains run until :data:`SCHEMA_VERSION`."""

    def deco(fn: Upgrader) -> Upgrader:
        if from_version >= SCHEMA_VERSION:
            raise ValueError(f"cannot upgrade from version {from_version}: current is {SCHEMA_VERSION}")
        if str(from_version) in UPGRADERS and UPGRADERS.get(str(from_version)) is not fn:
            raise ValueError(f"an upgrader from schema version {from_version} is already registered")
        UPGRADERS.register(str(from_version), fn)
        return fn

    return deco


def known_schema_versions() -> list[int]:
    """Versions :func:`load_entry` reads: the current one and every version with an upgrade chain."""
    versions = [SCHEMA_VERSION]
    v = SCHEMA_VERSION - 1
    while str(v) in UPGRADERS:
        versions.insert(0, v)
        v -= 1
    return versions


def v1_summary(values: Sequence[float]) -> dict[str, Any]:
    """A metric summary in the schema-1 layout (its list was called ``per_fold``), for upgrades and tests."""
    out = summarize(values)
    return {"per_fold": out.pop("values"), **out}


@register_upgrader(0)
def _upgrade_0_to_1(old: dict) -> dict:
    """Flat draft layout (see the module docstring) -> nested version 1."""
    d = dict(old)
    spec = d.pop("channels", None)
    spec = str(spec) if spec is not None else None
    channels_key = "".join(c if c.isalnum() or c in "._+=,-" else "-" for c in (spec or "default")) or "default"
    card = d.pop("card", {}) or {}
    backbone_name = d.pop("backbone", None)
    versions = d.pop("versions", {}) or {}
    wall = d.pop("wall_time_s", {}) or {}
    metrics = dict(d.pop("metrics", {}) or {})
    macro = metrics.pop("macro_f1", {}) or {}
    overrides = d.pop("overrides", {}) or {}
    track = d.pop("split_track", None)
    task = d.pop("task", None)
    new = {
        "schema_version": 1,
        "protocol_version": "fov-probe/1",
        "task": task,
        "task_config": d.pop("task_config", {}),
        "overrides": overrides,
        "off_protocol": bool(overrides),
        "backbone": {
            "name": backbone_name,
            "source": card.get("source"),
            "arch": card.get("arch"),
            "card": card,
            "weights_sha256": d.pop("weights_sha256", None),
            "revision": d.pop("revision", None),
        },
        "channels": {
            "strategy": "replicate" if spec == "replicate" else "map",
            "key": channels_key,
            "spec": spec,
        },
        "dataset": {
            "name": d.pop("dataset_name", "opencell"),
            "version": d.pop("dataset_version", None),
            "n_items": d.pop("n_items", None),
        },
        "split": {"track": track, "seed": d.pop("split_seed", None), "sha256": d.pop("split_sha256", None)},
        "metrics": {
            **metrics,  # per_class kept as is; anything unexpected is left for validation to flag
            "macro_f1": {part: v1_summary(folds) if isinstance(folds, list) else folds for part, folds in macro.items()},
        },
        "seed": d.pop("seed", None),
        "environment": {
            "ocbench": versions.get("ocbench"),
            "torch": versions.get("torch"),
            "timm": versions.get("timm"),
            "python": versions.get("python"),
            "platform": d.pop("platform", None),
            "device": d.pop("device", None),
        },
        "timings": {"extraction_s": wall.get("extraction"), "task_s": wall.get("task")},
        "created": d.pop("date", None),
        "key": entry_key(str(backbone_name), channels_key, str(task), str(track)),
    }
    d.pop("schema_version", None)
    new.update(d)  # unknown leftovers stay visible: validation names them
    return new


#: Schema 1 entries were all OpenCell FOV probes; their dataset name for the demo was "ocbench-demo".
_V1_DATASET_NAMES = {"ocbench-demo": "demo"}


@register_upgrader(1)
def _upgrade_1_to_2(old: dict) -> dict:
    """Schema 1 -> 2: ``metrics.macro_f1.<set>`` becomes ``scores.<set>.macro_f1_all``.

    Schema 1 wrote only FOV probes (protocol ``fov-probe/1``), whose macro-F1 averaged all 17
    OpenCell compartments, scoring a class without positives in the evaluated set as 0. Protocol
    ``fov-probe/2`` calls that variant ``macro_f1_all`` and ranks by ``macro_f1`` over the classes
    present; upgraded entries keep their number under its honest name and rank by it, exactly as
    before (they never share a table with protocol-2 entries).
    """
    d = dict(old)
    metrics = d.pop("metrics", None)
    if not isinstance(metrics, Mapping):
        return d  # validation names the missing field
    metrics = dict(metrics)
    macro = metrics.pop("macro_f1", {}) or {}
    per_class = metrics.pop("per_class", {}) or {}
    per_fold = metrics.pop("per_fold_per_class", {}) or {}

    def summary(value: Any) -> Any:
        if isinstance(value, Mapping) and "per_fold" in value:
            value = dict(value)
            value["values"] = value.pop("per_fold")
        return value

    d["main_score"] = {"eval_set": "val", "metric": "macro_f1_all"}
    d["scores"] = {part: {"macro_f1_all": summary(v)} for part, v in macro.items()} if isinstance(macro, Mapping) else macro
    d["class_names"] = list(OPENCELL.class_names)  # schema 1 was OpenCell's 17 compartments only
    if isinstance(per_class, Mapping):  # schema 1 allowed null precision/recall blocks
        per_class = {part: {k: v for k, v in kinds.items() if v is not None} if isinstance(kinds, Mapping) else kinds
                     for part, kinds in per_class.items()}
    d["per_class"] = per_class
    d["per_class_values"] = dict(per_fold) if isinstance(per_fold, Mapping) else per_fold
    if metrics:
        d["metrics"] = metrics  # unknown leftovers stay visible: validation names them
    d.setdefault("off_protocol_reasons", ["settings changed: " + ", ".join(sorted(d["overrides"]))] if d.get("overrides") else [])
    dataset = d.get("dataset")
    if isinstance(dataset, Mapping):
        dataset = dict(dataset)
        name = dataset.get("name")
        dataset["name"] = _V1_DATASET_NAMES.get(name, name)
        dataset.setdefault("synthetic", dataset["name"] == "demo")
        d["dataset"] = dataset
    return d


@register_upgrader(2)
def _upgrade_2_to_3(old: dict) -> dict:
    """Schema 2 -> 3: nothing moves. Version-2 entries kept no per-item predictions, so they have
    no intervals (boards show them without and say so) and do not record ``not_zero_shot``."""
    return dict(old)


@register_upgrader(3)
def _upgrade_3_to_4(old: dict) -> dict:
    """Schema 3 -> 4: nothing moves. Version-3 entries were never checked against chance
    references, so they carry none and no warnings."""
    return dict(old)


def upgrade_entry_data(data: Mapping[str, Any], *, source: str = "entry") -> dict:
    """Return ``data`` upgraded to :data:`SCHEMA_VERSION` (a new dict); DataError if impossible."""
    if "schema_version" not in data:
        raise DataError(
            f"{source}: field schema_version: missing; this is not an ocbench entry "
            "(entries are written by `ocbench run`)"
        )
    version = data["schema_version"]
    known = known_schema_versions()
    if isinstance(version, bool) or not isinstance(version, int) or version not in known:
        newer = isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION
        hint = "it was written by a newer ocbench: upgrade ocbench" if newer else "fix the file or re-run `ocbench run`"
        raise DataError(
            f"{source}: field schema_version: unknown version {version!r} (this ocbench reads "
            f"{', '.join(map(str, known))}); {hint}"
        )
    out = dict(data)
    while version < SCHEMA_VERSION:
        out = UPGRADERS.get(str(version))(out)
        version += 1
        out["schema_version"] = version
    return out


# ---------------------------------------------------------------------------------------------
# reading and writing
# ---------------------------------------------------------------------------------------------
def _describe_validation_error(exc: ValidationError, source: str) -> str:
    errors = exc.errors()
    first = errors[0]
    loc = ".".join(str(p) for p in first["loc"]) or "entry"
    if first["type"] == "extra_forbidden":
        msg = f"unknown field (not part of schema version {SCHEMA_VERSION})"
    elif first["type"] == "missing":
        msg = "missing"
    else:
        msg = str(first["msg"]).removeprefix("Value error, ")
    more = f" (+{len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return f"{source}: field {loc}: {msg}{more}; fix the file or re-run `ocbench run` to regenerate it"


def entry_from_dict(data: Any, *, source: str = "entry") -> Entry:
    """Upgrade and validate a decoded entry; DataError (one line naming source and field) if bad."""
    if isinstance(data, Entry):
        return data
    if not isinstance(data, Mapping):
        raise DataError(f"{source}: expected a JSON object, got {type(data).__name__}; this is not an ocbench entry")
    upgraded = upgrade_entry_data(data, source=source)
    try:
        return Entry.model_validate(upgraded)
    except ValidationError as exc:
        raise DataError(_describe_validation_error(exc, source)) from None


def entry_to_json(entry: Entry) -> str:
    """The canonical file text of an entry (2-space indent, trailing newline)."""
    return json.dumps(entry.model_dump(mode="json"), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def write_entry(entry: Entry | Mapping[str, Any], directory: str | os.PathLike) -> Path:
    """Validate and write ``<directory>/<key>.json`` atomically; return its path.

    A dict being written is a new entry, so a missing ``schema_version`` means the current one
    (files read back must state it).
    """
    if not isinstance(entry, Entry):
        data = dict(entry)
        data.setdefault("schema_version", SCHEMA_VERSION)
        entry = entry_from_dict(data, source="entry to write")
    path = Path(directory) / f"{entry.key}.json"
    with atomic_write(path) as fh:
        fh.write(entry_to_json(entry))
    return path


def load_entry(path: str | os.PathLike) -> Entry:
    """Read, upgrade and validate one entry file; DataError naming the file and field if bad."""
    path = Path(path)
    data = read_json(path, what="entry", advice="fix or delete the file", missing="give the path of an entry file")
    return entry_from_dict(data, source=str(path))


# ---------------------------------------------------------------------------------------------
# JSON Schema and helpers for writers
# ---------------------------------------------------------------------------------------------
def entry_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the current entry version."""
    schema = Entry.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **schema,
        "description": (
            f"An ocbench result entry, schema_version {SCHEMA_VERSION}. Generated from "
            "ocbench.benchmark.entry.Entry by export_json_schema(); do not edit by hand. "
            "ocbench also checks what this schema cannot express: aggregates match per-fold "
            "values, key matches its parts, overrides imply off_protocol."
        ),
    }


def export_json_schema(path: str | os.PathLike | None = None) -> Path:
    """Write the JSON Schema to ``path`` (default :data:`SCHEMA_PATH`) atomically; return the path."""
    path = Path(path) if path is not None else SCHEMA_PATH
    with atomic_write(path) as fh:
        fh.write(json.dumps(entry_json_schema(), indent=2, ensure_ascii=False) + "\n")
    return path


def now_iso() -> str:
    """Current UTC time as an ISO 8601 string (seconds), for ``created``."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def environment_info(device: str) -> dict[str, Any]:
    """The ``environment`` block, read from package metadata (imports neither torch nor timm)."""
    from importlib import metadata

    def version_of(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    from ocbench import __version__

    return {
        "ocbench": __version__,
        "torch": version_of("torch"),
        "timm": version_of("timm"),
        "python": sys.version.split()[0],
        "platform": _platform.platform(),
        "device": str(device),
    }


def build_entry(
    result: "TaskResult",
    *,
    task: "Task",
    key: str,
    task_config: Mapping[str, Any],
    overrides: Mapping[str, Any],
    off_protocol_reasons: list[str],
    backbone: Mapping[str, Any],
    channels: Mapping[str, Any],
    dataset: Mapping[str, Any],
    split: Mapping[str, Any],
    seed: int,
    environment: Mapping[str, Any],
    timings: Mapping[str, Any],
    predictions: Mapping[str, Any] | None = None,
    feature_standardization: Mapping[str, Any] | None = None,
) -> Entry:
    """Assemble and validate the entry of one run from a task's result and the run's provenance.

    ``result`` is a ``TaskResult`` (scores); ``task`` the task config the runner holds: its name,
    protocol version and ``main_score`` (which ranks the entry) are recorded, with ``task_config``
    (its settings and the digests of files they name). ``key``: the entry's key, computed once by the
    runner (:meth:`~ocbench.benchmark.runner.Cell.key_for`); the entry checks it against its parts.
    ``predictions``: the reference to the predictions file written beside the entry (file name,
    sha256); with ``result.predictions`` the scored set's main metric gets its interval.
    """
    eval_set, metric = task.main_score
    scores, axis = result.scores, result.axis
    warnings: list[dict[str, str]] = []
    references = list(result.references)
    if result.predictions is not None:
        scores, axis = _with_intervals(result.predictions, scores, axis, metric)
        # checked against the references, so a collapsed or chance-level entry says so itself
        warnings = _collapse_warnings(result.predictions, scores, axis, metric, references, task.higher_is_better)
    data = {
        "schema_version": SCHEMA_VERSION,
        "protocol_version": task.protocol_version,
        "task": task.name,
        "task_config": dict(task_config),
        "overrides": dict(overrides),
        "off_protocol": bool(off_protocol_reasons),
        "off_protocol_reasons": list(off_protocol_reasons),
        "main_score": {"eval_set": eval_set, "metric": metric,
                       **({} if task.higher_is_better else {"higher_is_better": False})},
        "scores": scores,
        "class_names": list(result.class_names),
        "per_class": result.per_class,
        "per_class_values": result.per_class_values,
        "axis": axis,
        "backbone": dict(backbone),
        "channels": dict(channels),
        "dataset": dict(dataset),
        "split": dict(split),
        "seed": seed,
        "environment": dict(environment),
        "timings": dict(timings),
        "created": now_iso(),
        "key": key,
        "predictions": dict(predictions) if predictions is not None else None,
        "references": references,
        "warnings": warnings,
        "feature_standardization": dict(feature_standardization) if feature_standardization else None,
    }
    return entry_from_dict(data, source=f"entry {data['key']}")


def _collapse_warnings(predictions: Any, scores: Mapping, axis: Mapping | None, metric: str,
                       references: Sequence[Mapping[str, Any]], higher_is_better: bool) -> list[dict[str, str]]:
    """:func:`ocbench.chance.collapse_warnings` of the kept predictions at the main point."""
    from ocbench.chance import collapse_warnings

    main = axis["main"] if axis is not None else None
    summary = scores.get(predictions.eval_set, {}).get(metric) or {}
    return collapse_warnings(
        predictions.y_true, predictions.at(main), interval=summary.get("interval"), references=references,
        eval_set=predictions.eval_set, metric=metric, higher_is_better=higher_is_better,
    )


def _with_intervals(predictions: Any, scores: Mapping, axis: Mapping | None, metric: str) -> tuple[dict, dict | None]:
    """``scores`` (and each axis point's) with the interval of ``metric`` on the predictions' set.

    Every point uses the same resampled groups (one seed), so intervals at different k agree in
    how lucky the draw was."""
    from ocbench.stats import N_RESAMPLES, SEED, bootstrap_interval, group_codes, resample_weights

    eval_set = predictions.eval_set
    _, n_groups = group_codes(predictions.groups)
    weights = resample_weights(n_groups, N_RESAMPLES, SEED)

    def attach(point_scores: Mapping, value: float | None) -> dict:
        out = {part: dict(metrics) for part, metrics in point_scores.items()}
        summary = out.get(eval_set, {}).get(metric)
        if summary is None:
            return out
        interval = bootstrap_interval(
            predictions.y_true, predictions.at(value), predictions.groups, weights=weights, group_name=predictions.group_name,
        )
        out[eval_set][metric] = {**summary, "interval": interval.to_dict()}
        return out

    if axis is None:
        return attach(scores, None), None
    points = [{**p, "scores": attach(p["scores"], p["value"])} for p in axis["points"]]
    main = next(p for p in points if p["value"] == axis["main"])
    return main["scores"], {**axis, "points": points}
