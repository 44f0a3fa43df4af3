"""The classical segmentation backend on the demo's drawn cells and on real OpenCell Hoechst frames."""

import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("skimage", reason="the classical segmentation backend needs scikit-image (pip install 'ocbench[cells]')")

from ocbench.data import cells as C  # noqa: E402
from ocbench.data import demo  # noqa: E402
from ocbench.data.compartments import CHANNELS, RAW_CHANNEL_INDEX  # noqa: E402

NUCLEI = Path(__file__).resolve().parents[2] / "shared" / "data" / "opencell" / "nuclei"


def _demo_fov(config, protein, fov_index):
    """The rendered FOV (CHANNELS order) and its true layout, drawn the way render_fov draws it."""
    raw, field = demo._render(protein, fov_index, config)
    image = np.stack([raw[RAW_CHANNEL_INDEX[name]] for name in CHANNELS])
    nucleus = image[CHANNELS.index("nucleus")].astype(float)
    # Precondition: this is the layout of the rendered image (the demo's generator may change).
    assert nucleus[field.nucleus].mean() > 3 * nucleus[~field.cell].mean(), "demo layout no longer matches render_fov"
    return image, field


def test_classical_backend_finds_the_demos_cells():
    config = demo.DemoConfig(proteins=3, fovs_per_protein=2, size=96, cell_radius=17.0, unlabelled_proteins=0,
                             annotation_only_proteins=0, name_joined_proteins=0)
    backend = C.get_backend("classical")
    expected = found = matched = 0
    for protein in demo.demo_proteins(config)[:3]:
        for j in range(config.fovs_per_protein):
            image, field = _demo_fov(config, protein, j)
            labels = backend.segment(image, CHANNELS)
            assert labels.shape == image.shape[1:] and labels.dtype == np.int32
            # A cell is findable when a good part of its nucleus is in the frame.
            visible = [k + 1 for k in range(len(field.cells)) if (field.nucleus & (field.labels == k + 1)).sum() >= 60]
            cells = [(labels == lab) for lab in range(1, labels.max() + 1) if (labels == lab).any()]
            centroids = [tuple(np.rint(np.argwhere(m).mean(axis=0)).astype(int)) for m in cells]
            hits = [int(field.labels[y, x]) for y, x in centroids]
            expected += len(visible)
            found += len(cells)
            matched += len(set(hits) & set(visible))
            assert len(hits) - len(set(hits) - {0}) <= 1  # at most one split cell or background blob per FOV
    assert matched >= 0.9 * expected
    assert abs(found - expected) <= 0.1 * expected


@pytest.mark.skipif(not NUCLEI.is_dir(), reason="needs the real OpenCell sample frames in ../shared/data/opencell/nuclei (not shipped with ocbench)")
@pytest.mark.parametrize("name", ["FOV_00007_RAW.tif", "FOV_00076_RAW.tif"])
def test_real_hoechst_frames_give_plausible_nuclei(name):
    import tifffile

    frame = tifffile.imread(NUCLEI / name)
    assert frame.shape == (1024, 1024)
    diameter = C.estimate_nucleus_diameter(frame)
    assert 30 <= diameter <= 120  # HEK293T nuclei, about 10-15 um at ~0.1-0.2 um per pixel
    nuclei = C.segment_nuclei(frame, diameter)
    count = int(nuclei.max())
    assert 25 <= count <= 250  # dozens of nuclei per frame
    areas = np.bincount(nuclei.ravel())[1:]
    typical = math.pi * (diameter / 2) ** 2
    assert 0.5 * typical <= np.median(areas) <= 3 * typical
    inside = nuclei > 0
    assert frame[inside].mean() > 3 * frame[~inside].mean()  # nuclei are the bright parts
