"""How much of the model's own speed survives the extraction pipeline?

End-to-end throughput (TIFF decode + intensity scaling + channel adapter + normalization + model
+ shard writing, through ``extract_embeddings(..., recompute=True)``) divided by the bare
``model(x)`` throughput on tensors already preprocessed and in memory, with the same batch size,
the same image count and the same input shapes (one model call per adapter view). Target: a ratio
>= 0.9 on CPU with a small ViT.

    .venv/bin/python bench/extract.py                          # ViT-S/16 layout, 64 FOVs of 256 px
    .venv/bin/python bench/extract.py --model tiny-vit-random  # the 2-block width-64 control
    .venv/bin/python bench/extract.py --workers 2 --fovs 128 --size 512
    .venv/bin/python bench/extract.py --model vit-base8 --size 600 --device cuda --precision bf16

``--size 600`` is OpenCell's real field (2-channel uint16 TIFFs written to disk, read back through
the real reader). Besides the ratio it prints the model's FLOP per image (counted by torch's
FlopCounterMode on one batch) and the achieved FLOP/s; with ``--peak-tflops`` (or on a GPU whose
peak it knows) also the model-FLOP utilization (MFU) of the bare model and end to end.

The fixed per-image cost (TIFF decode, percentile scaling, normalization) is the same for every
model, so the ratio depends on how heavy the model is: ViT-S/16 (~50 ms per 256 px image on 2 CPU
cores) is the smallest architecture among the seed backbones; for ``tiny-vit-random`` (~5 ms) the
decode and preprocessing cost about half as much as the model itself.

Timings: ``--repeats`` interleaved (bare, end-to-end) pairs; the headline ratio is the median of
the per-pair ratios, which is robust to other load on a shared machine.

It also prints what the changed-image-file check costs: reading and hashing each file (sha256)
besides decoding it, per image and as a share of the end-to-end time (target < 5%).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _args import positive_int, positive_or_zero, run  # bench/_args.py: argument types and one-line errors


#: Random-init stand-ins with the layout of real backbones (no download needed): name -> (timm arch, patch, dim).
_RANDOM_MODELS = {
    "vit-small": ("vit_small_patch16_224", 16, 384),  # the ImageNet DINO ViT-S/16 layout
    "vit-base8": ("vit_base_patch8_224", 8, 768),  # the HPA / ImageNet DINO ViT-B/8 layout (Table 1's heaviest)
}


def _register_random_model(model: str) -> str:
    """Register a card for one of ``_RANDOM_MODELS``: the tiny demo ViT's card with another architecture."""
    from ocbench.backbones.cards import get_card, list_cards, register_card

    arch, patch, dim = _RANDOM_MODELS[model]
    name = f"bench-{model}-random"
    if name not in {c.name for c in list_cards()}:
        tiny = get_card("tiny-vit-random")
        register_card(dataclasses.replace(
            tiny, name=name, arch=arch, arch_kwargs={}, patch_size=patch, feature_dim=dim,
            notes=f"benchmark only: {arch}, random init",
        ))
    return name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit-small",
                        help="'vit-small' (ViT-S/16 layout) or 'vit-base8' (ViT-B/8), both random init, or a card name, "
                             "e.g. tiny-vit-random")
    parser.add_argument("--channels", default=None, help="channel spec (default: the card's)")
    parser.add_argument("--fovs", type=positive_int, default=64, help="FOVs (rounded up to whole proteins of 4 FOVs)")
    parser.add_argument("--size", type=positive_int, default=256)
    parser.add_argument("--batch-size", type=positive_int, default=16)
    parser.add_argument("--workers", default="auto", type=lambda t: t if t == "auto" else str(positive_or_zero(t)),
                        help="DataLoader workers decoding TIFFs: a number, or auto (what `ocbench run` uses)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's peak dense TFLOP/s at the chosen precision, for MFU (default: known GPUs)")
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--threads", type=positive_int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precision", default="fp32", help="fp32 or bf16 (CUDA)")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from ocbench.backbones.adapters import parse_channels
    from ocbench.backbones.cards import get_card
    from ocbench.backbones.loader import load_backbone
    from ocbench.benchmark import embeddings as embeddings_module
    from ocbench.benchmark.embeddings import extract_embeddings
    from ocbench.data.demo import DemoConfig, write_demo
    from ocbench.data.opencell import OpenCellDataset

    if args.threads:
        torch.set_num_threads(args.threads)
    card_name = _register_random_model(args.model) if args.model in _RANDOM_MODELS else args.model
    backbone = load_backbone(get_card(card_name), device=args.device, precision=args.precision)
    workers = embeddings_module.default_workers(str(backbone.device)) if args.workers == "auto" else int(args.workers)
    adapter = parse_channels(args.channels, backbone.card)

    with tempfile.TemporaryDirectory(prefix="ocbench-bench-") as tmp:
        tmp = Path(tmp)
        fovs_per_protein = 4
        proteins = max(1, -(-args.fovs // fovs_per_protein))
        config = DemoConfig(proteins=proteins + 1, fovs_per_protein=fovs_per_protein, size=args.size,
                            unlabelled_proteins=1, name_joined_proteins=0)
        dataset = OpenCellDataset(write_demo(tmp / "demo", config))
        n = len(dataset)

        # Bare model: the exact inputs the model sees, preprocessed once and held in memory.
        images = torch.from_numpy(np.stack([dataset.read(i) for i in range(n)]))
        batches = [backbone.prepare(images[i : i + args.batch_size], adapter) for i in range(0, n, args.batch_size)]
        sync = torch.cuda.synchronize if backbone.device.type == "cuda" else (lambda: None)
        shapes = sorted({tuple(view.shape[1:]) for views in batches for view in views})

        def bare() -> float:
            started = time.perf_counter()
            with torch.inference_mode():
                for views in batches:
                    for view in views:
                        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=backbone.autocast_bf16):
                            backbone.model(view)
            sync()
            return n / (time.perf_counter() - started)

        def end_to_end() -> float:
            started = time.perf_counter()
            extract_embeddings(
                dataset, backbone, adapter, batch_size=args.batch_size, num_workers=workers,
                cache_dir=tmp / "cache", recompute=True, progress=False, precision=backbone.precision,
            )
            return n / (time.perf_counter() - started)

        def per_image_ms(step) -> float:
            started = time.perf_counter()
            step()
            return 1000 * (time.perf_counter() - started) / n

        flop_per_image = _model_flop(backbone, batches[0]) / len(batches[0][0])
        bare(), end_to_end()  # warm-up (allocator, thread pools, page cache)
        bare_runs, e2e_runs = [], []
        for _ in range(args.repeats):  # interleaved, so a burst of load from elsewhere hits both
            bare_runs.append(bare())
            e2e_runs.append(end_to_end())
        decode_ms = per_image_ms(lambda: [dataset.read(i) for i in range(n)])
        # The changed-file check: the file's bytes read and hashed besides the decode.
        checked_ms = per_image_ms(lambda: [embeddings_module._read_item(dataset, i, True) for i in range(n)])
        plain_ms = per_image_ms(lambda: [embeddings_module._read_item(dataset, i, False) for i in range(n)])
        prepare_ms = per_image_ms(
            lambda: [backbone.prepare(images[i : i + args.batch_size], adapter) for i in range(0, n, args.batch_size)]
        )

    print(f"backbone {card_name} ({backbone.card.arch}), adapter {adapter.key} ({adapter.n_views} view(s)), "
          f"model input {shapes}, {n} FOVs of {args.size} px, batch {args.batch_size}, workers {workers}, "
          f"torch threads {torch.get_num_threads()}, {args.repeats} runs")
    for label, runs in (("bare model(x)", bare_runs), ("end-to-end", e2e_runs)):
        print(f"{label + ':':15s} median {statistics.median(runs):7.1f} images/s, best {max(runs):7.1f}  "
              f"(runs: {', '.join(f'{v:.1f}' for v in runs)})")
    print(f"per image: decode {decode_ms:.2f} ms, preprocess {prepare_ms:.2f} ms, "
          f"model {1000 / max(bare_runs):.2f} ms (best run)")
    hash_ms = max(0.0, checked_ms - plain_ms)
    e2e_ms = 1000 / statistics.median(e2e_runs)
    print(f"changed-file check (read + sha256 per file): {hash_ms:.2f} ms per image = "
          f"{100 * hash_ms / e2e_ms:.1f}% of the end-to-end time per image ({e2e_ms:.2f} ms)  (target < 5%)")
    # Each end-to-end run follows its bare run, so a pair sees about the same outside load.
    paired = statistics.median(e / b for e, b in zip(e2e_runs, bare_runs))
    print(f"ratio end-to-end / bare: {paired:.3f} (median of paired runs), "
          f"{statistics.median(e2e_runs) / statistics.median(bare_runs):.3f} (of medians)  (target >= 0.9)")
    peak = args.peak_tflops or _known_peak_tflops(backbone)
    for label, runs in (("bare", bare_runs), ("end-to-end", e2e_runs)):
        achieved = flop_per_image * statistics.median(runs) / 1e12
        mfu = f", MFU {100 * achieved / peak:.1f}% of {peak:g} TFLOP/s" if peak else ""
        print(f"model FLOP: {flop_per_image / 1e9:.3g} GFLOP per image; {label}: {achieved:.3f} TFLOP/s{mfu}")
    print("reproduce: python bench/extract.py " + " ".join(sys.argv[1:] if argv is None else argv))
    return 0


def _model_flop(backbone, views) -> float:
    """FLOP of the model on one batch (all adapter views), counted by torch (a multiply-add is 2)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        for view in views:
            backbone.model(view)
    return float(counter.get_total_flops())


#: Dense peak TFLOP/s (no sparsity) by GPU name fragment and precision, from the vendors' data sheets:
#: NVIDIA H100 SXM and H200 SXM, BF16 Tensor Core 1,979 TFLOPS with 2:4 sparsity = 989 dense, FP32 67
#: (the PCIe/NVL cards are lower: pass --peak-tflops); A100 SXM, BF16 312 dense, FP32 19.5.
#: bench/gpu_plan.py plans with the same table.
_PEAK_TFLOPS = {"H200": {"bf16": 989.0, "fp32": 67.0}, "H100": {"bf16": 989.0, "fp32": 67.0},
                "A100": {"bf16": 312.0, "fp32": 19.5}}


def _known_peak_tflops(backbone) -> float | None:
    import torch

    if backbone.device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(backbone.device)
    for fragment, peaks in _PEAK_TFLOPS.items():
        if fragment in name:
            return peaks.get(backbone.precision)
    return None


if __name__ == "__main__":
    run(main)
