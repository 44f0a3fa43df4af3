"""From entries to board tables: rows, reported rows, ranks, per-class views, axis sweeps.

Grouping (which entries share a table) is :mod:`ocbench.leaderboard.grouping`. Every table ranks
by its entries' ``main_score`` (the key holds it, so a table never mixes main scores); the test
column shows the same metric on eval set ``test``. Per-class views use the entries' own
``class_names``. An entry with an ``axis`` (k of a k-NN, a data fraction) is ranked at its main
point, and the table gets a sweep over the axis values.

The paper's numbers join the tables of their task and track whose entries are comparable with
them (``not_comparable_reason`` of the entries' dataset block: the full OpenCell set, all grades)
as separate rows marked "reported"; a table that is not comparable says why in its details. Where
no comparable table exists (e.g. a board of demo-data entries, or of a subset of OpenCell) the
paper's numbers get a table of their own.

The pieces live beside this module: rows and tables (:mod:`~ocbench.leaderboard.board_types`),
computed rows (:mod:`~ocbench.leaderboard.computed_rows`), the paper's rows
(:mod:`~ocbench.leaderboard.reported_rows`), chance references
(:mod:`~ocbench.leaderboard.reference_rows`), ranks and headlines
(:mod:`~ocbench.leaderboard.separation`), the best-baseline column
(:mod:`~ocbench.leaderboard.versus_baseline`), per-class views (:mod:`~ocbench.leaderboard.per_class`),
seeds (:mod:`~ocbench.leaderboard.seeds`) and the critical-difference diagram
(:mod:`~ocbench.leaderboard.critical_difference`). Their public names are importable from here too.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import replace
from typing import Any, Mapping, Sequence

# Besides what build_tables needs, the board's public names (rows, seeds, separation, per class)
# are imported here so that callers have one place to get them from.
from ocbench.leaderboard.board_types import BaselineDifference, Board, Row, Table
from ocbench.leaderboard.computed_rows import card_role, computed_row
from ocbench.leaderboard.critical_difference import CriticalDifference, critical_difference
from ocbench.leaderboard.formatting import SYNTHETIC_NOTE, metric_label, score_label
from ocbench.leaderboard.grouping import (
    GroupKey,
    board_file_names,
    dedupe_entries,
    group_entries,
    paper_incomparability,
)
from ocbench.leaderboard.per_class import PER_CLASS_METRIC, ClassBest, best_per_class, per_class_metric
from ocbench.leaderboard.ranking import ALPHA, rank_rule_text
from ocbench.leaderboard.reference_rows import REFERENCE_NOTE, reference_note, reference_rows
from ocbench.leaderboard.reported_rows import reported_row, reported_table
from ocbench.leaderboard.seeds import SeedRow, SeedTable, seed_tables, trained_from
from ocbench.leaderboard.separation import (
    PAIR_RESAMPLES, Evidence, assemble_rows, headline, no_paired_bootstrap_reason, paired_evidence, separable,
)
from ocbench.leaderboard.versus_baseline import with_baseline_differences
from ocbench.reported import REPORTED, ReportedResult

__all__ = [
    "SeedRow",
    "SeedTable",
    "CriticalDifference",
    "seed_tables",
    "critical_difference",
    "separable",
    "Row",
    "Table",
    "Board",
    "ClassBest",
    "build_tables",
    "best_per_class",
    "per_class_metric",
    "BaselineDifference",
    "REFERENCE_NOTE",
    "reference_note",
]

def _group_details(key: GroupKey, first: Any, label: str, synthetic: bool) -> tuple[str, ...]:
    if key.off_protocol:
        reasons = key.reasons or [f"{k}={v}" for k, v in json.loads(key.overrides).items()]
        deviation = "off-protocol" + (": " + "; ".join(reasons) if reasons else "")
    else:
        deviation = "on protocol (no overrides)"
    dataset = f"dataset {key.dataset_name} version {key.dataset_version[:12]} ({first.dataset.n_items} items)"
    if key.label_mode == "single":
        dataset += ", single-label: one class per item (softmax probes, argmax k-NN vote, majority-class chance reference)"
    details = [
        dataset + (f": {SYNTHETIC_NOTE}" if synthetic else ""),
        f"split {key.track} seed {first.split.seed} sha256 {key.split_sha256[:12]}",
        f"protocol {key.protocol_version}; {deviation}",
        f"ranked by {label} ({key.main_eval_set}/{key.main_metric})" + ("" if key.higher_is_better else ", lower is better"),
    ]
    if first.axis is not None:
        details.append(
            f"each entry sweeps {first.axis.name} and is ranked at its main value; the sweep is shown below the table"
        )
    return tuple(details)


def _class_names(rows: Sequence[Row], members: Sequence[Any]) -> tuple[str, ...]:
    """Per-class columns: the entries' class names in their order, those some row has a score for."""
    present = {c for r in rows for c in r.per_class}
    ordered: list[str] = []
    for loaded in members:
        ordered += [c for c in loaded.entry.class_names if c in present and c not in ordered]
    return tuple(ordered)


