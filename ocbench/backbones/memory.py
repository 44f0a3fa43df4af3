"""In-memory models (``ocbench.evaluate(model, card=...)``): a ``memory:<token>`` source for this process.

A model handed to the Python API is kept here under a token, and its card's ``source`` becomes
``memory:<token>``, so the runner, the embedding cache and the entry treat it like any other card,
with no special case. Nothing vouches for such weights: entries say "unverified in-memory
weights" and record, for a ``torch.nn.Module``, the sha256 of its ``state_dict`` (names, dtypes,
shapes and bytes), which also keys the embedding cache. A plain callable has no state to hash: its
revision is unique to the call, so its embeddings are never reused by another call.
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from typing import Any, Callable

import torch
from torch import nn

from ocbench.backbones.card import BackboneCard
from ocbench.errors import ConfigError, DataError

__all__ = ["MEMORY_NOTE", "state_dict_sha256", "in_memory_card", "lookup", "CallableFeatures"]

#: What entries and the board say about weights of an in-memory model.
MEMORY_NOTE = "unverified in-memory weights (sha256 of the model's state_dict)"
MEMORY_NOTE_CALLABLE = "unverified in-memory model (a callable without a state_dict: nothing hashed)"

_MODELS: dict[str, tuple[Any, str | None, str]] = {}


def state_dict_sha256(module: nn.Module) -> str:
    """sha256 over the module's state_dict in key order: each name, dtype, shape and the raw bytes."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def in_memory_card(model: nn.Module | Callable, card: BackboneCard) -> BackboneCard:
    """``card`` with ``source="memory:<token>"`` for ``model`` (kept for the life of the process)."""
    if not callable(model):
        raise ConfigError(f"model must be a torch.nn.Module or a callable batch -> (N, D) features, got {type(model).__name__}")
    if not isinstance(card, BackboneCard):
        raise ConfigError(f"card must be a BackboneCard, got {type(card).__name__}")
    kind = type(model)
    code = f"{kind.__module__}.{kind.__qualname__}"
    sha = state_dict_sha256(model) if isinstance(model, nn.Module) else None
    token = f"{sha[:16]}-{hashlib.sha256(code.encode()).hexdigest()[:8]}" if sha else uuid.uuid4().hex
    _MODELS[token] = (model, sha, code)
    return dataclasses.replace(card, source=f"memory:{token}")


def lookup(card: BackboneCard) -> tuple[Any, str | None, str]:
    """``(model, state_dict sha256 or None, revision)`` of a ``memory:`` card."""
    token = card.source_target
    if token not in _MODELS:
        raise ConfigError(
            f"backbone '{card.name}': {card.source} is an in-memory model of another process; "
            "evaluate it with ocbench.evaluate(model, card=...) in the process that holds it"
        )
    model, sha, code = _MODELS[token]
    # the code that computes the features is part of what a result depends on
    revision = f"in-memory:{code}" if sha else f"in-memory:{code}:{token}"
    return model, sha, revision


class CallableFeatures(nn.Module):
    """``model(x) -> (N, feature_dim)`` for an in-memory model, without taking ownership of it: the
    user's module is neither moved, nor frozen, nor left in eval mode (it is put in eval mode for
    each call and restored after)."""

    def __init__(self, model: Any, card: BackboneCard):
        super().__init__()
        object.__setattr__(self, "_target", model)  # not a submodule: .to()/requires_grad leave it alone
        self.card_name = card.name
        self.feature_dim = card.feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        target = self._target
        if isinstance(target, nn.Module):
            first = next(iter(target.parameters()), None)
            inputs = x.to(first.device) if first is not None else x
            was_training = target.training
            target.eval()
            try:
                out = target(inputs)
            finally:
                target.train(was_training)
        else:
            out = target(x)
        out = torch.as_tensor(out)
        if out.ndim != 2 or out.shape[0] != x.shape[0] or out.shape[1] != self.feature_dim:
            raise DataError(
                f"in-memory model for '{self.card_name}' returned shape {tuple(out.shape)} for {x.shape[0]} images; "
                f"expected ({x.shape[0]}, {self.feature_dim}) (the card's feature_dim)"
            )
        return out.to(device=x.device, dtype=torch.float32)
