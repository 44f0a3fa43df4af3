"""What would the paper's grids cost on one and on eight GPUs? A plan from FLOP counts and rates measured here.

For the paper's Table 1 (FOV backbones x channel strategies, each followed by the FOV probes) and
Table 4 (single-cell k-NN backbones), both read from ``ocbench.reported``, it prints per stage and
per GPU configuration (H100 / H200, 1 and 8 GPUs, and this CPU for reference):

- extraction: FLOPs per image counted by torch's ``FlopCounterMode`` on each card's random-init
  architecture (meta device: nothing is computed) at the input ocbench's own preprocessing gives
  it (OpenCell's 600 px FOVs, the sc-knn task's 512 px cell crops), times the images; against
  the input pipeline: TIFF decode (``ocbench.data.opencell.read_fov``) and, for cells, the crop
  cut (``ocbench.data.cells.crop_cell``), both measured here per core, times the decode cores;
- probe: the matmul FLOPs of training (``bench/probe.py``'s counting), against the latency of
  its many small optimizer steps (an assumed time per step on a GPU);
- k-NN: the leave-one-out similarity matmul, 2 N^2 d FLOPs per pass (fp32, TF32 off), 2 passes per
  run (the vote and its shuffled-label chance reference).

Compute-bound time = FLOPs / (GPUs x peak x efficiency); the peaks are NVIDIA's datasheet figures,
the efficiencies (MFU) are assumptions given on the command line. Under ``torchrun`` each rank
embeds its share of the images, but every rank runs the task itself (``ocbench.benchmark.
distributed``): probe and k-NN do not get faster with more GPUs, and the plan says so.

Measured here in the same run (TIFFs written to a temporary folder, so decode reads come from the
page cache, not a cold disk): decode MB/s and FOVs/s per core, crops/s per core, this CPU's float32
matmul rate. On a shared machine these figures are low and noisy; on a lent GPU machine,
``bash bench/device_checks.sh`` prints its measured figures (images/s, MFU, probe and k-NN wall
time) before this plan, to be read against it.

    python bench/gpu_plan.py                  # 2 s timing windows: about 20 s of CPU
    python bench/gpu_plan.py --quick          # 0.3 s windows: about 10 s of CPU, most of it counting FLOPs
    python bench/gpu_plan.py --mfu 0.3 --cores-per-gpu 8 --json plan.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from _args import fraction, positive_float, positive_int, run  # bench/_args.py: argument types and one-line errors
from extract import _PEAK_TFLOPS  # NVIDIA datasheet peaks (dense), one table for every bench script
from probe import forward_flops, layer_dims, matmul_rate, synthetic_problem, training_flops

#: The paper's single-cell crops after filtering (the seed paper: about 158,762 Cellpose masks -> 157,504 crops).
PAPER_N_CELLS = 157_504
GPU_TYPES = ("H100", "H200")


@dataclass(frozen=True)
class Model:
    """One (backbone, channel strategy) of a grid, with its counted FLOPs per item (all views)."""

    backbone: str
    strategy: str
    arch: str
    input_shape: tuple[int, ...]
    views: int
    feature_dim: int  # per view
    flops: float  # per item, all views

    @property
    def label(self) -> str:
        return f"{self.backbone} [{self.strategy}]"


@dataclass
class Stage:
    grid: str
    stage: str
    config: str
    work: str
    flops: float
    compute_s: float
    other_s: float | None
    other_label: str
    #: per model of the grid (compute s, other s): each extraction is bounded on its own
    parts: tuple[tuple[float, float], ...] = ()

    @property
    def estimate_s(self) -> float:
        if self.parts:
            return sum(max(c, o) for c, o in self.parts)
        return max(self.compute_s, self.other_s or 0.0)

    @property
    def bound(self) -> str:
        if self.parts:
            other = sum(o > c for c, o in self.parts)
            if 0 < other < len(self.parts):
                return f"mixed: {self.other_label} for {other} of {len(self.parts)} models"
            return self.other_label if other else "compute"
        return "compute" if self.other_s is None or self.compute_s >= self.other_s else self.other_label


def count_model(backbone: str, strategy: str, setting: str, side: int, counted: dict) -> Model:
    """FLOPs of one item through the card's features module, counted on the meta device (a multiply-add is 2).

    ``counted`` caches the count per (architecture, input shape): every view of an item has the same shape."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ocbench.backbones.adapters import parse_channels
    from ocbench.backbones.cards import get_card
    from ocbench.backbones.preprocess import model_inputs
    from ocbench.backbones.vit import build_features

    card = get_card(backbone)
    adapter = parse_channels("replicate" if strategy == "replicate" else None, card)
    # ocbench's own preprocessing decides the model input (resize policy, channel adapter, views)
    views = model_inputs(torch.zeros(1, len(adapter.channels), side, side, dtype=torch.uint16), card, adapter)
    shape = tuple(views[0].shape[1:])
    key = (card.arch, json.dumps(card.arch_kwargs, sort_keys=True), shape)
    if key not in counted:
        with torch.device("meta"):
            features, _ = build_features(card)
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            features(views[0].to("meta"))
        counted[key] = float(counter.get_total_flops())
    label = strategy if setting != "fine-tuned" else f"{strategy}, fine-tuned"
    return Model(backbone, label, card.arch, shape, len(views), card.feature_dim, counted[key] * len(views))


