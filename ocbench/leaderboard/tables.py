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
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping, Sequence

from ocbench._io import json_sha256
from ocbench.leaderboard.channels import channels_label, entry_channel_map
from ocbench.leaderboard.formatting import (
    SYNTHETIC_NOTE, WEIGHTS_UNVERIFIED, fmt_axis_value, metric_label, score_label, weights_note_suffix,
)
from ocbench.leaderboard.grouping import (
    GroupKey,
    board_file_names,
    dataset_block,
    dedupe_entries,
    group_entries,
    paper_incomparability,
    safe_id,
)
from ocbench.leaderboard.ranking import (
    ALPHA,
    Score,
    assign_tie_groups,
    corrected_t_test_p,
    intervals_overlap,
    rank_rule_text,
)
from ocbench.reported import PAPER, REPORTED, ReportedResult, not_comparable_reason, reported_for

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

#: What the chance reference rows of a table are (under every table that has them).
REFERENCE_NOTE = (
    "Rows named chance: … are references computed from the labels alone on the same split and items, with the same "
    "interval: all-positive (every class predicted; per class F1 = 2p/(1+p), p its share of positives) or the majority "
    "class, the class prior (each class predicted at random with its training frequency; expected over seeded draws), "
    "and shuffled labels through the task's own probe (the highest over the table's entries). They are never ranked; "
    "a row whose interval reaches them learned nothing the labels alone do not give."
)


def reference_note(higher_is_better: bool = True) -> str:
    """:data:`REFERENCE_NOTE` for a table whose main score ranks that way (the best chance is the lowest
    when lower is better)."""
    return REFERENCE_NOTE if higher_is_better else REFERENCE_NOTE.replace("(the highest over", "(the lowest over")


#: The per-class score shown in per-class views (when an entry has it).
PER_CLASS_METRIC = "f1"


@dataclass(frozen=True)
class BaselineDifference:
    """A row's score minus the table's best baseline (an untrained, classical or profiling backbone)
    on the same items, with its paired interval (``method`` says which)."""

    baseline: str  # label of the best baseline row
    estimate: float
    low: float
    high: float
    level: float
    method: str  # e.g. "paired protein bootstrap of the test macro-F1" / "corrected t-test over 5 folds"

    @property
    def includes_zero(self) -> bool:
        return self.low <= 0.0 <= self.high

    @property
    def text(self) -> str:
        return f"{self.estimate:+.3f} [{self.low:+.3f}, {self.high:+.3f}]" + (" (includes 0)" if self.includes_zero else "")


@dataclass(frozen=True)
class Row:
    kind: str  # "computed" | "reported" | "reference" (a chance reference: never ranked)
    backbone: str
    channels: str  # shown label
    strategy: str
    channel_map: tuple[int, int] | None
    score: Score | None  # the ranked (main) score; reported rows: the paper's mean +- std
    test: Score | None = None  # the main metric on eval set "test"
    reported: ReportedResult | None = None  # computed rows: the paper's number for this configuration
    notes: str = ""
    provenance: tuple[tuple[str, str], ...] = ()
    per_class: dict[str, float] = field(default_factory=dict)  # F1 on the main eval set, mean over folds
    per_class_folds: dict[str, tuple[float, ...]] = field(default_factory=dict)  # folds where the class was present
    axis_points: tuple[tuple[float, Score], ...] = ()  # (axis value, main score there)
    axis_main: float | None = None
    per_k: tuple[float, ...] = ()
    source: ReportedResult | None = None  # reported rows: the paper row itself
    entry: Any = None  # LoadedEntry of computed rows
    board_file: str | None = None  # entries/<file> inside the board
    rank: int | None = None
    tied_with_above: bool = False
    rank_reason: str = ""
    synthetic: bool = False
    interval: Any = None  # IntervalInfo of the main metric on the predictions' set, at the main point
    interval_set: str = ""  # the eval set the interval is on (test, loo)
    predictions: Any = None  # ocbench.predictions.Predictions kept beside the entry
    no_interval: str = ""  # why there is no interval (old entry, file missing)
    #: why the scores could not be checked against per-item predictions ("" when they were): shown
    #: as "unverified" in the notes of every rendering and in the CSV's ``unverified`` column
    unverified: str = ""
    seed: int | None = None
    not_zero_shot: tuple[str, ...] | None = None  # None: unknown
    role: str = ""  # computed rows: the card's role ("baseline" for untrained, classical, profiling backbones)
    warnings: tuple[str, ...] = ()  # the entry's collapse and chance-level warnings, in words
    vs_baseline: BaselineDifference | None = None
    vs_baseline_note: str = ""  # why there is no difference (the best baseline itself, no paired data)
    #: Short per-row flags shown beside the backbone's name, each (label, what it means): the reader
    #: must see them next to the number (the full text is in the notes, the CSV and the tooltips).
    markers: tuple[tuple[str, str], ...] = ()
    #: The main score's direction (the entry's ``main_score.higher_is_better``); reported rows: True.
    higher_is_better: bool = True

    @property
    def ranking_value(self) -> float:
        """What ranks the row, larger first: the main score's mean, negated when lower is better."""
        mean = self.score.mean if self.score else (max(self.per_k) if self.per_k else float("-inf"))
        return mean if self.higher_is_better or mean == float("-inf") else -mean

    @property
    def label(self) -> str:
        return f"{self.backbone} · {self.channels}" + (f" · seed {self.seed}" if self.seed else "")


