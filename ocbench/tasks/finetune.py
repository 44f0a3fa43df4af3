"""Task B: continue DINO training of a backbone on the split's train part, then probe it (``finetune``).

The seed paper's best number (0.860 macro-F1, Table 2) is the HPA-FOV ViT-B/8 after DINO
fine-tuning on OpenCell's 90% train split, then the ``fov-mlp`` probe (sections 2.5 and
3.1.2-3.1.4). Here:

1. the train part of the split (never its test part; checked before any image is read), or a
   seeded, nested ``fraction`` of it (the 0.2 subset lies inside the 0.4 subset: one fixed
   permutation of the sorted train ids, cut at ``round(fraction * n)``);
2. DINO training (:mod:`ocbench.tasks.dino_ssl`, crops from :mod:`ocbench.tasks.augment`) of the
   backbone with its channel adapter in front, checkpointed every epoch under
   ``<cache>/finetune/<derived name>/`` (with ``history.json`` and ``loss.png``); a killed run
   continues from its last epoch;
3. the teacher backbone written as a Hub-style folder ``<cache>/weights/<derived name>/``:
   ``model.safetensors``, ``config.json`` (timm's Hub layout, with an ``ocbench`` section) and
   ``ocbench_card.json``, the derived :class:`~ocbench.backbones.card.BackboneCard` (source
   ``local:<derived name>``, training data = the base's plus this dataset, notes = the run);
4. the ``fov-mlp`` probe on the fine-tuned teacher's embeddings (``context.with_backbone``), so
   the entry records the derived card: which data the backbone saw.

The derived name is ``<base>.ft-<dataset>-f<fraction>-<hash>``: the hash covers the base card,
channel adapter, every training setting, the dataset's listing (items and labels), split and
seed, so the same run finds its finished weights (and is not trained again) and any other run
gets its own folder. The training images' content is recorded beside the weights and the
checkpoint (:class:`~ocbench.tasks.finetune_files.TrainFiles`): when one of them changed, the
run trains again, with a warning. Training from scratch (:func:`scratch_card`) writes
``<arch card>.dino-...``, or the zoo's ``opencell-dino-vits8``/``-vitb8`` folder when trained on
OpenCell itself.

The run's name and identity live in :mod:`ocbench.tasks.finetune_identity`, its files (checkpoint,
history, published weights, and the checks that reuse them) in :mod:`ocbench.tasks.finetune_files`.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ocbench._io import read_json_or_none
from ocbench.backbones.derive import CARD_FILENAME
from ocbench.errors import ConfigError, DataError
from ocbench.tasks.base import TaskConfig, TaskResult, register_task
from ocbench.tasks.dino_config import DinoConfig
from ocbench.tasks.finetune_files import (  # TRAIN_FILES_NAME, plot_loss: still importable from here
    TRAIN_FILES_NAME,
    TrainFiles,
    drop_stale_checkpoint,
    find_finished,
    plot_loss,
    run_folders,
    write_history,
    write_weights,
)
from ocbench.tasks.finetune_identity import derived_card, run_identity, scratch_card

if TYPE_CHECKING:  # pragma: no cover
    from ocbench.backbones.adapters import ChannelAdapter
    from ocbench.backbones.card import BackboneCard
    from ocbench.data.base import ImageSplit, ItemSet
    from ocbench.tasks.context import RunContext

__all__ = [
    "FineTune",
    "train_indices",
    "derived_card",
    "scratch_card",
    "finetune_backbone",
    "FineTuneOutcome",
    "CARD_FILENAME",
    "PROTOCOL_VERSION",
]

PROTOCOL_VERSION = "finetune/1"


# ---------------------------------------------------------------------------------------------
# which images


def train_indices(dataset: Any, split: Any, fraction: float = 1.0, seed: int = 0) -> np.ndarray:
    """Dataset positions to train on: the split's train part (every fold), or a nested ``fraction``.

    Refuses (DataError) a split whose train and test parts overlap, so no test FOV can train.
    """
    test_idx, folds_idx = split.indices_of(dataset)
    train = np.unique(np.concatenate([np.asarray(f, dtype=np.int64) for f in folds_idx]))
    if np.intersect1d(train, np.asarray(test_idx)).size:
        raise DataError("the split's train and test parts overlap; fine-tuning uses the train part only")
    if not 0 < fraction <= 1:
        raise ConfigError(f"fraction must be in (0, 1], got {fraction}")
    ids = np.asarray(dataset.ids, dtype=object)[train]
    train = train[np.argsort(ids, kind="stable")]  # the subset depends on ids, not on dataset order
    order = np.random.default_rng(np.random.SeedSequence([seed, 0xF7AC])).permutation(len(train))
    keep = max(1, int(round(fraction * len(train))))
    return np.sort(train[order[:keep]])


# ---------------------------------------------------------------------------------------------
# training and output


@dataclass
class FineTuneOutcome:
    card: Any  # the derived BackboneCard
    folder: Path  # <cache>/weights/<card name>
    run_dir: Path  # checkpoint, history.json, loss.png
    history: list[dict]
    trained: bool  # False: finished weights of the same run were found and reused
    n_train: int
    wall_time_s: float
    images_per_s: float | None = None



def finetune_backbone(
    base: Any,
    adapter: Any,
    dataset: Any,
    split: Any,
    cfg: DinoConfig,
    *,
    seed: int = 0,
    device: str = "cpu",
    resume: bool = True,
    num_workers: int = 0,
    precision: str = "fp32",
    progress: Any = None,
    cache_dir: str | Path | None = None,
    stop_after_epoch: int | None = None,
) -> FineTuneOutcome:
    """Train (or find the finished run of) ``base`` on the train part of ``split``; see the module doc.

    ``resume``: continue from the run's checkpoint when one exists (False: refuse to overwrite an
    unfinished run's checkpoint; start over by deleting its run folder). Under ``torchrun`` every
    process calls this; rank 0 writes the checkpoint and the output folder.
    """
    import torch

    from ocbench.tasks.augment import CropDataset
    from ocbench.tasks.context import Progress
    from ocbench.tasks.dino_ssl import _world, train_dino

    started = time.perf_counter()
    report = progress if progress is not None else Progress(False)
    if not base.arch.startswith(("vit_", "deit")) or base.source == "builtin:classical-stats":
        raise ConfigError(f"finetune trains ViT backbones; {base.name} is a {base.arch}")
    card = derived_card(base, adapter, cfg, dataset, split, seed)
    folder, run_dir = run_folders(card, cache_dir)
    indices = train_indices(dataset, split, cfg.fraction, seed)
    train = TrainFiles.of(dataset, indices)
    reusable, stale = find_finished(folder, card, train, run_dir)
    if reusable:
        history = read_json_or_none(run_dir / "history.json", list) or []  # a report of the run, not needed to reuse it
        report.note(f"finetune: reusing the finished run {folder}")
        return FineTuneOutcome(card, folder, run_dir, history, False, len(indices), time.perf_counter() - started)
    rank, world = _world()
    checkpoint = _checkpoint_to_resume(run_dir, train, stale, resume, rank)
    dev = torch.device(device)
    student, teacher = _student_and_teacher(base, cfg, cache_dir, rank, world)
    data = CropDataset(dataset, indices, base, adapter, cfg, seed, forbidden_ids=split.test)
    steps = len(data) // cfg.batch_size
    report.note(
        f"finetune {card.name}: {len(indices)} train FOVs ({len(data)} items), {cfg.epochs} epochs x {steps} steps "
        f"of {cfg.batch_size}, {cfg.n_crops} crops, on {dev}"
    )
    bar = report.bar(cfg.epochs * steps, f"finetune {base.name}", unit="step")
    hooks = _ProgressHooks(report, bar, cfg.epochs)
    try:
        result = train_dino(
            cfg, student, teacher, data, seed=seed, device=dev, checkpoint=checkpoint, resume=resume,
            run_identity={**run_identity(base, adapter, cfg, dataset, split, seed), "train_content_sha256": train.digest},
            num_workers=num_workers,
            precision=precision, on_epoch=hooks.on_epoch, on_step=hooks.on_step, stop_after_epoch=stop_after_epoch,
        )
    finally:
        bar.close()
    if rank == 0:
        write_history(run_dir, result.history, card.name)
        if len(result.history) >= cfg.epochs:  # finished: the teacher is published
            write_weights(folder, card, result.teacher_backbone, result.history, train)
    if _world()[1] > 1:
        import torch.distributed as dist

        dist.barrier()
    return FineTuneOutcome(card, folder, run_dir, result.history, True, len(indices),
                           time.perf_counter() - started, result.images_per_s)


def _checkpoint_to_resume(run_dir: Path, train: TrainFiles, stale: str | None, resume: bool, rank: int) -> Path:
    """The run's checkpoint path, once a stale one (other training images) is gone; an unfinished
    run's checkpoint without ``resume`` is a ConfigError. Warnings point at finetune_backbone's caller."""
    if stale is not None and rank == 0:
        warnings.warn(stale, stacklevel=3)
    checkpoint = run_dir / "checkpoint.pt"
    if rank == 0:
        drop_stale_checkpoint(checkpoint, train, run_dir, warned=stale is not None, stacklevel=4)
    if checkpoint.is_file() and not resume:
        raise ConfigError(
            f"{checkpoint}: an unfinished run of the same settings exists; pass --resume to continue it, "
            f"or delete {run_dir} to start over"
        )
    return checkpoint


def _student_and_teacher(base: Any, cfg: DinoConfig, cache_dir: str | Path | None, rank: int, world: int) -> tuple:
    """The student (with drop path) and the teacher ViT, both holding the base's weights."""
    import torch

    from ocbench.backbones.loader import load_backbone
    from ocbench.backbones.vit import build_vit

    if world > 1 and rank != 0:  # rank 0 fetches or converts the base weights first; the others then read them
        torch.distributed.barrier()
    loaded = load_backbone(base, device="cpu", cache_dir=cache_dir)
    if world > 1 and rank == 0:
        torch.distributed.barrier()
    state = loaded.model.vit.state_dict()
    with torch.random.fork_rng(devices=[]):
        student = build_vit(base, {"drop_path_rate": cfg.drop_path_rate})
        teacher = build_vit(base)
    student.load_state_dict(state)
    teacher.load_state_dict(state)
    return student, teacher


