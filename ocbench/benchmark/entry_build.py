"""Building the entry of one run: a task's result and the run's provenance assembled into a
validated :class:`~ocbench.benchmark.entry_schema.Entry`, with the interval of the main score on the
kept predictions and the warnings about them; and the ``created`` and ``environment`` values a
writer records.
"""

from __future__ import annotations

import platform as _platform
import sys
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ocbench.benchmark.entry_io import entry_from_dict
from ocbench.benchmark.entry_schema import SCHEMA_VERSION, Entry

if TYPE_CHECKING:  # pragma: no cover
    from ocbench.tasks.base import Task, TaskResult


def now_iso() -> str:
    """Current UTC time as an ISO 8601 string (seconds), for ``created``."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def environment_info(device: str) -> dict[str, Any]:
    """The ``environment`` block, read from package metadata (imports neither torch nor timm)."""
    from importlib import metadata

    def version_of(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    from ocbench import __version__

    return {
        "ocbench": __version__,
        "torch": version_of("torch"),
        "timm": version_of("timm"),
        "python": sys.version.split()[0],
        "platform": _platform.platform(),
        "device": str(device),
    }


def build_entry(
    result: "TaskResult",
    *,
    task: "Task",
    key: str,
    task_config: Mapping[str, Any],
    overrides: Mapping[str, Any],
    off_protocol_reasons: list[str],
    backbone: Mapping[str, Any],
    channels: Mapping[str, Any],
    dataset: Mapping[str, Any],
    split: Mapping[str, Any],
    seed: int,
    environment: Mapping[str, Any],
    timings: Mapping[str, Any],
    predictions: Mapping[str, Any] | None = None,
    feature_standardization: Mapping[str, Any] | None = None,
) -> Entry:
    """Assemble and validate the entry of one run from a task's result and the run's provenance.

    ``result`` is a ``TaskResult`` (scores); ``task`` the task config the runner holds: its name,
    protocol version and ``main_score`` (which ranks the entry) are recorded, with ``task_config``
    (its settings and the digests of files they name). ``key``: the entry's key, computed once by the
    runner (:meth:`~ocbench.benchmark.runner.Cell.key_for`); the entry checks it against its parts.
    ``predictions``: the reference to the predictions file written beside the entry (file name,
    sha256); with ``result.predictions`` the scored set's main metric gets its interval.
    """
    eval_set, metric = task.main_score
    scores, axis = result.scores, result.axis
    warnings: list[dict[str, str]] = []
    references = list(result.references)
    if result.predictions is not None:
        scores, axis = _with_intervals(result.predictions, scores, axis, metric)
        # checked against the references, so a collapsed or chance-level entry says so itself
        warnings = _collapse_warnings(result.predictions, scores, axis, metric, references, task.higher_is_better)
    data = {
        "schema_version": SCHEMA_VERSION,
        "protocol_version": task.protocol_version,
        "task": task.name,
        "task_config": dict(task_config),
        "overrides": dict(overrides),
        "off_protocol": bool(off_protocol_reasons),
        "off_protocol_reasons": list(off_protocol_reasons),
        "main_score": {"eval_set": eval_set, "metric": metric,
                       **({} if task.higher_is_better else {"higher_is_better": False})},
        "scores": scores,
        "class_names": list(result.class_names),
        "per_class": result.per_class,
        "per_class_values": result.per_class_values,
        "axis": axis,
        "backbone": dict(backbone),
        "channels": dict(channels),
        "dataset": dict(dataset),
        "split": dict(split),
        "seed": seed,
        "environment": dict(environment),
        "timings": dict(timings),
        "created": now_iso(),
        "key": key,
        "predictions": dict(predictions) if predictions is not None else None,
        "references": references,
        "warnings": warnings,
        "feature_standardization": dict(feature_standardization) if feature_standardization else None,
    }
    return entry_from_dict(data, source=f"entry {data['key']}")


def _collapse_warnings(predictions: Any, scores: Mapping, axis: Mapping | None, metric: str,
                       references: Sequence[Mapping[str, Any]], higher_is_better: bool) -> list[dict[str, str]]:
    """:func:`ocbench.chance.collapse_warnings` of the kept predictions at the main point."""
    from ocbench.chance import collapse_warnings

    main = axis["main"] if axis is not None else None
    summary = scores.get(predictions.eval_set, {}).get(metric) or {}
    return collapse_warnings(
        predictions.y_true, predictions.at(main), interval=summary.get("interval"), references=references,
        eval_set=predictions.eval_set, metric=metric, higher_is_better=higher_is_better,
    )


def _with_intervals(predictions: Any, scores: Mapping, axis: Mapping | None, metric: str) -> tuple[dict, dict | None]:
    """``scores`` (and each axis point's) with the interval of ``metric`` on the predictions' set.

    Every point uses the same resampled groups (one seed), so intervals at different k agree in
    how lucky the draw was."""
    from ocbench.stats import METRICS_FROM_COUNTS, N_RESAMPLES, SEED, bootstrap_interval, group_codes, resample_weights

    if metric not in METRICS_FROM_COUNTS:  # per-item predictions do not determine it: no interval rather than another metric's
        return dict(scores), axis
    eval_set = predictions.eval_set
    _, n_groups = group_codes(predictions.groups)
    weights = resample_weights(n_groups, N_RESAMPLES, SEED)

    def attach(point_scores: Mapping, value: float | None) -> dict:
        out = {part: dict(metrics) for part, metrics in point_scores.items()}
        summary = out.get(eval_set, {}).get(metric)
        if summary is None:
            return out
        interval = bootstrap_interval(
            predictions.y_true, predictions.at(value), predictions.groups, weights=weights, group_name=predictions.group_name,
            metric=metric,
        )
        out[eval_set][metric] = {**summary, "interval": interval.to_dict()}
        return out

    if axis is None:
        return attach(scores, None), None
    points = [{**p, "scores": attach(p["scores"], p["value"])} for p in axis["points"]]
    main = next(p for p in points if p["value"] == axis["main"])
    return main["scores"], {**axis, "points": points}
