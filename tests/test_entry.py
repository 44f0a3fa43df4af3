"""The entry schema: validation, atomic writing, upgrades, and the published JSON Schema."""

from __future__ import annotations

import copy
import json
import math
import re

import pytest

from ocbench.benchmark import entry as entry_mod
from ocbench.benchmark.entry import (
    SCHEMA_PATH,
    SCHEMA_VERSION,
    Entry,
    entry_from_dict,
    entry_json_schema,
    entry_to_json,
    environment_info,
    export_json_schema,
    known_schema_versions,
    load_entry,
    register_upgrader,
    write_entry,
)
from ocbench.errors import DataError
from ocbench.data.compartments import COMPARTMENTS

from board_examples import example_entry_dict, example_entry_dict_v1


def _write_json(path, data):
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_write_then_load_round_trips(tmp_path):
    data = example_entry_dict("tiny-vit-random", val_folds=[0.5, 0.55, 0.52, 0.51, 0.53])
    path = write_entry(data, tmp_path / "entries")
    assert path == tmp_path / "entries" / "tiny-vit-random__replicate__fov-mlp__paper.json"
    loaded = load_entry(path)
    assert isinstance(loaded, Entry)
    assert loaded.model_dump(mode="json") == data
    assert loaded.val.per_fold == [0.5, 0.55, 0.52, 0.51, 0.53]
    assert path.read_text() == entry_to_json(loaded)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left


def test_a_new_entry_dict_may_omit_the_schema_version(tmp_path):
    data = example_entry_dict()
    del data["schema_version"]
    path = write_entry(data, tmp_path)
    assert json.loads(path.read_text())["schema_version"] == SCHEMA_VERSION
    assert "schema_version" not in data  # the caller's dict is left alone


def test_invalid_entry_is_not_written(tmp_path):
    data = example_entry_dict()
    data["scores"]["val"]["macro_f1"]["mean"] = 0.9  # folds average 0.62
    with pytest.raises(DataError, match=r"scores\.val\.macro_f1: mean 0\.9 does not match"):
        write_entry(data, tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d.update(colour="blue"), "colour: unknown field"),
        (lambda d: d["backbone"].update(weights="x"), "backbone.weights: unknown field"),
        (lambda d: d["scores"]["val"]["macro_f1"].update(median=0.5), "scores.val.macro_f1.median: unknown field"),
        (lambda d: d["dataset"].pop("version"), "dataset.version: missing"),
        (lambda d: d["split"].update(sha256="abc"), "split.sha256"),
        (lambda d: d["scores"].pop("val"), "main_score val/macro_f1 is not in scores"),
        (lambda d: d["per_class"]["val"]["f1"].update(nucleus=0.5), r"unknown class\(es\) \['nucleus'\]"),
        (lambda d: d["scores"]["val"]["macro_f1"].update(n=4), "n is 4 but values has 5 items"),
        (lambda d: d.update(overrides={"epochs": 5}), "off_protocol is false"),
        (lambda d: d.update(off_protocol_reasons=["bf16"]), "off_protocol_reasons are given but off_protocol is false"),
        (lambda d: d.update(key="something-else"), "does not match its parts"),
        (lambda d: d.update(created="yesterday"), "created: .*not an ISO 8601"),
        (lambda d: d["per_class_values"]["val"]["f1"][0].pop(), r"has 16 values, expected 17"),
        (lambda d: d["main_score"].update(metric="accuracy"), "main_score val/accuracy is not in scores"),
    ],
)
def test_bad_fields_are_named(tmp_path, mutate, field):
    data = example_entry_dict()
    mutate(data)
    path = _write_json(tmp_path / "e.json", data)
    with pytest.raises(DataError) as info:
        load_entry(path)
    message = str(info.value)
    assert message.startswith(f"{path}: field ")
    assert "\n" not in message
    assert re.search(field, message), message


def test_nan_is_rejected(tmp_path):
    data = example_entry_dict()
    data["timings"]["task_s"] = math.nan
    path = tmp_path / "nan.json"
    path.write_text(json.dumps(data))  # json writes NaN, which is not JSON but Python reads it
    with pytest.raises(DataError, match="timings.task_s"):
        load_entry(path)


def test_unknown_schema_version_errors(tmp_path):
    data = example_entry_dict()
    data["schema_version"] = SCHEMA_VERSION + 6
    path = _write_json(tmp_path / "future.json", data)
    with pytest.raises(DataError, match=rf"future\.json: field schema_version: unknown version {SCHEMA_VERSION + 6} .*newer ocbench"):
        load_entry(path)
    data["schema_version"] = "1"
    with pytest.raises(DataError, match="unknown version '1'"):
        load_entry(_write_json(tmp_path / "str.json", data))


def test_missing_version_and_corrupt_json_are_named(tmp_path):
    with pytest.raises(DataError, match=r"foreign\.json: field schema_version: missing; this is not an ocbench entry"):
        load_entry(_write_json(tmp_path / "foreign.json", {"model": "x", "score": 0.8}))
    (tmp_path / "broken.json").write_text('{"schema_version": 1,')
    with pytest.raises(DataError, match=r"broken\.json: not valid JSON \(line 1"):
        load_entry(tmp_path / "broken.json")
    with pytest.raises(DataError, match="expected a JSON object"):
        load_entry(_write_json(tmp_path / "list.json", [1, 2]))


