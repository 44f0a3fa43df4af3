"""How does each stage's cost grow with the data? The whole pipeline on OpenCell-sized synthetic sets.

For each fraction F of OpenCell's real size (default 1/16, 1/8, 1/4; ``--full`` adds 1 = 1,310
proteins, ~6,550 FOVs of 2 x 600 x 600 uint16, ~150k cells, ~9 GB), writes a synthetic set in the
OpenCell layout (``ocbench data demo --scale F``) into a temporary folder, runs every stage of the
pipeline on it as its own ``python -m ocbench`` command, and deletes the folder. Per stage it prints
wall time, peak RSS (the largest of the stage's process and the workers it waited for, from
``wait4``: per process, where the extractions run as torchrun ranks), bytes it left on disk and
items/s; then, over the scales, the growth exponent b of ``time ~ N^b`` (least squares on log-log,
N = FOVs) and the command that reproduces the stage. b near 1 is linear; the k-NN's matmul grows as
~2 (``bench/knn.py`` bounds it against the bare matmul).

The extractions run as ``--ranks`` torchrun processes of one thread each (default: one per core), as
a user with a CPU-only machine would run them: a small model's many small operations leave a
second thread of one process mostly idle.

Stages: generate (the synthetic set itself), scan (open the dataset, build its manifest: ``data
info``), segment (classical backend: ``data cells``), embed-fovs and embed-cells (a small model,
``--backbone``), probes (fov-linear and fov-mlp at the protocol's settings: 5 folds + test, on the
cached embeddings), sc-knn, intervals (every entry's kept per-item predictions loaded and its
protein-bootstrap interval computed), board (``leaderboard build`` over every entry).

Run it on an otherwise idle machine: the stages are timed, so a busy machine shows in b.

    python bench/scale.py                          # F = 1/16, 1/8, 1/4 (17-33 min on 2 cores)
    python bench/scale.py --full                   # adds F = 1 (hours; ~9 GB of temporary data)
    python bench/scale.py --scales 1/256,1/128     # a quick check that every stage runs
    python bench/scale.py --json scale.json        # the figures as JSON too
    python bench/scale.py --stages generate,scan,segment,embed-fovs   # some stages only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from _args import positive_int, positive_or_zero, run  # bench/_args.py: argument types and one-line errors

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SCALES = "1/16,1/8,1/4"
STAGES = ("generate", "scan", "segment", "embed-fovs", "embed-cells", "probes", "sc-knn", "intervals", "board")


@dataclass
class StageResult:
    stage: str
    scale: str
    n_fovs: int
    items: int
    item_unit: str
    wall_s: float
    cpu_s: float
    peak_rss_mib: float
    disk_mib: float
    command: str
    extra: dict = field(default_factory=dict)

    @property
    def items_per_s(self) -> float:
        return self.items / self.wall_s if self.wall_s > 0 else float("nan")


def _tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def _run_stage(argv: list[str], workdir: Path, log: Path, env: dict) -> tuple[float, float, float, str]:
    """Run one stage as a child process: (wall seconds, CPU seconds, peak RSS MiB of that child, its stdout).

    CPU seconds (user + system of the child and the workers it waited for) change far less than wall
    time when other work shares the cores, so b is fitted on both."""
    with open(log, "a", encoding="utf-8") as err:
        err.write(f"\n$ {shlex.join(argv)}\n")
        err.flush()
        start = time.perf_counter()
        child = subprocess.Popen(argv, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        out = child.stdout.read()
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-8:]
        raise SystemExit(f"stage failed (exit {child.returncode}): {shlex.join(argv)}\n" + "\n".join(tail))
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0, out  # ru_maxrss is in KiB on Linux


def run_scale(scale: str, args, tmp_parent: Path | None, on_result=lambda result: None) -> list[StageResult]:
    from ocbench.data.demo import parse_fraction, scaled_config

    config = scaled_config(parse_fraction(scale), seed=args.seed, size=args.size)
    n_fovs = config.n_fovs
    work = Path(tempfile.mkdtemp(prefix="ocbench-scale-", dir=tmp_parent))
    data, cache, entries, board = work / "data", work / "cache", work / "entries", work / "board"
    log = work / "stages.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    oc = [sys.executable, "-m", "ocbench", "--cache-dir", str(cache)]
    # The extractions as torchrun ranks, one thread each, each taking every N-th shard (see the docstring)
    oc_ranks = oc if args.ranks <= 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                           f"--nproc-per-node={args.ranks}", "-m"] + oc[2:]
    ds = ["--dataset", str(data)]
    bb = ["--backbone", args.backbone]
    ent = ["--output", str(entries)]
    stages: list[tuple[str, list[str], str]] = [
        ("generate", oc + ["data", "demo", "--root", str(data), "--scale", scale, "--seed", str(args.seed),
                           "--size", str(args.size), "--workers", str(args.workers)], "fovs"),
        ("scan", oc + ["data", "info"] + ds, "fovs"),
        ("segment", oc + ["data", "cells"] + ds + ["--backend", "classical", "--contact-sheet", str(work / "cells.png")], "fovs"),
        ("embed-fovs", oc_ranks + ["embed"] + bb + ds, "fovs"),
        ("embed-cells", oc_ranks + ["embed", "--cells"] + bb + ds, "cells"),
        ("probes", oc + ["run"] + bb + ds + ["--task", "fov-linear,fov-mlp", "--split", "paper"] + ent, "fovs"),
        ("sc-knn", oc + ["run"] + bb + ds + ["--task", "sc-knn", "--split", "paper"] + ent, "cells"),
        ("intervals", [sys.executable, str(Path(__file__).resolve()), "--intervals-of", str(entries)], "items"),
        ("board", oc + ["leaderboard", "build", str(entries), "--out", str(board)], "entries"),
    ]
    assert [name for name, _, _ in stages] == list(STAGES)
    results: list[StageResult] = []
    n_cells = 0
    print(f"\nF = {scale}: {config.proteins} proteins, {n_fovs} FOVs of {config.size} px (temporary folder {work})", flush=True)
    try:
        for name, argv, unit in stages:
            if args.stages and name not in args.stages and name != "generate":
                continue
            before = _tree_bytes(work)
            wall, cpu, rss, out = _run_stage(argv, work, log, env)
            written = _tree_bytes(work) - before
            if name == "embed-cells":
                match = re.search(r"(\d+) x \d+ embeddings", out)
                n_cells = int(match.group(1)) if match else 0
            n_items = int(re.search(r"(\d+) items", out).group(1)) if name == "intervals" else 0
            items = {"fovs": n_fovs, "cells": n_cells, "entries": len(list(entries.glob("*.json"))), "items": n_items}[unit]
            shown = [a if a != str(Path(__file__).resolve()) else "bench/scale.py" for a in argv if a != sys.executable]
            command = "python " + shlex.join(shown)
            result = StageResult(name, scale, n_fovs, items, unit, wall, cpu, rss, written / 2**20, command)
            results.append(result)
            on_result(result)
            print(
                f"  {name:<12} {wall:8.1f} s  CPU {cpu:8.1f} s  peak RSS {rss:7.0f} MiB  disk {result.disk_mib:8.1f} MiB  "
                f"{result.items_per_s:9.1f} {unit}/s",
                flush=True,
            )
    finally:
        if args.keep:
            print(f"  kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return results


def intervals_of(entries: Path) -> int:
    """The intervals stage: load every entry's kept per-item predictions and compute its
    protein-bootstrap interval again (the work ``compare`` and the board's intervals do per entry)."""
    from ocbench.benchmark.entry import load_entry
    from ocbench.predictions import load_kept_predictions
    from ocbench.stats import bootstrap_interval

    n_items = 0
    for path in sorted(entries.glob("*.json")):
        entry = load_entry(path)
        predictions, why = load_kept_predictions(entry, path)
        if predictions is None:
            print(f"{path.name}: no predictions ({why})")
            continue
        y_pred = predictions.y_pred[0]  # (repeats, items, classes) at the first axis point
        interval = bootstrap_interval(predictions.y_true, y_pred, predictions.groups, group_name=predictions.group_name)
        n_items += len(predictions.item_ids)
        print(f"{path.name}: {interval.estimate:.3f} [{interval.low:.3f}, {interval.high:.3f}] over {len(predictions.item_ids)} items")
    print(f"{n_items} items")
    return 0


def growth_exponent(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of log(time) against log(N)."""
    xs = [math.log(n) for n, _ in points]
    ys = [math.log(max(t, 1e-9)) for _, t in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx > 0 else float("nan")


def summarise(results: list[StageResult]) -> dict[str, dict]:
    """Per stage: b fitted on wall and on CPU seconds over the scales measured, the wall-time ratio
    of the largest to the smallest scale, and the command of the largest."""
    summary = {}
    for stage in dict.fromkeys(r.stage for r in results):
        rows = [r for r in results if r.stage == stage]
        several = len({r.n_fovs for r in rows}) > 1
        summary[stage] = {
            "b": growth_exponent([(r.n_fovs, r.wall_s) for r in rows]) if several else float("nan"),
            "b_cpu": growth_exponent([(r.n_fovs, r.cpu_s) for r in rows]) if several else float("nan"),
            "time_ratio": rows[-1].wall_s / rows[0].wall_s if rows[0].wall_s > 0 else float("nan"),
            "command": rows[-1].command,
        }
    return summary


def earlier_results(paths: list[Path], backbone: str, size: int) -> list[StageResult]:
    """The stages of earlier runs' ``--json`` files (same backbone and FOV size), so that a long
    F = 1 run can be fitted together with smaller scales measured before on the same machine."""
    from ocbench.errors import ConfigError

    names = set(StageResult.__dataclass_fields__)
    results = []
    for path in paths:
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            rows = [StageResult(**{k: v for k, v in row.items() if k in names}) for row in payload["stages"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"--fit-with {path}: not a bench/scale.py --json file ({exc}); give the file "
                              "a previous run wrote") from None
        if (payload.get("backbone"), payload.get("size")) != (backbone, size):
            raise ConfigError(f"--fit-with {path}: measured with backbone {payload.get('backbone')} at "
                              f"{payload.get('size')} px, this run uses {backbone} at {size} px; fit like with like")
        results.extend(rows)
    return results


def print_table(results: list[StageResult]) -> None:
    """Every stage's b, wall time per scale and peak RSS; rows of several runs sorted by size."""
    results = sorted(results, key=lambda r: r.n_fovs)  # stable: each stage keeps its order within a scale
    scales = list(dict.fromkeys(r.scale for r in results))
    n_first, n_last = results[0].n_fovs, results[-1].n_fovs
    if n_last == n_first:
        print("\none scale measured: the growth exponent b needs two (more --scales, or --fit-with an earlier "
              "run's --json file)")
    else:
        print(f"\nb: growth exponent, time ~ N^b (N = FOVs), fitted on wall and on CPU seconds; "
              f"ratio: largest / smallest scale's wall time, for {n_last / n_first:.2f}x the FOVs")
    if n_first < n_last < 2 * n_first:
        print("note: the scales are less than 2x apart in FOVs (the smallest sets have at least 19 proteins), "
              "so b is mostly timing noise: a check that the stages run, not a measurement")
    print("stage         b wall  b CPU      ratio  " + "  ".join(f"{'F=' + s:>12}" for s in scales) + "  max RSS MiB")
    for stage, info in summarise(results).items():
        rows = [r for r in results if r.stage == stage]
        cells = "  ".join(next((f"{r.wall_s:10.1f} s" for r in rows if r.scale == s), f"{'-':>12}") for s in scales)
        print(f"{stage:<13} {info['b']:6.2f} {info['b_cpu']:6.2f}  {info['time_ratio']:8.2f}x  {cells}  "
              f"{max(r.peak_rss_mib for r in rows):11.0f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default=DEFAULT_SCALES, help=f"comma-separated fractions of OpenCell (default {DEFAULT_SCALES})")
    parser.add_argument("--full", action="store_true", help="add F = 1 (OpenCell's real size)")
    parser.add_argument("--backbone", default="classical-stats", help="a small model (default classical-stats; tiny-vit-random works too)")
    parser.add_argument("--seed", type=positive_or_zero, default=0, help="seed of the synthetic sets")
    parser.add_argument("--size", type=positive_int, default=600,
                        help="FOV size in px (default 600, OpenCell's; smaller shrinks the cells too: a quick check only)")
    parser.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1,
                        help="processes that write the synthetic set (default: all cores; the files are the same)")
    parser.add_argument("--ranks", type=positive_int, default=os.cpu_count() or 1,
                        help="processes (torchrun ranks, one thread each) that extract the embeddings (default: "
                             "all cores; 1: one process with every core's threads)")
    parser.add_argument("--tmp", type=Path, default=None, help="where the temporary sets go (default: the system's temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep each scale's folder (data, cache, entries, log)")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    parser.add_argument("--stages", type=lambda text: [s.strip() for s in text.split(",") if s.strip()], default=None,
                        help="comma-separated stages to time (default: all); a later stage does what a skipped "
                             "earlier one would have (run extracts if embed did not), so its time includes that")
    parser.add_argument("--fit-with", type=Path, action="append", default=[], metavar="JSON",
                        help="fit b together with the stages of an earlier run's --json file (same machine, "
                             "backbone and --size), e.g. an F = 1 run with smaller scales measured before; repeatable")
    parser.add_argument("--intervals-of", type=Path, default=None, help=argparse.SUPPRESS)  # one stage, run as a child
    args = parser.parse_args()
    if args.intervals_of is not None:
        return intervals_of(args.intervals_of)

    from ocbench.data.demo import parse_fraction

    scales = [s.strip() for s in args.scales.split(",") if s.strip()]
    if args.full and "1" not in scales:
        scales.append("1")
    scales.sort(key=parse_fraction)  # also checks every fraction before anything is written
    earlier = earlier_results(args.fit_with, args.backbone, args.size)  # a bad file fails before hours of work
    unknown = sorted(set(args.stages or ()) - set(STAGES))
    if unknown:
        from ocbench.errors import ConfigError

        raise ConfigError(f"--stages: unknown {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    print(f"backbone: {args.backbone}; scales: {', '.join(scales)}; extraction in {args.ranks} "
          f"{'process' if args.ranks == 1 else 'torchrun ranks'}")

    started = time.perf_counter()
    results: list[StageResult] = []

    def save(result: StageResult | None = None) -> None:
        # written after every stage, so a long run that is stopped keeps what it measured
        if result is not None:
            results.append(result)
        if args.json:
            payload = {"scales": scales, "backbone": args.backbone, "size": args.size,
                       "stages": [asdict(r) | {"items_per_s": r.items_per_s} for r in results],
                       "summary": summarise(sorted(earlier + results, key=lambda r: r.n_fovs)),
                       "fitted_with": [str(p) for p in args.fit_with]}
            tmp = args.json.with_name(args.json.name + ".tmp")
            tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
            tmp.replace(args.json)

    for scale in scales:
        run_scale(scale, args, args.tmp, on_result=save)

    print_table(earlier + results)
    summary = summarise(results)
    print("\nreproduce a stage (largest scale; the paths are the deleted temporary folder's):")
    for stage, info in summary.items():
        print(f"  {stage}: {info['command']}")
    print(f"\ntotal {time.perf_counter() - started:.0f} s; reproduce the table: "
          f"python bench/scale.py --scales {','.join(scales)} --backbone {args.backbone} --size {args.size} --ranks {args.ranks}"
          + (f" --stages {','.join(args.stages)}" if args.stages else ""))
    save()
    return 0


if __name__ == "__main__":
    run(main)
