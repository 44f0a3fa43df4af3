"""DINO self-distillation (Caron et al. 2021), as the seed paper continues it on OpenCell (section 2.5).

Pieces, each testable on its own:

- :class:`DinoConfig`: every training number, defaults from the paper's sections 2.5 and 3.1.2-3.1.4 (the DINO
  reference values where the paper's are not legible). The ``finetune`` task *is* this config
  plus its probe settings, so entries record all of it.
- :class:`DinoHead`: MLP (``head_layers`` linear layers, GELU) to a ``head_bottleneck_dim``
  bottleneck, L2 normalisation, then a weight-normalised linear layer to ``out_dim`` without bias
  whose per-row norm is fixed to 1 when ``norm_last_layer``.
- :class:`DinoLoss`: cross-entropy between the teacher's centred, sharpened softmax of each global
  crop and the student's softmax of every *other* crop, averaged over those pairs; the centre is
  an EMA of the teacher's batch mean (all processes' batches under DDP).
- :func:`cosine_schedule` / :func:`teacher_temperature_schedule`: per-step lr (linear warm-up
  then cosine), weight decay and teacher momentum (cosine), per-epoch teacher temperature
  (linear warm-up then constant).
- :func:`ema_update`, :func:`clip_gradients` (each parameter's gradient norm clipped on its own,
  as DINO does) and :func:`cancel_last_layer_gradients` (last layer frozen in the first epochs).
- :func:`train_dino`: the loop. Student = backbone (drop path) + head; teacher = an EMA copy
  without drop path. Checkpoints after every epoch, atomically, with everything needed to
  continue bit for bit: student, teacher, optimiser, centre, RNG states, epoch, the epoch's data
  order and the loss history, and a checksum of all of it that a resume verifies
  (:mod:`ocbench.tasks.dino_checkpoint`). Data order and augmentations are functions of (seed,
  epoch, item), never of worker or process state, which is what makes resume and multi-process
  runs reproducible.

Distributed runs (``torchrun``): the step's global batch of ``batch_size`` items is split over the
processes (item ``j`` of the epoch's order goes to process ``j % world``), gradients are averaged
by DistributedDataParallel and the centre by an all-reduce, so N processes compute the same
update as one process up to float rounding (drop path aside: its masks come from each process's
RNG). Only rank 0 writes checkpoints and the history.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ocbench.errors import ConfigError, DataError
from ocbench.tasks.dino_checkpoint import (  # checkpoint_checksum, load_checkpoint: still importable from here
    CHECKPOINT_FORMAT,
    checkpoint_checksum,
    checkpoint_payload,
    load_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)
from ocbench.tasks.dino_config import DinoConfig

__all__ = [
    "DinoConfig",
    "DinoHead",
    "DinoLoss",
    "MultiCropNet",
    "cosine_schedule",
    "teacher_temperature_schedule",
    "ema_update",
    "clip_gradients",
    "cancel_last_layer_gradients",
    "param_groups",
    "epoch_order",
    "item_seed",
    "TrainResult",
    "train_dino",
    "CHECKPOINT_FORMAT",
]

# ---------------------------------------------------------------------------------------------
# schedules (numpy, closed forms)


def cosine_schedule(base: float, final: float, epochs: int, steps_per_epoch: int,
                    warmup_epochs: int = 0, start_warmup: float = 0.0) -> np.ndarray:
    """One value per step: linear from ``start_warmup`` to ``base`` over the warm-up steps
    (``np.linspace``, both ends included), then ``final + (base - final) * (1 + cos(pi * i / n)) / 2``
    for the remaining ``n`` steps, ``i = 0 .. n-1``."""
    total = epochs * steps_per_epoch
    warm = min(warmup_epochs * steps_per_epoch, total)
    warmup = np.linspace(start_warmup, base, warm) if warm else np.zeros(0)
    rest = np.arange(total - warm)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * rest / max(len(rest), 1)))
    return np.concatenate([warmup, cosine]).astype(np.float64)


def teacher_temperature_schedule(cfg: DinoConfig) -> np.ndarray:
    """Per-epoch teacher temperature: linear from ``warmup_teacher_temp`` to ``teacher_temp`` over
    ``warmup_teacher_temp_epochs`` (capped at ``epochs``), then constant."""
    warm = min(cfg.warmup_teacher_temp_epochs, cfg.epochs)
    return np.concatenate([
        np.linspace(cfg.warmup_teacher_temp, cfg.teacher_temp, warm),
        np.full(cfg.epochs - warm, cfg.teacher_temp),
    ]).astype(np.float64)


# ---------------------------------------------------------------------------------------------
# model pieces


def build_head(in_dim: int, cfg: DinoConfig):
    return DinoHead(in_dim, cfg.out_dim, cfg.head_hidden_dim, cfg.head_bottleneck_dim, cfg.head_layers, cfg.norm_last_layer)


class DinoHead(nn.Module):
    """Projection head: MLP -> L2 normalise -> weight-normalised linear (no bias) to ``out_dim``."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 layers: int = 3, norm_last_layer: bool = True) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (layers - 1) + [bottleneck_dim]
        modules: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            modules.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                modules.append(nn.GELU())
        self.mlp = nn.Sequential(*modules)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        # Weight normalisation written out: weight = g * v / ||v|| per output row.
        self.last_layer_v = nn.Parameter(nn.Linear(bottleneck_dim, out_dim, bias=False).weight.detach().clone())
        self.last_layer_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=not norm_last_layer)

    def last_layer_weight(self) -> torch.Tensor:
        return self.last_layer_g * self.last_layer_v / self.last_layer_v.norm(dim=1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1, p=2)
        return F.linear(x, self.last_layer_weight())


