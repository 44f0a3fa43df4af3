"""`ocbench run` end to end on the demo: entries, resume, reproducibility, bad input."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from ocbench.benchmark.entry import load_entry
from ocbench.cli import cli

from cli_assertions import one_line_error

FAST = ["--set", "epochs=40"]


@pytest.fixture()
def env(module_cache):
    return module_cache


def run(args, out):
    result = CliRunner().invoke(cli, ["run", "--dataset", "demo", "--output", str(out), *args])
    return result




@pytest.mark.slow
def test_run_writes_valid_entry_and_resumes(env, tmp_path):
    out = tmp_path / "res"
    first = run(["--backbone", "classical-stats", *FAST], out)
    assert first.exit_code == 0, first.output
    [path] = sorted(out.glob("*.json"))
    entry = load_entry(path)
    assert entry.backbone.name == "classical-stats" and entry.task == "fov-mlp"
    assert entry.off_protocol and entry.overrides == {"epochs": 40}
    assert entry.main.n == 5 and entry.main_score.metric == "macro_f1" and entry.main_score.eval_set == "val"
    assert entry.scores["test"]["macro_f1_all"].n == 5 and entry.class_names[0] == "membrane"
    assert entry.dataset.name == "demo" and entry.dataset.synthetic and entry.protocol_version == "fov-probe/2"
    assert entry.off_protocol_reasons == ["settings differ from the protocol: epochs=40"]
    # What it cost: every FOV embedded on one CPU process, at a measured rate, in measured memory.
    t = entry.timings
    assert t.extraction_items == entry.dataset.n_items and t.extraction_processes == 1 and t.extraction_device == "cpu"
    assert t.extraction_images_per_s > 0 and 0.05 < t.peak_host_memory_gib < 64 and t.peak_device_memory_gib is None
    assert "val macro-F1" in first.output and str(path) in first.output
    second = run(["--backbone", "classical-stats", *FAST], out)
    assert second.exit_code == 0 and "skipped (exists)" in second.output
    assert load_entry(path).created == entry.created


def test_same_seed_same_numbers_other_seed_differs(env, tmp_path):
    def metrics(out, seed):
        result = run(["--backbone", "classical-stats", "--seed", str(seed), *FAST], out)
        assert result.exit_code == 0, result.output
        [path] = sorted(out.glob("*.json"))
        data = json.loads(path.read_text())
        for volatile in ("timings", "created", "environment"):
            data.pop(volatile)
        return data

    a, b, c = metrics(tmp_path / "a", 0), metrics(tmp_path / "b", 0), metrics(tmp_path / "c", 1)
    assert a == b
    assert a["scores"] != c["scores"] and a["split"]["sha256"] != c["split"]["sha256"]


def test_grid_and_paper_value_column(env, tmp_path):
    out = tmp_path / "grid"
    result = run(["--backbone", "classical-stats", "--task", "fov-linear,fov-mlp", "--split", "paper,protein", *FAST], out)
    assert result.exit_code == 0, result.output
    assert len(list(out.glob("*.json"))) == 4
    assert "n/a (not OpenCell" in result.output


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--backbone", "classical-stats", "--task", "fov-mpl"], "fov-mlp"),
        (["--backbone", "classical-stat"], "classical-stats"),
        (["--backbone", "classical-stats", "--set", "epochs"], "epochs"),
        (["--backbone", "classical-stats", "--set", "epoch=3"], "epochs"),
        (["--backbone", "tiny-vit-random", "--channels", "protein=7"], "protein=7"),
        (["--backbone", "tiny-vit-random", "--channels", "protein=G,nucleus=G"], "nucleus"),
        (["--backbone", "classical-stats", "--split", "by-cell"], "by-cell"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(env, tmp_path, args, fragment):
    out = tmp_path / "bad"
    one_line_error(run(args, out), fragment)
    assert not list(out.glob("*.json")) if out.exists() else True


def test_split_file_from_another_dataset_version_is_refused(env, tmp_path):
    from ocbench.benchmark.splits import make_split
    from ocbench.data.demo import ensure_demo
    from ocbench.data.opencell import OpenCellDataset

    ds = OpenCellDataset(ensure_demo())
    manifest = ds.manifest.copy()
    manifest.loc[0, "label_er"] = 1 - manifest.loc[0, "label_er"]  # another dataset version
    path = make_split(manifest, track="paper", seed=0).save(tmp_path / "other.json")
    out = tmp_path / "res"
    one_line_error(run(["--backbone", "classical-stats", "--split-file", str(path)], out), "other.json")
    assert not out.exists() or not list(out.glob("*.json"))


def test_nan_embeddings_are_refused(env, tmp_path, monkeypatch):
    from ocbench.tasks import get_task

    features = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    features[3, 1] = np.nan
    labels = np.zeros((20, 17), dtype=np.uint8)
    labels[:, 0] = 1
    from ocbench.errors import OcbenchError

    with pytest.raises(OcbenchError, match="NaN|nan|finite"):
        get_task("fov-mlp").run(features, labels, np.arange(2), [np.arange(2 + 3 * k, 5 + 3 * k) for k in range(5)])


def test_existing_entry_from_other_settings_is_not_silently_reused(env, tmp_path):
    out = tmp_path / "res"
    assert run(["--backbone", "classical-stats", *FAST], out).exit_code == 0
    one_line_error(run(["--backbone", "classical-stats", "--set", "epochs=41"], out), "--overwrite")
    again = run(["--backbone", "classical-stats", "--set", "epochs=41", "--overwrite"], out)
    assert again.exit_code == 0, again.output
    [path] = sorted(out.glob("*.json"))
    assert load_entry(path).overrides == {"epochs": 41}


def test_existing_entry_on_another_split_is_not_reused(env, tmp_path):
    from ocbench.benchmark.splits import make_split
    from ocbench.data.demo import ensure_demo
    from ocbench.data.opencell import OpenCellDataset

    out = tmp_path / "res"
    assert run(["--backbone", "classical-stats", *FAST], out).exit_code == 0
    other = make_split(OpenCellDataset(ensure_demo()).manifest, track="paper", seed=5).save(tmp_path / "s5.json")
    one_line_error(run(["--backbone", "classical-stats", "--split-file", str(other), *FAST], out), "split")


def test_demo_folder_given_as_a_path_is_labelled_demo(env, tmp_path):
    root = tmp_path / "my-demo"
    assert CliRunner().invoke(cli, ["data", "demo", "--root", str(root), "--proteins", "8", "--size", "48"]).exit_code == 0
    out = tmp_path / "res"
    result = CliRunner().invoke(
        cli, ["run", "--dataset", str(root), "--output", str(out), "--backbone", "classical-stats", *FAST]
    )
    assert result.exit_code == 0, result.output
    [path] = sorted(out.glob("*.json"))
    assert load_entry(path).dataset.name == "demo"


def test_entry_records_label_policy_and_min_grade_marks_off_protocol(env, tmp_path):
    out = tmp_path / "res"
    result = CliRunner().invoke(
        cli, ["run", "--dataset", "demo", "--output", str(out), "--backbone", "classical-stats", "--min-grade", "3", *FAST]
    )
    assert result.exit_code == 0, result.output
    [path] = sorted(out.glob("*.json"))
    entry = load_entry(path)
    assert entry.dataset.min_grade == 3 and entry.off_protocol
    assert entry.dataset.annotations == "annotations.csv" and len(entry.dataset.annotations_sha256) == 64


def test_a_bad_cell_anywhere_in_the_grid_fails_before_anything_runs(env, tmp_path):
    out = tmp_path / "res"
    one_line_error(run(["--backbone", "classical-stats,nope", *FAST], out), "nope")
    one_line_error(run(["--backbone", "classical-stats", "--task", "fov-mlp,bogus"], out), "bogus")
    one_line_error(run(["--backbone", "classical-stats", "--device", "tpu"], out), "tpu")
    assert not out.exists()


def test_negative_seed_and_unwritable_output_are_one_line(env, tmp_path):
    result = run(["--backbone", "classical-stats", "--seed", "-1"], tmp_path / "res")
    assert result.exit_code == 2 and "Traceback" not in result.output
    blocker = tmp_path / "file"
    blocker.write_text("x")
    one_line_error(run(["--backbone", "classical-stats", *FAST], blocker / "res"), "file")


def test_own_folder_in_the_opencell_layout_is_recorded_under_its_own_name(env, tmp_path):
    import shutil

    from ocbench.data.cards import DEMO_MARKER

    root = tmp_path / "My Lab Screen"
    assert CliRunner().invoke(cli, ["data", "demo", "--root", str(root), "--proteins", "8", "--size", "48"]).exit_code == 0
    (root / DEMO_MARKER).unlink()  # now just a folder in OpenCell's layout, not known to be anything
    out = tmp_path / "res"
    result = CliRunner().invoke(
        cli, ["run", "--dataset", str(root), "--output", str(out), "--backbone", "classical-stats", *FAST]
    )
    assert result.exit_code == 0, result.output
    [path] = sorted(out.glob("*.json"))
    entry = load_entry(path)
    assert entry.dataset.name == "local:my-lab-screen" and not entry.dataset.synthetic
    shutil.rmtree(root)


def test_map_without_the_protein_channel_is_off_protocol(env, tmp_path):
    out = tmp_path / "res"
    result = run(["--backbone", "tiny-vit-random", "--channels", "nucleus=B", "--set", "epochs=2"], out)
    assert result.exit_code == 0, result.output
    [path] = sorted(out.glob("*.json"))
    entry = load_entry(path)
    assert entry.off_protocol and "channel map leaves out the protein channel" in entry.off_protocol_reasons


def test_a_failed_cell_leaves_no_split_file_and_earlier_cells_are_reported(env, tmp_path, monkeypatch):
    from ocbench.tasks.fov_probe import FovLinearProbe

    def boom(self, context):
        raise RuntimeError("task crashed")

    monkeypatch.setattr(FovLinearProbe, "evaluate", boom)
    out = tmp_path / "res"
    result = run(["--backbone", "classical-stats", "--task", "fov-mlp,fov-linear", "--split", "paper", *FAST], out)
    assert result.exit_code != 0
    assert "wrote" in result.output  # the fov-mlp cell finished before the crash and says so
    assert len(list(out.glob("*.json"))) == 1
    result = run(["--backbone", "classical-stats", "--task", "fov-linear", "--split", "protein", *FAST], tmp_path / "res2")
    assert result.exit_code != 0 and not (tmp_path / "res2" / "splits").exists()


def test_reused_entry_must_have_the_same_weights(env, tmp_path):
    """Register a local: card, run, change the weights file, run again: not "skipped"."""
    import torch
    from safetensors.torch import save_file

    from ocbench.backbones.cards import BackboneCard, get_card, register_card
    from ocbench.backbones.vit import build_vit

    tiny = get_card("tiny-vit-random")
    folder = tmp_path / "weights"
    folder.mkdir()

    def save(seed):
        torch.manual_seed(seed)
        state = {k: v.contiguous() for k, v in build_vit(tiny).state_dict().items()}
        save_file(state, str(folder / "model.safetensors"))

    save(1)
    fields = {k: getattr(tiny, k) for k in ("arch", "arch_kwargs", "patch_size", "feature_dim", "in_chans",
                                             "input_channels", "default_channels", "normalization", "intensity", "resize")}
    register_card(BackboneCard(name="tiny-local-reuse", source=f"local:{folder}", **fields), overwrite=True)
    out = tmp_path / "res"
    first = run(["--backbone", "tiny-local-reuse", "--set", "epochs=2"], out)
    assert first.exit_code == 0, first.output
    save(2)  # fine-tuned or re-imported weights under the same card name
    one_line_error(run(["--backbone", "tiny-local-reuse", "--set", "epochs=2"], out), "weights (sha256)")


def test_concurrent_runs_of_one_cell_never_lose_a_result(env, tmp_path):
    """Two `ocbench run` with other settings into one --output: one writes, the other waits for it
    and then refuses (pass --overwrite); before the lock both said "wrote" and one result was gone."""
    import os
    import subprocess
    import sys

    out = tmp_path / "res"
    warm = run(["--backbone", "classical-stats", "--set", "epochs=3"], tmp_path / "warm")
    assert warm.exit_code == 0, warm.output  # demo data and embeddings cached for both processes
    environ = {**os.environ, "OCBENCH_CACHE": str(env)}
    commands = [
        [sys.executable, "-m", "ocbench", "run", "--dataset", "demo", "--backbone", "classical-stats",
         "--output", str(out), "--set", f"epochs={epochs}"]
        for epochs in (30, 31)
    ]
    procs = [subprocess.Popen(c, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in commands]
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    [(_, winner_out, _)] = [r for r in results if r[0] == 0]
    [(_, _, loser_err)] = [r for r in results if r[0] == 2]
    assert "--overwrite" in loser_err and "wrote" not in loser_err
    [path] = sorted(out.glob("*.json"))
    assert f"wrote: {path}" in winner_out
    epochs = load_entry(path).overrides["epochs"]
    assert f"epochs={epochs}" in " ".join(commands[[30, 31].index(epochs)])


def test_entry_keeps_its_test_predictions_and_interval(env, tmp_path):
    from ocbench._io import sha256_file
    from ocbench.predictions import load_predictions
    from ocbench.stats import macro_f1

    out = tmp_path / "res"
    result = run(["--backbone", "classical-stats", "--split", "protein", "--seed", "0,1", "--set", "epochs=5"], out)
    assert result.exit_code == 0, result.output
    paths = sorted(out.glob("*.json"))
    assert [p.name for p in paths] == [
        "classical-stats__map-p0-n1__fov-mlp__protein.json", "classical-stats__map-p0-n1__fov-mlp__protein__seed1.json",
    ]
    entries = [load_entry(p) for p in paths]
    assert [e.seed for e in entries] == [0, 1] and entries[0].split.sha256 != entries[1].split.sha256
    for path, entry in zip(paths, entries):
        ref = entry.predictions
        file = path.parent / ref.file
        assert ref.file == f"{entry.key}.predictions.npz" and sha256_file(file) == ref.sha256
        preds = load_predictions(file, ref.sha256)
        assert preds.y_pred.shape[:2] == (1, 5) and ref.group == "protein" and ref.n_groups == preds.n_groups
        # the kept predictions reproduce every fold model's test score
        for k, value in enumerate(entry.test.values):
            assert macro_f1(preds.y_true, preds.y_pred[0, k]) == pytest.approx(value)
        interval = entry.test.interval
        assert interval.low <= entry.test.mean <= interval.high and interval.n_groups == ref.n_groups
        assert interval.group == "protein" and interval.n_resamples == 2000


@pytest.mark.parametrize("seeds", ["0,a", "1,1", "-1,2", ","])
def test_bad_seed_lists_are_one_line(env, tmp_path, seeds):
    result = run(["--backbone", "classical-stats", "--seed", seeds], tmp_path / "res")
    assert result.exit_code == 2 and "Traceback" not in result.output and "--seed" in result.output
    assert not (tmp_path / "res").exists()


def test_entry_from_before_a_card_field_existed_is_still_reused(env, tmp_path):
    out = tmp_path / "res"
    assert run(["--backbone", "classical-stats", *FAST], out).exit_code == 0
    [path] = sorted(out.glob("*.json"))
    data = json.loads(path.read_text())
    for later_field in ("training_datasets", "supervision"):  # fields newer ocbench versions added to cards
        del data["backbone"]["card"][later_field]
    path.write_text(json.dumps(data))
    again = run(["--backbone", "classical-stats", *FAST], out)
    assert again.exit_code == 0 and "skipped (exists)" in again.output, again.output
