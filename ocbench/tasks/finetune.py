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
checkpoint (:class:`TrainFiles`): when one of them changed, the run trains again, with a warning.
Training from scratch (:func:`scratch_card`) writes ``<arch card>.dino-...``, or the zoo's
``opencell-dino-vits8``/``-vitb8`` folder when trained on OpenCell itself.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import numpy as np

from ocbench._io import json_sha256, read_json_or_none
from ocbench.backbones.derive import CARD_FILENAME, load_card_file, write_card_file
from ocbench.data.content import listing_version
from ocbench.errors import ConfigError, DataError
from ocbench.tasks.base import TaskConfig, TaskResult, register_task
from ocbench.tasks.dino_config import DinoConfig

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
_RUN_FILES = frozenset({"model.safetensors", "config.json", CARD_FILENAME})


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
# cards


def _name_part(text: str) -> str:
    """``text`` as part of a backbone card name: lowercase, only the characters a card name may hold
    (ocbench._io.slug makes file-name parts, which keep capitals and ``=``)."""
    import re

    return re.sub(r"[^a-z0-9._-]+", "-", str(text).lower()).strip("-") or "data"


def _dataset_label(dataset: Any) -> str:
    """How a card's ``training_datasets`` names the data: "OpenCell" for OpenCell, else its name."""
    return "OpenCell" if dataset.name == "opencell" else str(dataset.name)


def run_identity(base: Any, adapter: Any, cfg: DinoConfig, dataset: Any, split: Any, seed: int) -> dict:
    """Everything that makes two fine-tuning runs the same run (hashed into the derived name).

    The dataset enters by its listing (items and labels): the content of the training images is
    checked when a finished run or a checkpoint is reused (:class:`TrainFiles`), so rewritten
    pixels retrain the same backbone name, with a warning, instead of leaving old weights behind."""
    return {
        "base": json.loads(json.dumps(base.to_dict(), sort_keys=True, default=str)),
        "channels": adapter.key,
        "training": cfg.training_dict(),
        "dataset": str(dataset.name),
        "dataset_version": listing_version(dataset),
        "split_sha256": split.sha256,
        "split_track": split.track,
        "seed": int(seed),
    }


def scratch_card(arch: str, dataset_card: Any, seed: int = 0, arch_kwargs: dict | None = None) -> Any:
    """A randomly initialised ViT taking the dataset's channels (the base of training from scratch)."""
    import timm

    from ocbench.backbones.card import BackboneCard

    name = arch if timm.is_model(arch) else f"{arch}_224"
    if not timm.is_model(name):
        raise ConfigError(f"--from-scratch {arch!r}: timm has no such architecture (e.g. vit_small_patch8, vit_base_patch8)")
    probe = timm.create_model(name, pretrained=False, num_classes=0, **dict(arch_kwargs or {}))
    patch = probe.patch_embed.patch_size
    channels = tuple(dataset_card.channel_names)
    return BackboneCard(
        name=_name_part(f"scratch-{name}"),
        source="builtin:random-init",
        arch=name,
        arch_kwargs=dict(arch_kwargs or {}),
        feature_dim=int(probe.num_features),
        in_chans=len(channels),
        input_channels=channels,
        default_channels="natural",
        normalization="self",
        intensity="raw",
        input_size=int(probe.patch_embed.img_size[0]),
        patch_size=int(patch[0] if isinstance(patch, (tuple, list)) else patch),
        init_seed=int(seed),
        pretraining="none: seeded random initialization (the start of DINO training from scratch)",
        license="same as the data it is trained on",
    )


def _zoo_target(base: Any, dataset: Any) -> Any:
    """The zoo card whose local weights a from-scratch run on OpenCell produces (None otherwise)."""
    if base.source != "builtin:random-init" or dataset.name != "opencell" or base.arch_kwargs:
        return None
    from ocbench.backbones.cards import list_cards

    for card in list_cards():
        if (card.source_kind == "local" and card.arch == base.arch and card.in_chans == base.in_chans
                and card.source_target == card.name):
            return card
    return None