def _as_version_0(v1: dict) -> dict:
    """The documented draft layout (schema_version 0) of the same result."""
    return {
        "schema_version": 0,
        "task": v1["task"],
        "task_config": v1["task_config"],
        "overrides": v1["overrides"],
        "backbone": v1["backbone"]["name"],
        "card": {**v1["backbone"]["card"], "source": v1["backbone"]["source"], "arch": v1["backbone"]["arch"]},
        "weights_sha256": v1["backbone"]["weights_sha256"],
        "revision": v1["backbone"]["revision"],
        "channels": v1["channels"]["spec"],
        "dataset_name": v1["dataset"]["name"],
        "dataset_version": v1["dataset"]["version"],
        "n_items": v1["dataset"]["n_items"],
        "split_track": v1["split"]["track"],
        "split_seed": v1["split"]["seed"],
        "split_sha256": v1["split"]["sha256"],
        "metrics": {
            "macro_f1": {part: v1["metrics"]["macro_f1"][part]["per_fold"] for part in ("val", "test")},
            "per_class": v1["metrics"]["per_class"],
        },
        "seed": v1["seed"],
        "versions": {k: v1["environment"][k] for k in ("ocbench", "torch", "timm", "python")},
        "platform": v1["environment"]["platform"],
        "device": v1["environment"]["device"],
        "wall_time_s": {"extraction": v1["timings"]["extraction_s"], "task": v1["timings"]["task_s"]},
        "date": v1["created"],
    }


def test_version_0_entry_is_upgraded(tmp_path):
    assert known_schema_versions() == [0, 1, 2, 3, 4]
    v1 = example_entry_dict_v1("hpa-fov-vitb8", channels_key="natural", strategy="map", overrides={"epochs": 50})
    old = _as_version_0(v1)
    loaded = load_entry(_write_json(tmp_path / "old.json", old))
    assert loaded.schema_version == SCHEMA_VERSION
    assert loaded.protocol_version == "fov-probe/1"
    assert loaded.off_protocol is True  # implied by the overrides in version 0
    assert loaded.off_protocol_reasons == ["settings changed: epochs"]
    assert loaded.key == v1["key"]
    assert loaded.backbone.source == v1["backbone"]["source"]
    assert loaded.channels.strategy == "map" and loaded.channels.key == "natural"
    assert (loaded.main_score.eval_set, loaded.main_score.metric) == ("val", "macro_f1_all")
    for part in ("val", "test"):
        got, want = loaded.scores[part]["macro_f1_all"], v1["metrics"]["macro_f1"][part]
        assert got.values == want["per_fold"] and got.n == 5 and got.ddof == 1
        assert got.mean == pytest.approx(want["mean"]) and got.std == pytest.approx(want["std"])
    assert loaded.per_class["val"]["f1"] == v1["metrics"]["per_class"]["val"]["f1"]
    assert loaded.created == v1["created"]


def test_version_1_entry_is_upgraded(tmp_path):
    """Schema 1 (ocbench 0.1): the all-17-classes macro-F1 keeps its numbers under its honest
    name and still ranks; the demo's old dataset name becomes "demo", marked synthetic."""
    v1 = example_entry_dict_v1("model-a", overrides={"epochs": 5})
    loaded = load_entry(_write_json(tmp_path / "v1.json", v1))
    assert loaded.schema_version == SCHEMA_VERSION and loaded.protocol_version == "fov-probe/1"
    assert loaded.main.values == v1["metrics"]["macro_f1"]["val"]["per_fold"]
    assert loaded.val == loaded.main and loaded.test.values == v1["metrics"]["macro_f1"]["test"]["per_fold"]
    assert loaded.class_names == list(COMPARTMENTS)
    assert loaded.per_class_values["val"]["f1"] == v1["metrics"]["per_fold_per_class"]["val"]["f1"]
    assert loaded.dataset.name == "demo" and loaded.dataset.synthetic is True
    assert loaded.off_protocol_reasons == ["settings changed: epochs"]
    assert loaded.axis is None and loaded.environment.precision == "fp32"


def test_upgrade_keeps_unknown_old_fields_visible(tmp_path):
    old = _as_version_0(example_entry_dict_v1())
    old["gpu_hours"] = 3
    with pytest.raises(DataError, match="field gpu_hours: unknown field"):
        load_entry(_write_json(tmp_path / "old.json", old))


def test_upgrader_registry_refuses_duplicates_and_current_version():
    with pytest.raises(ValueError, match="already registered"):
        register_upgrader(0)(lambda d: d)
    with pytest.raises(ValueError, match="cannot upgrade"):
        register_upgrader(SCHEMA_VERSION)(lambda d: d)


def test_entry_from_dict_does_not_mutate_input():
    old = _as_version_0(example_entry_dict_v1())
    snapshot = copy.deepcopy(old)
    entry_from_dict(old)
    assert old == snapshot


