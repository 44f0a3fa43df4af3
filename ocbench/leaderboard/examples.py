"""A complete, valid example entry (for documentation, tests and trying the board out).

``example_entry_dict`` builds the dict ``ocbench run`` would write for made-up fold scores, so a
board can be built and its ranking checked without running any model.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Sequence

from ocbench.benchmark.entry import SCHEMA_VERSION, entry_key
from ocbench.data.compartments import COMPARTMENTS

__all__ = ["example_entry_dict"]


def _fake_sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _summary(values: Sequence[float]) -> dict[str, Any]:
    vals = [float(v) for v in values]
    mean = math.fsum(vals) / len(vals)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else None
    return {"per_fold": vals, "mean": mean, "std": std, "ddof": 1, "n": len(vals)}


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
    protocol_version: str = "fov-probe/1",
    dataset_name: str = "demo",
    dataset_version: str | None = None,
    split_sha256: str | None = None,
    overrides: dict[str, Any] | None = None,
    input_channels: Sequence[str] = ("R", "G", "B"),
    created: str = "2025-01-01T00:00:00+00:00",
    task_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A schema-valid entry dict; per-class F1 of every compartment is derived from the val mean."""
    test_folds = val_folds if test_folds is None else test_folds
    val, test = _summary(val_folds), _summary(test_folds)
    per_class = {c: round(min(1.0, max(0.0, val["mean"] + 0.01 * (i % 5 - 2))), 6) for i, c in enumerate(COMPARTMENTS)}
    overrides = dict(overrides or {})
    return {
        "schema_version": SCHEMA_VERSION,
        "protocol_version": protocol_version,
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
        "metrics": {
            "macro_f1": {"val": val, "test": test},
            "per_class": {
                part: {"f1": dict(per_class), "precision": dict(per_class), "recall": dict(per_class)} for part in ("val", "test")
            },
            "per_fold_per_class": {
                part: {"f1": [[per_class[c] for c in COMPARTMENTS] for _ in folds]}
                for part, folds in (("val", val_folds), ("test", test_folds))
            },
        },
        "seed": 0,
        "environment": {"ocbench": "0.1.0", "torch": None, "timm": None, "python": "3.11.7", "platform": "Linux", "device": "cpu"},
        "timings": {"extraction_s": 1.0, "extraction_cached": False, "task_s": 2.0},
        "created": created,
        "key": entry_key(backbone, channels_key, task, track),
    }
