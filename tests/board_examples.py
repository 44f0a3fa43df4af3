"""Complete, valid example entries for the tests (test fixtures, not part of the package).

:func:`example_entry_dict` builds the dict ``ocbench run`` would write (the current schema) for
made-up fold scores, so a board can be built and its ranking checked without running any model.
:func:`example_entry_dict_v1` builds the same result in the layout ocbench 0.1 wrote (schema
version 1), for upgrade tests.
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping, Sequence

from ocbench.benchmark.entry import SCHEMA_VERSION, entry_key, v1_summary
from ocbench.data.cards import OPENCELL
from ocbench.summaries import summarize

__all__ = ["example_entry_dict", "example_entry_dict_v1", "write_example_with_predictions", "recompute_aggregates"]


def _fake_sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _per_class(mean: float, class_names: Sequence[str]) -> dict[str, float]:
    """Made-up per-class scores spread around ``mean`` whose average is ``mean`` (the entry's
    aggregates must agree with its per-class numbers); all equal when a spread would leave [0, 1]."""
    spread = [0.01 * (i % 5 - 2) for i in range(len(class_names))]
    shift = sum(spread) / len(spread)
    values = [mean + d - shift for d in spread]
    if not all(0.0 <= v <= 1.0 for v in values):
        values = [mean] * len(class_names)
    return {c: v for c, v in zip(class_names, values)}


def _common(
    backbone: str,
    *,
    channels_key: str,
    strategy: str,
    spec: str | None,
    task: str,
    track: str,
    dataset_name: str,
    dataset_version: str | None,
    split_sha256: str | None,
    overrides: dict[str, Any],
    input_channels: Sequence[str],
    created: str,
    task_config: dict[str, Any] | None,
) -> dict[str, Any]:
    return {
        "task": task,
        "task_config": dict(task_config or {"epochs": 300, "batch_size": 512}),
        "overrides": overrides,
        "off_protocol": bool(overrides),
        "backbone": {
            "name": backbone,
            "source": f"builtin:{backbone}",
            "arch": "example",
            "card": {"name": backbone, "input_channels": list(input_channels), "license": "MIT"},
            "weights_sha256": None,
            "revision": None,
        },
        "channels": {"strategy": strategy, "key": channels_key, "spec": spec if spec is not None else channels_key},
        "dataset": {
            "name": dataset_name,
            "version": dataset_version or _fake_sha(f"dataset {dataset_name}"),
            "n_items": 60,
            "min_grade": 1,
            "annotations": "annotations.csv",
            "annotations_sha256": _fake_sha("annotations"),
        },
        "split": {"track": track, "seed": 0, "sha256": split_sha256 or _fake_sha(f"split {dataset_name} {track}")},
        "seed": 0,
        "environment": {"ocbench": "0.1.0", "torch": None, "timm": None, "python": "3.11.7", "platform": "Linux", "device": "cpu"},
        "timings": {
            "extraction_s": 1.0, "extraction_cached": False, "task_s": 2.0, "extraction_items": 40,
            "extraction_images_per_s": 40.0, "extraction_device": "cpu", "extraction_processes": 1,
            "peak_host_memory_gib": 1.5, "peak_device_memory_gib": None,
        },
        "created": created,
        "key": entry_key(backbone, channels_key, task, track),
    }


def _scores(val_folds: Sequence[float], test_folds: Sequence[float], shift: float = 0.0) -> dict[str, Any]:
    """``macro_f1`` and ``macro_f1_all`` per set (equal: every class has positives in every fold)."""
    out = {}
    for part, folds in (("val", val_folds), ("test", test_folds)):
        present = [round(f + shift, 6) for f in folds]
        out[part] = {"macro_f1": summarize(present), "macro_f1_all": summarize(present)}
    return out


def example_entry_dict(
    backbone: str = "classical-stats",
    *,
    val_folds: Sequence[float] = (0.61, 0.63, 0.60, 0.64, 0.62),
    test_folds: Sequence[float] | None = None,
    channels_key: str = "replicate",
    strategy: str = "replicate",
    spec: str | None = None,
    task: str = "fov-mlp",
    track: str = "paper",
    protocol_version: str = "fov-probe/2",
    dataset_name: str = "demo",
    dataset_version: str | None = None,
    split_sha256: str | None = None,
    overrides: dict[str, Any] | None = None,
    off_protocol_reasons: Sequence[str] | None = None,
    input_channels: Sequence[str] = ("R", "G", "B"),
    created: str = "2025-01-01T00:00:00+00:00",
    task_config: dict[str, Any] | None = None,
    class_names: Sequence[str] = OPENCELL.class_names,
    main_metric: str = "macro_f1",
    synthetic: bool | None = None,
    precision: str = "fp32",
    weights_verified: bool | None = None,
    weights_note: str | None = None,
    axis: Mapping[str, Any] | None = None,
    not_zero_shot: Sequence[str] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """An entry dict of the current schema; per-class F1 of every class is derived from the val mean.

    ``not_zero_shot``: the backbone's reasons (``[]`` = zero-shot; None leaves the field out:
    unknown). ``seed``: the run's seed (its split has that seed too, and the key says so).

    ``synthetic`` defaults to ``dataset_name == "demo"``. ``axis``: ``{"name": "k", "values":
    [5, 10, 20], "main": 10}``; the score at each value is ``val_folds`` shifted by -0.02 per
    step away from the main value (the main point's scores are the entry's scores).
    """
    test_folds = val_folds if test_folds is None else test_folds
    overrides = dict(overrides or {})
    reasons = list(off_protocol_reasons) if off_protocol_reasons is not None else (
        ["settings differ from the protocol: " + ", ".join(f"{k}={v}" for k, v in sorted(overrides.items()))]
        if overrides
        else []
    )
    data = _common(
        backbone,
        channels_key=channels_key,
        strategy=strategy,
        spec=spec,
        task=task,
        track=track,
        dataset_name=dataset_name,
        dataset_version=dataset_version,
        split_sha256=split_sha256,
        overrides=overrides,
        input_channels=input_channels,
        created=created,
        task_config=task_config,
    )
    # every field written out, defaults included, so the dict equals the loaded entry's dump
    data["off_protocol"] = bool(overrides) or bool(reasons)
    data["dataset"].update(card=None, synthetic=dataset_name == "demo" if synthetic is None else synthetic)
    data["environment"].update(precision=precision, threads=None)
    data["backbone"].update(weights_verified=weights_verified, weights_note=weights_note)
    if not_zero_shot is not None:
        data["backbone"]["not_zero_shot"] = list(not_zero_shot)
    if seed:
        data["seed"] = seed
        data["split"]["seed"] = seed
        if split_sha256 is None:
            data["split"]["sha256"] = _fake_sha(f"split {dataset_name} {track} seed {seed}")
        data["key"] = entry_key(backbone, channels_key, task, track, seed)
    if weights_verified is not None:
        data["backbone"]["weights_sha256"] = _fake_sha(f"weights {backbone}")

    names = list(class_names)
    scores = _scores(val_folds, test_folds)
    # one row of per-class F1 per fold, averaging to that fold's score; per_class holds their means
    rows = {part: [list(_per_class(v, names).values()) for v in scores[part]["macro_f1"]["values"]] for part in ("val", "test")}
    per_class = {part: {c: sum(r[j] for r in rows[part]) / len(rows[part]) for j, c in enumerate(names)} for part in rows}
    axis_block = None
    if axis is not None:
        values = [float(v) for v in axis["values"]]
        main = float(axis["main"])
        points = []
        for i, value in enumerate(values):
            steps = abs(i - values.index(main))
            point_scores = scores if steps == 0 else _scores(val_folds, test_folds, shift=-0.02 * steps)
            points.append({
                "value": value,
                "scores": point_scores,
                "per_class": {"val": {"f1": _per_class(point_scores["val"]["macro_f1"]["mean"], names)}},
            })
        axis_block = {"name": axis["name"], "main": main, "points": points}
    data.update(
        schema_version=SCHEMA_VERSION,
        protocol_version=protocol_version,
        off_protocol_reasons=reasons,
        main_score={"eval_set": "val", "metric": main_metric},
        scores=scores,
        class_names=names,
        per_class={part: {"f1": dict(pc), "precision": dict(pc), "recall": dict(pc)} for part, pc in per_class.items()},
        per_class_values={
            part: {"f1": rows[part], "support": [[3.0 for _ in names] for _ in rows[part]]} for part in rows
        },
        axis=axis_block,
    )
    return data


def recompute_aggregates(data: dict[str, Any]) -> dict[str, Any]:
    """Make an entry dict's aggregates agree with its ``per_class_values`` again (in place; returned):
    each set's ``macro_f1`` / ``macro_f1_all`` fold values and their summaries, and the ``per_class``
    means. For tests and examples that edit per-class numbers; a recorded interval is kept as is."""
    names = data["class_names"]
    for part, kinds in data.get("per_class_values", {}).items():
        rows, support = kinds.get("f1"), kinds.get("support")
        scores = data.get("scores", {}).get(part, {})
        if rows:
            present = [[v for v, n in zip(row, support[i]) if n > 0] if support else row for i, row in enumerate(rows)]
            for metric, values in (("macro_f1", [sum(p) / len(p) for p in present]), ("macro_f1_all", [sum(r) / len(r) for r in rows])):
                if metric in scores:
                    interval = scores[metric].get("interval")
                    scores[metric] = {**summarize([round(v, 6) for v in values]), **({"interval": interval} if interval else {})}
        for kind, kind_rows in kinds.items():
            means = data.get("per_class", {}).get(part, {}).get(kind)
            if kind == "support" or means is None:
                continue
            for j, name in enumerate(names):
                column = [r[j] for i, r in enumerate(kind_rows) if not support or support[i][j] > 0]
                if name in means and column:
                    means[name] = sum(column) / len(column)
    return data


def example_entry_dict_v1(
    backbone: str = "classical-stats",
    *,
    val_folds: Sequence[float] = (0.61, 0.63, 0.60, 0.64, 0.62),
    test_folds: Sequence[float] | None = None,
    channels_key: str = "replicate",
    strategy: str = "replicate",
    spec: str | None = None,
    task: str = "fov-mlp",
    track: str = "paper",
    dataset_name: str = "ocbench-demo",
    dataset_version: str | None = None,
    split_sha256: str | None = None,
    overrides: dict[str, Any] | None = None,
    input_channels: Sequence[str] = ("R", "G", "B"),
    created: str = "2025-01-01T00:00:00+00:00",
    task_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The same made-up result in the schema-1 layout of ocbench 0.1 (``metrics.macro_f1``,
    ``per_fold``, the 17 compartments implied, the demo called ``ocbench-demo``)."""
    test_folds = val_folds if test_folds is None else test_folds
    overrides = dict(overrides or {})

    val, test = v1_summary(val_folds), v1_summary(test_folds)
    # schema 1 averaged all 17 compartments: each fold's row of per-class F1 averages to its score
    classes = OPENCELL.class_names
    rows = {part: [list(_per_class(f, classes).values()) for f in summary["per_fold"]]
            for part, summary in (("val", val), ("test", test))}
    per_class = {part: {c: sum(r[j] for r in rows[part]) / len(rows[part]) for j, c in enumerate(classes)} for part in rows}
    data = _common(
        backbone,
        channels_key=channels_key,
        strategy=strategy,
        spec=spec,
        task=task,
        track=track,
        dataset_name=dataset_name,
        dataset_version=dataset_version,
        split_sha256=split_sha256,
        overrides=overrides,
        input_channels=input_channels,
        created=created,
        task_config=task_config,
    )
    data.update(
        schema_version=1,
        protocol_version="fov-probe/1",
        metrics={
            "macro_f1": {"val": val, "test": test},
            "per_class": {
                part: {"f1": dict(pc), "precision": dict(pc), "recall": dict(pc)} for part, pc in per_class.items()
            },
            "per_fold_per_class": {part: {"f1": rows[part]} for part in rows},
        },
    )
    return data


