"""The entry model of the current schema version, :data:`SCHEMA_VERSION`, and its JSON Schema.

:class:`Entry` assembles the score and provenance blocks (:mod:`~ocbench.benchmark.entry_scores`,
:mod:`~ocbench.benchmark.entry_provenance`) and checks what a JSON Schema cannot
(:mod:`~ocbench.benchmark.entry_checks`). A new layout bumps :data:`SCHEMA_VERSION` here (and the
``schema_version`` literal of :class:`Entry`), registers an upgrader from the previous version in
:mod:`~ocbench.benchmark.entry_upgrades`, adds a line below and regenerates the published schema
with :func:`export_json_schema`.

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
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from ocbench._io import atomic_write
from ocbench.benchmark.entry_checks import (
    _check_aggregates_agree,
    _check_per_class,
    _check_point_agrees,
    _check_scores_in_range,
    _recorded_not_zero_shot_reasons,
)
from ocbench.benchmark.entry_provenance import (
    BackboneInfo,
    ChannelsInfo,
    DatasetInfo,
    EntryWarning,
    EnvironmentInfo,
    PredictionsRef,
    Reference,
    SplitInfo,
    Timings,
    entry_key,
)
from ocbench.benchmark.entry_scores import UNIT_INTERVAL_METRICS, Axis, MainScore, MetricSummary, Scores, _OmitsUnset

SCHEMA_VERSION = 4

#: Where the published JSON Schema of the current version lives (package data, committed).
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "leaderboard" / "entry.schema.json"

#: How far ``created`` may lie ahead of this machine's clock (another machine's clock may run fast).
_CLOCK_SKEW = timedelta(days=1)


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