def derived_card(base: Any, adapter: Any, cfg: DinoConfig, dataset: Any, split: Any, seed: int) -> Any:
    """The card of the backbone this run produces (deterministic: computed before training)."""
    identity = run_identity(base, adapter, cfg, dataset, split, seed)
    digest = json_sha256(identity)[:10]
    scratch = base.source == "builtin:random-init"
    notes = json.dumps({
        "fine-tuned from" if not scratch else "trained from scratch as": base.name,
        "method": "DINO self-distillation (ocbench finetune)", "dataset": str(dataset.name),
        "dataset_version": listing_version(dataset), "split": {"track": split.track, "sha256": split.sha256},
        "seed": int(seed), "channels": adapter.spec, "config": cfg.training_dict(), "run_hash": digest,
    }, sort_keys=True)
    label = _dataset_label(dataset)
    target = _zoo_target(base, dataset)
    kind = "dino" if scratch else "ft"
    name = target.name if target is not None else f"{base.name}.{kind}-{_name_part(dataset.name)}-f{cfg.fraction:g}-{digest}"
    start = target if target is not None else base
    return dataclasses.replace(
        start,
        name=name,
        source=f"local:{name}",
        sha256=None,
        init_seed=None,
        default_channels=adapter.spec if adapter.strategy == "map" else "replicate",
        training_datasets=tuple(dict.fromkeys((*base.training_datasets, label))),
        supervision="self-supervised",
        pretraining=(f"{base.pretraining}; then " if base.pretraining and not scratch else "")
        + f"DINO {'fine-tuning' if not scratch else 'from scratch'} on {label} (train part of the {split.track} split, "
        f"fraction {cfg.fraction:g}, {cfg.epochs} epochs; trained by ocbench)",
        notes=notes,
    )


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


#: In the run folder: which image files (and their sha256) the run trains on.
TRAIN_FILES_NAME = "train_files.json"


@dataclass(frozen=True)
class TrainFiles:
    """The content of the images a run trains on: one digest (recorded with the checkpoint and the
    finished weights) and each file's sha256 (kept in the run folder, to count what changed)."""

    digest: str | None  # None: the dataset keeps no content record (its items are not files)
    by_file: dict

    @classmethod
    def of(cls, dataset: Any, indices: Sequence[int]) -> "TrainFiles":
        content = getattr(dataset, "content", None)
        if content is None or not callable(getattr(content, "subset", None)):
            return cls(None, {})
        part = content.subset(indices)
        return cls(part.digest, part.by_file())

    def changes_since(self, run_dir: Path, digest_then: str | None) -> str:
        """Why work recorded with ``digest_then`` is stale, counting the changed files when the run
        folder still lists them."""
        if digest_then is None:
            return "it was made by an older ocbench that did not record the training images' content"
        then = read_json_or_none(run_dir / TRAIN_FILES_NAME, dict) or {}
        files = then.get("files") if then.get("digest") == digest_then else None
        if not isinstance(files, dict):
            return "the training images' content changed since"
        now = self.by_file
        changed = [f for f, sha in now.items() if files.get(f) != sha] + [f for f in files if f not in now]
        return f"{len(changed)} of its {len(files)} training image file(s) changed since"

    def save(self, run_dir: Path) -> None:
        from ocbench._io import atomic_write, write_error

        try:
            with atomic_write(run_dir / TRAIN_FILES_NAME) as fh:
                json.dump({"digest": self.digest, "files": self.by_file}, fh, separators=(",", ":"))
        except OSError as exc:
            raise write_error(run_dir / TRAIN_FILES_NAME, exc, "the fine-tuning run's file list") from None


def _finished(folder: Path, card: Any, train: TrainFiles, run_dir: Path) -> tuple[bool, str | None]:
    """(reusable, why not): finished weights of this run, intact and trained on these very images.

    Weights whose sha256 differs from the one written with them are a one-line DataError (a
    damaged file is not retrained over silently); weights trained on other pixels are stale."""
    from ocbench._io import sha256_file

    path, weights = folder / CARD_FILENAME, folder / "model.safetensors"
    if not (path.is_file() and weights.is_file() and load_card_file(path) == card):
        return False, None
    recorded = (read_json_or_none(folder / "config.json", dict) or {}).get("ocbench")
    weights_sha256 = recorded.get("weights_sha256") if isinstance(recorded, dict) else None
    if weights_sha256 is None:
        raise DataError(f"{folder / 'config.json'}: unreadable or without the weights' sha256; delete {folder} to train "
                        "again")
    if sha256_file(weights) != weights_sha256:
        raise DataError(f"{weights}: damaged (its sha256 differs from the one recorded in config.json when it was "
                        f"written); delete {folder} to train again")
    then = recorded.get("train_content_sha256")
    if train.digest is None or then == train.digest:
        return True, None
    return False, f"{folder}: {train.changes_since(run_dir, then)} it was trained; training again"