def grid_rows(table: str) -> list[tuple[str, str, str]]:
    """(backbone, strategy, setting) of every row the paper reports in ``table`` (one extraction each)."""
    from ocbench.reported import REPORTED

    return [(r.backbone, r.strategy, r.setting) for r in REPORTED
            if r.source.split(";")[0].split(" (")[0].strip() == table]


def write_tiffs(folder: Path, n: int, side: int, seed: int, compression: str) -> list[Path]:
    """``n`` OpenCell-shaped proj TIFFs (2 x side x side uint16, CYX), written as ``ocbench data demo`` writes them
    (uncompressed), or ``compression="zlib"``. Pixels: a smooth background plus noise (compressible like a FOV)."""
    import tifffile

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side]
    paths = []
    for i in range(n):
        background = 400 + 300 * np.sin(xx / 37.0 + i) * np.cos(yy / 53.0)
        image = (background[None] + rng.poisson(40, size=(2, side, side))).astype(np.uint16)
        path = folder / f"OC-FOV_G{i}_ENSG{i:011d}_CID000000_FID{i:08d}_proj.tif"
        tifffile.imwrite(path, image, photometric="minisblack", metadata={"axes": "CYX"},
                         resolution=(50_000.0, 50_000.0), resolutionunit="CENTIMETER",
                         compression=None if compression == "none" else compression)
        paths.append(path)
    return paths


def per_item_rate(steps: list, seconds: float) -> float:
    """Items/s of one core: each ``steps[i]()`` (one item) timed repeatedly for ``seconds`` in all, its
    fastest time kept (other load on the machine only ever adds time), the median over the items."""
    for step in steps:  # warm-up
        step()
    best = [math.inf] * len(steps)
    deadline = time.perf_counter() + seconds
    while True:
        for i, step in enumerate(steps):
            started = time.perf_counter()
            step()
            best[i] = min(best[i], time.perf_counter() - started)
        if time.perf_counter() >= deadline:
            return 1 / statistics.median(best)


