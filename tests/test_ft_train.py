"""Fine-tuning end to end on a small demo: resume bit for bit, no test FOV in training, nested
fractions, the output folder loads as a backbone and probes, `ocbench run --task finetune` entries."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from ocbench.backbones.adapters import parse_channels
from ocbench.backbones.cards import get_card
from ocbench.benchmark.splits import make_split
from ocbench.cli import cli
from ocbench.data.cards import open_dataset
from ocbench.data.demo import DemoConfig, write_demo
from ocbench.errors import ConfigError
from ocbench.backbones.derive import load_card_file
from ocbench.tasks.finetune import CARD_FILENAME, FineTune, finetune_backbone, train_indices

torch.set_num_threads(1)

TINY = dict(epochs=3, batch_size=8, out_dim=32, head_hidden_dim=32, head_bottleneck_dim=16, global_crop_size=32,
            local_crop_size=16, local_crops=2, warmup_epochs=1, warmup_teacher_temp_epochs=1, fraction=0.3)
TINY_SET = [f"{k}={v}" for k, v in TINY.items() if k != "epochs"] + ["epochs=2", "probe_epochs=20"]


@pytest.fixture(scope="module")
def demo(module_cache):
    root = write_demo(module_cache / "demo-small", DemoConfig(proteins=40, size=48))
    ds = open_dataset(str(root))
    return ds, make_split(ds, track="paper", seed=0)


def tiny_run(demo, cache, **kwargs):
    ds, split = demo
    card = get_card("tiny-vit-random")
    adapter = parse_channels(None, card, ds.card.channel_names)
    cfg = FineTune(**{**TINY, **kwargs.pop("cfg", {})})
    return finetune_backbone(card, adapter, ds, split, cfg, seed=0, cache_dir=cache, **kwargs)


def test_killed_after_epoch_one_then_resumed_equals_uninterrupted(demo, tmp_path):
    whole = tiny_run(demo, tmp_path / "a")
    stopped = tiny_run(demo, tmp_path / "b", stop_after_epoch=1)
    assert not (stopped.folder / "model.safetensors").exists()  # unfinished: no backbone published
    with pytest.raises(ConfigError, match="--resume"):
        tiny_run(demo, tmp_path / "b", resume=False)
    resumed = tiny_run(demo, tmp_path / "b", resume=True)
    assert whole.card == resumed.card and len(resumed.history) == 3
    assert [h["loss"] for h in whole.history] == [h["loss"] for h in resumed.history]
    a, b = load_file(whole.folder / "model.safetensors"), load_file(resumed.folder / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ca = torch.load(whole.run_dir / "checkpoint.pt", weights_only=True)
    cb = torch.load(resumed.run_dir / "checkpoint.pt", weights_only=True)
    for part in ("student", "teacher"):
        assert all(torch.equal(ca[part][k], cb[part][k]) for k in ca[part])
    assert torch.equal(ca["center"], cb["center"]) and torch.equal(ca["rng"]["torch"], cb["rng"]["torch"])
    state_a, state_b = ca["optimizer"]["state"], cb["optimizer"]["state"]
    assert all(torch.equal(state_a[i][k], state_b[i][k]) for i in state_a for k in state_a[i])
    # a finished run is found again, not trained again
    again = tiny_run(demo, tmp_path / "a")
    assert not again.trained and again.folder == whole.folder
    assert (whole.run_dir / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_test_split_fovs_never_reach_the_trainer(demo, tmp_path, monkeypatch):
    ds, split = demo
    test_idx, folds = split.indices(ds.fov_ids)
    read = []
    original = ds.read
    monkeypatch.setattr(ds, "read", lambda i: read.append(int(i)) or original(i))
    tiny_run(demo, tmp_path, cfg={"epochs": 1, "fraction": 1.0})
    assert read and not set(read) & set(test_idx.tolist())
    train = set(np.concatenate(folds).tolist())
    assert set(read) <= train and len(set(read)) == len(train) // 8 * 8  # one epoch: every full batch


def test_fractions_are_nested_seeded_subsets_of_the_train_part(demo):
    ds, split = demo
    test_idx, folds = split.indices(ds.fov_ids)
    full = train_indices(ds, split, 1.0, seed=0)
    assert set(full) == set(np.concatenate(folds)) and not set(full) & set(test_idx)
    subsets = {f: set(train_indices(ds, split, f, seed=0)) for f in (0.2, 0.4, 0.6)}
    assert subsets[0.2] < subsets[0.4] < subsets[0.6] < set(full)
    assert len(subsets[0.2]) == round(0.2 * len(full))
    assert set(train_indices(ds, split, 0.2, seed=1)) != subsets[0.2]


def test_finetuned_weights_load_as_a_backbone_and_probe(demo, tmp_path):
    from ocbench.backbones.loader import load_backbone
    from ocbench.tasks.fov_probe import FovMlpProbe

    ds, split = demo
    outcome = tiny_run(demo, tmp_path, cfg={"epochs": 1})
    card = load_card_file(outcome.folder / CARD_FILENAME)
    assert card == outcome.card and card.source == f"local:{card.name}" and card.name.startswith("tiny-vit-random.")
    assert card.training_datasets == ("demo",) and card.supervision == "self-supervised"
    assert json.loads(card.notes)["config"]["fraction"] == 0.3
    config = json.loads((outcome.folder / "config.json").read_text())
    assert config["architecture"] == card.arch and config["model_args"]["in_chans"] == 3
    backbone = load_backbone(card, cache_dir=tmp_path)
    saved = load_file(outcome.folder / "model.safetensors")
    assert all(torch.equal(backbone.model.vit.state_dict()[k], saved[k]) for k in saved)
    assert backbone.weights_sha256 == config["ocbench"]["weights_sha256"]
    adapter = parse_channels(None, card, ds.card.channel_names)
    images = torch.from_numpy(np.stack([ds.read(i) for i in range(len(ds))]).astype(np.int32))
    features = backbone.embed_raw(images, adapter).numpy()
    assert features.shape == (len(ds), card.feature_dim) and np.isfinite(features).all()
    test_idx, folds = split.indices(ds.fov_ids)
    result = FovMlpProbe(epochs=10).run(features, ds.labels, test_idx, folds, progress=False, class_names=ds.card.class_names)
    assert 0 <= result.scores["val"]["macro_f1"]["mean"] <= 1


def test_run_task_finetune_writes_an_entry_about_the_derived_backbone(demo, module_cache, tmp_path):
    from ocbench.benchmark.entry import load_entry

    ds, _ = demo
    args = ["run", "--backbone", "tiny-vit-random", "--task", "finetune", "--dataset", str(ds.root),
            "--output", str(tmp_path), "--threads", "1", *[a for s in TINY_SET for a in ("--set", s)]]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    [path] = list(tmp_path.glob("*.json"))
    entry = load_entry(path)
    name = entry.backbone.name
    assert name.startswith("tiny-vit-random.dino-") and path.name.startswith(name + "__map-p1-n2__finetune__paper")
    assert entry.backbone.source == f"local:{name}" and entry.backbone.weights_sha256
    assert entry.backbone.card["training_datasets"] == ["demo"]
    assert entry.task == "finetune" and entry.task_config["fraction"] == 0.3 and entry.task_config["epochs"] == 2
    assert entry.off_protocol and "val" in entry.scores
    second = CliRunner().invoke(cli, args)
    assert second.exit_code == 0 and "skipped (exists)" in second.output


@pytest.mark.parametrize("args, fragment", [
    (["--backbone", "classical-stats"], "ViT"),
    (["--backbone", "tiny-vit-random", "--from-scratch", "vit_small_patch8"], "exactly one"),
    (["--from-scratch", "vit_tiny_nonsense"], "vit_tiny_nonsense"),
    (["--backbone", "tiny-vit-random", "--set", "fraction=1.5"], "fraction"),
])
def test_finetune_command_bad_input_is_one_line(demo, args, fragment):
    ds, _ = demo
    result = CliRunner().invoke(cli, ["finetune", "--dataset", str(ds.root), "--workers", "0", *args])
    assert result.exit_code == 2 and fragment in result.output and "Traceback" not in result.output


def test_fraction_sweep_gives_one_entry_per_fraction(demo, module_cache, tmp_path):
    from ocbench.benchmark.entry import load_entry

    ds, _ = demo
    settings = [s for s in TINY_SET if not s.startswith(("fraction", "epochs", "probe_epochs"))]
    settings += ["fraction=0.2,0.3", "epochs=1", "probe_epochs=5"]
    result = CliRunner().invoke(cli, ["run", "--backbone", "tiny-vit-random", "--task", "finetune", "--dataset", str(ds.root),
                                      "--output", str(tmp_path), "--threads", "1", *[a for s in settings for a in ("--set", s)]])
    assert result.exit_code == 0, result.output
    entries = sorted((load_entry(p) for p in tmp_path.glob("*.json")), key=lambda e: e.task_config["fraction"])
    assert [e.task_config["fraction"] for e in entries] == [0.2, 0.3]
    assert entries[0].backbone.name != entries[1].backbone.name and "-f0.2-" in entries[0].backbone.name


def test_finetune_command_reports_progress_and_writes_the_loss_curve(demo, module_cache):
    ds, _ = demo
    settings = [s for s in TINY_SET if not s.startswith(("epochs", "probe_epochs", "fraction"))]
    args = ["finetune", "--backbone", "tiny-vit-random", "--dataset", str(ds.root), "--epochs", "2", "--fraction", "0.25",
            "--workers", "1", "--threads", "1", *[a for s in settings for a in ("--set", s)]]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    for fragment in ("epoch 2/2 loss", " lr ", "images/s", "ETA", "trained: tiny-vit-random.dino-demo-f0.25-"):
        assert fragment in result.output
    curve = result.output.split("loss curve: ")[1].split()[0]
    assert open(curve, "rb").read(4) == b"\x89PNG"
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0 and "already trained" in again.output


def test_dataloader_workers_do_not_change_the_result(demo, tmp_path):
    plain = tiny_run(demo, tmp_path / "w0", cfg={"epochs": 1}, num_workers=0)
    workers = tiny_run(demo, tmp_path / "w2", cfg={"epochs": 1}, num_workers=2)
    a, b = load_file(plain.folder / "model.safetensors"), load_file(workers.folder / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_from_scratch_on_opencell_produces_the_zoo_cards_weights():
    from types import SimpleNamespace

    from ocbench.data.cards import OPENCELL
    from ocbench.tasks.finetune import derived_card, scratch_card

    split = SimpleNamespace(sha256="0" * 64, track="paper")
    for arch, zoo in (("vit_small_patch8", "opencell-dino-vits8"), ("vit_base_patch8", "opencell-dino-vitb8")):
        base = scratch_card(arch, OPENCELL)
        adapter = parse_channels(None, base, OPENCELL.channel_names)
        for name, expected in (("opencell", zoo), ("demo", None)):
            card = derived_card(base, adapter, FineTune(), SimpleNamespace(name=name, version="v1"), split, 0)
            if expected:
                assert card.name == expected and card.source == f"local:{zoo}" and card.training_datasets == ("OpenCell",)
                assert card.arch == get_card(zoo).arch and card.feature_dim == get_card(zoo).feature_dim
            else:  # other data never takes the OpenCell card's name
                assert card.name.startswith(f"scratch-{arch}_224.dino-demo-f1-")


def test_fraction_sweep_gives_one_entry_per_fraction_and_one_curve_on_the_board(demo, module_cache, tmp_path):
    from ocbench.leaderboard import build_board, collect_entries
    from ocbench.leaderboard.plots import _fraction_series
    from ocbench.leaderboard.tables import build_tables

    ds, _ = demo
    settings = [s for s in TINY_SET if not s.startswith("fraction=")] + ["fraction=0.5,1.0"]
    result = CliRunner().invoke(cli, ["run", "--backbone", "tiny-vit-random", "--task", "finetune", "--dataset",
                                      str(ds.root), "--output", str(tmp_path / "entries"), "--threads", "1",
                                      *[a for s in settings for a in ("--set", s)]])
    assert result.exit_code == 0, result.output
    entries = collect_entries(tmp_path / "entries").entries
    assert sorted(e.entry.task_config["fraction"] for e in entries) == [0.5, 1.0]
    assert len({e.entry.backbone.name for e in entries}) == 2  # each fraction trains its own backbone
    # The board joins them by the backbone they were trained from: one curve with both fractions.
    series = {k: v for k, v in _fraction_series(build_tables(entries, include_reported=False)).items()}
    (label, points) = series.popitem()
    assert label.startswith("tiny-vit-random ") and [p[0] for p in points] == [0.5, 1.0] and not series
    report = build_board([tmp_path / "entries"], tmp_path / "board")
    assert (tmp_path / "board" / "plots" / "finetune_fraction.png").is_file(), report.summary()