def write_example_with_predictions(
    folder: Any,
    backbone: str,
    y_true: Any,
    y_pred: Any,
    groups: Sequence[Any],
    *,
    class_names: Sequence[str] | None = None,
    group_name: str = "protein",
    n_resamples: int = 500,
    **kwargs: Any,
) -> Any:
    """Write an example entry whose test scores come from real predictions kept beside it.

    ``y_pred`` (R, N, C): one row of predictions per fold model on the same test items; the
    entry's ``test`` scores are their macro-F1, with the protein-bootstrap interval, and the
    ``.npz`` is written next to the entry as ``ocbench run`` does. ``kwargs`` go to
    :func:`example_entry_dict` (``val_folds``, ``seed``, ``split_sha256``, ...). Returns the path.
    """
    from pathlib import Path

    import numpy as np

    from ocbench.benchmark.entry import write_entry
    from ocbench.predictions import Predictions, predictions_file_name, write_predictions
    from ocbench.stats import bootstrap_interval, macro_f1

    y = np.asarray(y_true)
    p = np.asarray(y_pred)
    names = list(class_names) if class_names is not None else [f"class{i}" for i in range(y.shape[1])]
    test_folds = [macro_f1(y, p[r]) for r in range(p.shape[0])]
    data = example_entry_dict(backbone, test_folds=test_folds, class_names=names, **kwargs)
    preds = Predictions.build(
        eval_set="test", item_ids=[f"fov{i}" for i in range(y.shape[0])], groups=groups, group_name=group_name,
        y_true=y, y_pred=p, class_names=names,
    )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = predictions_file_name(data["key"])
    sha256 = write_predictions(preds, folder / name)
    interval = bootstrap_interval(y, p, groups, n_resamples=n_resamples, group_name=group_name)
    data["scores"]["test"]["macro_f1"]["interval"] = interval.to_dict()
    data["predictions"] = {"file": name, "sha256": sha256, "eval_set": "test", "n_items": int(y.shape[0]),
                           "n_groups": preds.n_groups, "group": group_name}
    return write_entry(data, folder)
