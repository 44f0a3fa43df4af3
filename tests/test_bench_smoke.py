"""Every benchmark in bench/ still runs (at a toy size) and prints its ratio and how to reproduce it.

The numbers themselves are not checked here: benchmarks measure, tests do not time."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"

TOY = {
    "probe.py": ["--n", "400", "--dim", "16", "--epochs", "2", "--repeats", "2"],
    "gpu_plan.py": ["--quick", "--gpu-types", "H100", "--gpus", "1"],
    "knn.py": ["--n", "1500", "--dim", "16", "--ks", "1,5", "--cells-per-fov", "10"],
    "extract.py": ["--model", "tiny-vit-random", "--fovs", "4", "--size", "32", "--repeats", "1", "--batch-size", "4"],
    "finetune.py": ["--global-crop", "32", "--local-crop", "16", "--local-crops", "2", "--out-dim", "256",
                    "--batch-size", "2", "--steps", "1", "--fov-size", "64", "--workers", "0"],
    # Two tiny sets of 64 px fields (19 and 20 proteins), the quick stages (all of them take minutes).
    "scale.py": ["--scales", "1/128,1/64", "--size", "64", "--workers", "1", "--stages", "scan,segment,embed-fovs"],
}


def test_every_bench_has_a_toy_run():
    assert {p.name for p in BENCH.glob("*.py") if not p.name.startswith("_")} == set(TOY)


@pytest.mark.parametrize("name, args, says", [
    ("probe.py", ["--epochs", "0"], "--epochs: expected an integer >= 1"),
    ("probe.py", ["--task", "nosuch", "--epochs", "1"], "unknown task 'nosuch'"),
    ("extract.py", ["--repeats", "0"], "--repeats: expected an integer >= 1"),
    ("extract.py", ["--workers", "x"], "--workers: expected an integer >= 0"),
    ("extract.py", ["--model", "nosuch"], "unknown backbone 'nosuch'"),
    ("scale.py", ["--scales", "1/16,1/0"], "demo scale: expected a fraction like 1/16 or 0.25, got '1/0'"),
    ("scale.py", ["--scales", "1/128", "--size", "64", "--stages", "scan,nosuch"], "--stages: unknown nosuch"),
])
def test_bad_bench_arguments_are_one_error_line_and_exit_2(name, args, says, tmp_path):
    done = subprocess.run([sys.executable, str(BENCH / name), *args], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert says in done.stderr.strip().splitlines()[-1]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TOY))
def test_bench_runs_and_prints_its_ratio(name, tmp_path):
    done = subprocess.run([sys.executable, str(BENCH / name), *TOY[name]], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout.lower()
    assert "ratio" in out or " x " in out or "x (" in out, done.stdout
    assert f"bench/{name}" in done.stdout, done.stdout  # the command that reproduces it