def measure_inputs(tiffs: int, side: int, crop_settings, seconds: float, seed: int, compression: str) -> dict:
    """Per-core decode and crop rates (one process, one thread)."""
    from ocbench.data.cells import crop_cell
    from ocbench.data.opencell import read_fov

    with tempfile.TemporaryDirectory(prefix="ocbench-gpuplan-") as tmp:
        paths = write_tiffs(Path(tmp), tiffs, side, seed, compression)
        file_bytes = statistics.mean(p.stat().st_size for p in paths)
        fovs_per_s = per_item_rate([lambda p=p: read_fov(p) for p in paths], seconds)
        image = read_fov(paths[0])
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0.2 * side, 0.8 * side, size=(8, 2))
    mask = np.zeros((side, side), dtype=bool)  # any mask: the crop's cost does not depend on its shape
    mask[side // 4 : 3 * side // 4, side // 4 : 3 * side // 4] = True
    crops_per_s = per_item_rate([lambda c=c: crop_cell(image, c, crop_settings, mask) for c in centres], seconds)
    return {"tiffs": tiffs, "compression": compression, "file_mb": file_bytes / 1e6,
            "decode_fovs_per_s_per_core": fovs_per_s, "decode_mb_per_s_per_core": fovs_per_s * file_bytes / 1e6,
            "crops_per_s_per_core": crops_per_s}


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds:.2g} s"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", default="1,8", help="GPU counts to plan for (comma list)")
    parser.add_argument("--gpu-types", default=",".join(GPU_TYPES), help="which of H100, H200 (SXM) to plan for")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"], help="extraction precision on the GPU")
    parser.add_argument("--mfu", type=fraction, default=0.4,
                        help="ASSUMED model-FLOP utilisation of ViT inference on the GPU (default 0.4)")
    parser.add_argument("--gemm-efficiency", type=fraction, default=0.7,
                        help="ASSUMED share of the fp32 peak the k-NN and probe matmuls reach on the GPU (default 0.7)")
    parser.add_argument("--step-ms", type=positive_float, default=1.0,
                        help="ASSUMED latency of one probe optimizer step on a GPU, ms (small matmuls: launches, not FLOPs)")
    parser.add_argument("--cores-per-gpu", type=positive_int, default=16,
                        help="CPU cores decoding TIFFs per GPU (default 16, as on a one-GPU lent machine)")
    parser.add_argument("--fovs", type=positive_int, default=None, help="FOVs to embed (default: the paper's labelled 6,120)")
    parser.add_argument("--cells", type=positive_int, default=PAPER_N_CELLS,
                        help="cell crops to embed and k-NN over (default: the paper's 157,504; the k-NN's evaluation "
                             "cells are a subset, so its figure is an upper bound)")
    parser.add_argument("--probes", default="fov-mlp,fov-linear", help="probes trained on each Table 1 extraction")
    parser.add_argument("--tiffs", type=positive_int, default=None, help="TIFFs decoded to measure (default 16; --quick 4)")
    parser.add_argument("--seconds", type=positive_float, default=None,
                        help="timing window per measured rate (default 2; --quick 0.3)")
    parser.add_argument("--compression", default="none", choices=["none", "zlib"],
                        help="how the measured TIFFs are written (none: as `ocbench data demo` writes them)")
    parser.add_argument("--quick", action="store_true", help="short timing windows: seconds, for a check")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the plan to this file")
    args = parser.parse_args(argv)

    try:
        gpu_counts = sorted({positive_int(t) for t in args.gpus.split(",")})
    except argparse.ArgumentTypeError as exc:
        parser.error(f"argument --gpus: {exc}")
    gpu_types = [t.strip().upper() for t in args.gpu_types.split(",") if t.strip()]
    unknown = [t for t in gpu_types if t not in GPU_TYPES]
    if unknown or not gpu_types:
        parser.error(f"argument --gpu-types: unknown {','.join(unknown) or '(none)'}; known: {', '.join(GPU_TYPES)}")
    tiffs = args.tiffs or (4 if args.quick else 16)
    seconds = args.seconds or (0.3 if args.quick else 2.0)

    import torch

    from ocbench.data.cards import get_dataset_card
    from ocbench.reported import PAPER_N_FOVS
    from ocbench.tasks import get_task

    n_fovs = args.fovs or PAPER_N_FOVS
    n_cells = args.cells
    dataset = get_dataset_card("opencell")
    knn_task, _ = get_task("sc-knn").with_overrides([])
    crop_side = knn_task.dataset_settings(dataset)["crop_size"]
    knn_task, _ = knn_task.with_overrides([f"crop_size={crop_side}"])
    crop = knn_task.crop_settings()
    probes = [get_task(p.strip()).with_overrides([])[0] for p in args.probes.split(",") if p.strip()]
    fov_side = 600  # OpenCell's proj FOVs: 2 x 600 x 600 uint16 (ocbench/data/opencell.py)

    # ---- FLOP counts (independent of load) ----
    counted: dict = {}
    table1 = [count_model(*row, fov_side, counted) for row in grid_rows("Table 1")]
    table4 = [count_model(*row, crop_side, counted) for row in grid_rows("Table 4")]

    # ---- measured here ----
    threads = torch.get_num_threads()
    inputs = measure_inputs(tiffs, fov_side, crop, seconds, args.seed, args.compression)
    cpu_rate = matmul_rate([(1024, 1024, 1024)], seconds=seconds)
    cells_per_fov = n_cells / n_fovs
    # per cell on one core: its share of its FOV's decode, and its own crop
    cell_s_per_core = 1 / (inputs["decode_fovs_per_s_per_core"] * cells_per_fov) + 1 / inputs["crops_per_s_per_core"]

    configs = [(f"{g} x{n}", g, n) for g in gpu_types for n in gpu_counts] + [("this CPU", None, 1)]
    cpu_cores = os.cpu_count() or 1

    def peak(gpu: str | None, precision: str) -> float:
        return cpu_rate if gpu is None else _PEAK_TFLOPS[gpu][precision] * 1e12

    stages: list[Stage] = []
    for label, gpu, n in configs:
        cores = cpu_cores if gpu is None else args.cores_per_gpu * n
        ext_rate = n * peak(gpu, args.precision) * (1.0 if gpu is None else args.mfu)
        gemm_rate = peak(gpu, "fp32") * (1.0 if gpu is None else args.gemm_efficiency)  # one rank's work: no x n
        # Table 1: one extraction per row, then every probe on it
        fov_s = n_fovs / (inputs["decode_fovs_per_s_per_core"] * cores)  # one extraction's decode
        parts = tuple((m.flops * n_fovs / ext_rate, fov_s) for m in table1)
        stages.append(Stage("Table 1", "extract", label, f"{len(table1)} x {n_fovs:,} FOVs",
                            sum(m.flops for m in table1) * n_fovs, sum(c for c, _ in parts), sum(o for _, o in parts),
                            "input", parts))
        probe_flops, probe_steps = 0.0, 0
        for m in table1:
            for task in probes:
                f, s = probe_cost(task, m.feature_dim * m.views, n_fovs, args.seed, stacked=gpu is not None)
                probe_flops += f
                probe_steps += s
        steps_s = probe_steps * args.step_ms / 1000 if gpu is not None else None
        stages.append(Stage("Table 1", "probe", label, f"{len(table1)} x {len(probes)} probes, {probe_steps:,} steps",
                            probe_flops, probe_flops / gemm_rate, steps_s, "steps"))
        # Table 4: one extraction of every cell per row, then the k-NN
        parts = tuple((m.flops * n_cells / ext_rate, n_cells * cell_s_per_core / cores) for m in table4)
        stages.append(Stage("Table 4", "extract", label, f"{len(table4)} x {n_cells:,} cells",
                            sum(m.flops for m in table4) * n_cells, sum(c for c, _ in parts), sum(o for _, o in parts),
                            "input", parts))
        passes = 2  # the vote and its shuffled-label chance reference (ScKnn.run with references=True)
        knn_flops = sum(passes * 2.0 * n_cells * n_cells * m.feature_dim * m.views for m in table4)
        stages.append(Stage("Table 4", "k-NN", label, f"{len(table4)} x {passes} passes, N = {n_cells:,}",
                            knn_flops, knn_flops / gemm_rate, None, "-"))

    # ---- report ----
    print(f"GPU plan for the paper's grids on OpenCell: {n_fovs:,} FOVs of 2 x {fov_side} x {fov_side} uint16, "
          f"{n_cells:,} cell crops of {crop_side} px ({cells_per_fov:.1f} per FOV)")
    print("ASSUMPTIONS (not measured): "
          f"MFU {args.mfu:g} for ViT inference in {args.precision}; fp32 GEMM efficiency {args.gemm_efficiency:g} "
          f"(k-NN with TF32 off, probe); {args.step_ms:g} ms per probe optimizer step on a GPU; "
          f"{args.cores_per_gpu} decode cores per GPU; peaks (NVIDIA SXM datasheets, dense): "
          + ", ".join(f"{g} {_PEAK_TFLOPS[g]['bf16']:g} TFLOP/s bf16, {_PEAK_TFLOPS[g]['fp32']:g} fp32" for g in gpu_types))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"MEASURED here ({cpu_cores} cores, load average {load:.1f}: on a shared machine these are noisy lower bounds):")
    print(f"  TIFF decode (ocbench.data.opencell.read_fov, {inputs['file_mb']:.2f} MB files, compression "
          f"{args.compression}, from the page cache, "
          f"each file's best time over {seconds:g} s, median over files): {inputs['decode_mb_per_s_per_core']:.0f} MB/s = "
          f"{inputs['decode_fovs_per_s_per_core']:.0f} FOVs/s per core")
    print(f"  cell crop (ocbench.data.cells.crop_cell, {crop.size} px, zoom {crop.zoom:g}, "
          f"{'masked' if crop.mask_outside else 'unmasked'}): {inputs['crops_per_s_per_core']:.0f} crops/s per core; "
          f"with its share of the decode {1 / cell_s_per_core:.0f} cells/s per core")
    print(f"  float32 matmul (torch.mm 1024^3, {threads} threads): {cpu_rate / 1e9:.1f} GFLOP/s")
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        kind = next((g for g in GPU_TYPES if g in name.upper()), None)
        rows = f"the '{kind} x1' rows" if kind else "no row (not an H100 or H200)"
        print(f"  this machine has {torch.cuda.device_count()} x {name}: bench/device_checks.sh's figures compare with {rows}")
    print()
    print("Model FLOPs per item (torch FlopCounterMode on the card's random-init architecture, meta device), "
          f"and what one GPU eats against what {args.cores_per_gpu} cores decode:")
    ref = gpu_types[0]
    gpu_rate = _PEAK_TFLOPS[ref][args.precision] * 1e12 * args.mfu
    print(f"  ({ref} items/s: its {args.precision} peak x MFU / FLOPs; file MB/s: the TIFF bytes it reads at that rate; "
          f"cores/GPU: decode cores that keep it fed; ratio: what {args.cores_per_gpu} cores decode / what it eats)")
    print(f"  {'grid':8s}{'backbone [strategy]':38s}{'arch':22s}{'input':>10s}{'views':>6s}{'GFLOP/item':>11s}"
          f"{f'{ref} items/s':>13s}{'file MB/s':>10s}{'decode items/s':>15s}{'cores/GPU':>10s}{'ratio':>7s}")
    for grid, models, per_core, mb_per_item in (
            ("Table 1", table1, inputs["decode_fovs_per_s_per_core"], inputs["file_mb"]),
            ("Table 4", table4, 1 / cell_s_per_core, inputs["file_mb"] / cells_per_fov)):
        for m in models:
            eats = gpu_rate / m.flops
            feeds = per_core * args.cores_per_gpu
            print(f"  {grid:8s}{m.label:38s}{m.arch:22s}{'x'.join(map(str, m.input_shape)):>10s}{m.views:6d}"
                  f"{m.flops / 1e9:11.2f}{eats:13.1f}{eats * mb_per_item:10.0f}{feeds:15.0f}{eats / per_core:10.1f}"
                  f"{feeds / eats:7.2f}")
    print()
    print("Plan: estimated wall time per stage = the larger of the compute bound and the input (decode) or "
          "step-latency bound, taken per model for extraction (compute and input columns: sums over the models)")
    print(f"  {'grid':8s}{'stage':9s}{'config':10s}{'work':40s}{'TFLOP':>12s}{'compute':>11s}{'input/steps':>13s}"
          f"{'estimate':>11s}  bound")
    for s in stages:
        print(f"  {s.grid:8s}{s.stage:9s}{s.config:10s}{s.work:40s}{s.flops / 1e12:12.1f}{_fmt_s(s.compute_s):>11s}"
              f"{_fmt_s(s.other_s):>13s}{_fmt_s(s.estimate_s):>11s}  {s.bound}")
    print("  totals per config: " + "; ".join(
        f"{label} {_fmt_s(sum(s.estimate_s for s in stages if s.config == label))}" for label, _, _ in configs))
    bench_steps = probe_cost(probes[0], table1[0].feature_dim, n_fovs, args.seed, stacked=True, references=False)[1]
    print("Notes: probe and k-NN run on every torchrun rank (ocbench.benchmark.distributed), so 8 GPUs do not shorten "
          f"them. bench/probe.py --device cuda trains {probes[0].name}'s CV folds only, stacked: {bench_steps:,} steps, "
          "so its wall time / that is the --step-ms to plan with. The k-NN runs over all the cells here; its evaluation "
          "cells (grade-3 FOVs) are fewer, so its row is an upper bound. This CPU's row uses the measured matmul rate "
          "as its peak (MFU 1) and trains probe folds one at a time. Not planned: training the opencell-dino backbones "
          "(DINO, bench/finetune.py), segmentation (Cellpose, once per "
          "dataset, cached), model loading, writing shards.")
    print("reproduce: python bench/gpu_plan.py " + " ".join(sys.argv[1:] if argv is None else argv))

    if args.json:
        from dataclasses import asdict

        from ocbench._io import atomic_write

        plan = {
            "assumptions": {"mfu": args.mfu, "precision": args.precision, "gemm_efficiency": args.gemm_efficiency,
                            "step_ms": args.step_ms, "cores_per_gpu": args.cores_per_gpu,
                            "peak_tflops": {g: _PEAK_TFLOPS[g] for g in gpu_types}},
            "measured": {**inputs, "cpu_matmul_flops": cpu_rate, "threads": threads, "load_average": load},
            "sizes": {"fovs": n_fovs, "cells": n_cells, "fov_side": fov_side, "crop_side": crop_side},
            "models": {"Table 1": [asdict(m) for m in table1], "Table 4": [asdict(m) for m in table4]},
            "stages": [{**asdict(s), "estimate_s": s.estimate_s, "bound": s.bound} for s in stages],
        }
        with atomic_write(args.json) as fh:
            json.dump(plan, fh, indent=2)
    return 0