def _computed_table(key: GroupKey, members: list[Any], files: Mapping[str, str], reported_rows: list[ReportedResult], *, rank_reported: bool, alpha: float) -> Table:
    computed = [computed_row(m, files[m.sha256]) for m in members]
    first = members[0].entry
    not_comparable = paper_incomparability(m.entry for m in members)  # the paper's numbers only beside comparable results
    reported = [reported_row(r) for r in reported_rows] if not_comparable is None else []
    rows, ranked_reported = assemble_rows(computed, reported, paired=True, rank_reported=rank_reported, alpha=alpha)
    rows, vs_baseline_label = with_baseline_differences(rows, alpha=alpha)
    references = reference_rows(members)
    rows = rows + references
    label = score_label(key.main_eval_set, key.main_metric)
    synthetic = any(r.synthetic for r in computed)
    eval_set = key.main_eval_set
    folds = "validation folds" if eval_set == "val" else f"fold models scored on {eval_set}"
    single = first.main.n < 2  # one pass, no folds (leave-one-out k-NN)
    details = _group_details(key, first, label, synthetic)
    with_interval = [r for r in computed if r.interval is not None]
    interval_label = ""
    if with_interval:
        i0 = with_interval[0].interval
        groups = {r.interval.n_groups for r in with_interval}
        n_groups = f", {i0.n_groups} {_plural(i0.group, i0.n_groups)}" if len(groups) == 1 else ""
        interval_label = f"{score_label(with_interval[0].interval_set, key.main_metric)}, {i0.level:.0%} CI ({i0.group} bootstrap{n_groups})"
    without = [r for r in computed if r.interval is None]
    if without and with_interval:
        details += (f"{len(without)} row{'s' if len(without) > 1 else ''} without an interval (see notes)",)
    elif without:
        details += ("no intervals: these entries kept no per-item predictions (written before schema 3, or by a task that keeps none)",)
    no_bootstrap = no_paired_bootstrap_reason(key.main_metric)
    if no_bootstrap and any(r.predictions is not None for r in computed):
        details += (f"{no_bootstrap}: the per-item predictions kept do not decide ranks",)
    if reported_rows and not_comparable:
        details += (f"the paper's numbers are not shown here: {not_comparable}",)
    if references:
        best_ref = max(references, key=lambda r: r.ranking_value)
        details += (f"best chance reference: {best_ref.backbone[len('chance: '):]} {best_ref.score.mean:.3f}; "  # type: ignore[union-attr]
                    "chance rows are computed from the labels alone and never ranked",)
    flagged = [r for r in computed if r.warnings]
    if flagged:
        details += (f"{len(flagged)} row{'s' if len(flagged) > 1 else ''} flagged: predictions collapsed or at chance level (see notes)",)
    title = f"{key.task} · {key.track} track · {key.dataset_name} {key.dataset_version[:8]}" + (
        " · single-label" if key.label_mode == "single" else ""
    ) + (" · synthetic data" if synthetic else "")
    if key.off_protocol:  # a table of overridden runs must not read like the protocol's own
        overrides = json.loads(key.overrides or "{}")
        title += " · off-protocol" + (f" ({', '.join(f'{k}={v}' for k, v in sorted(overrides.items()))})" if overrides else "")
    return Table(
        id=key.slug,
        title=title,
        details=details,
        task=key.task,
        track=key.track,
        kind="scores",
        rows=tuple(rows),
        rule=rank_rule_text(
            paired=True,
            n_folds=first.main.n,
            alpha=alpha,
            ranked_reported=ranked_reported,
            has_reported=bool(reported),
            label=label if key.higher_is_better else f"{label} (lower is better)",
            folds=folds,
            predictions=f"{i0.group} bootstrap" if with_interval and not no_bootstrap else None,
        ),
        group=key,
        score_label=label,
        test_label=score_label("test", key.main_metric),
        class_names=_class_names(computed, members),
        per_class_label=f"{metric_label(PER_CLASS_METRIC)} ({eval_set}"
        + (")" if single else ", mean over folds where the class is present)"),
        axis_name=first.axis.name if first.axis is not None else None,
        synthetic=synthetic,
        interval_label=interval_label,
        vs_baseline_label=vs_baseline_label,
    )




def _plural(name: str, n: int) -> str:
    from ocbench.stats import plural

    return plural(name, n)


def build_tables(
    entries: Sequence[Any],
    *,
    include_reported: bool = True,
    rank_reported: bool = False,
    alpha: float = ALPHA,
    entry_files: Mapping[str, str] | None = None,
    zero_shot_only: bool = False,
) -> Board:
    """Group, rank and label the entries (LoadedEntry); add the paper's reported rows.

    ``entry_files``: sha256 -> the entry's path inside the board's ``entries/`` (POSIX), for a
    board that links to its entries where they are; default: ``<key>.json`` copies.
    ``zero_shot_only``: leave out entries whose backbone records reasons it is not zero-shot
    (``backbone.not_zero_shot`` non-empty; entries that do not say are kept, marked unknown)."""
    hidden = 0
    entries = list(entries)
    if zero_shot_only:
        shown = [e for e in entries if not e.entry.backbone.not_zero_shot]
        hidden, entries = len(entries) - len(shown), shown
    kept, problems = dedupe_entries(entries)
    files = {e.sha256: entry_files[e.sha256] for e in kept} if entry_files is not None else board_file_names(kept)

    reported_by_task: dict[tuple[str, str], list[ReportedResult]] = defaultdict(list)
    if include_reported:
        for r in REPORTED:
            reported_by_task[(r.task, r.track)].append(r)

    tables = [
        _computed_table(
            key, members, files, reported_by_task.get((key.task, key.track), []), rank_reported=rank_reported, alpha=alpha
        )
        for key, members in group_entries(kept).items()
    ]
    covered = {(t.task, t.track) for t in tables if t.reported_rows}
    for (task, track), results in reported_by_task.items():
        if (task, track) not in covered:
            tables.append(reported_table(task, track, results, rank_reported=rank_reported, alpha=alpha))

    tables = [replace(t, headline=headline(t, alpha=alpha)) for t in tables]
    cd, cd_skipped = critical_difference(tables)
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
        hidden_not_zero_shot=hidden,
        zero_shot_only=zero_shot_only,
        seed_tables=seed_tables(tables),
        critical_difference=cd,
        critical_difference_skipped=cd_skipped,
    )