@dataclass(frozen=True)
class Table:
    id: str
    title: str
    details: tuple[str, ...]
    task: str
    track: str
    kind: str  # "scores" | "knn" (the paper's per-k numbers alone)
    rows: tuple[Row, ...]
    rule: str
    group: GroupKey | None  # None for a table of reported rows only
    score_label: str = "val macro-F1"  # the ranked score
    test_label: str = "test macro-F1"
    class_names: tuple[str, ...] = ()  # per-class columns (classes some row has a score for)
    per_class_label: str = ""
    axis_name: str | None = None
    synthetic: bool = False
    interval_label: str = ""  # header of the interval column ("" when no row has one)
    seeds: tuple[Any, ...] = ()  # SeedRow aggregates (kind "seeds" tables)
    vs_baseline_label: str = ""  # header of the "vs best baseline" column ("" when the table has no baseline)
    headline: str = ""  # one sentence: does the best row beat the runner-up (see :func:`headline`)

    @property
    def computed_rows(self) -> tuple[Row, ...]:
        return tuple(r for r in self.rows if r.kind == "computed")

    @property
    def reference_rows(self) -> tuple[Row, ...]:
        return tuple(r for r in self.rows if r.kind == "reference")

    @property
    def higher_is_better(self) -> bool:
        """The direction of the ranked score (False: lower is better)."""
        return self.group.higher_is_better if self.group is not None else True

    @property
    def best_reference(self) -> Row | None:
        """The chance reference with the best main score (the highest; the lowest when lower is
        better), drawn as a line in the plots."""
        return max((r for r in self.reference_rows if r.score is not None), key=lambda r: r.ranking_value, default=None)

    @property
    def reported_rows(self) -> tuple[Row, ...]:
        return tuple(r for r in self.rows if r.kind == "reported")

    @property
    def axis_values(self) -> tuple[float, ...]:
        return tuple(sorted({v for r in self.computed_rows for v, _ in r.axis_points}))


@dataclass(frozen=True)
class Board:
    tables: tuple[Table, ...]
    entries: tuple[Any, ...]  # LoadedEntry shown (after de-duplication)
    entry_files: dict[str, str]  # sha256 -> file path inside the board's entries/
    problems: tuple[str, ...]  # duplicates skipped while building
    fingerprint: str  # sha256 over the shown entries' sha256 and file names
    include_reported: bool
    rank_reported: bool
    hidden_not_zero_shot: int = 0  # entries left out by zero_shot_only
    zero_shot_only: bool = False
    seed_tables: tuple["SeedTable", ...] = ()
    critical_difference: Any = None  # CriticalDifference across tables, or None
    critical_difference_skipped: str = ""  # why no diagram is drawn though backbones share tables

    @property
    def synthetic(self) -> bool:
        return any(t.synthetic for t in self.tables)


# ---------------------------------------------------------------------------------------------
# computed rows
# ---------------------------------------------------------------------------------------------
def per_class_metric(entry: Any) -> tuple[dict[str, float], dict[str, tuple[float, ...]]]:
    """The entry's per-class F1 on its main eval set: ``({class: mean}, {class: fold values})``.

    Fold values keep only the folds where the class had positives when ``support`` is recorded
    (protocol fov-probe/2 scores a class only where it is present)."""
    eval_set = entry.main_score.eval_set
    means = dict(entry.per_class.get(eval_set, {}).get(PER_CLASS_METRIC, {}))
    rows = entry.per_class_values.get(eval_set, {})
    values, support = rows.get(PER_CLASS_METRIC), rows.get("support")
    folds: dict[str, tuple[float, ...]] = {}
    if values:
        for i, name in enumerate(entry.class_names):
            kept = [
                row[i] for k, row in enumerate(values) if support is None or (k < len(support) and support[k][i] > 0)
            ]
            if kept:
                folds[name] = tuple(kept)
    return means, folds


def _row_flags(loaded: Any) -> list[str]:
    """Short notes a reader must see beside the number (also in the CSV and tooltips)."""
    e = loaded.entry
    notes = []
    if e.dataset.synthetic:
        notes.append("synthetic data")
    if e.off_protocol:
        reasons = e.off_protocol_reasons or [f"{k}={v}" for k, v in e.overrides.items()]
        notes.append("off-protocol" + (": " + "; ".join(reasons) if reasons else ""))
    if e.environment.precision != "fp32":
        notes.append(f"precision {e.environment.precision}")
    if e.backbone.weights_verified is False:
        notes.append(WEIGHTS_UNVERIFIED)
    if e.axis is not None:
        notes.append(f"ranked at {e.axis.name}={fmt_axis_value(e.axis.main)}")
    if loaded.schema_version != e.schema_version:
        notes.append(f"upgraded from schema {loaded.schema_version}")
    if e.backbone.not_zero_shot:
        notes.append("not zero-shot: " + "; ".join(e.backbone.not_zero_shot))
    if e.seed:
        notes.append(f"seed {e.seed}")
    notes += [f"warning: {w.message}" for w in e.warnings]
    return notes


def card_role(entry: Any) -> str:
    """The backbone card's ``role`` as recorded in the entry ("model" when it says none)."""
    card = entry.backbone.card if isinstance(entry.backbone.card, dict) else {}
    return str(card.get("role") or "model")


def _predictions_of(loaded: Any) -> tuple[Any, str]:
    """The entry's kept predictions (checked when the entry was collected), or None and why there
    are none (said on the board)."""
    if loaded.entry.predictions is None:
        if loaded.schema_version < 3:
            return None, f"no interval: entries of schema {loaded.schema_version} kept no per-item predictions"
        return None, "no interval: the task kept no per-item predictions"
    if loaded.predictions is None:
        return None, f"no interval: {loaded.predictions_note}"
    return loaded.predictions, ""