class MultiCropNet(nn.Module):
    """Backbone + head over a list of crops: crops of one size share one backbone pass."""

    def __init__(self, vit: nn.Module, head: nn.Module) -> None:
        super().__init__()
        from ocbench.backbones.vit import model_patch_size

        self.vit = vit
        self.head = head
        self.patch_size = model_patch_size(vit)

    def forward(self, crops: Sequence[torch.Tensor]) -> torch.Tensor:
        from ocbench.backbones.vit import vit_cls_features

        features, start = [], 0
        while start < len(crops):
            end = start
            while end < len(crops) and crops[end].shape[-2:] == crops[start].shape[-2:]:
                end += 1
            features.append(vit_cls_features(self.vit, torch.cat(list(crops[start:end])), self.patch_size))
            start = end
        return self.head(torch.cat(features))


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class DinoLoss(nn.Module):
    """DINO's cross-entropy over (teacher global crop, other student crop) pairs, with centring."""

    def __init__(self, out_dim: int, n_crops: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        self.n_crops = n_crops
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student_out: torch.Tensor, teacher_out: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """``student_out``: (n_crops * B, K), crops in order (2 global first); ``teacher_out``: (2 * B, K)."""
        student = F.log_softmax(student_out.float() / self.student_temp, dim=-1).chunk(self.n_crops)
        teacher = F.softmax((teacher_out.float() - self.center) / teacher_temp, dim=-1).detach().chunk(2)
        total, pairs = student_out.new_zeros((), dtype=torch.float32), 0
        for iq, q in enumerate(teacher):
            for v, s in enumerate(student):
                if v == iq:  # the same view: nothing to predict
                    continue
                total = total + torch.sum(-q * s, dim=-1).mean()
                pairs += 1
        self.update_center(teacher_out)
        return total / pairs

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        import torch.distributed as dist

        batch_sum = teacher_out.float().sum(dim=0, keepdim=True)
        count = torch.tensor(float(len(teacher_out)), device=teacher_out.device)
        _, world = _world()
        if world > 1:
            dist.all_reduce(batch_sum)
            dist.all_reduce(count)
        self.center.mul_(self.center_momentum).add_(batch_sum / count, alpha=1 - self.center_momentum)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher = momentum * teacher + (1 - momentum) * student``, parameter by parameter."""
    t_params = list(teacher.parameters())
    s_params = [p.detach() for p in student.parameters()]
    # One fused call per operation over all parameters (a Python loop costs a launch per tensor).
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, s_params, alpha=1 - momentum)


def clip_gradients(model: nn.Module, clip: float) -> torch.Tensor | None:
    """Scale each parameter's gradient to norm at most ``clip`` (separately per parameter, as DINO
    does; not one global norm): ``grad *= min(1, clip / (norm + 1e-6))``. Returns the norms before
    clipping. No value leaves the device (no host sync per parameter)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return None
    norms = torch._foreach_norm(grads)
    torch._foreach_mul_(grads, [torch.clamp(clip / (n + 1e-6), max=1.0) for n in norms])
    return torch.stack(norms)