def _format_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class _ProgressHooks:
    """The trainer's callbacks: a bar step per training step, a line per epoch with its loss,
    learning rate, throughput and the time left (timed from the first epoch this call trains)."""

    def __init__(self, report: Any, bar: Any, epochs: int) -> None:
        self.report, self.bar, self.epochs = report, bar, epochs
        self.t0 = time.perf_counter()
        self.done_at_start: int | None = None

    def on_epoch(self, record: dict) -> None:
        if self.done_at_start is None:
            self.done_at_start = record["epoch"] - 1
        left = self.epochs - record["epoch"]
        per_epoch = (time.perf_counter() - self.t0) / (record["epoch"] - self.done_at_start)
        text = (f"epoch {record['epoch']}/{self.epochs} loss {record['loss']:.4f} lr {record['lr']:.2e} "
                f"{record['images_per_s']:.1f} images/s ETA {_format_eta(left * per_epoch)}")
        self.bar.set_postfix_str(text)
        self.report.step(text)

    def on_step(self, step: int, total: int) -> None:
        self.bar.update(1)


# ---------------------------------------------------------------------------------------------
# the task


def augmentation_workers(asked: int | None, device: str) -> int:
    """DataLoader workers: on a GPU by default all but one of this process's cores (up to 16; under
    torchrun the node's cores are shared by its ranks), so the GPU never waits on augmentation, and
    none on CPU, where training uses every core. A count asked for is bounded by the cores: more
    workers than cores only compete with training. The count never changes a result: each item's
    views come from its own seed."""
    from ocbench._cores import available_cores

    cores = available_cores()
    if asked is not None:
        return max(0, min(int(asked), cores))
    if not str(device).startswith("cuda"):
        return 0
    return max(0, min(16, cores - 1))


