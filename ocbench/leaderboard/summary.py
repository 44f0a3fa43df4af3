"""Terminal tables printed at the end of ``ocbench run``, ``ocbench sweep-channels`` and ``ocbench demo``.

Each row shows the entry's main score (``entry.main_score``, e.g. val macro-F1) and the same
metric on the test set, and the paper's reported number for the same configuration when the
paper has one and the entry's data are comparable with the paper's (the full OpenCell set, all
grades: ``ocbench.reported.not_comparable_reason``); otherwise the cell says why not, e.g.
``n/a (subset: 15 of ~6120 FOVs)`` or ``n/a (not OpenCell (demo))``. Rows on synthetic data
(the demo) say so, and a note under the table says what that means.

Uses only the leaf helpers of the board (channels, formatting, grouping, ranking): no renderer.
"""

from __future__ import annotations

from typing import Any, Sequence

from ocbench.leaderboard.channels import entry_channel_map, map_label
from ocbench.leaderboard.formatting import (
    SYNTHETIC_NOTE, WEIGHTS_UNVERIFIED, fmt_axis_value, fmt_score, metric_label, score_basis, score_label,
    weights_note_suffix,
)
from ocbench.leaderboard.grouping import dataset_block
from ocbench.leaderboard.ranking import Score
from ocbench.reported import not_comparable_reason, reported_for

__all__ = ["format_run_table", "format_sweep_table", "format_warnings", "best_chance"]


def best_chance(entry: Any, eval_set: str | None = None) -> tuple[str, float] | None:
    """(name, mean) of the entry's best chance reference on ``eval_set`` (default: the main one): the
    highest, or the lowest when the main score is lower-is-better."""
    part, metric = eval_set or entry.main_score.eval_set, entry.main_score.metric
    scored = [(r.name, r.scores[part][metric].mean) for r in getattr(entry, "references", ())
              if metric in r.scores.get(part, {})]
    sign = 1.0 if _higher_is_better(entry) else -1.0
    return max(scored, key=lambda t: sign * t[1]) if scored else None


def _higher_is_better(entry: Any) -> bool:
    return getattr(entry.main_score, "higher_is_better", True)


def ranking_value(entry: Any) -> float:
    """What ranks an entry, larger first: its main score's mean, negated when lower is better."""
    return entry.main.mean if _higher_is_better(entry) else -entry.main.mean


def format_warnings(entries: Sequence[Any]) -> str:
    """The entries' warnings (collapse, chance level), one line each; '' when there are none."""
    lines = [f"warning: {e.key}: {w.message}" for e in entries for w in getattr(e, "warnings", ())]
    return "\n".join(lines)


def _reported_cell(entry: Any, channel_map: tuple[int, int] | None) -> str:
    reason = not_comparable_reason(dataset_block(entry))
    if reason is not None:
        return f"n/a ({reason})"
    found = reported_for(
        entry.backbone.name, entry.task, entry.split.track, entry.channels.strategy, channel_map, entry.task_config
    )
    if found is None or found.mean is None:
        return "-"
    return fmt_score(Score(found.mean, found.std, found.n))


def _channels_label(entry: Any, channel_map: tuple[int, int] | None) -> str:
    key = entry.channels.key
    return key if channel_map is None else f"{key} {map_label(entry.backbone.card, channel_map)}"


def _task_label(entry: Any) -> str:
    marks = []
    if entry.off_protocol:
        marks.append("off-protocol")
    if entry.environment.precision != "fp32":
        marks.append(entry.environment.precision)
    return entry.task + (f" ({', '.join(marks)})" if marks else "")


def _score_cell(entry: Any, summary: Any, prefix: str) -> str:
    if summary is None:
        return "-"
    text = prefix + fmt_score(Score.of(summary))
    if entry.axis is not None:
        text += f" at {entry.axis.name}={fmt_axis_value(entry.axis.main)}"
    return text