def cancel_last_layer_gradients(model: nn.Module, epoch: int, freeze_epochs: int) -> None:
    """During the first ``freeze_epochs`` epochs the head's last layer is not updated at all
    (gradient None: AdamW skips it, weight decay included); it stabilises the start."""
    if epoch >= freeze_epochs:
        return
    for name, p in model.named_parameters():
        if "last_layer" in name:
            p.grad = None


def param_groups(model: nn.Module) -> list[dict]:
    """Weight decay on weights only: biases and 1-d parameters (norms) are not regularised."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if name.endswith(".bias") or p.ndim == 1 else decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


# ---------------------------------------------------------------------------------------------
# data order


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The epoch's permutation of ``n`` training items: a function of (seed, epoch) only."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, 0x0D1A0])).permutation(n)


def item_seed(seed: int, epoch: int, position: int) -> int:
    """Seed of one item's augmentation in one epoch (independent of workers and processes)."""
    return int(np.random.SeedSequence([seed, epoch, position, 0xA06]).generate_state(1, np.uint64)[0] >> 1)


class EpochSampler(torch.utils.data.Sampler):
    """Yields ``(epoch, position)`` for this process's share of each full global batch."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.epoch = 0
        self.steps = n // batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> np.ndarray:
        return epoch_order(self.n, self.seed, self.epoch)[: self.steps * self.batch_size]

    def __iter__(self):
        for position in self.order()[self.rank :: self.world]:
            yield (self.epoch, int(position))

    def __len__(self) -> int:
        return self.steps * self.batch_size // self.world


# ---------------------------------------------------------------------------------------------
# training


@dataclass
class TrainResult:
    teacher_backbone: dict  # state dict of the teacher ViT (timm keys)
    history: list[dict]
    resumed_from: int  # epochs already done when this call started (0: fresh)
    wall_time_s: float
    images_per_s: float | None


def train_dino(
    cfg: DinoConfig,
    student_vit: nn.Module,
    teacher_vit: nn.Module,
    data: torch.utils.data.Dataset,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    checkpoint: Path | None = None,
    resume: bool = False,
    run_identity: dict | None = None,
    num_workers: int = 0,
    precision: str = "fp32",
    on_epoch: Callable[[dict], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    stop_after_epoch: int | None = None,
) -> TrainResult:
    """Train ``student_vit`` by DINO self-distillation on ``data`` and return the teacher backbone.

    ``data[(epoch, position)]`` -> list of ``cfg.n_crops`` crops (2 global first), see
    :class:`ocbench.tasks.augment.CropDataset`. ``student_vit`` and ``teacher_vit`` are the same
    architecture with the same starting weights (the student may have drop path). ``checkpoint``:
    file written after every epoch; with ``resume``, training continues from it (it must come from
    a run with the same ``run_identity``). ``stop_after_epoch``: return after that many epochs
    (tests stop a run early to resume it). ``precision``: "fp32" or "bf16" (CUDA autocast).
    Under ``torch.distributed`` (torchrun) each process runs this with its own device.
    """
    started = time.perf_counter()
    dev = torch.device(device)
    rank, world = _world()
    if cfg.batch_size % world:
        raise ConfigError(f"batch_size {cfg.batch_size} must be divisible by the number of processes ({world})")
    n = len(data)
    steps = n // cfg.batch_size
    if steps < 1:
        raise ConfigError(
            f"only {n} training images for a batch of {cfg.batch_size}: lower batch_size (--set batch_size=...) or use more data"
        )
    if precision not in ("fp32", "bf16") or (precision == "bf16" and dev.type != "cuda"):
        raise ConfigError(f"precision {precision!r}: use fp32, or bf16 on CUDA")

    # The run owns its random stream (head init, drop path): seeded here, saved in checkpoints,
    # and the caller's global RNG state is given back afterwards.
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        return _train(cfg, student_vit, teacher_vit, data, seed=seed, dev=dev, rank=rank, world=world, n=n, steps=steps,
                      checkpoint=checkpoint, resume=resume, run_identity=run_identity, num_workers=num_workers,
                      precision=precision, on_epoch=on_epoch, on_step=on_step, stop_after_epoch=stop_after_epoch,
                      started=started)


def _train(cfg, student_vit, teacher_vit, data, *, seed, dev, rank, world, n, steps, checkpoint, resume, run_identity,
           num_workers, precision, on_epoch, on_step, stop_after_epoch, started) -> TrainResult:
    import torch.distributed as dist

    student, teacher = _student_and_teacher(cfg, student_vit, teacher_vit, seed, rank, dev)
    loss_fn = DinoLoss(cfg.out_dim, cfg.n_crops, cfg.student_temp, cfg.center_momentum).to(dev)
    optimizer = torch.optim.AdamW(param_groups(student), lr=0.0, betas=cfg.betas, weight_decay=0.0)
    schedules = _Schedules.of(cfg, steps)
    identity = json.dumps({"config": cfg.training_dict(), "run": run_identity or {}, "n": n, "steps": steps}, sort_keys=True)

    history: list[dict] = []
    start_epoch = 0
    if resume and checkpoint is not None and checkpoint.is_file():
        start_epoch, history, saved_order = restore_checkpoint(
            checkpoint, identity, student=student, teacher=teacher, optimizer=optimizer, center=loss_fn.center, device=dev)
        if not np.array_equal(saved_order, epoch_order(n, seed, start_epoch - 1)[: steps * cfg.batch_size]):
            raise DataError(f"{checkpoint}: its data order differs from this run's; delete it to start over")

    model = student
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(student, device_ids=[dev.index] if dev.type == "cuda" else None)

    sampler = EpochSampler(n, cfg.batch_size, seed, rank, world)
    loader = _loader(data, cfg, sampler, dev=dev, world=world, num_workers=num_workers, seed=seed)
    images_seen, train_time = 0, 0.0
    last_epoch = cfg.epochs if stop_after_epoch is None else min(cfg.epochs, stop_after_epoch)
    for epoch in range(start_epoch, last_epoch):
        sampler.set_epoch(epoch)
        epoch_started = time.perf_counter()
        loss_sum = torch.zeros((), device=dev)
        for step, crops in enumerate(loader):
            it = epoch * steps + step
            loss_sum += _train_step(cfg, crops, model, student, teacher, loss_fn, optimizer, schedules,
                                    epoch=epoch, it=it, dev=dev, precision=precision)
            if on_step is not None:
                on_step(step + 1, steps)
        if world > 1:
            dist.all_reduce(loss_sum)
            loss_sum /= world
        if not torch.isfinite(loss_sum):  # checked once per epoch: a check per step stalls the GPU
            raise DataError(f"DINO loss is {float(loss_sum)} in epoch {epoch + 1}; lower lr or check the images")
        seconds = time.perf_counter() - epoch_started
        train_time += seconds
        images_seen += steps * cfg.batch_size
        record = schedules.epoch_record(epoch, steps, float(loss_sum) / steps, seconds, steps * cfg.batch_size / seconds)
        history.append(record)
        if rank == 0 and checkpoint is not None:
            save_checkpoint(checkpoint, checkpoint_payload(
                identity=identity, epoch=epoch + 1, student=student, teacher=teacher, optimizer=optimizer,
                center=loss_fn.center, device=dev, order=sampler.order(), history=history,
            ))
        if world > 1:
            dist.barrier()
        if on_epoch is not None:
            on_epoch(record)
    backbone = {k: v.detach().cpu().contiguous().clone() for k, v in teacher.vit.state_dict().items()}
    return TrainResult(
        teacher_backbone=backbone, history=history, resumed_from=start_epoch,
        wall_time_s=time.perf_counter() - started,
        images_per_s=images_seen / train_time if train_time > 0 else None,
    )


@dataclass(frozen=True)
class _Schedules:
    """The run's schedules: per step lr, weight decay and teacher momentum, per epoch teacher temperature."""

    lr: np.ndarray
    weight_decay: np.ndarray
    momentum: np.ndarray
    teacher_temp: np.ndarray

    @classmethod
    def of(cls, cfg: DinoConfig, steps: int) -> "_Schedules":
        return cls(
            lr=cosine_schedule(cfg.effective_lr, cfg.min_lr, cfg.epochs, steps, cfg.warmup_epochs),
            weight_decay=cosine_schedule(cfg.weight_decay, cfg.weight_decay_end, cfg.epochs, steps),
            momentum=cosine_schedule(cfg.momentum_teacher, 1.0, cfg.epochs, steps),
            teacher_temp=teacher_temperature_schedule(cfg),
        )

    def epoch_record(self, epoch: int, steps: int, loss: float, seconds: float, images_per_s: float) -> dict:
        """The history's line for ``epoch`` (0-based): its mean loss and the values at its last step."""
        last = (epoch + 1) * steps - 1
        return {
            "epoch": epoch + 1, "loss": loss, "lr": float(self.lr[last]),
            "weight_decay": float(self.weight_decay[last]), "momentum": float(self.momentum[last]),
            "teacher_temp": float(self.teacher_temp[epoch]), "seconds": seconds, "images_per_s": images_per_s,
        }


