"""DINO training settings, apart from the training code so that reading them (``ocbench tasks
list``, ``tasks show finetune``) does not import torch."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ocbench.errors import ConfigError

__all__ = ["DinoConfig"]


@dataclass(frozen=True)
class DinoConfig:
    """DINO training settings (the paper's sections 2.5 and 3.1.2-3.1.4; DINO's reference values where the paper's
    numbers are not legible). Learning rate is per 256 images: ``lr * batch_size / 256``."""

    epochs: int = field(default=100, metadata={"help": "training epochs (paper: 100 best setup, 60 ablations)"})
    fraction: float = field(default=1.0, metadata={"help": "fraction of the split's train part used (seeded, nested)"})
    batch_size: int = field(default=64, metadata={"help": "images per optimizer step, over all processes"})
    lr: float = field(default=5e-4, metadata={"help": "peak learning rate per 256 images"})
    lr_reference_batch: int = field(default=256, metadata={"help": "the batch size lr is given for"})
    min_lr: float = field(default=1e-6, metadata={"help": "learning rate at the end of the cosine"})
    warmup_epochs: int = field(default=10, metadata={"help": "linear learning-rate warm-up epochs"})
    weight_decay: float = field(default=0.04, metadata={"help": "weight decay at the start (cosine to weight_decay_end)"})
    weight_decay_end: float = field(default=0.4, metadata={"help": "weight decay at the end of the cosine"})
    betas: tuple[float, float] = field(default=(0.9, 0.999), metadata={"help": "AdamW moment decay rates"})
    momentum_teacher: float = field(default=0.996, metadata={"help": "teacher EMA momentum at the start (cosine to 1)"})
    out_dim: int = field(default=65536, metadata={"help": "DINO head output dimension"})
    head_hidden_dim: int = field(default=2048, metadata={"help": "width of the DINO head's hidden layers"})
    head_bottleneck_dim: int = field(default=256, metadata={"help": "L2-normalised bottleneck before the head's last layer"})
    head_layers: int = field(default=3, metadata={"help": "layers of the DINO head's MLP"})
    norm_last_layer: bool = field(default=True, metadata={"help": "weight-normalise the head's last layer with its scale fixed"})
    warmup_teacher_temp: float = field(default=0.04, metadata={"help": "teacher temperature at the start"})
    teacher_temp: float = field(default=0.07, metadata={"help": "teacher temperature after the warm-up"})
    warmup_teacher_temp_epochs: int = field(default=30, metadata={"help": "epochs of the linear teacher-temperature warm-up"})
    student_temp: float = field(default=0.1, metadata={"help": "student temperature"})
    center_momentum: float = field(default=0.9, metadata={"help": "EMA momentum of the teacher output's centre"})
    clip_grad: float = field(default=3.0, metadata={"help": "per-parameter gradient norm clip (0: off)"})
    freeze_last_layer: int = field(default=1, metadata={"help": "epochs with the head's last layer frozen"})
    drop_path_rate: float = field(default=0.1, metadata={"help": "stochastic depth of the student backbone"})
    global_crop_size: int = field(default=224, metadata={"help": "side of the 2 global crops, px"})
    global_crop_scale: tuple[float, float] = field(default=(0.4, 1.0), metadata={"help": "area fraction of the FOV a global crop covers"})
    local_crops: int = field(default=8, metadata={"help": "number of local crops per image"})
    local_crop_size: int = field(default=96, metadata={"help": "side of the local crops, px"})
    local_crop_scale: tuple[float, float] = field(default=(0.05, 0.4), metadata={"help": "area fraction of the FOV a local crop covers"})
    flip_p: float = field(default=0.5, metadata={"help": "probability of each of the horizontal and vertical flips"})
    warp_p: float = field(default=0.5, metadata={"help": "probability of a random smooth warp (cell warping) per crop"})
    warp_strength: float = field(default=0.05, metadata={"help": "warp amplitude as a fraction of the crop size"})
    intensity_jitter: float = field(default=0.2, metadata={"help": "per-channel brightness/contrast jitter (fraction)"})

    def __post_init__(self) -> None:
        name = getattr(self, "name", "") or "dino"

        def bad(key: str, what: str) -> ConfigError:
            return ConfigError(f"{name}: {key} must be {what}, got {getattr(self, key)!r}")

        for key in ("epochs", "batch_size", "lr_reference_batch", "out_dim", "head_hidden_dim",
                    "head_bottleneck_dim", "global_crop_size", "local_crop_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad(key, "an integer >= 1")
        for key in ("warmup_epochs", "warmup_teacher_temp_epochs", "freeze_last_layer", "local_crops"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise bad(key, "an integer >= 0")
        if self.head_layers < 1:
            raise bad("head_layers", "an integer >= 1")
        if not 0 < self.fraction <= 1:
            raise bad("fraction", "in (0, 1]")
        for key in ("lr", "warmup_teacher_temp", "teacher_temp", "student_temp"):
            if not 0 < getattr(self, key) <= 10:
                raise bad(key, "in (0, 10]")
        if not 0 <= self.min_lr <= self.lr:
            raise bad("min_lr", "in [0, lr]")
        for key in ("weight_decay", "weight_decay_end", "clip_grad"):
            if not 0 <= getattr(self, key) <= 100:
                raise bad(key, "in [0, 100]")
        for key in ("momentum_teacher", "center_momentum", "flip_p", "warp_p", "drop_path_rate"):
            if not 0 <= getattr(self, key) <= 1:
                raise bad(key, "in [0, 1]")
        if not 0 <= self.warp_strength <= 0.5:
            raise bad("warp_strength", "in [0, 0.5]")
        if not 0 <= self.intensity_jitter < 1:
            raise bad("intensity_jitter", "in [0, 1)")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise bad("betas", "two numbers in [0, 1)")
        for key in ("global_crop_scale", "local_crop_scale"):
            low, high = getattr(self, key)
            if not 0 < low <= high <= 1:
                raise bad(key, "two numbers 0 < low <= high <= 1")

    @property
    def effective_lr(self) -> float:
        return self.lr * self.batch_size / self.lr_reference_batch

    @property
    def n_crops(self) -> int:
        return 2 + self.local_crops

    def training_dict(self) -> dict[str, Any]:
        """The DINO settings alone (JSON-ready): what a checkpoint and a derived card record."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(DinoConfig)}


def _jsonable(value: Any) -> Any:
    return [_jsonable(v) for v in value] if isinstance(value, (tuple, list)) else value
