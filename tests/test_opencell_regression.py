"""OpenCell-layout results do not move when the data layer changes: every entry of a small, pinned
demo grid scores exactly what ocbench scored before datasets became cards.

The expected numbers (tests/data/opencell_regression.json) were written by this module's
``__main__`` on the code before the dataset-card refactor:

    PYTHONPATH=. python tests/test_opencell_regression.py --write

(run from a checkout of that commit, recorded in the fixture as ``made_at_commit``).

The demo's size, the grid and sc-knn's crop settings are pinned here rather than taken from the
demo's defaults, so a later change of those defaults does not break this test (regenerate the
fixture only when a change of scores is intended, and say why in the commit).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

FIXTURE = Path(__file__).parent / "data" / "opencell_regression.json"

#: A demo small enough to run in seconds, large enough that every class lands in every part.
DEMO = dict(proteins=40, fovs_per_protein=2, size=64, seed=0, cell_radius=13.0,
            unlabelled_proteins=0, annotation_only_proteins=0, name_joined_proteins=0)
BACKBONES = ("classical-stats", "tiny-vit-random")
TASKS = ("fov-mlp", "fov-linear")
TRACKS = ("paper", "protein")
#: sc-knn with pinned crop settings (the demo's own derive from its card and may change).
SC_KNN = ("classical-stats", "sc-knn", ("crop_size=128", "zoom=2.0", "segmentation=classical"))


def compute_scores(tmp: Path) -> dict[str, dict]:
    """Run the pinned grid on a fresh pinned demo and return ``{entry key: scores}``."""
    from ocbench.benchmark.runner import RunOptions, RunSpec, run_grid
    from ocbench.data.demo import DemoConfig, write_demo
    from ocbench.data.opencell import OpenCellDataset

    root = write_demo(tmp / "demo", DemoConfig(**DEMO))
    dataset = OpenCellDataset(root)
    specs = [RunSpec(b, t, None, tr) for b in BACKBONES for t in TASKS for tr in TRACKS]
    specs.append(RunSpec(SC_KNN[0], SC_KNN[1], None, "paper", SC_KNN[2]))
    options = RunOptions(output_dir=tmp / "entries", cache_dir=tmp / "cache", device="cpu", progress=False)
    out = {}
    for outcome in run_grid(specs, dataset, options):
        entry = outcome.entry
        out[entry.key] = {
            "main_score": [entry.main_score.eval_set, entry.main_score.metric],
            "scores": json.loads(entry.model_dump_json())["scores"],
            "per_class": entry.per_class,
            "class_names": list(entry.class_names),
            "n_items": entry.dataset.n_items,
        }
    return out


def _assert_equal(got, want, where: str) -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(want), f"{where}: keys {sorted(got)} != {sorted(want)}"
        for key in want:
            _assert_equal(got[key], want[key], f"{where}/{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: {got!r} != {want!r}"
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_equal(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        # equal up to float printing; the same arithmetic gives the same bits
        assert isinstance(got, (int, float)) and math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12), \
            f"{where}: {got!r} != {want!r}"
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


@pytest.mark.slow
def test_demo_entries_score_what_they_scored_before(tmp_path, monkeypatch):
    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path / "ocbench-cache"))
    expected = json.loads(FIXTURE.read_text())["entries"]
    got = compute_scores(tmp_path)
    assert sorted(got) == sorted(expected)
    for key in expected:
        _assert_equal(got[key], expected[key], key)


if __name__ == "__main__":
    import os
    import subprocess
    import tempfile

    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: PYTHONPATH=. python tests/test_opencell_regression.py --write")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["OCBENCH_CACHE"] = str(Path(tmp) / "ocbench-cache")
        entries = compute_scores(Path(tmp))
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    document = {
        "made_by": "PYTHONPATH=. python tests/test_opencell_regression.py --write",
        "made_at_commit": commit,
        "demo": DEMO,
        "entries": entries,
    }
    FIXTURE.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
    print(f"wrote {FIXTURE} ({len(entries)} entries)")