def _chance_cell(entry: Any) -> str:
    best = best_chance(entry)
    return f"{best[1]:.3f} ({best[0]})" if best is not None else "-"


def format_run_table(entries: Sequence[Any]) -> str:
    """One row per entry: its main score and the same metric on test (mean ± std over n folds),
    and the paper's value; notes below for synthetic data, off-protocol and unverified weights."""
    from tabulate import tabulate

    mains = {(e.main_score.eval_set, e.main_score.metric) for e in entries}
    shared = len(mains) == 1
    if shared:
        ((eval_set, metric),) = mains
        headers_score = [score_label(eval_set, metric), score_label("test", metric) if eval_set != "test" else "test"]
    else:  # several tasks with different main scores: each cell names its metric
        headers_score = ["main score", "test (same metric)"]

    rows = []
    for e in entries:
        channel_map = entry_channel_map(e)
        prefix = "" if shared else f"{score_label(e.main_score.eval_set, e.main_score.metric)} "
        test_prefix = "" if shared else f"{metric_label(e.main_score.metric)} "
        test = e.test if e.main_score.eval_set != "test" else None
        rows.append([
            e.backbone.name,
            _channels_label(e, channel_map),
            _task_label(e),
            e.split.track,
            e.dataset.name + (" (synthetic)" if e.dataset.synthetic else ""),
            _score_cell(e, e.main, prefix),
            _score_cell(e, test, test_prefix) if test is not None else "-",
            _chance_cell(e),
            _reported_cell(e, channel_map),
        ])
    headers = ["backbone", "channels", "task", "split", "data", *headers_score, "best chance", "paper (reported)"]
    notes = []
    with_folds = [e for e in entries if e.main.n >= 2]
    if with_folds:
        with_test = any(e.main_score.eval_set != "test" and e.test is not None for e in with_folds)
        notes.append("mean ± std (ddof 1) over n folds"
                     + ("; test = each fold's model scored on the held-out 10% test set" if with_test else ""))
    for eval_set in sorted({e.main_score.eval_set for e in entries if e.main.n < 2}):
        notes.append(f"{eval_set}: {score_basis(eval_set, 1)}")
    if any(best_chance(e) for e in entries):
        lower = any(not _higher_is_better(e) for e in entries)
        best_word = "highest (lowest where lower is better)" if lower else "highest"
        notes.append(f"best chance = the {best_word} of the entry's chance references on the main score (labels only: "
                     "all-positive or majority class, class prior, shuffled labels through the same probe)")
    if any(e.dataset.synthetic for e in entries):
        notes.append(f"(synthetic) = {SYNTHETIC_NOTE}")
    reasons: dict[tuple[str, ...], int] = {}
    for e in entries:
        if e.off_protocol:
            why = tuple(e.off_protocol_reasons) or ("no reason recorded",)
            reasons[why] = reasons.get(why, 0) + 1
    for why, count in reasons.items():
        notes.append(f"off-protocol ({count} row{'s' if count > 1 else ''}): {'; '.join(why)}")
    for e in entries:  # every interval says what it is
        ref = e.predictions
        summary = e.score(ref.eval_set) if ref is not None else None
        if summary is not None and summary.interval is not None:
            notes.append(f"interval of {e.key}: {score_label(ref.eval_set, e.main_score.metric)} {summary.interval.describe()}")
    for e in entries:
        if e.backbone.weights_verified is False:
            notes.append(f"{e.key}: {WEIGHTS_UNVERIFIED}{weights_note_suffix(e.backbone.weights_note)}")
    return tabulate(rows, headers=headers, tablefmt="simple") + "\n" + "\n".join(notes)


def format_sweep_table(backbone: str, entries: Sequence[Any]) -> str:
    """The channel sweep, best map first (by the main score), shaped like the paper's appendix D lists."""
    ordered = sorted(entries, key=lambda e: -ranking_value(e))
    return f"channel sweep of {backbone} (best first)\n" + format_run_table(ordered)
