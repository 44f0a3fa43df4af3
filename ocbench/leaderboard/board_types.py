"""What a built board is made of: :class:`Row`, :class:`Table`, :class:`Board` and a row's
:class:`BaselineDifference`.

Plain frozen records: :mod:`ocbench.leaderboard.tables` fills them in, the renderings (Markdown,
CSV, HTML, plots) read them. A row is computed (an entry), reported (the paper's number) or a
chance reference; a table ranks its rows by one main score, in that score's direction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ocbench.leaderboard.grouping import GroupKey
from ocbench.leaderboard.ranking import Score
from ocbench.reported import ReportedResult

__all__ = ["BaselineDifference", "Row", "Table", "Board"]


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
    #: The main score's metric (the entry's ``main_score.metric``): what a paired bootstrap on the
    #: row's kept predictions computes. Reported rows keep no predictions, so theirs is never used.
    main_metric: str = "macro_f1"

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
    seed_tables: tuple[Any, ...] = ()  # SeedTable (ocbench.leaderboard.seeds) of the tables
    critical_difference: Any = None  # CriticalDifference across tables, or None
    critical_difference_skipped: str = ""  # why no diagram is drawn though backbones share tables

    @property
    def synthetic(self) -> bool:
        return any(t.synthetic for t in self.tables)

