"""The result entry: one JSON file per (backbone, channel strategy, task, split track).

This module is the single definition of the entry format. ``benchmark/`` writes entries with
:func:`write_entry`; ``leaderboard/`` reads them with :func:`load_entry` /
:func:`entry_from_dict`. It imports only pydantic and the standard library (never torch or
timm), so a board builds on a machine without them.

Format rules
------------
- ``schema_version`` says which layout a file has. The current one is :data:`SCHEMA_VERSION`.
  Older files are upgraded on load by the registered upgraders (``_UPGRADERS[v]`` turns a
  version ``v`` dict into a version ``v + 1`` dict); a version this ocbench does not know is an
  error, never a guess.
- Unknown fields are an error at every level (``extra="forbid"``): a typo is not silently kept.
- Besides the JSON Schema (:func:`export_json_schema`, published as
  ``ocbench/leaderboard/entry.schema.json``), the model checks what a schema cannot: aggregates
  agree with the per-fold values, per-fold lists have ``n`` items, ``key`` is built from its
  parts, an entry with overrides is marked off-protocol, ``created`` is an ISO date-time.

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
- **1**: the layout of :class:`Entry`.
"""

from __future__ import annotations

import json
import math
import os
import platform as _platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ocbench._io import atomic_write
from ocbench.data.compartments import COMPARTMENTS
from ocbench.errors import DataError

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

SCHEMA_VERSION = 1

#: Where the published JSON Schema of the current version lives (package data, committed).
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "leaderboard" / "entry.schema.json"

_SHA256 = r"^[0-9a-f]{64}$"
_EVAL_SETS = ("val", "test")
# Aggregates must match the per-fold values up to rounding (a writer may round to 4 digits).
_AGGREGATE_TOLERANCE = 5e-4


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------
class MetricSummary(_Strict):
    """One score over cross-validation folds: the values and their mean/std."""

    per_fold: list[float] = Field(min_length=1, description="score of each fold, in fold order")
    mean: float
    std: float | None = Field(description="standard deviation with `ddof`; null when n <= ddof")
    ddof: int = Field(ge=0, le=1)
    n: int = Field(ge=1, description="number of folds")

    @field_validator("per_fold")
    @classmethod
    def _scores_in_unit_interval(cls, values: list[float]) -> list[float]:
        for i, v in enumerate(values):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"fold {i} score {v} is outside [0, 1]")
        return values

    @model_validator(mode="after")
    def _aggregates_match_folds(self) -> "MetricSummary":
        if self.n != len(self.per_fold):
            raise ValueError(f"n is {self.n} but per_fold has {len(self.per_fold)} values")
        mean = math.fsum(self.per_fold) / self.n
        if abs(mean - self.mean) > _AGGREGATE_TOLERANCE:
            raise ValueError(f"mean {self.mean} does not match the per_fold values (their mean is {mean:.6f})")
        if self.n > self.ddof:
            std = math.sqrt(math.fsum((v - mean) ** 2 for v in self.per_fold) / (self.n - self.ddof))
            if self.std is None or abs(std - self.std) > _AGGREGATE_TOLERANCE:
                raise ValueError(f"std {self.std} does not match the per_fold values (ddof={self.ddof} gives {std:.6f})")
        elif self.std is not None:
            raise ValueError(f"std must be null when n ({self.n}) <= ddof ({self.ddof})")
        return self


def _check_class_scores(scores: dict[str, float], what: str) -> dict[str, float]:
    unknown = sorted(set(scores) - set(COMPARTMENTS))
    if unknown:
        raise ValueError(f"{what}: unknown compartment(s) {unknown}; valid: {', '.join(COMPARTMENTS)}")
    for name, v in scores.items():
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{what}: {name} score {v} is outside [0, 1]")
    return scores


