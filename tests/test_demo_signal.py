"""The demo carries learnable signal: a real probe beats the same probe on shuffled labels, and
grouping the split by protein does not make the task easier."""

import numpy as np
import pytest

from ocbench.benchmark.embeddings import extract_embeddings
from ocbench.benchmark.runner import DEMO_OVERRIDES
from ocbench.benchmark.splits import make_split
from ocbench.data.demo import ensure_demo
from ocbench.data.opencell import OpenCellDataset
from ocbench.tasks import get_task


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = ensure_demo(tmp_path_factory.mktemp("demo") / "demo")
    ds = OpenCellDataset(root)
    emb = extract_embeddings(ds, "classical-stats", cache_dir=tmp_path_factory.mktemp("emb"), progress=False)
    return ds, emb


def _val_score(ds, emb, labels, track):
    split = make_split(ds.manifest, track=track, seed=0)
    test_idx, folds_idx = split.indices(emb.fov_ids)
    task, _ = get_task("fov-mlp").with_overrides(DEMO_OVERRIDES)
    return task.run(emb.features, labels, test_idx, folds_idx, seed=0, progress=False).metrics["macro_f1"]["val"]


def test_classical_mlp_beats_shuffled_labels(demo):
    ds, emb = demo
    real = _val_score(ds, emb, ds.labels, "paper")
    shuffled_labels = ds.labels[np.random.default_rng(0).permutation(len(ds.labels))]
    shuffled = _val_score(ds, emb, shuffled_labels, "paper")
    assert real["mean"] - shuffled["mean"] > 0.2, (real, shuffled)


def test_protein_track_is_not_easier_than_paper_track(demo):
    ds, emb = demo
    paper = _val_score(ds, emb, ds.labels, "paper")
    protein = _val_score(ds, emb, ds.labels, "protein")
    noise = 2 * max(paper["std"], protein["std"])
    assert protein["mean"] <= paper["mean"] + noise, (paper, protein)