@register_task
@dataclass(frozen=True)
class FineTune(DinoConfig, TaskConfig):
    """DINO fine-tuning on the split's train part, then the ``fov-mlp`` probe on the teacher."""

    name: ClassVar[str] = "finetune"
    protocol_version: ClassVar[str] = PROTOCOL_VERSION
    main_score: ClassVar[tuple[str, str]] = ("val", "macro_f1")
    axis: ClassVar[str | None] = None
    description: ClassVar[str] = (
        "DINO fine-tuning on the train split (paper section 2.5), then the fov-mlp probe on the teacher (paper Tables 2-3, Fig. 3)"
    )

    probe_epochs: int = field(default=300, metadata={"help": "training epochs of the fov-mlp probe on the fine-tuned teacher"})

    def __post_init__(self) -> None:
        DinoConfig.__post_init__(self)
        if isinstance(self.probe_epochs, bool) or not isinstance(self.probe_epochs, int) or not 1 <= self.probe_epochs <= 100_000:
            raise ConfigError(f"task {self.name}: probe_epochs must be an integer in [1, 100000], got {self.probe_epochs!r}")

    derives_backbone: ClassVar[bool] = True

    def derived_backbone(self, card: BackboneCard, adapter: ChannelAdapter, dataset: "ItemSet", split: "ImageSplit",
                         seed: int) -> BackboneCard:
        """The card the entry will record (the runner asks before any work, for the entry's key)."""
        return derived_card(card, adapter, self, dataset, split, seed)

    def evaluate(self, context: RunContext) -> TaskResult:
        from ocbench.tasks.fov_probe import FovMlpProbe

        started = time.perf_counter()
        outcome = finetune_backbone(
            context.backbone, context.adapter, context.dataset, context.split, self,
            seed=context.seed, device=context.device, resume=True, num_workers=augmentation_workers(context.num_workers, context.device),
            precision=context.precision, progress=context.progress,
        )
        probe = FovMlpProbe(epochs=self.probe_epochs)
        result = probe.evaluate(context.with_backbone(outcome.card))
        last = outcome.history[-1] if outcome.history else {}
        details = {
            **result.details,
            "finetuned_backbone": outcome.card.name,
            "weights_folder": str(outcome.folder),
            "n_finetune_fovs": outcome.n_train,
            "final_dino_loss": last.get("loss"),
            "trained_now": outcome.trained,
            "loss_curve": str(outcome.run_dir / "loss.png"),
        }
        return dataclasses.replace(
            result, task=self.name, protocol_version=self.protocol_version, config=self.to_dict(),
            wall_time_s=time.perf_counter() - started, details=details,
        )