class PerClassScores(_Strict):
    """Per-compartment scores, each the mean over folds."""

    f1: dict[str, float] = Field(min_length=1)
    precision: dict[str, float] | None = None
    recall: dict[str, float] | None = None

    @model_validator(mode="after")
    def _same_compartments(self) -> "PerClassScores":
        _check_class_scores(self.f1, "f1")
        for kind in ("precision", "recall"):
            scores = getattr(self, kind)
            if scores is not None:
                _check_class_scores(scores, kind)
                if set(scores) != set(self.f1):
                    raise ValueError(f"{kind} covers other compartments than f1")
        return self


class Metrics(_Strict):
    """Scores of one run: ``macro_f1`` per evaluation set (``val``: cross-validation folds,
    ``test``: each fold's model on the held-out test set), per-class means, per-fold per-class."""

    macro_f1: dict[Literal["val", "test"], MetricSummary]
    per_class: dict[Literal["val", "test"], PerClassScores] = Field(default_factory=dict)
    per_fold_per_class: dict[Literal["val", "test"], dict[Literal["f1", "precision", "recall"], list[list[float]]]] = Field(
        default_factory=dict,
        description="per fold, one score per compartment in label-vector order (17)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> "Metrics":
        missing = [s for s in _EVAL_SETS if s not in self.macro_f1]
        if missing:
            raise ValueError(f"macro_f1 lacks the evaluation set(s) {missing}")
        for part, kinds in self.per_fold_per_class.items():
            n = self.macro_f1[part].n
            for kind, folds in kinds.items():
                if len(folds) != n:
                    raise ValueError(f"per_fold_per_class.{part}.{kind} has {len(folds)} folds, macro_f1.{part}.n is {n}")
                for i, row in enumerate(folds):
                    if len(row) != len(COMPARTMENTS):
                        raise ValueError(
                            f"per_fold_per_class.{part}.{kind}[{i}] has {len(row)} values, expected {len(COMPARTMENTS)}"
                        )
                    if any(not 0.0 <= v <= 1.0 for v in row):
                        raise ValueError(f"per_fold_per_class.{part}.{kind}[{i}] has a value outside [0, 1]")
        return self


# ---------------------------------------------------------------------------------------------
# provenance blocks
# ---------------------------------------------------------------------------------------------
class BackboneInfo(_Strict):
    name: str = Field(min_length=1, description="card name, e.g. hpa-fov-vitb8")
    source: str = Field(min_length=1, description="where the weights come from (hf-hub:, timm:, url:, local:)")
    arch: str = Field(min_length=1)
    card: dict[str, Any] = Field(description="the full backbone card as a dict")
    weights_sha256: str | None = Field(default=None, pattern=_SHA256, description="null for weight-free backbones")
    revision: str | None = Field(default=None, description="resolved commit of the weights, when the source has one")


class ChannelsInfo(_Strict):
    strategy: str = Field(min_length=1, description="replicate or map")
    key: str = Field(min_length=1, pattern=r"^[^/\\\s]+$", description="adapter key (filesystem safe)")
    spec: str | None = Field(default=None, description="the channel spec as given (natural, replicate, ...)")


class DatasetInfo(_Strict):
    name: str = Field(min_length=1)
    version: str = Field(pattern=_SHA256, description="sha256 of the dataset manifest")
    n_items: int = Field(ge=1)
    min_grade: int = Field(default=1, ge=1, le=3, description="lowest annotation grade counted as a positive label")
    annotations: str | None = Field(default=None, description="file name of the annotation table used")
    annotations_sha256: str | None = Field(default=None, pattern=_SHA256, description="sha256 of that table")


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


class Timings(_Strict):
    extraction_s: float | None = Field(default=None, ge=0, description="embedding extraction, as first computed")
    extraction_cached: bool | None = Field(default=None, description="true when this run reused cached embeddings")
    task_s: float = Field(ge=0)


def entry_key(backbone: str, channels_key: str, task: str, track: str) -> str:
    """The entry's key and file stem: ``<backbone>__<channels>__<task>__<track>``."""
    return f"{backbone}__{channels_key}__{task}__{track}"


class Entry(_Strict):
    """One benchmark result (schema version 1). Build with ``Entry.model_validate(dict)``."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,
        title=f"ocbench entry (schema_version {SCHEMA_VERSION})",
    )

    schema_version: Literal[1] = SCHEMA_VERSION
    protocol_version: str = Field(pattern=r"^[a-z0-9-]+/[0-9]+$", description="e.g. fov-probe/1")
    task: str = Field(min_length=1)
    task_config: dict[str, Any]
    overrides: dict[str, Any] = Field(default_factory=dict, description="settings changed from the protocol (--set)")
    off_protocol: bool
    backbone: BackboneInfo
    channels: ChannelsInfo
    dataset: DatasetInfo
    split: SplitInfo
    metrics: Metrics
    seed: int
    environment: EnvironmentInfo
    timings: Timings
    created: str = Field(description="ISO 8601 date-time of the run")
    key: str = Field(description="<backbone>__<channels>__<task>__<track>; the file is <key>.json")

    @field_validator("created")
    @classmethod
    def _iso_datetime(cls, value: str) -> str:
        try:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{value!r} is not an ISO 8601 date-time (e.g. 2025-01-31T12:00:00+00:00)") from None
        return value

    @model_validator(mode="after")
    def _derived_fields_agree(self) -> "Entry":
        if self.overrides and not self.off_protocol:
            raise ValueError("overrides are set but off_protocol is false; an overridden run is off-protocol")
        expected = entry_key(self.backbone.name, self.channels.key, self.task, self.split.track)
        if self.key != expected:
            raise ValueError(f"key {self.key!r} does not match its parts; expected {expected!r}")
        if any(c in self.key for c in "/\\ ") or self.key.startswith("."):
            raise ValueError(f"key {self.key!r} cannot be a file name")
        return self

    # Convenience accessors used by the leaderboard.
    @property
    def val(self) -> MetricSummary:
        return self.metrics.macro_f1["val"]

    @property
    def test(self) -> MetricSummary:
        return self.metrics.macro_f1["test"]


# ---------------------------------------------------------------------------------------------
# upgrades
# ---------------------------------------------------------------------------------------------
Upgrader = Callable[[dict], dict]
_UPGRADERS: dict[int, Upgrader] = {}


def register_upgrader(from_version: int) -> Callable[[Upgrader], Upgrader]:
    """Register ``fn(data_v) -> data_v_plus_1``; chains run until :data:`SCHEMA_VERSION`."""

    def deco(fn: Upgrader) -> Upgrader:
        if from_version in _UPGRADERS:
            raise ValueError(f"an upgrader from schema version {from_version} is already registered")
        if from_version >= SCHEMA_VERSION:
            raise ValueError(f"cannot upgrade from version {from_version}: current is {SCHEMA_VERSION}")
        _UPGRADERS[from_version] = fn
        return fn

    return deco


def known_schema_versions() -> list[int]:
    """Versions :func:`load_entry` reads: the current one and every version with an upgrade chain."""
    versions = [SCHEMA_VERSION]
    v = SCHEMA_VERSION - 1
    while v in _UPGRADERS:
        versions.insert(0, v)
        v -= 1
    return versions


def _summary_from_folds(values: list[float]) -> dict[str, Any]:
    vals = [float(v) for v in values]
    n = len(vals)
    mean = math.fsum(vals) / n if n else 0.0
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else None
    return {"per_fold": vals, "mean": mean, "std": std, "ddof": 1, "n": n}


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
            "macro_f1": {part: _summary_from_folds(folds) if isinstance(folds, list) else folds for part, folds in macro.items()},
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
        out = _UPGRADERS[version](out)
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
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: no such entry file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the entry ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); fix or delete the file"
        ) from None
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
