"""Does the DINO training loop run at the model's own speed? (input pipeline and trainer overhead)

Training images/s of ``train_dino`` (TIFF decode, intensity rule, multi-crop augmentation and
normalisation in DataLoader workers, schedules, per-parameter clipping, EMA, centring) divided by
the same model's bare step on crops already in memory: teacher forward on the 2 global crops,
student forward and backward on all crops, DINO loss, AdamW step. Same architecture, crops, batch
size and device, in the same run. Target: ratio >= 0.85 (the input pipeline is hidden).

    .venv/bin/python bench/finetune.py                                      # ViT-S/8, 224/96 px crops, 8 local
    .venv/bin/python bench/finetune.py --device cuda --precision bf16 --batch-size 64 --workers 8
    .venv/bin/python bench/finetune.py --global-crop 64 --local-crop 32 --local-crops 2 --batch-size 8  # small CPU run

It also prints model FLOPs per image (counted from the architecture: linear layers and attention
matmuls, forward x3 for the student's forward+backward) and, on CUDA, the model-FLOP utilisation
against ``--peak-tflops``; and what the paper setup (ViT-B/8, 100 epochs, ~5,500 FOVs) costs in
FLOPs and hours at the measured (or an assumed) FLOP rate.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from _args import positive_int, run  # bench/_args.py: argument types and one-line errors


def vit_forward_flops(dim: int, depth: int, patch: int, size: int, in_chans: int, mlp_ratio: float = 4.0) -> float:
    """FLOPs (2 per multiply-add) of one ViT forward on a ``size`` px square input, CLS token included."""
    tokens = (size // patch) ** 2 + 1
    per_token_linear = 2 * (3 * dim * dim + dim * dim + 2 * mlp_ratio * dim * dim)  # qkv, proj, MLP
    attention = 2 * 2 * tokens * tokens * dim  # QK^T and AV
    patch_embed = 2 * in_chans * patch * patch * dim * (tokens - 1)
    return depth * (tokens * per_token_linear + attention) + patch_embed


def dino_flops_per_image(dim, depth, patch, in_chans, global_crop, local_crop, local_crops, head_dims) -> float:
    """Student forward+backward (3x forward) on every crop, teacher forward on the 2 global crops, heads included."""
    head = 2 * sum(a * b for a, b in zip(head_dims[:-1], head_dims[1:]))
    g = vit_forward_flops(dim, depth, patch, global_crop, in_chans) + head
    loc = vit_forward_flops(dim, depth, patch, local_crop, in_chans) + head
    return 3 * (2 * g + local_crops * loc) + 2 * g


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vit_small_patch8_224")
    parser.add_argument("--global-crop", type=positive_int, default=224)
    parser.add_argument("--local-crop", type=positive_int, default=96)
    parser.add_argument("--local-crops", type=positive_int, default=8)
    parser.add_argument("--out-dim", type=positive_int, default=65536)
    parser.add_argument("--batch-size", type=positive_int, default=16)
    parser.add_argument("--steps", type=positive_int, default=4, help="timed optimizer steps (one epoch of steps x batch FOVs)")
    parser.add_argument("--fov-size", type=positive_int, default=256, help="synthetic FOV side in px (OpenCell: 600)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--threads", type=positive_int, default=None)
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="device peak for MFU (default: H100/H200 SXM dense, 989 in bf16, 67 in fp32)")
    parser.add_argument("--assumed-tflops", type=float, default=None,
                        help="FLOP rate for the paper-setup estimate (default: the measured one)")
    args = parser.parse_args(argv)

    import torch

    from ocbench.backbones.adapters import parse_channels
    from ocbench.backbones.vit import build_vit
    from ocbench.data.cards import open_dataset
    from ocbench.data.demo import DemoConfig, write_demo
    from ocbench.tasks.augment import CropDataset
    from ocbench.tasks.dino_ssl import DinoConfig, DinoLoss, MultiCropNet, build_head, param_groups, train_dino
    from ocbench.tasks.finetune import scratch_card

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    n = args.steps * args.batch_size
    cfg = DinoConfig(epochs=2, batch_size=args.batch_size, global_crop_size=args.global_crop, local_crop_size=args.local_crop,
                     local_crops=args.local_crops, out_dim=args.out_dim, warmup_epochs=1)
    with tempfile.TemporaryDirectory() as tmp:
        proteins = max(2, -(-n // 2))
        root = write_demo(Path(tmp) / "demo", DemoConfig(proteins=proteins + 2, fovs_per_protein=2, size=args.fov_size,
                                                         cell_radius=args.fov_size / 5))
        ds = open_dataset(str(root))
        card = scratch_card(args.arch, ds.card)
        adapter = parse_channels(None, card, ds.card.channel_names)
        data = CropDataset(ds, list(range(n)), card, adapter, cfg, seed=0)

        def vits():
            torch.manual_seed(0)
            s = build_vit(card, {"drop_path_rate": cfg.drop_path_rate})
            t = build_vit(card)
            t.load_state_dict(s.state_dict())
            return s, t

        # bare step: the same networks and loss on one batch of crops already on the device
        student_vit, teacher_vit = vits()
        dim = int(student_vit.num_features)
        student = MultiCropNet(student_vit, build_head(dim, cfg)).to(dev).train()
        teacher = MultiCropNet(teacher_vit, build_head(dim, cfg)).to(dev).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        loss_fn = DinoLoss(cfg.out_dim, cfg.n_crops).to(dev)
        opt = torch.optim.AdamW(param_groups(student), lr=1e-5)
        items = [data[(0, i)] for i in range(args.batch_size)]
        crops = [torch.stack([item[c] for item in items]).to(dev) for c in range(cfg.n_crops)]

        def bare_step():
            with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
                with torch.no_grad():
                    t_out = teacher(crops[:2])
                s_out = student(crops)
            loss = loss_fn(s_out, t_out, 0.04)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        def sync():
            if dev.type == "cuda":
                torch.cuda.synchronize()

        def bare_ips() -> float:
            sync()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                bare_step()
            sync()
            return n / (time.perf_counter() - t0)

        bare_step()  # warm-up
        before = bare_ips()
        student_vit, teacher_vit = vits()
        result = train_dino(cfg, student_vit, teacher_vit, data, device=dev, num_workers=args.workers, precision=args.precision)
        train_ips = result.history[-1]["images_per_s"]  # epoch 2: workers and caches warm
        after = bare_ips()  # timed before and after training: a shared machine's load drifts
        bare = (before + after) / 2

    depth = len(student_vit.blocks)
    patch = student_vit.patch_embed.patch_size[0]
    head_dims = [dim, cfg.head_hidden_dim, cfg.head_hidden_dim, cfg.head_bottleneck_dim, cfg.out_dim]
    flops = dino_flops_per_image(dim, depth, patch, card.in_chans, cfg.global_crop_size, cfg.local_crop_size,
                                 cfg.local_crops, head_dims)
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(f"model: {args.arch} (dim {dim}, depth {depth}, patch {patch}), crops 2x{cfg.global_crop_size} + "
          f"{cfg.local_crops}x{cfg.local_crop_size} px, batch {args.batch_size}, {args.steps} steps, device {dev}, "
          f"{args.precision}, workers {args.workers}, torch threads {torch.get_num_threads()}")
    print(f"bare model step:  {bare:8.2f} images/s (before training {before:.2f}, after {after:.2f})")
    print(f"training loop:    {train_ips:8.2f} images/s")
    print(f"ratio:            {train_ips / bare:8.3f}  (target >= 0.85)")
    achieved = flops * train_ips / 1e12
    print(f"model FLOPs/image: {flops / 1e9:.1f} GFLOP -> {achieved:.3f} TFLOP/s achieved")
    if dev.type == "cuda":
        peak = args.peak_tflops or {"bf16": 989.0, "fp32": 67.0}[args.precision]
        print(f"MFU: {achieved / peak:.1%} of {peak:g} TFLOP/s peak ({args.precision})")
    b8 = dino_flops_per_image(768, 12, 8, 4, 224, 96, 8, [768, 2048, 2048, 256, 65536])
    total = b8 * 5500 * 100
    rate = args.assumed_tflops or achieved
    print(f"paper setup (ViT-B/8, 224/96 px crops, 8 local, 100 epochs x 5,500 FOVs): {b8 / 1e12:.2f} TFLOP/image, "
          f"{total:.2e} FLOP in all -> {total / (rate * 1e12) / 3600:.1f} h at {rate:.3g} TFLOP/s")
    return 0


if __name__ == "__main__":
    run(main)
