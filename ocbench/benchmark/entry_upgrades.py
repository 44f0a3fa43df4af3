"""Upgraders that turn an entry of an older schema version into the current one.

``UPGRADERS`` entry ``"v"`` turns a version-``v`` dict into a version-``v + 1`` dict;
:func:`upgrade_entry_data` chains them up to :data:`~ocbench.benchmark.entry_schema.SCHEMA_VERSION`.
A new schema version registers the upgrader from the previous one here
(``@register_upgrader(old)``); the layouts of the versions are described in
:mod:`ocbench.benchmark.entry_schema`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from ocbench.benchmark.entry_provenance import entry_key
from ocbench.benchmark.entry_schema import SCHEMA_VERSION
from ocbench.data.cards import OPENCELL
from ocbench.errors import DataError
from ocbench.registry import Registry
from ocbench.summaries import summarize

Upgrader = Callable[[dict], dict]
#: Upgraders by the version they read ("0" turns a version-0 dict into version 1).
UPGRADERS: Registry[Upgrader] = Registry("schema upgrader")


def register_upgrader(from_version: int) -> Callable[[Upgrader], Upgrader]:
    """Register ``fn(data_v) -> data_v_plus_1``; chains run until :data:`SCHEMA_VERSION`."""

    def deco(fn: Upgrader) -> Upgrader:
        if from_version >= SCHEMA_VERSION:
            raise ValueError(f"cannot upgrade from version {from_version}: current is {SCHEMA_VERSION}")
        if str(from_version) in UPGRADERS and UPGRADERS.get(str(from_version)) is not fn:
            raise ValueError(f"an upgrader from schema version {from_version} is already registered")
        UPGRADERS.register(str(from_version), fn)
        return fn

    return deco


def known_schema_versions() -> list[int]:
    """Versions :func:`load_entry` reads: the current one and every version with an upgrade chain."""
    versions = [SCHEMA_VERSION]
    v = SCHEMA_VERSION - 1
    while str(v) in UPGRADERS:
        versions.insert(0, v)
        v -= 1
    return versions


def v1_summary(values: Sequence[float]) -> dict[str, Any]:
    """A metric summary in the schema-1 layout (its list was called ``per_fold``), for upgrades and tests."""
    out = summarize(values)
    return {"per_fold": out.pop("values"), **out}


@register_upgrader(0)
def _upgrade_0_to_1(old: dict) -> dict:
    """Flat draft layout (see the module docstring) -> nested version 1."""
    d = dict(old)
    spec = d.pop("channels", None)
    spec = str(spec) if spec is not None else None
    channels_key = "".join(c if c.isalnum() or c in "._+=,-" else "-" for c in (spec or "default")) or "default"
    card = d.pop("card", {}) or {}
    backbone_name = d.pop("backbone", None)
    versions = d.pop("versions", {}) or {}
    wall = d.pop("wall_time_s", {}) or {}
    metrics = dict(d.pop("metrics", {}) or {})
    macro = metrics.pop("macro_f1", {}) or {}
    overrides = d.pop("overrides", {}) or {}
    track = d.pop("split_track", None)
    task = d.pop("task", None)
    new = {
        "schema_version": 1,
        "protocol_version": "fov-probe/1",
        "task": task,
        "task_config": d.pop("task_config", {}),
        "overrides": overrides,
        "off_protocol": bool(overrides),
        "backbone": {
            "name": backbone_name,
            "source": card.get("source"),
            "arch": card.get("arch"),
            "card": card,
            "weights_sha256": d.pop("weights_sha256", None),
            "revision": d.pop("revision", None),
        },
        "channels": {
            "strategy": "replicate" if spec == "replicate" else "map",
            "key": channels_key,
            "spec": spec,
        },
        "dataset": {
            "name": d.pop("dataset_name", "opencell"),
            "version": d.pop("dataset_version", None),
            "n_items": d.pop("n_items", None),
        },
        "split": {"track": track, "seed": d.pop("split_seed", None), "sha256": d.pop("split_sha256", None)},
        "metrics": {
            **metrics,  # per_class kept as is; anything unexpected is left for validation to flag
            "macro_f1": {part: v1_summary(folds) if isinstance(folds, list) else folds for part, folds in macro.items()},
        },
        "seed": d.pop("seed", None),
        "environment": {
            "ocbench": versions.get("ocbench"),
            "torch": versions.get("torch"),
            "timm": versions.get("timm"),
            "python": versions.get("python"),
            "platform": d.pop("platform", None),
            "device": d.pop("device", None),
        },
        "timings": {"extraction_s": wall.get("extraction"), "task_s": wall.get("task")},
        "created": d.pop("date", None),
        "key": entry_key(str(backbone_name), channels_key, str(task), str(track)),
    }
    d.pop("schema_version", None)
    new.update(d)  # unknown leftovers stay visible: validation names them
    return new


#: Schema 1 entries were all OpenCell FOV probes; their dataset name for the demo was "ocbench-demo".
_V1_DATASET_NAMES = {"ocbench-demo": "demo"}


@register_upgrader(1)
def _upgrade_1_to_2(old: dict) -> dict:
    """Schema 1 -> 2: ``metrics.macro_f1.<set>`` becomes ``scores.<set>.macro_f1_all``.

    Schema 1 wrote only FOV probes (protocol ``fov-probe/1``), whose macro-F1 averaged all 17
    OpenCell compartments, scoring a class without positives in the evaluated set as 0. Protocol
    ``fov-probe/2`` calls that variant ``macro_f1_all`` and ranks by ``macro_f1`` over the classes
    present; upgraded entries keep their number under its honest name and rank by it, exactly as
    before (they never share a table with protocol-2 entries).
    """
    d = dict(old)
    metrics = d.pop("metrics", None)
    if not isinstance(metrics, Mapping):
        return d  # validation names the missing field
    metrics = dict(metrics)
    macro = metrics.pop("macro_f1", {}) or {}
    per_class = metrics.pop("per_class", {}) or {}
    per_fold = metrics.pop("per_fold_per_class", {}) or {}

    def summary(value: Any) -> Any:
        if isinstance(value, Mapping) and "per_fold" in value:
            value = dict(value)
            value["values"] = value.pop("per_fold")
        return value

    d["main_score"] = {"eval_set": "val", "metric": "macro_f1_all"}
    d["scores"] = {part: {"macro_f1_all": summary(v)} for part, v in macro.items()} if isinstance(macro, Mapping) else macro
    d["class_names"] = list(OPENCELL.class_names)  # schema 1 was OpenCell's 17 compartments only
    if isinstance(per_class, Mapping):  # schema 1 allowed null precision/recall blocks
        per_class = {part: {k: v for k, v in kinds.items() if v is not None} if isinstance(kinds, Mapping) else kinds
                     for part, kinds in per_class.items()}
    d["per_class"] = per_class
    d["per_class_values"] = dict(per_fold) if isinstance(per_fold, Mapping) else per_fold
    if metrics:
        d["metrics"] = metrics  # unknown leftovers stay visible: validation names them
    d.setdefault("off_protocol_reasons", ["settings changed: " + ", ".join(sorted(d["overrides"]))] if d.get("overrides") else [])
    dataset = d.get("dataset")
    if isinstance(dataset, Mapping):
        dataset = dict(dataset)
        name = dataset.get("name")
        dataset["name"] = _V1_DATASET_NAMES.get(name, name)
        dataset.setdefault("synthetic", dataset["name"] == "demo")
        d["dataset"] = dataset
    return d


@register_upgrader(2)
def _upgrade_2_to_3(old: dict) -> dict:
    """Schema 2 -> 3: nothing moves. Version-2 entries kept no per-item predictions, so they have
    no intervals (boards show them without and say so) and do not record ``not_zero_shot``."""
    return dict(old)


@register_upgrader(3)
def _upgrade_3_to_4(old: dict) -> dict:
    """Schema 3 -> 4: nothing moves. Version-3 entries were never checked against chance
    references, so they carry none and no warnings."""
    return dict(old)


def upgrade_entry_data(data: Mapping[str, Any], *, source: str = "entry") -> dict:
    """Return ``data`` upgraded to :data:`SCHEMA_VERSION` (a new dict); DataError if impossible."""
    if "schema_version" not in data:
        raise DataError(
            f"{source}: field schema_version: missing; this is not an ocbench entry "
            "(entries are written by `ocbench run`)"
        )
    version = data["schema_version"]
    known = known_schema_versions()
    if isinstance(version, bool) or not isinstance(version, int) or version not in known:
        newer = isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION
        hint = "it was written by a newer ocbench: upgrade ocbench" if newer else "fix the file or re-run `ocbench run`"
        raise DataError(
            f"{source}: field schema_version: unknown version {version!r} (this ocbench reads "
            f"{', '.join(map(str, known))}); {hint}"
        )
    out = dict(data)
    while version < SCHEMA_VERSION:
        out = UPGRADERS.get(str(version))(out)
        version += 1
        out["schema_version"] = version
    return out