def _provenance(loaded: Any, board_file: str) -> tuple[tuple[str, str], ...]:
    e = loaded.entry
    env = e.environment
    b = e.backbone
    verified = {True: "matched the card's published checksum", False: WEIGHTS_UNVERIFIED, None: "not checked"}[b.weights_verified]
    weights = f"sha256 {b.weights_sha256 or '- (no weights)'}; revision {b.revision or '-'}"
    if b.weights_sha256:
        weights += f"; {verified}"
    weights += weights_note_suffix(b.weights_note)
    facts = [
        ("entry", f"entries/{board_file} (sha256 {loaded.sha256})"),
        ("created", e.created),
        ("backbone", f"{b.name} ({b.arch}) from {b.source}"),
        ("weights", weights),
        ("channels", f"strategy {e.channels.strategy}, key {e.channels.key}, spec {e.channels.spec or '-'}"),
        (
            "dataset",
            f"{e.dataset.name} version {e.dataset.version} ({e.dataset.n_items} items)"
            + (f"; {SYNTHETIC_NOTE}" if e.dataset.synthetic else ""),
        ),
        ("split", f"{e.split.track} seed {e.split.seed} sha256 {e.split.sha256}"),
        ("task", f"{e.task} ({e.protocol_version}); overrides {json.dumps(e.overrides, sort_keys=True)}; seed {e.seed}"),
        ("main score", f"{score_label(e.main_score.eval_set, e.main_score.metric)} ({e.main_score.eval_set}/{e.main_score.metric})"),
    ]
    if e.off_protocol:
        facts.append(("off-protocol", "; ".join(e.off_protocol_reasons) or "yes (no reason recorded)"))
    card = b.card if isinstance(b.card, dict) else {}
    if card.get("training_datasets") or card.get("supervision"):
        trained = ", ".join(map(str, card.get("training_datasets") or [])) or "-"
        facts.append(("pretraining", f"data {trained}; supervision {card.get('supervision') or '-'}"))
    if b.not_zero_shot is None:
        zero_shot = "unknown (not recorded)"
    else:
        zero_shot = ("no: " + "; ".join(b.not_zero_shot)) if b.not_zero_shot else "yes"
    facts.append(("zero-shot", zero_shot))
    if e.axis is not None:
        values = ", ".join(fmt_axis_value(p.value) for p in e.axis.points)
        facts.append(("axis", f"{e.axis.name} in [{values}]; ranked at {e.axis.name}={fmt_axis_value(e.axis.main)}"))
    threads = f", {env.threads} threads" if env.threads else ""
    facts += [
        ("software", f"ocbench {env.ocbench}, torch {env.torch or '-'}, timm {env.timm or '-'}, python {env.python}"),
        ("machine", f"{env.device} on {env.platform}; precision {env.precision}{threads}"),
        ("time", f"extraction {e.timings.extraction_s if e.timings.extraction_s is not None else '-'} s, task {e.timings.task_s} s"),
    ]
    return tuple(facts)


def _axis_points(entry: Any) -> tuple[tuple[float, Score], ...]:
    if entry.axis is None:
        return ()
    main = entry.main_score
    points = []
    for p in sorted(entry.axis.points, key=lambda p: p.value):
        summary = p.scores.get(main.eval_set, {}).get(main.metric)
        if summary is not None:
            points.append((p.value, Score.of(summary)))
    return tuple(points)


def _computed_row(loaded: Any, board_file: str) -> Row:
    e = loaded.entry
    channel_map = entry_channel_map(e)
    reported = (
        reported_for(e.backbone.name, e.task, e.split.track, e.channels.strategy, channel_map, e.task_config)
        if not_comparable_reason(dataset_block(e)) is None
        else None
    )
    per_class, per_class_folds = per_class_metric(e)
    test = e.test
    predictions, no_interval = _predictions_of(loaded)
    interval_set = e.predictions.eval_set if e.predictions is not None else ""
    summary = e.scores.get(interval_set, {}).get(e.main_score.metric) if interval_set and predictions is not None else None
    # a recorded interval is shown only beside the predictions it was computed from
    interval = summary.interval if summary is not None else None
    if interval is None and not no_interval:
        no_interval = "no interval recorded for the main metric"
    # without readable predictions nothing checks the scores beyond the entry's own consistency
    unverified = no_interval.removeprefix("no interval: ") if predictions is None else ""
    notes = _row_flags(loaded) + ([f"unverified, {no_interval}" if unverified else no_interval] if no_interval else [])
    return Row(
        kind="computed",
        backbone=e.backbone.name,
        channels=channels_label(e, channel_map),
        strategy=e.channels.strategy,
        channel_map=channel_map,
        score=Score.of(e.main),
        test=Score.of(test) if test is not None and e.main_score.eval_set != "test" else None,
        higher_is_better=e.main_score.higher_is_better,
        reported=reported,
        notes="; ".join(notes),
        provenance=_provenance(loaded, board_file) + ((("interval", interval.describe()),) if interval is not None else ()),
        per_class=per_class,
        per_class_folds=per_class_folds,
        axis_points=_axis_points(e),
        axis_main=e.axis.main if e.axis is not None else None,
        entry=loaded,
        board_file=board_file,
        synthetic=bool(e.dataset.synthetic),
        interval=interval,
        interval_set=interval_set if interval is not None else "",
        predictions=predictions,
        no_interval=no_interval,
        unverified=unverified,
        seed=e.seed,
        not_zero_shot=tuple(e.backbone.not_zero_shot) if e.backbone.not_zero_shot is not None else None,
        role=card_role(e),
        warnings=tuple(w.message for w in e.warnings),
        markers=_row_markers(loaded),
    )