def _student_and_teacher(cfg: DinoConfig, student_vit: nn.Module, teacher_vit: nn.Module, seed: int, rank: int,
                         dev: torch.device) -> tuple[MultiCropNet, MultiCropNet]:
    """Student and teacher (backbone + head), the teacher starting as a frozen copy of the student.
    Both heads are drawn from the run's seeded stream, then drop path gets a stream per process."""
    in_dim = int(student_vit.num_features)
    student = MultiCropNet(student_vit, build_head(in_dim, cfg)).to(dev)
    teacher = MultiCropNet(teacher_vit, build_head(in_dim, cfg)).to(dev)
    torch.manual_seed(seed + 1 + rank)  # drop-path masks: a stream of its own per process
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad_(False)
    teacher.eval()
    student.train()
    return student, teacher


def _loader(data: torch.utils.data.Dataset, cfg: DinoConfig, sampler: EpochSampler, *, dev: torch.device, world: int,
            num_workers: int, seed: int) -> torch.utils.data.DataLoader:
    """This process's share of each global batch.

    The loader has its own generator: creating its iterator must not draw from the global RNG
    (drop path uses that one, and a resumed run must see the same stream)."""
    return torch.utils.data.DataLoader(
        data, batch_size=cfg.batch_size // world, sampler=sampler, num_workers=num_workers,
        pin_memory=dev.type == "cuda", drop_last=True, persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed), prefetch_factor=4 if num_workers > 0 else None,
    )


