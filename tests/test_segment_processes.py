"""Segmentation in several processes: the same masks and cell table as one process, errors raised
in a worker reach the caller intact, and the number of processes follows the backend."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest

from ocbench.data import cells as C
from ocbench.data.cells.table import segmentation_workers
from ocbench.errors import ConfigError, DataError

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="segmentation processes are forked (Linux only)")


@pytest.fixture(scope="module")
def demo_dataset(tmp_path_factory):
    pytest.importorskip("skimage")
    from ocbench.data.demo import DemoConfig, write_demo
    from ocbench.data.opencell import OpenCellDataset

    config = DemoConfig(proteins=4, fovs_per_protein=2, size=64, cell_radius=8, unlabelled_proteins=1)
    return OpenCellDataset(write_demo(tmp_path_factory.mktemp("demo"), config))


def _masks(table: C.CellTable) -> dict[str, np.ndarray]:
    return {fov_id: table.mask(fov_id) for fov_id in table.cells["fov_id"].unique()}


def test_two_processes_make_the_same_masks_and_table_as_one(demo_dataset, tmp_path):
    one = C.prepare_cells(demo_dataset, "classical", cache_dir=tmp_path / "one", workers=1)
    two = C.prepare_cells(demo_dataset, "classical", cache_dir=tmp_path / "two", workers=2)
    assert one.meta["n_fovs_segmented_now"] == two.meta["n_fovs_segmented_now"] == len(demo_dataset)
    assert len(one) > 20  # the synthetic FOVs have cells to find
    pd.testing.assert_frame_equal(one.cells, two.cells)
    np.testing.assert_array_equal(one.weak_labels, two.weak_labels)
    masks_one, masks_two = _masks(one), _masks(two)
    assert masks_one.keys() == masks_two.keys()
    for fov_id, mask in masks_one.items():
        np.testing.assert_array_equal(mask, masks_two[fov_id], err_msg=fov_id)
    # Masks made by the worker processes are reused as any other.
    again = C.prepare_cells(demo_dataset, "classical", cache_dir=tmp_path / "two", workers=2)
    assert again.meta["n_fovs_segmented_now"] == 0


@dataclass(frozen=True)
class _FailsOnOneFov(C.ClassicalBackend):
    """The classical backend, but a mask of the wrong shape for FOVs whose protein channel sums to
    ``bad_sum`` (so the failure does not depend on which process gets the FOV). ``bad_sum`` is a
    class attribute, not a setting, so that both runs below share one mask store."""

    name: ClassVar[str] = "fails-on-one"
    bad_sum: ClassVar[int] = -1

    def segment(self, image, channel_names):
        labels = super().segment(image, channel_names)
        return labels[:-1] if int(image.sum(dtype=np.int64)) == self.bad_sum else labels


def test_an_error_in_a_worker_is_raised_as_the_one_line_error(demo_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(_FailsOnOneFov, "bad_sum", int(np.asarray(demo_dataset.read(3)).sum(dtype=np.int64)))
    bad_fov = demo_dataset.ids[3]
    with pytest.raises(DataError, match=rf"returned a \(\d+, \d+\) mask for FOV {bad_fov} of shape"):
        C.prepare_cells(demo_dataset, _FailsOnOneFov(), cache_dir=tmp_path, workers=2)
    monkeypatch.setattr(_FailsOnOneFov, "bad_sum", -1)
    # The other FOVs' masks were saved by the workers: a run that can finish segments only the rest.
    done = C.prepare_cells(demo_dataset, _FailsOnOneFov(), cache_dir=tmp_path, workers=2)
    assert 1 <= done.meta["n_fovs_segmented_now"] < len(demo_dataset)


def test_processes_follow_the_backend_and_the_work():
    classical = C.get_backend("classical")
    assert classical.one_process_per_core
    assert not C.SegmentationBackend.one_process_per_core  # Cellpose and plug-ins: one process
    assert segmentation_workers(classical, 100, 3) == 3
    assert segmentation_workers(classical, 2, 8) == 2  # never more processes than FOVs
    assert segmentation_workers(classical, 0, None) == 1
    with pytest.raises(ConfigError, match="workers must be >= 1"):
        segmentation_workers(classical, 10, 0)


def test_cellpose_keeps_one_process_by_default():
    cellpose = C.get_backend("cellpose")
    assert segmentation_workers(cellpose, 100, None) == 1
