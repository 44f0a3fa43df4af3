"""Is the blocked leave-one-out k-NN (``sc-knn``) memory-bounded and close to the matmul it needs?

Leave-one-out over ``--n`` random unit vectors of ``--dim`` dims (the paper's 157,504 single-cell
crops x 768, ViT-B) with random multi-labels (17 classes) and FOVs of ``--cells-per-fov`` cells.
Prints the k-NN's peak memory (targets: <= 2 GiB) and its time relative to the bare matmul of the
same product (every query chunk times all N rows, the same chunk size, nothing else) timed in the
same run (target: <= 1.5x).

Memory: on CPU the peak resident set size of the process while the k-NN runs, sampled every 2 ms
(features included); on CUDA ``torch.cuda.max_memory_allocated`` during the k-NN.

    python bench/knn.py                       # the paper's size (CPU: about N^2 * D * 2 flops, minutes on a GPU, long on 2 cores)
    python bench/knn.py --n 20000             # scaled down
    python bench/knn.py --n 20000 --exclude fov
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time

import numpy as np

from _args import positive_int, run  # bench/_args.py: argument types and one-line errors

GiB = 1 << 30


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """Peak resident set size while the block runs (a sampling thread; Linux)."""

    def __enter__(self):
        self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())


def synthetic(n: int, dim: int, cells_per_fov: int, seed: int):
    rng = np.random.default_rng(seed)
    features = np.empty((n, dim), np.float32)
    for a in range(0, n, 65536):  # in blocks: no float64 copy of the whole matrix
        block = rng.standard_normal((min(n, a + 65536) - a, dim), dtype=np.float32)
        features[a : a + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    labels = (rng.random((n, 17)) < np.linspace(0.02, 0.3, 17)).astype(np.uint8)
    labels[np.arange(n), rng.integers(0, 17, n)] = 1
    groups = np.arange(n) // cells_per_fov
    return features, labels, groups


def bare_matmul(features: np.ndarray, chunk_rows: int, device) -> float:
    """Seconds for every chunk's (chunk x D) @ (D x N) into one reused buffer, nothing else."""
    import torch

    x = torch.from_numpy(features).to(device)
    n = x.shape[0]
    buffer = torch.empty((chunk_rows, n), dtype=torch.float32, device=device)
    _sync(device)
    started = time.perf_counter()
    with torch.inference_mode():
        for a in range(0, n, chunk_rows):
            b = min(n, a + chunk_rows)
            torch.mm(x[a:b], x.T, out=buffer[: b - a])
    _sync(device)
    return time.perf_counter() - started


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=positive_int, default=157_504, help="cells (default: the paper's 157,504 crops)")
    parser.add_argument("--dim", type=positive_int, default=768, help="embedding size (ViT-B: 768)")
    parser.add_argument("--ks", default="1,5,10,20,50")
    parser.add_argument("--exclude", choices=("self", "fov"), default="self")
    parser.add_argument("--cells-per-fov", type=positive_int, default=26, help="157,504 crops / 6,120 FOVs ~ 26")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--memory-mb", type=positive_int, default=None, help="similarity block budget (default 256 CPU, 1024 GPU)")
    parser.add_argument("--threads", type=positive_int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    from ocbench.tasks.sc_knn import knn_chunk_rows, knn_predict

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device))
    ks = tuple(int(k) for k in args.ks.split(","))
    features, labels, groups = synthetic(args.n, args.dim, args.cells_per_fov, args.seed)
    budget = (args.memory_mb or (1024 if device.type == "cuda" else 256)) << 20
    chunk_rows = knn_chunk_rows(args.n, budget)

    # Warm up both paths (BLAS/cuBLAS initialisation, allocator) on a small problem.
    knn_predict(features[:2048], labels[:2048], ks=ks, groups=groups[:2048], exclude=args.exclude, device=str(device))
    bare_matmul(features[:2048], 256, device)

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base_gpu = torch.cuda.memory_allocated(device)
    rss_before = _rss()
    with PeakRss() as peak:
        started = time.perf_counter()
        out = knn_predict(features, labels, ks=ks, groups=groups, exclude=args.exclude, device=str(device),
                          chunk_rows=chunk_rows, keep_neighbours=False)
        _sync(device)
        knn_s = time.perf_counter() - started
    gpu_peak = torch.cuda.max_memory_allocated(device) - base_gpu if device.type == "cuda" else None
    matmul_s = bare_matmul(features, chunk_rows, device)
    flops = 2.0 * args.n * args.n * args.dim

    report = {
        "n": args.n,
        "dim": args.dim,
        "ks": list(ks),
        "exclude": args.exclude,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "chunk_rows": chunk_rows,
        "knn_s": round(knn_s, 3),
        "bare_matmul_s": round(matmul_s, 3),
        "ratio_to_matmul": round(knn_s / matmul_s, 3),
        "matmul_gflops": round(flops / matmul_s / 1e9, 1),
        "features_gib": round(features.nbytes / GiB, 3),
        "peak_rss_gib": round(peak.peak / GiB, 3),
        "rss_before_knn_gib": round(rss_before / GiB, 3),
        "knn_extra_rss_gib": round((peak.peak - rss_before) / GiB, 3),
        "gpu_peak_gib": round(gpu_peak / GiB, 3) if gpu_peak is not None else None,
        "predicted_positive_rate_k1": round(float(out.predictions[ks[0]].mean()), 4),
        "platform": platform.platform(),
        "torch": torch.__version__,
    }
    memory = report["gpu_peak_gib"] if device.type == "cuda" else report["peak_rss_gib"]
    report["targets"] = {"peak_memory_le_2gib": memory <= 2.0, "time_le_1.5x_matmul": report["ratio_to_matmul"] <= 1.5}
    print(json.dumps(report, indent=1))
    print(f"ratio k-NN / bare matmul: {report['ratio_to_matmul']:.3f} (target <= 1.5); peak memory {memory:.2f} GiB "
          f"(target <= 2)")
    print("reproduce: python bench/knn.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    run(main)
