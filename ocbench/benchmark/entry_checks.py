"""Checks of an entry across its fields, beyond what one field's type says.

:class:`~ocbench.benchmark.entry_schema.Entry` runs these when it validates: fraction metrics lie
in [0, 1], per-class rows name the entry's classes, every recorded aggregate agrees with the
per-fold, per-class numbers it summarizes, and an entry marked zero-shot is not contradicted by
the cards it records. A number edited by hand after `ocbench run` wrote it is caught here.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ocbench.benchmark.entry_scores import _AGGREGATE_TOLERANCE, UNIT_INTERVAL_METRICS

if TYPE_CHECKING:  # pragma: no cover
    from ocbench.benchmark.entry_scores import AxisPoint, MetricSummary


def _recorded_not_zero_shot_reasons(card: Mapping[str, Any], dataset_card: Mapping[str, Any]) -> list[str]:
    """The zero-shot rule (``backbones.provenance``) applied to the cards an entry records."""
    from types import SimpleNamespace

    from ocbench.backbones.provenance import not_zero_shot_reasons

    names = card.get("training_datasets") or ()
    extra = dataset_card.get("extra") or {}
    aliases = extra.get("training_data_names", ()) if isinstance(extra, Mapping) else None
    if (isinstance(names, str) or not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names)
            or not isinstance(aliases, (list, tuple))):
        raise ValueError("backbone.card.training_datasets and dataset.card.extra.training_data_names must be lists of "
                         "names; the entry was edited: run `ocbench run` again")
    backbone = SimpleNamespace(training_datasets=tuple(names), supervision=card.get("supervision"))
    dataset = SimpleNamespace(name=str(dataset_card.get("name", "")), extra=extra)
    return not_zero_shot_reasons(backbone, dataset)


def _check_scores_in_range(scores: Mapping[str, Mapping[str, "MetricSummary"]], where: str) -> None:
    for part, metrics in scores.items():
        for metric, summary in metrics.items():
            if metric in UNIT_INTERVAL_METRICS:
                for i, v in enumerate(summary.values):
                    if not 0.0 <= v <= 1.0:
                        raise ValueError(f"{where}.{part}.{metric}: value {i} ({v}) is outside [0, 1]")


def _check_per_class(per_class: Mapping[str, Mapping[str, Mapping[str, float]]], class_names: list[str], where: str) -> None:
    known = set(class_names)
    for part, kinds in per_class.items():
        for kind, scores in kinds.items():
            unknown = sorted(set(scores) - known)
            if unknown:
                raise ValueError(f"{where}.{part}.{kind}: unknown class(es) {unknown}; the entry's class_names are {class_names}")
            for name, v in scores.items():
                if not math.isfinite(v):
                    raise ValueError(f"{where}.{part}.{kind}: {name} is not a finite number")
                if kind in UNIT_INTERVAL_METRICS and not 0.0 <= v <= 1.0:
                    raise ValueError(f"{where}.{part}.{kind}: {name} score {v} is outside [0, 1]")


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def _check_aggregates_agree(
    scores: Mapping[str, Mapping[str, "MetricSummary"]],
    per_class: Mapping[str, Mapping[str, Mapping[str, float]]],
    per_class_values: Mapping[str, Mapping[str, list[list[float]]]],
    class_names: list[str],
) -> None:
    """Every recorded aggregate agrees with the entry's own per-fold, per-class numbers: each fold's
    ``macro_f1`` is the mean F1 over that fold's classes with positives (``support`` > 0) and its
    ``macro_f1_all`` the mean over all classes; each ``per_class`` value is the mean of its class's
    column over the folds where the class had positives. A score edited with its mean but not its
    per-class rows (or the other way round) is caught here."""

    def edited(what: str) -> ValueError:
        return ValueError(f"{what}; the entry was edited after `ocbench run` wrote it: run it again")

    for part, kinds in per_class_values.items():
        f1, support = kinds.get("f1"), kinds.get("support")
        summaries = scores.get(part, {})
        if f1:
            for metric, summary in summaries.items():
                if metric in ("macro_f1", "macro_f1_all") and len(f1) != summary.n:
                    raise edited(f"per_class_values.{part}.f1 has {len(f1)} rows but scores.{part}.{metric} has {summary.n} values")
            for i, row in enumerate(f1):
                present = [v for v, n in zip(row, support[i]) if n > 0] if support and i < len(support) else None
                expected = {"macro_f1_all": _mean(row), "macro_f1": _mean(present) if present else None}
                for metric, value in expected.items():
                    summary = summaries.get(metric)
                    if summary is None or value is None or (metric == "macro_f1" and present is None):
                        continue
                    if abs(summary.values[i] - value) > _AGGREGATE_TOLERANCE:
                        over = "all classes" if metric == "macro_f1_all" else "the classes with positives"
                        raise edited(
                            f"scores.{part}.{metric} value {i} is {summary.values[i]} but per_class_values.{part}.f1 row {i} "
                            f"gives {value:.6f} (the mean over {over})"
                        )
        if support and len(support) != len(f1 or support):
            raise edited(f"per_class_values.{part}.support has {len(support)} rows, f1 has {len(f1 or [])}")
        for kind, rows in kinds.items():
            means = per_class.get(part, {}).get(kind)
            if kind == "support" or not means or not rows:
                continue
            for j, name in enumerate(class_names):
                if name not in means:
                    continue
                column = [row[j] for i, row in enumerate(rows) if not support or i >= len(support) or support[i][j] > 0]
                if not column:
                    raise edited(f"per_class.{part}.{kind}.{name} is recorded but no row of per_class_values.{part}.support has a positive item of it")
                if abs(means[name] - _mean(column)) > _AGGREGATE_TOLERANCE:
                    raise edited(
                        f"per_class.{part}.{kind}.{name} is {means[name]} but its per_class_values rows average {_mean(column):.6f}"
                    )


def _check_point_agrees(point: "AxisPoint", where: str) -> None:
    """At an axis point scored by one model (n = 1), ``macro_f1`` is the mean of the per-class F1
    recorded there (those classes are the ones with positives)."""
    for part, metrics in point.scores.items():
        summary, f1 = metrics.get("macro_f1"), point.per_class.get(part, {}).get("f1")
        if summary is not None and summary.n == 1 and f1 and abs(summary.values[0] - _mean(list(f1.values()))) > _AGGREGATE_TOLERANCE:
            raise ValueError(
                f"{where}.scores.{part}.macro_f1 is {summary.values[0]} but the mean of {where}.per_class.{part}.f1 is "
                f"{_mean(list(f1.values())):.6f}; the entry was edited after `ocbench run` wrote it: run it again"
            )