def _check_replaceable(folder: Path) -> None:
    if folder.is_dir():
        others = sorted(p.name for p in folder.iterdir() if p.name not in _RUN_FILES | {"README.md"})
        if others:
            raise ConfigError(
                f"{folder}: holds {others[0]}, not written by ocbench's training; move it away (nothing was written)"
            )


def _write_weights(folder: Path, card: Any, state: dict, history: list[dict], train: TrainFiles) -> None:
    import timm
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    from ocbench import __version__
    from ocbench._io import atomic_dir, sha256_file, write_error

    _check_replaceable(folder)
    config = {
        # timm's Hub format: timm.create_model("hf-hub:<repo>", pretrained=True) rebuilds the model.
        "architecture": card.arch,
        "num_classes": 0,
        "num_features": card.feature_dim,
        "model_args": {**dict(card.arch_kwargs or {}), "in_chans": card.in_chans},
        "pretrained_cfg": {"num_classes": 0, "first_conv": "patch_embed.proj", "classifier": "head"},
        "ocbench": {
            "card": card.name, "arch": card.arch, "arch_kwargs": dict(card.arch_kwargs or {}), "in_chans": card.in_chans,
            "patch_size": card.patch_size, "feature_dim": card.feature_dim, "input_channels": list(card.input_channels),
            "normalization": card.normalization, "input_size": card.input_size, "pretraining": card.pretraining,
            "source": card.source, "training": json.loads(card.notes),
            "final_loss": history[-1]["loss"] if history else None, "epochs_trained": len(history),
            "position_embedding": "dino-bicubic-scale-factor", "ocbench_version": __version__,
            "train_content_sha256": train.digest,
            "torch_version": torch.__version__.split("+")[0], "timm_version": timm.__version__,
        },
    }
    try:
        with atomic_dir(folder) as tmp:
            save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            config["ocbench"]["weights_sha256"] = sha256_file(tmp / "model.safetensors")
            (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
            write_card_file(card, tmp)
    except (OSError, SafetensorError) as exc:  # safetensors reports a full disk as a SafetensorError
        raise write_error(folder, exc, "the fine-tuned weights") from None


def _drop_stale_checkpoint(checkpoint: Path, train: TrainFiles, run_dir: Path, *, warned: bool = False) -> None:
    """A checkpoint of other training images is not resumed: it is removed, with a warning (unless
    ``warned`` already said so about the finished weights), and the run starts over; the run folder
    then lists the images this run trains on."""
    listed = (read_json_or_none(run_dir / TRAIN_FILES_NAME, dict) or {}).get("digest")
    if checkpoint.is_file() and listed != train.digest and train.digest is not None:
        if not warned:
            warnings.warn(f"{checkpoint}: {train.changes_since(run_dir, listed)} it was written; starting this run over",
                          stacklevel=3)
        checkpoint.unlink()
    if listed != train.digest or not (run_dir / TRAIN_FILES_NAME).is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        train.save(run_dir)


def plot_loss(history: Sequence[dict], path: Path, title: str) -> None:
    """The loss curve (loss per epoch, learning rate on a second axis) as a PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ocbench._io import atomic_path

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(epochs, [h["loss"] for h in history], marker="o", ms=3, color="C0")
    ax.set_xlabel("epoch")
    ax.set_ylabel("DINO loss", color="C0")
    lr_ax = ax.twinx()
    lr_ax.plot(epochs, [h["lr"] for h in history], color="C1", lw=1)
    lr_ax.set_ylabel("learning rate", color="C1")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _format_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


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

    from ocbench.backbones.loader import load_backbone
    from ocbench.backbones.vit import build_vit
    from ocbench.backbones.weights_folder import folder_for
    from ocbench.paths import cache_dir as default_cache
    from ocbench.tasks.augment import CropDataset
    from ocbench.tasks.context import Progress
    from ocbench.tasks.dino_ssl import _world, train_dino

    started = time.perf_counter()
    report = progress if progress is not None else Progress(False)
    if not base.arch.startswith(("vit_", "deit")) or base.source == "builtin:classical-stats":
        raise ConfigError(f"finetune trains ViT backbones; {base.name} is a {base.arch}")
    card = derived_card(base, adapter, cfg, dataset, split, seed)
    folder = folder_for(card.name, cache_dir)
    digest = json.loads(card.notes)["run_hash"]
    # A zoo card's name (from scratch on OpenCell) carries no settings hash: the run folder must.
    run_key = card.name if digest in card.name else f"{card.name}-{digest}"
    run_dir = Path(cache_dir if cache_dir is not None else default_cache()) / "finetune" / run_key
    indices = train_indices(dataset, split, cfg.fraction, seed)
    train = TrainFiles.of(dataset, indices)
    reusable, stale = _finished(folder, card, train, run_dir)
    if reusable:
        history = read_json_or_none(run_dir / "history.json", list) or []  # a report of the run, not needed to reuse it
        report.note(f"finetune: reusing the finished run {folder}")
        return FineTuneOutcome(card, folder, run_dir, history, False, len(indices), time.perf_counter() - started)
    rank, world = _world()
    if stale is not None and rank == 0:
        warnings.warn(stale, stacklevel=2)
    checkpoint = run_dir / "checkpoint.pt"
    if rank == 0:
        _drop_stale_checkpoint(checkpoint, train, run_dir, warned=stale is not None)
    if checkpoint.is_file() and not resume:
        raise ConfigError(
            f"{checkpoint}: an unfinished run of the same settings exists; pass --resume to continue it, "
            f"or delete {run_dir} to start over"
        )

    dev = torch.device(device)
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
    data = CropDataset(dataset, indices, base, adapter, cfg, seed, forbidden_ids=split.test)

    steps = len(data) // cfg.batch_size
    report.note(
        f"finetune {card.name}: {len(indices)} train FOVs ({len(data)} items), {cfg.epochs} epochs x {steps} steps "
        f"of {cfg.batch_size}, {cfg.n_crops} crops, on {dev}"
    )
    bar = report.bar(cfg.epochs * steps, f"finetune {base.name}", unit="step")
    t0 = time.perf_counter()
    done_at_start: list[int] = []

    def on_epoch(record: dict) -> None:
        if not done_at_start:
            done_at_start.append(record["epoch"] - 1)
        left = cfg.epochs - record["epoch"]
        per_epoch = (time.perf_counter() - t0) / (record["epoch"] - done_at_start[0])
        text = (f"epoch {record['epoch']}/{cfg.epochs} loss {record['loss']:.4f} lr {record['lr']:.2e} "
                f"{record['images_per_s']:.1f} images/s ETA {_format_eta(left * per_epoch)}")
        bar.set_postfix_str(text)
        report.step(text)

    def on_step(step: int, total: int) -> None:
        bar.update(1)

    try:
        result = train_dino(
            cfg, student, teacher, data, seed=seed, device=dev, checkpoint=checkpoint, resume=resume,
            run_identity={**run_identity(base, adapter, cfg, dataset, split, seed), "train_content_sha256": train.digest},
            num_workers=num_workers,
            precision=precision, on_epoch=on_epoch, on_step=on_step, stop_after_epoch=stop_after_epoch,
        )
    finally:
        bar.close()
    finished = len(result.history) >= cfg.epochs
    if rank == 0:
        from ocbench._io import atomic_write, write_error

        try:
            with atomic_write(run_dir / "history.json") as fh:
                json.dump(result.history, fh, indent=1)
            if result.history:
                plot_loss(result.history, run_dir / "loss.png", card.name)
        except OSError as exc:
            raise write_error(run_dir, exc, "the fine-tuning history") from None
        if finished:
            _write_weights(folder, card, result.teacher_backbone, result.history, train)
    if _world()[1] > 1:
        import torch.distributed as dist

        dist.barrier()
    return FineTuneOutcome(card, folder, run_dir, result.history, True, len(indices),
                           time.perf_counter() - started, result.images_per_s)


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
# the command (``ocbench finetune``), here so the CLI stays a thin caller


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
) -> FineTuneOutcome | None:
    """What ``ocbench finetune`` does once names are resolved (``config``: the settings, parsed once
    by the command); returns None on processes other than rank 0."""
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
            num_workers=augmentation_workers(workers, device), precision=precision, progress=Progress(rank == 0),
        )
        return outcome if rank == 0 else None
    finally:
        if distributed:
            import torch.distributed as dist

            dist.destroy_process_group()
