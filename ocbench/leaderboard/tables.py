"""From entries to board tables: grouping, reported rows, ranks, per-class views.

A table holds only entries that can be compared number for number: same task, split track,
protocol version, dataset version, split sha256 and protocol deviations (overrides). Entries that
differ in any of these go to separate, labelled tables. The paper's numbers join the tables of
their task and track whose entries are comparable with them (``not_comparable_reason`` of the
entries' dataset block: the full OpenCell set, all grades) as separate rows marked "reported";
a table that is not comparable says why in its details. Where no comparable table exists (e.g. a
board of demo-data entries, or of a subset of OpenCell) the paper's numbers get a table of their own.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Sequence

from ocbench.data.compartments import COMPARTMENTS
from ocbench.leaderboard.collect import LoadedEntry
from ocbench.leaderboard.ranking import ALPHA, Score, assign_ranks, rank_rule_text
from ocbench.reported import PAPER, REPORTED, ReportedResult, not_comparable_reason, reported_for

__all__ = [
    "GroupKey",
    "Row",
    "Table",
    "Board",
    "build_tables",
    "dedupe_entries",
    "resolve_channel_map",
    "best_per_compartment",
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

    @classmethod
    def of(cls, entry) -> "GroupKey":
        return cls(
            task=entry.task,
            track=entry.split.track,
            protocol_version=entry.protocol_version,
            dataset_name=entry.dataset.name,
            dataset_version=entry.dataset.version,
            split_sha256=entry.split.sha256,
            off_protocol=entry.off_protocol,
            overrides=json.dumps(entry.overrides, sort_keys=True),
        )

    @property
    def slug(self) -> str:
        digest = hashlib.sha256(json.dumps(list(self.__dict__.values())).encode()).hexdigest()[:8]
        return f"{self.task}-{self.track}-{digest}"


@dataclass(frozen=True)
class Row:
    kind: str  # "computed" | "reported"
    backbone: str
    channels: str  # shown label
    strategy: str
    channel_map: tuple[int, int] | None
    val: Score | None  # the ranked score (reported rows: the paper's mean +- std)
    test: Score | None = None
    reported: ReportedResult | None = None  # computed rows: the paper's number for this configuration
    notes: str = ""
    provenance: tuple[tuple[str, str], ...] = ()
    per_class_f1: dict[str, float] = field(default_factory=dict)  # validation, mean over folds
    per_k: tuple[float, ...] = ()
    source: ReportedResult | None = None  # reported rows: the paper row itself
    entry: LoadedEntry | None = None
    board_file: str | None = None  # entries/<file> inside the board
    rank: int | None = None
    tied_with_above: bool = False
    rank_reason: str = ""

    @property
    def label(self) -> str:
        return f"{self.backbone} · {self.channels}"


@dataclass(frozen=True)
class Table:
    id: str
    title: str
    details: tuple[str, ...]
    task: str
    track: str
    kind: str  # "scores" | "knn"
    rows: tuple[Row, ...]
    rule: str
    group: GroupKey | None  # None for a table of reported rows only

    @property
    def computed_rows(self) -> tuple[Row, ...]:
        return tuple(r for r in self.rows if r.kind == "computed")

    @property
    def reported_rows(self) -> tuple[Row, ...]:
        return tuple(r for r in self.rows if r.kind == "reported")

    @property
    def compartments(self) -> tuple[str, ...]:
        present = {c for r in self.computed_rows for c in r.per_class_f1}
        return tuple(c for c in COMPARTMENTS if c in present)


@dataclass(frozen=True)
class Board:
    tables: tuple[Table, ...]
    entries: tuple[LoadedEntry, ...]  # the entries shown (after de-duplication)
    entry_files: dict[str, str]  # sha256 -> file path inside the board's entries/
    problems: tuple[str, ...]  # duplicates skipped while building
    fingerprint: str  # sha256 over the shown entries' sha256 and file names
    include_reported: bool
    rank_reported: bool


# ---------------------------------------------------------------------------------------------
def _created(entry) -> datetime:
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
        same.sort(key=lambda e: (_created(e.entry), e.sha256), reverse=True)
        kept.append(same[0])
        for older in same[1:]:
            problems.append(
                f"{older.name}: same key {key}, dataset, split and protocol as {same[0].name}; "
                "skipped (the newer entry is shown); delete one of them"
            )
    kept.sort(key=lambda e: (GroupKey.of(e.entry), e.entry.key))
    return kept, problems


_LETTERS = "RGBY"


def _target_index(token: str, input_channels: Sequence[str]) -> int | None:
    token = token.strip().strip("'\"")
    if token.isdigit():
        return int(token)
    lowered = [c.lower() for c in input_channels]
    if token.lower() in lowered:
        return lowered.index(token.lower())
    if len(token) == 1 and token.upper() in _LETTERS and len(input_channels) in (3, 4):
        return _LETTERS.index(token.upper())
    return None


def resolve_channel_map(strategy: str, spec: str | None, key: str, card: dict[str, Any]) -> tuple[int, int] | None:
    """Model input index of (protein, nucleus) for a ``map`` entry, when it can be read off.

    Understands the presets ``natural`` (inputs named protein and nucleus) and ``best-imagenet``
    (G, B), ``protein:G,nucleus:B`` / ``protein=1,nucleus=2`` / ``protein->1`` forms and a bare
    pair ``[1, 2] -> [G, B]`` or ``G,B``. Returns None when it cannot tell (no paper value shown).
    """
    if strategy == "replicate":
        return None
    inputs = [str(c) for c in card.get("input_channels") or ()]
    keyed = re.fullmatch(r"map-p(\d+)-n(\d+)", key or "")  # the adapter key names the indices
    if keyed:
        return int(keyed.group(1)), int(keyed.group(2))
    for text in (spec, key):
        if not text:
            continue
        low = text.strip().lower()
        if low in ("natural", "map:natural"):
            names = [c.lower() for c in inputs]
            if "protein" in names and "nucleus" in names:
                return names.index("protein"), names.index("nucleus")
            continue
        if low in ("best-imagenet", "imagenet-best", "map:best-imagenet", "map:imagenet-best"):
            return (1, 2) if len(inputs) == 3 else None
        named = {
            name: re.search(rf"{name}\s*(?:->|[:=>])\s*([A-Za-z0-9_]+)", text, flags=re.IGNORECASE)
            for name in ("protein", "nucleus")
        }
        if named["protein"] and named["nucleus"]:
            pair = [_target_index(m.group(1), inputs) for m in named.values()]  # type: ignore[union-attr]
        else:
            target = text.split("->")[-1]
            tokens = [t for t in re.split(r"[\s,\[\]()]+", target) if t]
            pair = [_target_index(t, inputs) for t in tokens] if len(tokens) == 2 else [None]
        if len(pair) == 2 and None not in pair:
            return pair[0], pair[1]  # type: ignore[return-value]
    return None


def _map_label(backbone_card: dict[str, Any], channel_map: tuple[int, int]) -> str:
    """``[1, 2] -> [a, b]`` as the paper writes it (letters for RGB models), ``natural`` when the
    inputs are the like-named channels."""
    inputs = [str(c).lower() for c in backbone_card.get("input_channels") or ()]
    if len(inputs) == 3 and max(channel_map) < 3:
        label = f"[1, 2] -> [{_LETTERS[channel_map[0]]}, {_LETTERS[channel_map[1]]}]"
    else:
        label = f"[1, 2] -> [{channel_map[0]}, {channel_map[1]}]"
    natural = "protein" in inputs and "nucleus" in inputs and channel_map == (inputs.index("protein"), inputs.index("nucleus"))
    return label + (" natural" if natural else "")


def _score(summary) -> Score:
    return Score(summary.mean, summary.std, summary.n, tuple(summary.per_fold))


def dataset_block(entry) -> dict[str, Any]:
    """The entry's ``dataset`` block as a dict (optional fields such as ``min_grade`` included
    when the entry model has them)."""
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


def _short(text: str | None, n: int = 12) -> str:
    return text[:n] if text else "-"


def _computed_row(loaded: LoadedEntry, board_file: str) -> Row:
    e = loaded.entry
    card = e.backbone.card
    channel_map = resolve_channel_map(e.channels.strategy, e.channels.spec, e.channels.key, card)
    if channel_map is not None:  # the paper's notation, so computed and reported rows line up
        channels = _map_label(card, channel_map)
    else:
        shown = e.channels.spec or e.channels.key
        channels = shown if shown.startswith(e.channels.strategy) else f"{e.channels.strategy} {shown}"
    reported = (
        reported_for(e.backbone.name, e.task, e.split.track, e.channels.strategy, channel_map, e.task_config)
        if not_comparable_reason(dataset_block(e)) is None
        else None
    )
    notes = []
    if e.off_protocol:
        notes.append("off-protocol" + (": " + ", ".join(f"{k}={v}" for k, v in e.overrides.items()) if e.overrides else ""))
    if loaded.schema_version != e.schema_version:
        notes.append(f"upgraded from schema {loaded.schema_version}")
    env = e.environment
    provenance = (
        ("entry", f"entries/{board_file} (sha256 {loaded.sha256})"),
        ("created", e.created),
        ("backbone", f"{e.backbone.name} ({e.backbone.arch}) from {e.backbone.source}"),
        ("weights", f"sha256 {e.backbone.weights_sha256 or '- (no weights)'}; revision {e.backbone.revision or '-'}"),
        ("channels", f"strategy {e.channels.strategy}, key {e.channels.key}, spec {e.channels.spec or '-'}"),
        ("dataset", f"{e.dataset.name} version {e.dataset.version} ({e.dataset.n_items} items)"),
        ("split", f"{e.split.track} seed {e.split.seed} sha256 {e.split.sha256}"),
        ("task", f"{e.task} ({e.protocol_version}); overrides {json.dumps(e.overrides, sort_keys=True)}; seed {e.seed}"),
        ("software", f"ocbench {env.ocbench}, torch {env.torch or '-'}, timm {env.timm or '-'}, python {env.python}"),
        ("machine", f"{env.device} on {env.platform}"),
        ("time", f"extraction {e.timings.extraction_s if e.timings.extraction_s is not None else '-'} s, task {e.timings.task_s} s"),
    )
    per_class = e.metrics.per_class.get("val")
    return Row(
        kind="computed",
        backbone=e.backbone.name,
        channels=channels,
        strategy=e.channels.strategy,
        channel_map=channel_map,
        val=_score(e.val),
        test=_score(e.test),
        reported=reported,
        notes="; ".join(notes),
        provenance=provenance,
        per_class_f1=dict(per_class.f1) if per_class else {},
        entry=loaded,
        board_file=board_file,
    )


def _reported_row(r: ReportedResult) -> Row:
    notes = f"paper {r.source}" + (f"; {r.config_label}" if r.config else "") + (f"; {r.note}" if r.note else "")
    provenance = (
        ("source", f"{PAPER}, {r.source}"),
        ("configuration", f"{r.task}, {r.channels_label}" + (f", {r.config_label}" if r.config else "")),
        (
            "aggregation",
            f"macro-F1 per k (k#1..k#{len(r.per_k)}, increasing; the paper's k values are not legible), {r.n} cells"
            if r.per_k
            else f"macro-F1 mean ± std over {r.n} folds of the paper's own by-image split",
        ),
        *((("note", r.note),) if r.note else ()),
    )
    return Row(
        kind="reported",
        backbone=r.backbone,
        channels=r.channels_label,
        strategy=r.strategy,
        channel_map=r.channel_map,
        val=Score(r.mean, r.std, r.n) if r.mean is not None else None,
        notes=notes,
        provenance=provenance,
        per_k=r.per_k,
        source=r,
    )


def _sort_key(row: Row) -> tuple:
    mean = row.val.mean if row.val else (max(row.per_k) if row.per_k else float("-inf"))
    return (-mean, row.kind != "computed", row.backbone, row.channels, row.notes)


def _ranked(rows: Iterable[Row], *, paired: bool, alpha: float) -> list[Row]:
    from dataclasses import replace

    ordered = sorted(rows, key=_sort_key)
    decisions = assign_ranks([r.val for r in ordered], paired=paired, alpha=alpha)  # type: ignore[misc]
    return [replace(r, rank=d.rank, tied_with_above=d.tied_with_above, rank_reason=d.reason) for r, d in zip(ordered, decisions)]


def _assemble(rows_computed: list[Row], rows_reported: list[Row], *, paired: bool, rank_reported: bool, alpha: float) -> tuple[list[Row], bool]:
    """Rows in display order with ranks; returns (rows, reported rows were ranked)."""
    rankable_reported = [r for r in rows_reported if r.val is not None]
    if rank_reported and rankable_reported:
        ranked = _ranked([*rows_computed, *rankable_reported], paired=paired, alpha=alpha)
        rest = [r for r in rows_reported if r.val is None]
        return ranked + rest, True
    ranked = _ranked(rows_computed, paired=paired, alpha=alpha) if rows_computed else []
    return ranked + sorted(rows_reported, key=_sort_key), False


def _group_details(key: GroupKey, n_items: int, split_seed: int) -> tuple[str, ...]:
    deviation = (
        "off-protocol: " + ", ".join(f"{k}={v}" for k, v in json.loads(key.overrides).items())
        if key.off_protocol and key.overrides != "{}"
        else ("off-protocol" if key.off_protocol else "on protocol (no overrides)")
    )
    return (
        f"dataset {key.dataset_name} version {key.dataset_version[:12]} ({n_items} items)",
        f"split {key.track} seed {split_seed} sha256 {key.split_sha256[:12]}",
        f"protocol {key.protocol_version}; {deviation}",
    )


def _board_file_names(entries: Sequence[LoadedEntry]) -> dict[str, str]:
    counts: dict[str, int] = defaultdict(int)
    for loaded in entries:
        counts[loaded.entry.key] += 1
    return {
        loaded.sha256: f"{loaded.entry.key}.json" if counts[loaded.entry.key] == 1 else f"{loaded.entry.key}__{loaded.sha256[:12]}.json"
        for loaded in entries
    }


def build_tables(
    entries: Sequence[LoadedEntry],
    *,
    include_reported: bool = True,
    rank_reported: bool = False,
    alpha: float = ALPHA,
    entry_files: Mapping[str, str] | None = None,
) -> Board:
    """Group, rank and label the entries; add the paper's reported rows.

    ``entry_files``: sha256 -> the entry's path inside the board's ``entries/`` (POSIX), for a
    board that links to its entries where they are; default: ``<key>.json`` copies."""
    kept, problems = dedupe_entries(entries)
    files = {e.sha256: entry_files[e.sha256] for e in kept} if entry_files is not None else _board_file_names(kept)
    groups: dict[GroupKey, list[LoadedEntry]] = defaultdict(list)
    for loaded in kept:
        groups[GroupKey.of(loaded.entry)].append(loaded)

    reported_by_task: dict[tuple[str, str], list[ReportedResult]] = defaultdict(list)
    if include_reported:
        for r in REPORTED:
            reported_by_task[(r.task, r.track)].append(r)

    tables: list[Table] = []
    for key in sorted(groups):
        members = groups[key]
        computed = [_computed_row(m, files[m.sha256]) for m in members]
        not_comparable = paper_incomparability(m.entry for m in members)  # the paper's numbers only beside comparable results
        paper_rows = reported_by_task.get((key.task, key.track), [])
        reported = [_reported_row(r) for r in paper_rows] if not_comparable is None else []
        rows, ranked_reported = _assemble(computed, reported, paired=True, rank_reported=rank_reported, alpha=alpha)
        n_folds = members[0].entry.val.n
        first = members[0].entry
        tables.append(
            Table(
                id=key.slug,
                title=f"{key.task} · {key.track} track · {key.dataset_name} {key.dataset_version[:8]}",
                details=_group_details(key, first.dataset.n_items, first.split.seed)
                + ((f"the paper's numbers are not shown here: {not_comparable}",) if paper_rows and not_comparable else ()),
                task=key.task,
                track=key.track,
                kind="scores",
                rows=tuple(rows),
                rule=rank_rule_text(
                    paired=True, n_folds=n_folds, alpha=alpha, ranked_reported=ranked_reported, has_reported=bool(reported)
                ),
                group=key,
            )
        )

    covered = {(t.task, t.track) for t in tables if t.reported_rows}
    for (task, track), results in reported_by_task.items():
        if (task, track) in covered:
            continue
        rows = [_reported_row(r) for r in results]
        knn = any(r.per_k for r in results)
        if knn:
            ordered, ranked = rows, False  # per-k rows: no single score to rank by
            rule = "Macro-F1 for increasing k (the paper's five k values are not legible); not ranked."
        else:
            ordered, ranked = _assemble([], rows, paired=False, rank_reported=rank_reported, alpha=alpha)
            rule = (
                rank_rule_text(paired=False, n_folds=None, alpha=alpha, ranked_reported=True)
                if ranked
                else "The paper's numbers, sorted by mean; not ranked (they were not computed by ocbench)."
            )
        tables.append(
            Table(
                id=f"{task}-{track}-reported",
                title=f"{task} · {track} track · reported by the paper",
                details=(
                    f"{PAPER}: numbers as published, computed on the paper's own split by its own code; "
                    "no ocbench entry comparable with them (full OpenCell set, all grades) for this task and track yet",
                ),
                task=task,
                track=track,
                kind="knn" if knn else "scores",
                rows=tuple(ordered),
                rule=rule,
                group=None,
            )
        )

    fingerprint_lines = sorted(f"{e.sha256}  {files[e.sha256]}" for e in kept)
    fingerprint = hashlib.sha256("\n".join(fingerprint_lines).encode()).hexdigest()
    return Board(
        tables=tuple(tables),
        entries=tuple(kept),
        entry_files=files,
        problems=tuple(problems),
        fingerprint=fingerprint,
        include_reported=include_reported,
        rank_reported=rank_reported,
    )


@dataclass(frozen=True)
class CompartmentBest:
    compartment: str
    best: tuple[Row, ...]  # every row reaching the best score (ties)
    best_f1: float
    runner_up: Row | None
    runner_up_f1: float | None


def best_per_compartment(table: Table) -> list[CompartmentBest]:
    """For each compartment, the computed row(s) with the highest validation F1, and the next one."""
    out = []
    rows = [r for r in table.computed_rows if r.per_class_f1]
    for comp in table.compartments:
        scored = sorted(((r.per_class_f1[comp], r) for r in rows if comp in r.per_class_f1), key=lambda t: (-t[0], t[1].label))
        if not scored:
            continue
        top = scored[0][0]
        best = tuple(r for s, r in scored if abs(s - top) <= 1e-12)
        rest = [(s, r) for s, r in scored if abs(s - top) > 1e-12]
        out.append(CompartmentBest(comp, best, top, rest[0][1] if rest else None, rest[0][0] if rest else None))
    return out