def _row_markers(loaded: Any) -> tuple[tuple[str, str], ...]:
    """The flags of :func:`_row_flags` that differ between rows of one table, as short badges."""
    e = loaded.entry
    out = []
    if e.backbone.not_zero_shot:
        out.append(("not zero-shot", "not zero-shot: " + "; ".join(e.backbone.not_zero_shot)))
    if e.backbone.weights_verified is False:
        out.append(("unverified weights", WEIGHTS_UNVERIFIED + weights_note_suffix(e.backbone.weights_note)))
    if e.environment.precision != "fp32":
        out.append((e.environment.precision, f"computed in {e.environment.precision}"))
    if e.seed:
        out.append((f"seed {e.seed}", f"run with seed {e.seed} (its own split and probe seed)"))
    from ocbench.chance import COLLAPSE_KINDS

    for kinds, label in ((COLLAPSE_KINDS, "⚠ collapsed"), (("chance-level",), "⚠ chance level")):
        said = [w.message for w in e.warnings if w.kind in kinds]
        if said:
            out.append((label, "; ".join(said)))
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# chance references
# ---------------------------------------------------------------------------------------------
def _reference_rows(members: Sequence[Any]) -> list[Row]:
    """One row per chance reference the table's entries carry. References computed from the labels
    alone are the same for every entry of a table (same split and items); shuffled labels go
    through each entry's own features, and the best of them (the highest; the lowest when lower is
    better) is shown."""
    best: dict[str, tuple[float, Any, Any, int]] = {}
    for loaded in members:
        e = loaded.entry
        for ref in e.references:
            summary = ref.scores.get(e.main_score.eval_set, {}).get(e.main_score.metric)
            if summary is None:
                continue
            value = summary.mean if e.main_score.higher_is_better else -summary.mean
            count = best[ref.name][3] + 1 if ref.name in best else 1
            if ref.name not in best or value > best[ref.name][0]:
                best[ref.name] = (value, loaded, ref, count)
            else:
                best[ref.name] = (*best[ref.name][:3], count)
    rows = []
    for name, (_, loaded, ref, count) in best.items():
        e = loaded.entry
        eval_set, metric = e.main_score.eval_set, e.main_score.metric
        main = ref.scores[eval_set][metric]
        test = ref.scores.get("test", {}).get(metric) if eval_set != "test" else None
        interval_set = e.predictions.eval_set if e.predictions is not None else ""
        kept = ref.scores.get(interval_set, {}).get(metric) if interval_set else None
        interval = kept.interval if kept is not None else None
        notes = [ref.description]
        if ref.draws:
            error = max((ref.standard_error or {}).values(), default=None)
            notes.append(f"expected over {ref.draws:,} seeded draws" + (f", standard error {error:.4f}" if error is not None else ""))
        if name == "shuffled-labels":
            best_word = "highest" if e.main_score.higher_is_better else "lowest"
            notes.append(f"{e.task} on {e.backbone.name}'s features" + (f" (the {best_word} of {count} entries)" if count > 1 else ""))
        notes.append("chance reference, not ranked")
        rows.append(Row(
            kind="reference", backbone=f"chance: {name}", channels="—", strategy="", channel_map=None,
            score=Score.of(main), test=Score.of(test) if test is not None else None, notes="; ".join(notes),
            provenance=(("reference", ref.description), ("from entry", e.key)),
            synthetic=bool(e.dataset.synthetic), interval=interval, interval_set=interval_set if interval is not None else "",
            higher_is_better=e.main_score.higher_is_better,
        ))
    return sorted(rows, key=lambda r: (-r.ranking_value, r.backbone))


# ---------------------------------------------------------------------------------------------
# vs best baseline
# ---------------------------------------------------------------------------------------------
def _with_baseline_differences(rows: list[Row], *, alpha: float) -> tuple[list[Row], str]:
    """Each computed row with its score minus the best baseline row's (paired cluster bootstrap on
    the same kept items; else the corrected t-test over the same folds); the column's header."""
    from ocbench.stats import corrected_resampled_t_test, paired_from_distributions

    baselines = [r for r in rows if r.kind == "computed" and r.role == "baseline" and r.score is not None]
    if not baselines:
        return rows, ""
    best = max(baselines, key=lambda r: (r.ranking_value, r.label))
    cache: dict = {}
    methods = set()
    out = []
    for row in rows:
        if row.kind != "computed":
            out.append(row)
            continue
        if row is best:
            out.append(replace(row, vs_baseline_note="the best baseline"))
            continue
        pa, pb = row.predictions, best.predictions
        diff = None
        if pa is not None and pb is not None and pa.eval_set == pb.eval_set and pa.same_items(pb):
            try:
                paired = paired_from_distributions(
                    _distribution(row, cache), _distribution(best, cache), n_groups=pa.n_groups, level=1 - alpha,
                    group_name=pa.group_name,
                ).difference
            except Exception as exc:  # a malformed file must not stop the board; the row says so
                out.append(replace(row, vs_baseline_note=f"no paired difference ({exc})"))
                continue
            method = f"paired {paired.group} bootstrap of the {pa.eval_set} score"
            diff = BaselineDifference(best.label, paired.estimate, paired.low, paired.high, 1 - alpha, method)
        else:
            sa, sb = row.score, best.score
            if sa and sb and sa.per_fold and sb.per_fold and len(sa.per_fold) == len(sb.per_fold) >= 2:
                t = corrected_resampled_t_test(sa.per_fold, sb.per_fold, test_train_ratio=1.0 / (len(sa.per_fold) - 1),
                                               level=1 - alpha)
                method = f"corrected t-test over {len(sa.per_fold)} folds of the main score"
                diff = BaselineDifference(best.label, t.mean_difference, t.low, t.high, 1 - alpha, method)
        if diff is None:
            out.append(replace(row, vs_baseline_note="no paired difference: no kept predictions or folds shared with the best baseline"))
            continue
        methods.add(diff.method)
        out.append(replace(row, vs_baseline=diff))
    how = "; ".join(sorted(methods)) or "paired"
    return out, f"vs best baseline ({best.label}): difference, {1 - alpha:.0%} CI ({how})"


