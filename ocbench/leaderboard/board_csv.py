"""The board as one CSV: every row of every table on one line, the numbers unrounded.

:func:`board_dataframe` is what ``leaderboard.csv`` holds (through pandas); each column group has
its own function so the columns stay in one documented order. Text cells go through
:func:`~ocbench.leaderboard.formatting.csv_safe`, so no cell is a spreadsheet formula.
"""

from __future__ import annotations

import json
from typing import Any

from ocbench.leaderboard.board_types import Board, Row, Table
from ocbench.leaderboard.formatting import csv_safe, fmt_axis_value

__all__ = ["board_dataframe"]


def _board_class_names(board: Board) -> list[str]:
    names: list[str] = []
    for table in board.tables:
        names += [c for c in table.class_names if c not in names]
    return names


def _table_columns(table: Table) -> dict[str, Any]:
    """What the row's table is: its title, task, data, split and main score."""
    g = table.group
    return {
        "table_id": table.id,
        "table": table.title,
        "task": table.task,
        "track": table.track,
        "protocol_version": g.protocol_version if g else "paper",
        "dataset_name": g.dataset_name if g else "opencell (paper)",
        "dataset_version": g.dataset_version if g else "",
        "split_sha256": g.split_sha256 if g else "",
        "main_score": f"{g.main_eval_set}/{g.main_metric}" if g else "val/macro_f1 (paper)",
    }


def _score_columns(row: Row, e: Any) -> dict[str, Any]:
    """The row itself: its rank, backbone, channels, scores and interval."""
    return {
        "kind": row.kind,
        "rank": row.rank,
        "tied_with_above": row.tied_with_above,
        "backbone": row.backbone,
        "channels": row.channels,
        "channels_strategy": row.strategy,
        "channels_key": e.channels.key if e else "",
        "channel_map": json.dumps(list(row.channel_map)) if row.channel_map else "",
        "score_mean": row.score.mean if row.score else None,
        "score_std": row.score.std if row.score else None,
        "score_n": row.score.n if row.score else None,
        "score_values": json.dumps(list(row.score.per_fold)) if row.score and row.score.per_fold else "",
        "test_mean": row.test.mean if row.test else None,
        "test_std": row.test.std if row.test else None,
        "test_n": row.test.n if row.test else None,
        "interval_set": row.interval_set,
        "interval_estimate": row.interval.estimate if row.interval else None,
        "interval_low": row.interval.low if row.interval else None,
        "interval_high": row.interval.high if row.interval else None,
        "interval_level": row.interval.level if row.interval else None,
        "interval_method": f"{row.interval.method} over {row.interval.group}" if row.interval else "",
        "interval_n_groups": row.interval.n_groups if row.interval else None,
        "interval_n_resamples": row.interval.n_resamples if row.interval else None,
    }


def _entry_columns(row: Row, e: Any) -> dict[str, Any]:
    """Where the row's numbers come from: seed, paper, axis, settings, cost and weights."""
    return {
        "no_interval_reason": row.no_interval,
        "unverified": row.unverified,
        "seed": row.seed if row.entry else None,
        "not_zero_shot": ("" if row.not_zero_shot is None else json.dumps(list(row.not_zero_shot))) if row.entry else "",
        "paper_mean": row.reported.mean if row.reported else None,
        "paper_std": row.reported.std if row.reported else None,
        "paper_source": row.reported.source if row.reported else (row.source.source if row.source else ""),
        "per_k": json.dumps(list(row.per_k)) if row.per_k else "",
        "axis_name": e.axis.name if e and e.axis else "",
        "axis_main": e.axis.main if e and e.axis else None,
        "axis_scores": json.dumps({fmt_axis_value(v): s.mean for v, s in row.axis_points}) if row.axis_points else "",
        "synthetic": row.synthetic if e else "",
        "off_protocol": e.off_protocol if e else "",
        "off_protocol_reasons": json.dumps(e.off_protocol_reasons) if e else "",
        "overrides": json.dumps(e.overrides, sort_keys=True) if e else "",
        "precision": e.environment.precision if e else "",
        "cost_device_s_per_1000": e.timings.device_seconds_per_1000 if e else None,
        "extraction_device": (e.timings.extraction_device or "") if e else "",
        "extraction_processes": e.timings.extraction_processes if e else None,
        "extraction_images_per_s": e.timings.extraction_images_per_s if e else None,
        "peak_host_memory_gib": e.timings.peak_host_memory_gib if e else None,
        "peak_device_memory_gib": e.timings.peak_device_memory_gib if e else None,
        "weights_verified": ("" if e.backbone.weights_verified is None else e.backbone.weights_verified) if e else "",
    }


def _comparison_columns(row: Row, e: Any) -> dict[str, Any]:
    """The row against the best baseline, its notes and the entry file behind it."""
    return {
        "role": row.role,
        "warnings": json.dumps(list(row.warnings)) if row.warnings else "",
        "vs_best_baseline": row.vs_baseline.estimate if row.vs_baseline else None,
        "vs_best_baseline_low": row.vs_baseline.low if row.vs_baseline else None,
        "vs_best_baseline_high": row.vs_baseline.high if row.vs_baseline else None,
        "vs_best_baseline_includes_zero": row.vs_baseline.includes_zero if row.vs_baseline else "",
        "vs_best_baseline_of": row.vs_baseline.baseline if row.vs_baseline else "",
        "vs_best_baseline_method": row.vs_baseline.method if row.vs_baseline else row.vs_baseline_note,
        "notes": row.notes,
        "entry_file": f"entries/{row.board_file}" if row.board_file else "",
        "entry_sha256": row.entry.sha256 if row.entry else "",
        "created": e.created if e else "",
        "weights_sha256": (e.backbone.weights_sha256 or "") if e else "",
        "revision": (e.backbone.revision or "") if e else "",
        "ocbench_version": e.environment.ocbench if e else "",
    }


def _seed_records(board: Board) -> list[dict[str, Any]]:
    """One line per configuration of every table over seeds."""
    records = []
    for seeds in board.seed_tables:
        for srow in seeds.rows:
            rec = {
                "table_id": seeds.id, "table": seeds.title, "kind": "seeds", "backbone": srow.backbone,
                "channels": srow.channels, "score_mean": srow.mean, "seed_std": srow.std, "n_seeds": srow.n,
                "seeds": json.dumps(list(srow.seeds)), "score_values": json.dumps(list(srow.means)),
                "test_mean": srow.test_mean, "notes": srow.notes,
            }
            records.append({k: csv_safe(v) for k, v in rec.items()})
    return records


def board_dataframe(board: Board):
    """One line per row of every table (pandas DataFrame), with the numbers unrounded.

    Text cells go through :func:`csv_safe` (no spreadsheet formulas)."""
    import pandas as pd

    class_names = _board_class_names(board)
    records = []
    for table in board.tables:
        for row in table.rows:
            e = row.entry.entry if row.entry else None  # None for reported and reference rows
            rec = {**_table_columns(table), **_score_columns(row, e), **_entry_columns(row, e), **_comparison_columns(row, e)}
            for name in class_names:
                rec[f"per_class_f1_{name}"] = row.per_class.get(name)
            records.append({k: csv_safe(v) for k, v in rec.items()})
    records += _seed_records(board)
    columns = list(dict.fromkeys(k for r in records for k in r)) if records else ["table_id", "kind", "backbone"]
    frame = pd.DataFrame.from_records(records, columns=columns)
    for col in ("rank", "score_n", "test_n", "interval_n_groups", "interval_n_resamples", "seed", "n_seeds"):
        if col in frame:
            frame[col] = frame[col].astype("Int64")
    return frame