def probe_cost(task, dim: int, n: int, seed: int, *, stacked: bool, references: bool = True) -> tuple[float, int]:
    """(matmul FLOPs, optimizer steps) of one probe run: the CV folds plus (``references``, as ``ocbench
    run`` trains them) the shuffled-label reference models, each trained ``epochs`` x ceil(n_train /
    batch) steps; on a GPU the CV folds train stacked (one step for all of them), on CPU one at a time."""
    _, _, test_idx, folds = synthetic_problem(n, 1, seed)  # bench/probe.py's split sizes
    dims = layer_dims(task, dim)
    n_train = [sum(len(f) for j, f in enumerate(folds) if j != k) for k in range(len(folds))]
    # the shuffled-label reference trains the first fold models once more
    extra = list(n_train[: task.shuffled_reference_models]) if references else []
    examples = sum(n_train + extra) * task.epochs
    evaluated = sum(len(f) + len(test_idx) for f in folds) + sum(len(folds[k]) + len(test_idx) for k in range(len(extra)))
    flops = training_flops(dims, examples, rule="exact") + forward_flops(dims, evaluated)
    per_model = [task.epochs * math.ceil(t / task.batch_size) for t in n_train + extra]
    steps = (max(per_model[: len(folds)]) + sum(per_model[len(folds):])) if stacked else sum(per_model)
    return flops, steps


if __name__ == "__main__":
    run(main)
