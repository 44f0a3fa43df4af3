"""Terminal tables printed at the end of ``ocbench run`` and ``ocbench sweep-channels``.

Each computed row shows the paper's reported number for the same configuration beside it, when
the paper has one and the entry's data are comparable with the paper's (the full OpenCell set,
all grades: ``ocbench.reported.not_comparable_reason``); otherwise the cell says why not, e.g.
``n/a (subset: 15 of ~6120 FOVs)`` or ``n/a (not OpenCell (ocbench-demo))``.
"""

from __future__ import annotations

from typing import Sequence

from ocbench.leaderboard.ranking import Score
from ocbench.leaderboard.render import fmt_score
from ocbench.leaderboard.tables import _map_label, _score, dataset_block, resolve_channel_map
from ocbench.reported import not_comparable_reason, reported_for

__all__ = ["format_run_table", "format_sweep_table"]


def _channel_map(entry) -> tuple[int, int] | None:
    """The entry's (protein, nucleus) input indices in the paper's notation; None for replicate."""
    return resolve_channel_map(entry.channels.strategy, entry.channels.spec, entry.channels.key, entry.backbone.card)


def _reported_cell(entry, channel_map) -> str:
    reason = not_comparable_reason(dataset_block(entry))
    if reason is not None:
        return f"n/a ({reason})"
    found = reported_for(
        entry.backbone.name, entry.task, entry.split.track, entry.channels.strategy, channel_map, entry.task_config
    )
    if found is None or found.mean is None:
        return "-"
    return fmt_score(Score(found.mean, found.std, found.n))


def _channels_label(entry, channel_map) -> str:
    key = entry.channels.key
    return key if channel_map is None else f"{key} {_map_label(entry.backbone.card, channel_map)}"


def format_run_table(entries: Sequence) -> str:
    """One row per entry: val and test macro-F1 (mean ± std over n folds) and the paper's value."""
    from tabulate import tabulate

    rows = []
    for e in entries:
        channel_map = _channel_map(e)
        rows.append([
            e.backbone.name,
            _channels_label(e, channel_map),
            e.task + (" (off-protocol)" if e.off_protocol else ""),
            e.split.track,
            fmt_score(_score(e.val)),
            fmt_score(_score(e.test)),
            _reported_cell(e, channel_map),
        ])
    headers = ["backbone", "channels", "task", "split", "val macro-F1", "test macro-F1", "paper (reported)"]
    note = "mean ± std (ddof 1) over n folds; test = each fold's model scored on the held-out 10% test set"
    return tabulate(rows, headers=headers, tablefmt="simple") + "\n" + note


def format_sweep_table(backbone: str, entries: Sequence) -> str:
    """The channel sweep, best map first, shaped like the paper's appendix D lists."""
    ordered = sorted(entries, key=lambda e: -e.val.mean)
    return f"channel sweep of {backbone} (best first)\n" + format_run_table(ordered)
