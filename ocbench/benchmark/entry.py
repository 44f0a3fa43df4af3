"""The result entry: one JSON file per (backbone, channel strategy, task, split track).

This module is the single public face of the entry format. ``benchmark/`` writes entries with
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

Where it is defined
-------------------
- :mod:`~ocbench.benchmark.entry_schema`: :class:`Entry`, :data:`SCHEMA_VERSION` and the history
  of the versions, the JSON Schema export;
- :mod:`~ocbench.benchmark.entry_scores` and :mod:`~ocbench.benchmark.entry_provenance`: the blocks
  an entry is made of; :mod:`~ocbench.benchmark.entry_checks`: the checks across them;
- :mod:`~ocbench.benchmark.entry_upgrades`: the upgraders from older versions;
- :mod:`~ocbench.benchmark.entry_io`: reading and writing files;
- :mod:`~ocbench.benchmark.entry_build`: assembling the entry of one run.

Readers import from here (the leaderboard reads nothing else of ``benchmark/``), so the split
into modules is free to change.
"""

from __future__ import annotations

# The names readers import from here, re-exported from the modules that define them.
from ocbench.benchmark.entry_build import build_entry, environment_info, now_iso
from ocbench.benchmark.entry_io import entry_from_dict, entry_to_json, load_entry, write_entry
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
from ocbench.benchmark.entry_schema import SCHEMA_PATH, SCHEMA_VERSION, Entry, entry_json_schema, export_json_schema
from ocbench.benchmark.entry_scores import (
    UNIT_INTERVAL_METRICS,
    Axis,
    AxisPoint,
    IntervalInfo,
    MainScore,
    MetricSummary,
    Scores,
)
from ocbench.benchmark.entry_upgrades import (
    UPGRADERS,
    Upgrader,
    known_schema_versions,
    register_upgrader,
    upgrade_entry_data,
    v1_summary,
)

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
