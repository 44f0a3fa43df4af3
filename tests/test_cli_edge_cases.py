"""CLI and extraction edge cases: failed writes named by the user's path, dangling links, --recompute with
seeds, --debug anywhere, malformed recorded cards, an offline push, a registered card's own weights folder."""

from __future__ import annotations

import os
import sys

import pytest
from click.testing import CliRunner

from ocbench._io import atomic_write
from ocbench.cli import cli
from ocbench.errors import DataError

from cli_assertions import one_line_error, one_line_message
from demo_data import labelled_demo


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc, where no file can be created (Linux)")
def test_a_failed_write_names_the_users_path_not_the_temp_file():
    with pytest.raises(OSError) as excinfo:
        with atomic_write("/proc/ocbench-out.json") as fh:
            fh.write("{}")
    assert excinfo.value.filename == "/proc/ocbench-out.json"
    assert "could not write" in excinfo.value.strerror


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc, where no file can be created (Linux)")
def test_the_cli_reports_an_unwritable_output_in_one_line_naming_it(tmp_path):
    (tmp_path / "a.csv").write_text("x\n")
    result = CliRunner().invoke(cli, ["--cache-dir", str(tmp_path / "cache"), "data", "demo", "--root", "/proc/ocbench-demo"])
    one_line_error(result, "/proc/ocbench-demo")
    assert ".tmp" not in result.stderr


def test_a_dangling_symbolic_link_among_the_fovs_is_named_as_such(tmp_path):
    from ocbench.data.opencell import read_fov

    link = tmp_path / "OC-FOV_ABC_ENSG00000000001_CID000001_FID00000001_proj.tif"
    os.symlink(tmp_path / "gone.tif", link)
    with pytest.raises(DataError) as excinfo:
        read_fov(link)
    one_line_message(excinfo, str(link), "symbolic link", "gone.tif", "fix or remove the link")
    assert "list it again" not in str(excinfo.value)


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    return labelled_demo(tmp_path_factory.mktemp("data") / "demo", proteins=8, fovs_per_protein=2, size=96)


def test_recompute_with_several_seeds_extracts_each_key_once(small_demo, tmp_path):
    import json

    args = ["--cache-dir", str(tmp_path / "cache"), "run", "--backbone", "tiny-vit-random", "--dataset", str(small_demo),
            "--task", "fov-linear", "--set", "epochs=2", "--device", "cpu", "--workers", "0", "--output", str(tmp_path / "out")]
    assert CliRunner().invoke(cli, args).exit_code == 0
    result = CliRunner().invoke(cli, [*args, "--seed", "0,1", "--recompute", "--overwrite"])
    assert result.exit_code == 0, result.output
    cached = {p.name: json.loads(p.read_text())["timings"]["extraction_cached"] for p in (tmp_path / "out").glob("*.json")
              if "fov-linear" in p.name}
    assert sorted(cached.values()) == [False, True], cached  # seed 0 extracted again, seed 1 reused it


def test_an_export_of_the_synthetic_demo_says_it_is_synthetic(small_demo, tmp_path):
    pytest.importorskip("datasets")
    from datasets import load_from_disk

    from ocbench.data.cards import open_dataset
    from ocbench.data.export import export_hf

    dataset = open_dataset(str(small_demo))
    assert dataset.card.synthetic
    info = load_from_disk(str(export_hf(dataset, tmp_path / "hf"))).info
    assert info.description.startswith("SYNTHETIC") and "opencell.czbiohub.org" not in info.homepage


def test_an_offline_push_writes_nothing_into_the_folder(tmp_path, monkeypatch):
    import json

    import torch
    from safetensors.torch import save_file

    from ocbench.backbones.hub import push_backbone
    from ocbench.errors import ConfigError

    folder = tmp_path / "weights"
    folder.mkdir()
    save_file({"w": torch.zeros(3)}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"architecture": "vit_tiny_patch16_224", "num_features": 192}))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE"):
        push_backbone(folder, "me/tiny")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]


def test_the_python_api_says_how_to_replace_an_entry_in_its_own_words(small_demo, tmp_path):
    import torch

    import ocbench
    from ocbench.backbones import BackboneCard
    from ocbench.errors import ConfigError

    card = BackboneCard(name="mylab-stats", source="memory:x", arch="mylab-stats", feature_dim=6, in_chans=3,
                        input_channels=("R", "G", "B"), default_channels="imagenet-best", license="MIT")

    def features(x):
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)

    kwargs = dict(card=card, task="fov-linear", dataset=str(small_demo), output_dir=tmp_path / "out",
                  overrides=["epochs=2"], cache_dir=tmp_path / "cache", device="cpu")
    ocbench.evaluate(features, **kwargs)
    with pytest.raises(ConfigError) as excinfo:
        ocbench.evaluate(features, **kwargs)
    assert "overwrite=True" in str(excinfo.value) and "--overwrite" not in str(excinfo.value)


def test_debug_after_the_command_name_shows_the_traceback_like_before_it():
    from ocbench.errors import ConfigError

    for args in (["--debug", "run", "--backbone", "nope"], ["run", "--backbone", "nope", "--debug"]):
        result = CliRunner().invoke(cli, args)
        assert isinstance(result.exception, ConfigError), (args, result.output)
    one_line_error(CliRunner().invoke(cli, ["run", "--backbone", "nope"]), "unknown backbone 'nope'")


def test_run_help_names_every_registered_task():
    from ocbench.tasks import list_tasks

    text = " ".join(CliRunner().invoke(cli, ["run", "--help"]).output.split())
    for task in list_tasks():
        assert getattr(task, "name", task) in text


def test_an_entry_with_a_malformed_recorded_card_is_one_problem_not_a_traceback():
    from ocbench.benchmark.entry import entry_from_dict
    from board_examples import example_entry_dict

    for change in (lambda d: d["backbone"]["card"].update(training_datasets="OpenCell"),
                   lambda d: d["backbone"]["card"].update(training_datasets=5),
                   lambda d: d["dataset"]["card"].update(extra="x"),
                   lambda d: d["dataset"]["card"].update(extra={"training_data_names": 5})):
        data = example_entry_dict(not_zero_shot=[])
        data["dataset"]["card"] = {"name": "demo"}
        change(data)
        with pytest.raises(DataError, match="must be lists of names"):
            entry_from_dict(data, source="edited.json")


def test_score_values_whose_spread_overflows_are_refused_in_one_line():
    from ocbench.benchmark.entry import entry_from_dict
    from board_examples import example_entry_dict

    data = example_entry_dict()
    data["scores"]["test"]["macro_f1"].update(values=[1e308, -1e308, 0.5, 0.5, 0.5], mean=0.3)
    with pytest.raises(DataError, match="too large"):
        entry_from_dict(data, source="edited.json")


def test_a_registered_cards_own_weights_folder_resolves_to_that_card(tmp_path, monkeypatch):
    import dataclasses

    from ocbench.backbones.cards import get_card
    from ocbench.backbones.derive import resolve_backbone, write_card_file
    from ocbench.backbones.sources import local_folder

    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path / "cache"))
    zoo = get_card("opencell-dino-vits8")
    folder = local_folder(zoo.source_target)
    folder.mkdir(parents=True)
    # what `ocbench finetune --from-scratch` on OpenCell writes there: the card with its training record
    write_card_file(dataclasses.replace(zoo, training_datasets=("OpenCell",), notes="trained by ocbench"), folder)
    assert resolve_backbone(f"local:{folder}") == zoo
