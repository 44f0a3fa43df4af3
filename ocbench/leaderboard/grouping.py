"""Which entries can share a table, and which one of two same-key entries is shown.

A table holds only entries that can be compared number for number: same task, main score, split
track, protocol version, dataset version, split file and protocol deviations. :class:`GroupKey`
is that identity; :func:`dedupe_entries` keeps one entry per (group, key), the newest.

Imports no other leaderboard module at run time (collect and tables both use it).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Sequence

from ocbench._io import json_sha256
from ocbench.reported import not_comparable_reason

#: A ``collect.LoadedEntry`` (not imported: collect imports this module). Used: ``.entry``,
#: ``.sha256``, ``.name``.
LoadedEntry = Any

__all__ = [
    "GroupKey",
    "group_entries",
    "dedupe_entries",
    "board_file_names",
    "created_time",
    "safe_id",
    "dataset_block",
    "paper_incomparability",
]


@dataclass(frozen=True, order=True)
class GroupKey:
    """What entries must share to sit in one table."""

    task: str
    track: str
    protocol_version: str
    dataset_name: str
    dataset_version: str
    split_sha256: str
    off_protocol: bool
    overrides: str  # canonical JSON of the overrides ("{}" on protocol)
    main_eval_set: str = "val"
    main_metric: str = "macro_f1"
    off_protocol_reasons: str = "[]"  # canonical JSON of the sorted reasons
    #: Scores of single-label and multi-label readings of data never share a table.
    label_mode: str = "multilabel"
    #: The main score's direction (False: lower is better); never mixed in one table.
    higher_is_better: bool = True

    @classmethod
    def of(cls, entry: Any) -> "GroupKey":
        return cls(
            task=entry.task,
            track=entry.split.track,
            protocol_version=entry.protocol_version,
            dataset_name=entry.dataset.name,
            dataset_version=entry.dataset.version,
            split_sha256=entry.split.sha256,
            off_protocol=entry.off_protocol,
            overrides=json.dumps(entry.overrides, sort_keys=True),
            main_eval_set=entry.main_score.eval_set,
            main_metric=entry.main_score.metric,
            off_protocol_reasons=json.dumps(sorted(entry.off_protocol_reasons)),
            label_mode=entry.dataset.labels,
            higher_is_better=entry.main_score.higher_is_better,
        )

    @property
    def slug(self) -> str:
        """A stable table id: ``<task>-<track>-<8 hex of the whole key>``."""
        values = dict(self.__dict__)
        if values["label_mode"] == "multilabel":  # the ids of tables from before label modes stay
            del values["label_mode"]
        if values["higher_is_better"]:  # nor those of higher-is-better main scores
            del values["higher_is_better"]
        digest = json_sha256(list(values.values()))[:8]  # strings and a bool: the same bytes as before sort_keys
        return f"{safe_id(self.task)}-{safe_id(self.track)}-{digest}"

    @property
    def reasons(self) -> list[str]:
        return json.loads(self.off_protocol_reasons)


def safe_id(text: str) -> str:
    """``text`` with anything but letters, digits, ``.``, ``_`` and ``-`` replaced by ``_``: table
    ids become plot file names and Markdown link targets, and a task name comes from an entry."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def created_time(entry: Any) -> datetime:
    stamp = datetime.fromisoformat(entry.created.replace("Z", "+00:00"))
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)


def dedupe_entries(entries: Sequence[LoadedEntry]) -> tuple[list[LoadedEntry], list[str]]:
    """Keep one entry per (table, key): the newest by ``created``; report the others."""
    by_identity: dict[tuple, list[LoadedEntry]] = defaultdict(list)
    for loaded in entries:
        by_identity[(GroupKey.of(loaded.entry), loaded.entry.key)].append(loaded)
    kept, problems = [], []
    for (_, key), same in by_identity.items():
        if len({e.sha256 for e in same}) < len(same):  # byte-identical copies: silently one
            same = list({e.sha256: e for e in same}.values())
        same.sort(key=lambda e: (created_time(e.entry), e.sha256), reverse=True)
        kept.append(same[0])
        shown = same[0]
        for older in same[1:]:
            if created_time(older.entry) < created_time(shown.entry):
                why = f"it is newer (created {shown.entry.created}, this one {older.entry.created})"
            else:  # the same time: an arbitrary but stable choice, said as such
                why = f"both were created {shown.entry.created} and its file's sha256 sorts first"
            problems.append(
                f"{older.name}: same key {key}, dataset, split and protocol as {shown.name}; skipped, "
                f"{shown.name} is shown because {why}; delete one of them"
            )
    kept.sort(key=lambda e: (GroupKey.of(e.entry), e.entry.key))
    return kept, problems


def group_entries(entries: Iterable[LoadedEntry]) -> dict[GroupKey, list[LoadedEntry]]:
    """Entries by table, in key order (members keep their order)."""
    groups: dict[GroupKey, list[LoadedEntry]] = defaultdict(list)
    for loaded in entries:
        groups[GroupKey.of(loaded.entry)].append(loaded)
    return {key: groups[key] for key in sorted(groups)}


def board_file_names(entries: Sequence[LoadedEntry]) -> dict[str, str]:
    """sha256 -> path in a board's ``entries/`` copy: ``<key>.json``, or ``<sha256 prefix>/<key>.json``
    when two shown entries share a key (they sit in different tables). The file keeps its name, so
    the predictions file it names (``<key>.predictions.npz``) lies beside it under its own name."""
    counts: dict[str, int] = defaultdict(int)
    for loaded in entries:
        counts[loaded.entry.key] += 1
    return {
        loaded.sha256: f"{loaded.entry.key}.json" if counts[loaded.entry.key] == 1 else f"{loaded.sha256[:12]}/{loaded.entry.key}.json"
        for loaded in entries
    }


def dataset_block(entry: Any) -> dict[str, Any]:
    """The entry's ``dataset`` block as a dict (what :func:`not_comparable_reason` reads)."""
    dataset = entry.dataset
    if hasattr(dataset, "model_dump"):
        return dataset.model_dump()
    return {name: getattr(dataset, name) for name in ("name", "version", "n_items") if hasattr(dataset, name)}


def paper_incomparability(entries: Iterable[Any]) -> str | None:
    """Why the paper's numbers cannot stand beside these entries (the first reason found), or None."""
    for entry in entries:
        reason = not_comparable_reason(dataset_block(entry))
        if reason is not None:
            return reason
    return None
