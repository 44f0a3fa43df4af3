"""bench/scale.py's table: one scale says that b needs two, and an F = 1 run fits its exponents
together with an earlier run's smaller scales (--fit-with)."""

import importlib.util
import json
import math
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from ocbench.errors import ConfigError

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(scope="module")
def scale():
    sys.path.insert(0, str(BENCH))  # scale.py imports bench/_args.py
    try:
        spec = importlib.util.spec_from_file_location("bench_scale", BENCH / "scale.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while it loads
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


def _rows(scale, fraction: str, n_fovs: int, seconds: float):
    return [scale.StageResult(stage, fraction, n_fovs, n_fovs, "fovs", seconds * k, seconds * k, 100.0, 1.0, f"cmd {stage}")
            for stage, k in (("scan", 1.0), ("segment", 3.0))]


def test_one_scale_says_b_needs_two(scale, capsys):
    scale.print_table(_rows(scale, "1", 6533, 10.0))
    out = capsys.readouterr().out
    assert "one scale measured" in out and "--fit-with" in out
    assert "less than 2x apart" not in out


def test_an_earlier_runs_scales_are_fitted_with_this_one(scale, tmp_path, capsys):
    small = _rows(scale, "1/16", 417, 10.0)
    path = tmp_path / "small.json"
    path.write_text(json.dumps({"backbone": "classical-stats", "size": 600, "stages": [asdict(r) for r in small]}))
    earlier = scale.earlier_results([path], "classical-stats", 600)
    assert earlier == small
    big = _rows(scale, "1", 6533, 10.0 * (6533 / 417) ** 1.25)
    summary = scale.summarise(sorted(earlier + big, key=lambda r: r.n_fovs))
    assert math.isclose(summary["segment"]["b"], 1.25, rel_tol=1e-9)
    assert summary["scan"]["command"] == "cmd scan"
    scale.print_table(earlier + big)
    out = capsys.readouterr().out
    assert "F=1/16" in out and "F=1" in out and " 1.25 " in out


def test_an_earlier_run_of_another_backbone_or_size_is_refused(scale, tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"backbone": "tiny-vit-random", "size": 600, "stages": []}))
    with pytest.raises(ConfigError, match="fit like with like"):
        scale.earlier_results([path], "classical-stats", 600)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ConfigError, match="not a bench/scale.py --json file"):
        scale.earlier_results([tmp_path / "bad.json"], "classical-stats", 600)
