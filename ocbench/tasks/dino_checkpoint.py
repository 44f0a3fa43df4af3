"""DINO training checkpoints: what one holds, its checksum, and writing, reading and restoring it.

A checkpoint is written after every epoch, atomically, with everything needed to continue bit for
bit (student, teacher, optimiser, centre, RNG states, epoch, the epoch's data order and the loss
history) and a checksum of all of it that reading verifies: a damaged or foreign file is a
one-line DataError, never a silent fresh start.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ocbench.errors import ConfigError, DataError

__all__ = [
    "CHECKPOINT_FORMAT",
    "checkpoint_checksum",
    "save_checkpoint",
    "load_checkpoint",
    "checkpoint_payload",
    "restore_checkpoint",
]

CHECKPOINT_FORMAT = "ocbench-dino-checkpoint/1"


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def checkpoint_checksum(payload: dict) -> str:
    """sha256 over everything a checkpoint holds (tensors by dtype, shape and bytes; other values by
    type and repr), its ``checksum`` field aside: a flipped byte anywhere in the state shows."""
    digest = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            tensor = value.detach().to("cpu").contiguous()
            digest.update(f"T{tensor.dtype}{tuple(tensor.shape)};".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
        elif isinstance(value, dict):
            digest.update(b"{")
            for key in sorted(value, key=str):
                feed(str(key))
                feed(value[key])
            digest.update(b"}")
        elif isinstance(value, (list, tuple)):
            digest.update(b"[")
            for item in value:
                feed(item)
            digest.update(b"]")
        else:
            digest.update(f"{type(value).__name__}:{value!r};".encode())

    feed({k: v for k, v in payload.items() if k != "checksum"})
    return digest.hexdigest()


def save_checkpoint(path: Path, payload: dict) -> None:
    """Atomic, with its checksum: a kill while writing leaves the previous epoch's checkpoint, and a
    full disk is a one-line error (torch's writer reports it as a RuntimeError) with nothing half-written."""
    from ocbench._io import atomic_path, write_error

    try:
        with atomic_path(path) as tmp:
            torch.save({**payload, "checksum": checkpoint_checksum(payload)}, tmp)
    except (OSError, RuntimeError) as exc:
        raise write_error(path, exc, "the fine-tuning checkpoint") from None


def load_checkpoint(path: Path) -> dict:
    """A checkpoint that reads back exactly as it was written; anything else is a one-line DataError
    (a damaged checkpoint is not thrown away silently: it may hold days of training)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, foreign, or holding objects we refuse to unpickle
        raise DataError(f"{path}: not a readable ocbench DINO checkpoint ({type(exc).__name__}); delete it to start over") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise DataError(f"{path}: not an ocbench DINO checkpoint (format {CHECKPOINT_FORMAT}); delete it to start over")
    if "checksum" not in payload:
        raise DataError(f"{path}: a checkpoint without a checksum (written by an older ocbench); delete it to start over")
    if payload["checksum"] != checkpoint_checksum(payload):
        raise DataError(f"{path}: damaged (its content does not match the checksum written with it); check the disk, "
                        "then delete it to start over")
    return payload


def checkpoint_payload(*, identity: str, epoch: int, student: nn.Module, teacher: nn.Module,
                       optimizer: torch.optim.Optimizer, center: torch.Tensor, device: torch.device,
                       order: np.ndarray, history: list[dict]) -> dict:
    """What the checkpoint after ``epoch`` epochs holds (its checksum is added when it is saved)."""
    return {
        "format": CHECKPOINT_FORMAT, "identity": identity, "epoch": epoch,
        "student": student.state_dict(), "teacher": teacher.state_dict(),
        "optimizer": optimizer.state_dict(), "center": center.detach().cpu(),
        "rng": _rng_state(device), "order": torch.from_numpy(order.copy()),
        "history": json.dumps(history),
    }


def restore_checkpoint(path: Path, identity: str, *, student: nn.Module, teacher: nn.Module,
                       optimizer: torch.optim.Optimizer, center: torch.Tensor,
                       device: torch.device) -> tuple[int, list[dict], np.ndarray]:
    """Load the checkpoint at ``path`` into the run's modules, optimiser, centre and RNG; returns
    (epochs done, loss history, the last epoch's data order). A checkpoint of another run
    (``identity``: its settings and data) is a ConfigError."""
    state = load_checkpoint(path)
    if state["identity"] != identity:
        raise ConfigError(
            f"{path}: written by a run with other settings or data; delete it (or run without --resume) to start over"
        )
    student.load_state_dict(state["student"])
    teacher.load_state_dict(state["teacher"])
    optimizer.load_state_dict(state["optimizer"])
    center.copy_(state["center"].to(device))
    _set_rng_state(state["rng"], device)
    return int(state["epoch"]), json.loads(state["history"]), state["order"].numpy()