# ---------------------------------------------------------------------------------------------
# the work of ``ocbench finetune`` once names are resolved (by ocbench.api.finetune)


def _init_distributed(device: str) -> tuple[str, bool]:
    """Under torchrun (WORLD_SIZE > 1): join the process group; each process uses its own GPU."""
    import os

    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device, False
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and device in ("auto", "cuda") or device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return (f"cuda:{local}" if cuda else "cpu"), True


def finetune_command(
    *, base: BackboneCard, adapter: ChannelAdapter, dataset: "ItemSet", split: "ImageSplit", config: "FineTune",
    seed: int, device: str, workers: int | None, precision: str, resume: bool, threads: int | None = None,
    progress: bool = True,
) -> FineTuneOutcome | None:
    """What ``ocbench finetune`` does once names are resolved (``config``: the settings, parsed once
    by the command); returns None on processes other than rank 0, which alone reports ``progress``."""
    import torch

    from ocbench.backbones.loader import resolve_device
    from ocbench.tasks.context import Progress
    from ocbench.tasks.dino_ssl import _world

    cfg = config
    device, distributed = _init_distributed(device)
    if threads:
        torch.set_num_threads(threads)
    try:
        rank = _world()[0]
        device = str(resolve_device(device))
        outcome = finetune_backbone(
            base, adapter, dataset, split, cfg, seed=seed, device=device, resume=resume,
            num_workers=augmentation_workers(workers, device), precision=precision, progress=Progress(progress and rank == 0),
        )
        return outcome if rank == 0 else None
    finally:
        if distributed:
            import torch.distributed as dist

            dist.destroy_process_group()
