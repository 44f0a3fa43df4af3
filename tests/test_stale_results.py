"""No saved result outlives its pixels: the dataset's content identity and what depends on it.

Every case rewrites image pixels in place while keeping each file's name, byte size and mtime
(what a re-export does), then checks that entries, masks and the dataset version notice it, that
only what depends on the changed files is computed again, and that unchanged data reuses all.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from demo_data import labelled_demo
from ocbench.data.cards import open_dataset


def rewrite_pixels(path: Path, seed: int = 1) -> None:
    """New pixel values in the image strips of a TIFF, same name, byte size and mtime."""
    import tifffile

    stat = path.stat()
    with tifffile.TiffFile(path) as tif:
        strips = [(o, n) for page in tif.pages for o, n in zip(page.dataoffsets, page.databytecounts)]
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(seed)
    for offset, count in strips:
        pixels = np.frombuffer(bytes(data[offset:offset + count]), dtype=np.uint16)
        data[offset:offset + count] = rng.permutation(pixels).astype(np.uint16).tobytes()
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)


def caught(call):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        result = call()
    return result, [str(w.message) for w in seen]


@pytest.fixture()
def demo(tmp_path, monkeypatch):
    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path / "cache"))
    return labelled_demo(tmp_path / "demo", proteins=6, fovs_per_protein=2, size=64)


# ---------------------------------------------------------------------------------------------
# The identity


def test_version_covers_pixels_and_counts_the_changed_files(demo):
    from ocbench.data.content import CONTENT_NAME

    before = open_dataset(str(demo))
    assert before.content.n_hashed == len(before) and (demo / CONTENT_NAME).is_file()
    again = open_dataset(str(demo))
    assert again.content.n_hashed == 0 and again.version == before.version  # remembered: only stat'ed
    for i in (0, 3, 5):
        rewrite_pixels(before.path(i))
    after = open_dataset(str(demo))
    assert after.manifest_version == before.manifest_version  # same names and labels
    assert after.version != before.version  # other pixels
    assert after.content.n_hashed == 3  # only the files whose ctime moved were read again
    changed = after.files_changed_since(before.version)
    assert sorted(changed) == sorted(before.manifest["path"][[0, 3, 5]])
    assert after.files_changed_since("0" * 64) is None  # not an earlier state of this listing


def test_a_touched_file_keeps_the_version(demo):
    ds = open_dataset(str(demo))
    stat = ds.path(2).stat()
    os.utime(ds.path(2), ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    again = open_dataset(str(demo))
    assert again.version == ds.version and again.content.n_hashed == 1


def test_read_only_data_keeps_its_records_in_the_cache(tmp_path, monkeypatch):
    from ocbench.data import content
    from ocbench.data.content import CONTENT_NAME, read_content

    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "files"
    root.mkdir()
    for name in ("a.bin", "b.bin"):
        (root / name).write_bytes(name.encode() * 100)
    writable = content.atomic_write

    def read_only_data(path, *args, **kwargs):  # chmod does not stop root, who runs some CI
        if Path(path).parent == root:
            raise PermissionError(13, "Permission denied", str(path))
        return writable(path, *args, **kwargs)

    monkeypatch.setattr(content, "atomic_write", read_only_data)
    first = read_content(root, ["a.bin", "b.bin"])
    second = read_content(root, ["a.bin", "b.bin"])
    assert first.store is not None and str(first.store).startswith(str(tmp_path / "cache"))
    assert not (root / CONTENT_NAME).exists()
    assert (first.n_hashed, second.n_hashed) == (2, 0) and first.digest == second.digest


# ---------------------------------------------------------------------------------------------
# Entries


def test_run_into_the_same_output_recomputes_an_entry_whose_pixels_changed(demo, tmp_path):
    from ocbench.benchmark.entry import load_entry
    from ocbench.cli import cli

    out = tmp_path / "results"
    args = ["run", "--dataset", str(demo), "--backbone", "classical-stats", "--task", "fov-linear", "--output", str(out),
            "--set", "epochs=5"]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    [path] = out.glob("*.json")
    entry = load_entry(path)
    same = CliRunner().invoke(cli, args)  # unchanged data: nothing is computed again
    # A reused entry may repeat its own chance-level warning, but never a changed-data one.
    assert same.exit_code == 0 and "skipped (exists)" in same.output and "changed since" not in same.stderr
    assert load_entry(path).created == entry.created

    ds = open_dataset(str(demo))
    for i in range(len(ds)):
        rewrite_pixels(ds.path(i))
    changed = CliRunner().invoke(cli, args)
    assert changed.exit_code == 0, changed.output
    assert "skipped (exists)" not in changed.output
    assert f"{len(ds)} image file(s) changed since it was computed" in changed.stderr
    assert f"{len(ds)} image file(s) changed since their embeddings were cached" in changed.stderr
    redone = load_entry(path)
    assert redone.dataset.version == open_dataset(str(demo)).version != entry.dataset.version
    assert redone.timings.extraction_cached is False and redone.split.sha256 == entry.split.sha256
    assert CliRunner().invoke(cli, args).output.count("skipped (exists)") == 1
    # Other items or labels (not rewritten pixels) are another dataset: still refused, never replaced.
    refused = CliRunner().invoke(cli, [*args[:3], "--min-grade", "2", *args[3:]])
    assert refused.exit_code == 2 and "other dataset version" in refused.stderr and "--overwrite" in refused.stderr




# ---------------------------------------------------------------------------------------------
# Masks


def test_masks_of_changed_images_are_made_again_and_only_those(demo):
    pytest.importorskip("skimage", reason="the classical segmentation backend needs scikit-image")
    from ocbench.data import cells as C

    ds = open_dataset(str(demo))
    first = C.prepare_cells(ds, "classical", crop=C.CropSettings(32, 2.0))
    assert first.meta["n_fovs_segmented_now"] == len(ds)
    same = C.prepare_cells(open_dataset(str(demo)), "classical", crop=C.CropSettings(32, 2.0))
    assert same.meta["n_fovs_segmented_now"] == 0 and "(all reused)" in C.format_cells_summary(same)
    for i in (1, 4):
        rewrite_pixels(ds.path(i))
    again, messages = caught(lambda: C.prepare_cells(open_dataset(str(demo)), "classical", crop=C.CropSettings(32, 2.0)))
    assert again.meta["n_fovs_segmented_now"] == 2 and again.meta["n_fovs_changed"] == 2
    assert [m for m in messages if "2 image file(s) changed since their masks were made" in m]
    assert "(all reused)" not in C.format_cells_summary(again)


# ---------------------------------------------------------------------------------------------
# Fine-tuning: run identity, checkpoints, finished weights

TINY = dict(epochs=2, batch_size=8, out_dim=32, head_hidden_dim=32, head_bottleneck_dim=16, global_crop_size=32,
            local_crop_size=16, local_crops=2, warmup_epochs=1, warmup_teacher_temp_epochs=1, fraction=0.5)


def tiny_finetune(root: Path, cache: Path, **kwargs):
    """A two-epoch DINO run of the tiny random ViT on a freshly listed dataset at ``root``."""
    import torch

    from ocbench.backbones.adapters import parse_channels
    from ocbench.backbones.cards import get_card
    from ocbench.benchmark.splits import make_split
    from ocbench.tasks.finetune import FineTune, finetune_backbone

    torch.set_num_threads(1)
    ds = open_dataset(str(root))
    card = get_card("tiny-vit-random")
    cfg = FineTune(**{**TINY, **kwargs.pop("cfg", {})})
    split = make_split(ds, track="paper", seed=0)
    return finetune_backbone(card, parse_channels(None, card, ds.card.channel_names), ds, split, cfg, seed=0,
                             cache_dir=cache, **kwargs), ds, split


@pytest.fixture()
def ft_demo(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path / "cache"))
    return labelled_demo(tmp_path / "demo", proteins=10, fovs_per_protein=2, size=48), tmp_path / "cache"


def test_finetuned_weights_are_trained_again_when_training_pixels_change_only_then(ft_demo):
    from ocbench.tasks.finetune import train_indices

    root, cache = ft_demo
    first, ds, split = tiny_finetune(root, cache)
    assert first.trained
    train = train_indices(ds, split, TINY["fraction"], seed=0)
    outside = sorted(set(range(len(ds))) - set(train.tolist()))
    rewrite_pixels(ds.path(outside[0]))  # an image the run does not train on
    same, _, _ = tiny_finetune(root, cache)
    assert not same.trained and same.folder == first.folder
    for i in train[:3]:
        rewrite_pixels(ds.path(int(i)))
    (again, _, _), messages = caught(lambda: tiny_finetune(root, cache))
    assert again.trained and again.card == first.card and again.folder == first.folder
    assert [m for m in messages if f"3 of its {len(train)} training image file(s) changed since it was trained" in m]
    assert not [m for m in messages if "starting this run over" in m]  # said once, about the weights
    assert (first.folder / "model.safetensors").read_bytes() != b""
    assert not tiny_finetune(root, cache)[0].trained  # and now reused


def test_a_checkpoint_of_other_pixels_is_not_resumed(ft_demo):
    from ocbench.tasks.finetune import train_indices

    root, cache = ft_demo
    stopped, ds, split = tiny_finetune(root, cache, stop_after_epoch=1)
    checkpoint = stopped.run_dir / "checkpoint.pt"
    assert checkpoint.is_file()
    rewrite_pixels(ds.path(int(train_indices(ds, split, TINY["fraction"], seed=0)[0])))
    (resumed, _, _), messages = caught(lambda: tiny_finetune(root, cache))
    assert [m for m in messages if "1 of its" in m and "starting this run over" in m]
    fresh, _, _ = tiny_finetune(root, cache / "fresh")  # the same run from scratch on the new pixels
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in fresh.history]


def flip_bytes(path: Path, start: int, n: int = 64) -> None:
    data = bytearray(path.read_bytes())
    for k in range(start, start + n):
        data[k] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_damaged_checkpoint_is_a_one_line_error_not_a_silent_resume(ft_demo):
    from ocbench.errors import DataError

    root, cache = ft_demo
    stopped, _, _ = tiny_finetune(root, cache, stop_after_epoch=1)
    checkpoint = stopped.run_dir / "checkpoint.pt"
    flip_bytes(checkpoint, checkpoint.stat().st_size // 2)
    with pytest.raises(DataError) as excinfo:
        tiny_finetune(root, cache)
    message = str(excinfo.value)
    assert "\n" not in message and str(checkpoint) in message and "delete it" in message


def test_damaged_finished_weights_are_a_one_line_error_not_reused(ft_demo):
    from ocbench.errors import DataError

    root, cache = ft_demo
    first, _, _ = tiny_finetune(root, cache)
    weights = first.folder / "model.safetensors"
    flip_bytes(weights, weights.stat().st_size - 100)
    with pytest.raises(DataError) as excinfo:
        tiny_finetune(root, cache)
    assert "\n" not in str(excinfo.value) and str(weights) in str(excinfo.value) and "damaged" in str(excinfo.value)


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"),
                                     RuntimeError("[enforce fail at inline_container.cc:595] . PytorchStreamWriter "
                                                  "failed writing file data/12: file write failed")])
def test_full_disk_while_saving_a_checkpoint_is_one_line_and_keeps_the_last_one(ft_demo, monkeypatch, failure):
    import torch

    from ocbench.errors import OcbenchError

    root, cache = ft_demo
    stopped, _, _ = tiny_finetune(root, cache, stop_after_epoch=1)
    checkpoint = stopped.run_dir / "checkpoint.pt"
    before = checkpoint.read_bytes()
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)  # part of the file is written, then the disk is full
        raise failure

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OcbenchError) as excinfo:
        tiny_finetune(root, cache)
    message = str(excinfo.value)
    assert "\n" not in message and str(checkpoint) in message and "could not write" in message
    assert checkpoint.read_bytes() == before  # the last good checkpoint, whole
    assert sorted(p.name for p in stopped.run_dir.iterdir() if p.name.endswith(".tmp")) == []


def test_finetuned_weights_are_readable_like_every_written_file(ft_demo):
    import stat

    root, cache = ft_demo
    first, _, _ = tiny_finetune(root, cache, cfg={"epochs": 1})
    mask = os.umask(0)
    os.umask(mask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in first.folder.iterdir()}
    assert modes["model.safetensors"] == 0o666 & ~mask and set(modes.values()) == {0o666 & ~mask}
