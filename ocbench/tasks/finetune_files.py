"""Where a fine-tuning run's files live, and how they are written and checked.

Two folders per run: the run folder ``<cache>/finetune/<run key>/`` (``checkpoint.pt``,
``history.json``, ``loss.png`` and ``train_files.json``, the content of the images it trains on)
and the published weights ``<cache>/weights/<derived name>/`` (``model.safetensors``,
``config.json`` in timm's Hub layout with an ``ocbench`` section, ``ocbench_card.json``). The
checks here decide whether finished weights may be reused (intact, and trained on these very
images) and whether a checkpoint may be resumed (written for the same images).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ocbench._io import read_json_or_none
from ocbench.backbones.derive import CARD_FILENAME, load_card_file, write_card_file
from ocbench.errors import ConfigError, DataError
from ocbench.tasks.finetune_identity import run_key

__all__ = [
    "TRAIN_FILES_NAME",
    "TrainFiles",
    "run_folders",
    "find_finished",
    "write_weights",
    "drop_stale_checkpoint",
    "write_history",
    "plot_loss",
]

_RUN_FILES = frozenset({"model.safetensors", "config.json", CARD_FILENAME})


def run_folders(card: Any, cache_dir: str | Path | None) -> tuple[Path, Path]:
    """(weights folder, run folder) of the run that produces ``card``."""
    from ocbench.backbones.weights_folder import folder_for
    from ocbench.paths import cache_dir as default_cache

    run_dir = Path(cache_dir if cache_dir is not None else default_cache()) / "finetune" / run_key(card)
    return folder_for(card.name, cache_dir), run_dir


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


def find_finished(folder: Path, card: Any, train: TrainFiles, run_dir: Path) -> tuple[bool, str | None]:
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


def write_weights(folder: Path, card: Any, state: dict, history: list[dict], train: TrainFiles) -> None:
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


def drop_stale_checkpoint(checkpoint: Path, train: TrainFiles, run_dir: Path, *, warned: bool = False,
                          stacklevel: int = 3) -> None:
    """A checkpoint of other training images is not resumed: it is removed, with a warning (unless
    ``warned`` already said so about the finished weights), and the run starts over; the run folder
    then lists the images this run trains on."""
    listed = (read_json_or_none(run_dir / TRAIN_FILES_NAME, dict) or {}).get("digest")
    if checkpoint.is_file() and listed != train.digest and train.digest is not None:
        if not warned:
            warnings.warn(f"{checkpoint}: {train.changes_since(run_dir, listed)} it was written; starting this run over",
                          stacklevel=stacklevel)
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



def write_history(run_dir: Path, history: list[dict], title: str) -> None:
    """The run's ``history.json`` and, once an epoch is done, its ``loss.png``."""
    from ocbench._io import atomic_write, write_error

    try:
        with atomic_write(run_dir / "history.json") as fh:
            json.dump(history, fh, indent=1)
        if history:
            plot_loss(history, run_dir / "loss.png", title)
    except OSError as exc:
        raise write_error(run_dir, exc, "the fine-tuning history") from None
