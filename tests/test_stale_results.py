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
    assert same.exit_code == 0 and "skipped (exists)" in same.output and "warning" not in same.stderr
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
