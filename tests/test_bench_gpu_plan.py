"""bench/gpu_plan.py: its FLOP counts agree with the closed-form ViT count, and its plan has 1- and 8-GPU rows.

Only the counts are checked (they do not depend on load); the measured rates and times are not."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def vit_flops(dim: int, depth: int, patch: int, size: int, in_chans: int) -> float:
    """Closed form, written out here on purpose (not bench/finetune.py's): per block the linear layers
    (qkv 3d^2, proj d^2, MLP 8d^2 = 12 d^2 multiply-adds per token) and attention (QK^T and AV, 2 N^2 d
    multiply-adds), 2 FLOPs per multiply-add; plus the patch embedding. N = (size / patch)^2 + 1 (CLS)."""
    n = (size // patch) ** 2 + 1
    per_block = 2 * n * 12 * dim * dim + 2 * 2 * n * n * dim
    return depth * per_block + 2 * in_chans * patch * patch * dim * (n - 1)


@pytest.fixture(scope="module")
def quick_plan(tmp_path_factory):
    done = subprocess.run([sys.executable, str(BENCH / "gpu_plan.py"), "--quick", "--gpu-types", "H100"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path_factory.mktemp("plan"))
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.parametrize("backbone, dim, depth, patch, size, in_chans, views", [
    ("imagenet-dino-vitb8 [map]", 768, 12, 8, 600, 3, 1),  # Table 1's heaviest, on a 600 px FOV
    ("opencell-dino-vits8 [map]", 384, 12, 8, 600, 2, 1),
    ("imagenet-dino-vitb8 [replicate]", 768, 12, 8, 600, 3, 2),  # one model call per channel
    ("hpa-sc-vitb16 [map]", 768, 12, 16, 512, 4, 1),  # Table 4, on a 512 px cell crop
])
def test_counted_flops_match_the_closed_form(quick_plan, backbone, dim, depth, patch, size, in_chans, views):
    shape = f"{in_chans}x{size}x{size}"
    row = next(line for line in quick_plan.splitlines() if backbone in line and f" {shape} " in line)
    gflop = float(row.split(f" {shape} ")[1].split()[1])  # after the input shape: views, GFLOP/item
    expected = views * vit_flops(dim, depth, patch, size, in_chans) / 1e9
    # FlopCounterMode also counts what the closed form leaves out (nothing large: no norms or GELU are matmuls)
    assert gflop == pytest.approx(expected, rel=0.02), row


def test_the_plan_has_rows_for_one_and_eight_gpus_and_says_what_is_assumed(quick_plan):
    plan = [line.split() for line in quick_plan.splitlines() if re.match(r"\s+Table [14] +(extract|probe|k-NN) ", line)]
    configs = {tuple(cells[3:5]) for cells in plan}
    assert {("H100", "x1"), ("H100", "x8")} <= configs, quick_plan
    stages = {(cells[1], cells[2]) for cells in plan}
    assert stages == {("1", "extract"), ("1", "probe"), ("4", "extract"), ("4", "k-NN")}, stages
    assert "ASSUMPTIONS (not measured): MFU 0.4" in quick_plan
    assert "MB/s" in quick_plan and "FOVs/s per core" in quick_plan
    assert "reproduce: python bench/gpu_plan.py --quick" in quick_plan


@pytest.mark.parametrize("args, says", [
    (["--mfu", "1.5"], "--mfu: expected a number in (0, 1]"),
    (["--gpus", "1,0"], "--gpus: expected an integer >= 1"),
    (["--gpu-types", "A100"], "--gpu-types: unknown A100"),
])
def test_bad_arguments_are_one_error_line_and_exit_2(args, says, tmp_path):
    done = subprocess.run([sys.executable, str(BENCH / "gpu_plan.py"), *args], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert says in done.stderr.strip().splitlines()[-1]