def _train_step(cfg: DinoConfig, crops: Sequence[torch.Tensor], model: nn.Module, student: MultiCropNet,
                teacher: MultiCropNet, loss_fn: DinoLoss, optimizer: torch.optim.Optimizer, schedules: _Schedules, *,
                epoch: int, it: int, dev: torch.device, precision: str) -> torch.Tensor:
    """One DINO step at global step ``it``, in main_dino.py's order: set lr and weight decay, teacher
    on the global crops, student (``model``: DDP-wrapped under torchrun) on all, loss, backward,
    per-parameter clipping, last layer frozen early, optimiser step, teacher EMA. Returns the loss."""
    for i, group in enumerate(optimizer.param_groups):
        group["lr"] = float(schedules.lr[it])
        if i == 0:
            group["weight_decay"] = float(schedules.weight_decay[it])
    crops = [c.to(dev, non_blocking=True) for c in crops]
    with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        with torch.no_grad():
            teacher_out = teacher(crops[:2])
        student_out = model(crops)
    loss = loss_fn(student_out, teacher_out, float(schedules.teacher_temp[epoch]))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.clip_grad > 0:
        clip_gradients(student, cfg.clip_grad)
    cancel_last_layer_gradients(student, epoch, cfg.freeze_last_layer)
    optimizer.step()
    ema_update(teacher, student, float(schedules.momentum[it]))
    return loss.detach()