def test_published_json_schema_is_up_to_date(tmp_path):
    fresh = export_json_schema(tmp_path / "schema.json")
    assert SCHEMA_PATH.read_text() == fresh.read_text(), (
        "ocbench/leaderboard/entry.schema.json is stale: run "
        "`python -c 'from ocbench.benchmark.entry import export_json_schema; export_json_schema()'`"
    )
    schema = json.loads(SCHEMA_PATH.read_text())
    assert schema == entry_json_schema()
    assert schema["properties"]["schema_version"]["const"] == SCHEMA_VERSION
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) >= {"protocol_version", "main_score", "scores", "class_names", "backbone", "dataset", "split", "key"}


def test_json_schema_validates_entries_when_jsonschema_is_installed():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.validate(example_entry_dict(), schema)
    bad = example_entry_dict()
    bad["extra"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_environment_info_reads_versions_without_importing_torch():
    import sys

    had_torch = "torch" in sys.modules
    env = environment_info("cpu")
    assert env["device"] == "cpu" and env["python"].count(".") == 2
    assert ("torch" in sys.modules) == had_torch
    entry_mod.EnvironmentInfo.model_validate(env)


def test_fraction_scores_outside_the_unit_interval_are_refused():
    """Schema 1 refused a fold score of 1.5; schema 2 keeps refusing it for fraction metrics."""
    from ocbench.benchmark.entry import entry_from_dict
    from ocbench.errors import DataError
    from board_examples import example_entry_dict

    data = example_entry_dict()
    bad = json.loads(json.dumps(data))
    bad["scores"]["test"]["macro_f1"] = {"values": [1.5, 0.5], "mean": 1.0, "std": 0.7071067811865476, "ddof": 1, "n": 2}
    with pytest.raises(DataError, match=r"scores.test.macro_f1: value 0 \(1.5\) is outside \[0, 1\]"):
        entry_from_dict(bad)
    bad = json.loads(json.dumps(data))
    first = next(iter(bad["per_class"]["val"]["f1"]))
    bad["per_class"]["val"]["f1"][first] = -0.1
    with pytest.raises(DataError, match="outside"):
        entry_from_dict(bad)


# -- schema 3: intervals, predictions beside the entry, seeds, zero-shot marker ---------------
def _interval(estimate, **changes):
    return {"estimate": estimate, "low": estimate - 0.02, "high": estimate + 0.02, "level": 0.95,
            "method": "cluster bootstrap", "group": "protein", "n_groups": 23, "n_resamples": 2000, "seed": 0, **changes}


def test_schema_3_carries_intervals_predictions_and_the_zero_shot_marker(tmp_path):
    data = example_entry_dict("model-a", not_zero_shot=["trained on OpenCell images"], seed=2)
    mean = data["scores"]["test"]["macro_f1"]["mean"]
    data["scores"]["test"]["macro_f1"]["interval"] = _interval(mean)
    data["predictions"] = {"file": f"{data['key']}.predictions.npz", "sha256": "0" * 64, "eval_set": "test",
                           "n_items": 60, "n_groups": 23, "group": "protein"}
    path = write_entry(data, tmp_path)
    assert path.name == "model-a__replicate__fov-mlp__paper__seed2.json"
    loaded = load_entry(path)
    assert loaded.model_dump(mode="json") == data
    assert loaded.backbone.not_zero_shot == ["trained on OpenCell images"]
    text = loaded.test.interval.describe()
    assert text == f"{mean:.3f} [{mean - 0.02:.3f}, {mean + 0.02:.3f}] 95% CI, protein bootstrap, 23 proteins"


def test_interval_must_match_its_score_and_be_ordered(tmp_path):
    data = example_entry_dict()
    data["scores"]["test"]["macro_f1"]["interval"] = _interval(0.9)
    with pytest.raises(DataError, match=r"scores\.test\.macro_f1: interval estimate 0\.9 does not match the mean"):
        write_entry(data, tmp_path)
    data["scores"]["test"]["macro_f1"]["interval"] = _interval(data["scores"]["test"]["macro_f1"]["mean"], low=0.9, high=0.1)
    with pytest.raises(DataError, match="interval low 0.9 is above high 0.1"):
        write_entry(data, tmp_path)
    assert not list(tmp_path.iterdir())


def test_version_2_entry_upgrades_without_predictions(tmp_path):
    v2 = example_entry_dict("model-b")
    v2["schema_version"] = 2
    loaded = load_entry(_write_json(tmp_path / "v2.json", v2))
    assert loaded.schema_version == SCHEMA_VERSION == 4
    assert loaded.predictions is None and loaded.test.interval is None and loaded.backbone.not_zero_shot is None
    dumped = json.loads(entry_to_json(loaded))
    assert "predictions" not in dumped and "interval" not in dumped["scores"]["test"]["macro_f1"]


def test_key_with_a_seed_other_than_its_own_is_refused(tmp_path):
    data = example_entry_dict(seed=1)
    data["key"] = data["key"].replace("seed1", "seed4")
    with pytest.raises(DataError, match="does not match its parts"):
        write_entry(data, tmp_path)