# ---------------------------------------------------------------------------------------------
# reported rows
# ---------------------------------------------------------------------------------------------
def _reported_row(r: ReportedResult) -> Row:
    notes = f"paper {r.source}" + (f"; {r.config_label}" if r.config else "") + (f"; {r.note}" if r.note else "")
    provenance = (
        ("source", f"{PAPER}, {r.source}"),
        ("configuration", f"{r.task}, {r.channels_label}" + (f", {r.config_label}" if r.config else "")),
        (
            "aggregation",
            f"macro-F1 per k (k#1..k#{len(r.per_k)}, increasing; the paper does not print the k values), {r.n} cells"
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
        score=Score(r.mean, r.std, r.n) if r.mean is not None else None,
        notes=notes,
        provenance=provenance,
        per_k=r.per_k,
        source=r,
    )


# ---------------------------------------------------------------------------------------------
# ranks
# ---------------------------------------------------------------------------------------------
def _sort_key(row: Row) -> tuple:
    return (-row.ranking_value, row.kind != "computed", row.backbone, row.channels, row.notes)


#: Resamples of each pairwise comparison on the board (entries' own intervals use 2,000).
PAIR_RESAMPLES = 1000


def _distribution(row: Row, cache: dict | None) -> tuple[float, Any]:
    """The row's bootstrap distribution on its kept items (computed once per row and board)."""
    from ocbench.stats import bootstrap_distribution

    key = id(row.predictions)
    if cache is not None and key in cache:
        return cache[key]
    p = row.predictions
    out = bootstrap_distribution(p.y_true, p.at(row.axis_main), p.groups, n_resamples=PAIR_RESAMPLES)
    if cache is not None:
        cache[key] = out
    return out


@dataclass(frozen=True)
class Evidence:
    """One test of whether row ``a`` is better than row ``b``: ``better`` at the level asked, in words.
    ``difference``: the paired bootstrap's interval of the difference (None for other tests)."""

    better: bool
    text: str
    difference: Any = None  # ocbench.stats.Interval of a - b on the kept items


def paired_evidence(a: Row, b: Row, *, paired: bool, alpha: float = ALPHA, cache: dict | None = None) -> list[Evidence]:
    """Every test the two rows allow: the corrected resampled t-test over paired folds, and the
    paired cluster bootstrap of the difference on the same kept items; without either (and with
    spreads to compare), non-overlapping mean ± std intervals."""
    from ocbench.stats import paired_from_distributions

    out: list[Evidence] = []
    sa, sb = a.score, b.score
    if paired and sa and sb and sa.per_fold and sb.per_fold and len(sa.per_fold) == len(sb.per_fold) >= 2:
        p = corrected_t_test_p(sa.per_fold, sb.per_fold)
        out.append(Evidence(p < alpha, f"corrected t-test over {len(sa.per_fold)} folds p = {p:.3g}"))
    pa, pb = a.predictions, b.predictions
    if paired and pa is not None and pb is not None and pa.eval_set == pb.eval_set and pa.same_items(pb):
        try:
            result = paired_from_distributions(
                _distribution(a, cache), _distribution(b, cache), n_groups=pa.n_groups, level=1 - alpha,
                group_name=pa.group_name,
            )
        except Exception as exc:  # a malformed file must not stop the board; the row says so
            out.append(Evidence(False, f"paired bootstrap not possible ({exc})"))
        else:
            d = result.difference
            # a - b excludes 0 on a's side: above 0, or below it when lower is better
            out.append(Evidence(d.low > 0 if a.higher_is_better else d.high < 0, f"paired {d.group} bootstrap of the {pa.eval_set} difference "
                                           f"{d.estimate:+.3f} [{d.low:+.3f}, {d.high:+.3f}]", d))
    return out


def separable(a: Row, b: Row, *, paired: bool, alpha: float = ALPHA, cache: dict | None = None) -> tuple[bool, str]:
    """Whether ``a`` (ranked above) is better than ``b`` at the ``1 - alpha`` level, and why.

    Every test the two rows allow must agree (:func:`paired_evidence`); without either, non-overlapping
    mean ± std intervals. ``cache``: one dict per table, so each row's bootstrap distribution is
    computed once."""
    evidence = paired_evidence(a, b, paired=paired, alpha=alpha, cache=cache)
    sa, sb = a.score, b.score
    if not evidence and paired and sa and sb and min(sa.n, sb.n) < 2:  # one score each (leave-one-out k-NN)
        return False, "single scores without per-item predictions to compare: not separated"
    if not evidence and sa and sb:
        overlap = intervals_overlap(sa, sb)
        evidence.append(Evidence(not overlap, f"mean ± std intervals {'overlap' if overlap else 'do not overlap'}"))
    return (bool(evidence) and all(e.better for e in evidence)), "; ".join(e.text for e in evidence)


def headline(table: "Table", *, alpha: float = ALPHA) -> str:
    """One sentence on what the table shows at the top: "A beats B by Δ [CI]" when the best row is
    better than the runner-up at the table's level, else that the top is not separated. Computed rows
    only, from the same paired tests that decide the ranks."""
    rows = [r for r in table.computed_rows if r.score is not None]
    if len(rows) < 2:
        return ""
    rows.sort(key=_sort_key)
    top, runner = rows[0], rows[1]
    same_split = table.group is not None
    beaten, _ = separable(top, runner, paired=same_split, alpha=alpha)
    evidence = paired_evidence(top, runner, paired=same_split, alpha=alpha)
    difference = next((e.difference for e in evidence if e.difference is not None), None)
    level = f"{1 - alpha:.0%}"
    delta = f"{top.score.mean - runner.score.mean:+.3f} {table.score_label}"
    if difference is not None:
        delta = (f"{difference.estimate:+.3f} {score_label(runner.interval_set or 'test', table.group.main_metric if table.group else 'macro_f1')} "
                 f"[{difference.low:+.3f}, {difference.high:+.3f}] ({level} CI, paired {difference.group} bootstrap)")
    tests = [e.text for e in evidence if e.difference is None]
    also = f"; {'; '.join(tests)}" if tests else ""
    if beaten:
        return f"{top.label} beats the runner-up {runner.label} by {delta}{also}."
    n_top = sum(1 for r in table.computed_rows if r.rank == top.rank)
    return (f"No separation at the top: {top.label} and {runner.label} differ by {delta}{also}, not enough at the "
            f"{level} level; {n_top} rows share rank {top.rank}.")


def _ranked(rows: Iterable[Row], *, paired: bool, alpha: float) -> list[Row]:
    ordered = sorted(rows, key=_sort_key)
    cache: dict = {}
    decisions = assign_tie_groups(
        [r.score for r in ordered],  # type: ignore[misc]
        lambda i, j: separable(
            ordered[i], ordered[j], paired=paired and ordered[i].kind == ordered[j].kind == "computed", alpha=alpha, cache=cache,
        ),
    )
    return [replace(r, rank=d.rank, tied_with_above=d.tied_with_above, rank_reason=d.reason) for r, d in zip(ordered, decisions)]


def _assemble(rows_computed: list[Row], rows_reported: list[Row], *, paired: bool, rank_reported: bool, alpha: float) -> tuple[list[Row], bool]:
    """Rows in display order with ranks; returns (rows, reported rows were ranked)."""
    rankable_reported = [r for r in rows_reported if r.score is not None]
    if rank_reported and rankable_reported:
        ranked = _ranked([*rows_computed, *rankable_reported], paired=paired, alpha=alpha)
        rest = [r for r in rows_reported if r.score is None]
        return ranked + rest, True
    ranked = _ranked(rows_computed, paired=paired, alpha=alpha) if rows_computed else []
    return ranked + sorted(rows_reported, key=_sort_key), False


# ---------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------
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
    computed = [_computed_row(m, files[m.sha256]) for m in members]
    first = members[0].entry
    not_comparable = paper_incomparability(m.entry for m in members)  # the paper's numbers only beside comparable results
    reported = [_reported_row(r) for r in reported_rows] if not_comparable is None else []
    rows, ranked_reported = _assemble(computed, reported, paired=True, rank_reported=rank_reported, alpha=alpha)
    rows, vs_baseline_label = _with_baseline_differences(rows, alpha=alpha)
    references = _reference_rows(members)
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
            predictions=f"{i0.group} bootstrap" if with_interval else None,
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


def _reported_table(task: str, track: str, results: list[ReportedResult], *, rank_reported: bool, alpha: float) -> Table:
    rows = [_reported_row(r) for r in results]
    knn = any(r.per_k for r in results)
    if knn:
        ordered, ranked = rows, False  # per-k rows: no single score to rank by
        rule = "Macro-F1 for increasing k (the paper does not print the k values); not ranked."
    else:
        ordered, ranked = _assemble([], rows, paired=False, rank_reported=rank_reported, alpha=alpha)
        rule = (
            rank_rule_text(paired=False, n_folds=None, alpha=alpha, ranked_reported=True)
            if ranked
            else "The paper's numbers, sorted by mean; not ranked (they were not computed by ocbench)."
        )
    return Table(
        id=f"{safe_id(task)}-{safe_id(track)}-reported",
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
        score_label="CV macro-F1",
    )


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
            tables.append(_reported_table(task, track, results, rank_reported=rank_reported, alpha=alpha))

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


# ---------------------------------------------------------------------------------------------
# several seeds
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SeedRow:
    """One configuration over the seeds it was run with (each seed its own split and probe seed)."""

    backbone: str
    channels: str
    seeds: tuple[int, ...]
    means: tuple[float, ...]  # each seed's mean main score (over its folds)
    test_means: tuple[float, ...]
    notes: str = ""

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def mean(self) -> float:
        from ocbench.summaries import summary_mean

        return summary_mean(self.means)

    @property
    def std(self) -> float | None:
        from ocbench.summaries import summary_std

        return summary_std(self.means)

    @property
    def test_mean(self) -> float | None:
        from ocbench.summaries import summary_mean

        return summary_mean(self.test_means) if len(self.test_means) == len(self.means) else None


@dataclass(frozen=True)
class SeedTable:
    id: str
    title: str
    score_label: str
    rows: tuple[SeedRow, ...]
    rule: str
    mixed: bool  # rows with different numbers of seeds


def trained_from(entry: Any) -> dict | None:
    """The training record a backbone trained by ocbench (``ocbench finetune``) keeps in its card's
    notes (base, dataset, split, seed, settings, run hash), or None for any other backbone."""
    card = entry.backbone.card or {}
    try:
        notes = json.loads(card.get("notes") or "")
    except (TypeError, ValueError):
        return None
    if not isinstance(notes, dict):
        return None
    base = notes.get("fine-tuned from") or notes.get("trained from scratch as")
    return notes if isinstance(base, str) and base else None


def _config_across_seeds(row: Row) -> str:
    """The name a row's configuration goes by across seeds. A backbone trained by ocbench is named
    per run, seed included (``<base>.ft-<data>-f<fraction>-<run hash>``): its seeds are pooled under
    that name with the run hash replaced by a hash of the training settings without the seed."""
    notes = trained_from(row.entry.entry) if row.entry is not None else None
    run_hash = str((notes or {}).get("run_hash") or "")
    if not run_hash or not row.backbone.endswith("-" + run_hash):
        return row.backbone
    settings = {k: v for k, v in notes.items() if k not in ("seed", "run_hash", "split")}
    settings["split_track"] = (notes.get("split") or {}).get("track")
    digest = json_sha256(settings, default=str)[:8]
    return f"{row.backbone[: -len(run_hash)]}seeds-{digest}"


def seed_tables(tables: Sequence[Table]) -> tuple[SeedTable, ...]:
    """Tables of configurations run with several seeds: the tables that differ only in split (one per
    split seed) are pooled, and each configuration's per-seed means are summarized (mean, seed std
    with ddof 1, n seeds). Rows with fewer seeds than others are labelled, never silently mixed."""
    families: dict[GroupKey, list[Table]] = defaultdict(list)
    for table in tables:
        if table.group is not None:
            families[replace(table.group, split_sha256="")].append(table)
    out = []
    families_out: list[GroupKey] = []
    for family, members in sorted(families.items()):
        per_config: dict[tuple[str, str], dict[int, Row]] = defaultdict(dict)
        for table in members:
            for row in table.computed_rows:
                seed = row.seed or 0
                per_config[(_config_across_seeds(row), row.channels)][seed] = row
        if not any(len(by_seed) > 1 for by_seed in per_config.values()):
            continue
        most = max(len(by_seed) for by_seed in per_config.values())
        rows = []
        for (backbone, channels), by_seed in per_config.items():
            seeds = tuple(sorted(by_seed))
            means = tuple(by_seed[s].score.mean for s in seeds if by_seed[s].score is not None)
            tests = tuple(by_seed[s].test.mean for s in seeds if by_seed[s].test is not None)
            note = "1 seed: no seed spread, not comparable with the many-seed rows" if len(seeds) == 1 else (
                f"{len(seeds)} of {most} seeds" if len(seeds) < most else "")
            rows.append(SeedRow(backbone, channels, seeds, means, tests, note))
        sign = 1.0 if family.higher_is_better else -1.0  # best mean first, whichever way the score ranks
        rows.sort(key=lambda r: (-r.n, -sign * r.mean, r.backbone, r.channels))  # many-seed rows first, then by mean
        label = members[0].score_label
        mixed = len({r.n for r in rows}) > 1
        rule = (
            f"Each seed is its own split (unless a split file was given) and probe seed; the score is the mean over seeds of "
            f"each seed's mean {label}, and seed std is the sample std (ddof 1) of those per-seed means. Rows are sorted "
            "by number of seeds, then mean; they are not ranked."
        ) + (" Rows with fewer seeds are labelled." if mixed else "")
        digest = members[0].group.slug.rsplit("-", 1)[0] if members[0].group else "seeds"
        out.append(SeedTable(
            id=f"{digest}-seeds-{hashlib.sha256(repr(family).encode()).hexdigest()[:8]}",
            title=f"{members[0].title} · over seeds",  # the tables' own title: settings and synthetic data say so
            score_label=label, rows=tuple(rows), rule=rule, mixed=mixed,
        ))
        families_out.append(family)
    return tuple(_distinct_titles(out, families_out))


def _distinct_titles(tables: list["SeedTable"], keys: list[GroupKey]) -> list["SeedTable"]:
    """Tables whose titles would coincide get what tells their keys apart appended (protocol
    version, main score, off-protocol reasons), so no two tables share a heading."""
    seen: dict[str, list[int]] = defaultdict(list)
    for i, table in enumerate(tables):
        seen[table.title].append(i)
    out = list(tables)
    for indices in seen.values():
        if len(indices) < 2:
            continue
        fields = [f for f in ("protocol_version", "main_eval_set", "main_metric", "off_protocol_reasons", "overrides")
                  if len({getattr(keys[i], f) for i in indices}) > 1]
        for i in indices:
            said = "; ".join(f"{f.replace('_', ' ')} {getattr(keys[i], f)}" for f in fields) or f"table {i + 1}"
            out[i] = replace(out[i], title=f"{out[i].title} ({said})")
    return out


# ---------------------------------------------------------------------------------------------
# across tables: critical difference
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CriticalDifference:
    result: Any  # ocbench.stats.FriedmanResult
    tables: tuple[str, ...]  # titles of the tables used
    left_out: tuple[str, ...]  # backbones on several tables but not on all of the ones used

    @property
    def text(self) -> str:
        r = self.result
        ranks = ", ".join(f"{n} {v:.2f}" for n, v in sorted(zip(r.names, r.average_ranks), key=lambda t: t[1]))
        out = (
            f"Average rank over {r.n_tables} tables (1 = best; each backbone's best row per table): {ranks}. Friedman test "
            f"p = {r.p_value:.3g}; Nemenyi critical difference at {r.level:.0%}: {r.critical_difference:.2f} ranks "
            "(backbones whose average ranks differ by less are joined by a bar in the diagram)."
        )
        if self.left_out:
            out += f" Left out (not on every one of these tables): {', '.join(self.left_out)}."
        return out


def critical_difference(tables: Sequence[Table]) -> tuple[CriticalDifference | None, str]:
    """Friedman + Nemenyi across tables that are independent evidence: tables of one configuration
    (task, track, protocol, main score, settings) over different datasets (different images), one
    table per dataset; each backbone's best row per table. Tables over the same images (the demo's
    probes and split tracks) are not independent, so they never make a diagram on their own.

    Returns ``(diagram or None, why it is not drawn)``; the reason is "" when nothing on the board
    calls for a diagram (no backbone on two tables)."""
    computed = [t for t in tables if t.group is not None]
    on_tables: dict[str, int] = defaultdict(int)
    for table in computed:
        for name in {r.backbone for r in table.computed_rows if r.score is not None}:
            on_tables[name] += 1
    if sum(1 for c in on_tables.values() if c >= 2) < 2:
        return None, ""
    families: dict[tuple, dict[tuple[str, str], Table]] = defaultdict(dict)
    for table in computed:
        g = table.group
        family = (g.task, g.track, g.protocol_version, g.main_eval_set, g.main_metric, g.overrides, g.off_protocol_reasons)
        families[family].setdefault((g.dataset_name, g.dataset_version), table)  # one table per set of images
    for family in sorted(families, key=lambda f: (-len(families[f]), f)):
        if len(families[family]) < 2:
            break
        cd = _friedman_over(list(families[family].values()))
        if cd is not None:
            return cd, ""
    datasets = sorted({(t.group.dataset_name, t.group.dataset_version[:8]) for t in computed})
    if len(datasets) == 1:
        (name, version), = datasets
        why = (f"all {len(computed)} tables are over the same images (dataset {name} {version}): its probes and split "
               "tracks are not independent evidence, so no Friedman test or critical-difference diagram is drawn; one "
               "needs the same task on different datasets")
    else:
        why = ("no task, track and settings was run on two or more different datasets by the same backbones, and tables "
               "over the same images are not independent evidence: no Friedman test or critical-difference diagram is drawn")
    return None, why


def _friedman_over(tables: Sequence[Table]) -> CriticalDifference | None:
    """Friedman + Nemenyi over ``tables`` for backbones on several of them (each backbone's best row
    per table). None when fewer than 2 backbones share 2 tables."""
    scores: dict[str, dict[str, float]] = defaultdict(dict)  # table id -> backbone -> best mean
    titles = {}
    for table in tables:
        titles[table.id] = table.title
        for row in table.computed_rows:
            if row.score is not None:
                scores[table.id][row.backbone] = max(row.score.mean, scores[table.id].get(row.backbone, float("-inf")))
    counts: dict[str, int] = defaultdict(int)
    for by_backbone in scores.values():
        for name in by_backbone:
            counts[name] += 1
    names = sorted(n for n, c in counts.items() if c >= 2)
    candidates = list(names)
    while len(candidates) >= 2:
        used = [t for t, by in scores.items() if all(n in by for n in candidates)]
        if len(used) >= 2:
            from ocbench.stats import friedman_nemenyi

            matrix = [[scores[t][n] for n in candidates] for t in used]
            result = friedman_nemenyi(matrix, candidates)
            left = tuple(n for n in names if n not in candidates)
            return CriticalDifference(result, tuple(titles[t] for t in used), left)
        candidates.remove(min(candidates, key=lambda n: (counts[n], n)))  # the one on fewest tables
    return None


# ---------------------------------------------------------------------------------------------
# best per class
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClassBest:
    class_name: str
    best: Row | None  # None: no clear best
    top: tuple[Row, ...]  # the row(s) with the highest score (several when tied)
    top_value: float
    runner_up: Row | None
    runner_up_value: float | None
    note: str  # why there is no clear best, or how the best was separated

    @property
    def clear(self) -> bool:
        return self.best is not None


_EPS = 1e-12


def best_per_class(table: Table, *, alpha: float = ALPHA) -> list[ClassBest]:
    """For each class, the computed row with the highest score on it, awarded only when it is
    clear: above 0, not tied, and (when both rows have fold values of the class on the same folds)
    separated from the runner-up by the corrected resampled t-test (p < alpha). Needs >= 2 rows."""
    rows = [r for r in table.computed_rows if r.per_class]
    if len(rows) < 2:
        return []
    out = []
    for name in table.class_names:
        scored = sorted(((r.per_class[name], r) for r in rows if name in r.per_class), key=lambda t: (-t[0], t[1].label))
        if len(scored) < 2:
            continue
        top_value = scored[0][0]
        top = tuple(r for v, r in scored if abs(v - top_value) <= _EPS)
        rest = [(v, r) for v, r in scored if abs(v - top_value) > _EPS]
        runner_value, runner = (rest[0] if rest else (None, None))
        best: Row | None = None
        if top_value <= _EPS:
            note = "no clear best: the best score is 0"
        elif len(top) > 1:
            note = f"no clear best: {len(top)} rows tied at {top_value:.3f}"
        else:
            assert runner is not None and runner_value is not None
            a, b = top[0].per_class_folds.get(name), runner.per_class_folds.get(name)
            if a and b and len(a) == len(b) >= 2:
                p = corrected_t_test_p(a, b)
                if p >= alpha:
                    note = f"no clear best: a corrected t-test over {len(a)} folds cannot separate the top two (p = {p:.3g})"
                else:
                    best, note = top[0], f"corrected t-test over {len(a)} folds vs the runner-up: p = {p:.3g}"
            else:
                best, note = top[0], "highest score (no paired folds to test the gap)"
        out.append(ClassBest(name, best, top, top_value, runner, runner_value, note))
    return out
