"""In-memory models (``ocbench.evaluate(model, card=...)``): a ``memory:<token>`` source for this process.

A model handed to the Python API is kept here under a token, and its card's ``source`` becomes
``memory:<token>``, so the runner, the embedding cache and the entry treat it like any other card,
with no special case. Nothing vouches for such weights: entries say "unverified in-memory
weights" and record, for a ``torch.nn.Module``, the sha256 of its ``state_dict`` (names, dtypes,
shapes and bytes).

The token keys the embedding cache. For a module it is computed from

- the ``state_dict`` (the sha256 above);
- every submodule's path and class (module and qualified name);
- every submodule's plain attributes: numbers, strings, booleans, None, enums, tensors (dtype, shape,
  bytes; so also non-persistent buffers) and tuples, lists and dicts of them, e.g. timm's
  ``global_pool``. A function-valued attribute counts by its qualified name, any other object by
  its type only.

Not covered: the source code of ``forward`` (only the class names), forward hooks, what such other
objects hold, and state outside the module (globals, closures). Two modules that differ only there share cached
embeddings: evaluate such a model under another card name, or with its own ``cache_dir``.

A module with an empty ``state_dict`` (no parameters, no buffers) and a plain callable have no
weights to hash: their token is unique to the call, so their embeddings are never reused by
another call, and their entries record no weights sha256.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import uuid
from typing import Any, Callable

import torch
from torch import nn

from ocbench._io import json_sha256
from ocbench.backbones.card import BackboneCard
from ocbench.errors import ConfigError, DataError

__all__ = ["MEMORY_NOTE", "state_dict_sha256", "module_config_sha256", "in_memory_card", "lookup", "CallableFeatures"]

#: What entries and the board say about weights of an in-memory model.
MEMORY_NOTE = "unverified in-memory weights (sha256 of the model's state_dict)"
MEMORY_NOTE_CALLABLE = "unverified in-memory model (a callable or a module with an empty state_dict: nothing hashed)"

_MODELS: dict[str, tuple[Any, str | None, str]] = {}


def state_dict_sha256(module: nn.Module) -> str:
    """sha256 over the module's state_dict in key order: each name, dtype, shape and the raw bytes."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _plain(value: Any, depth: int = 0) -> Any:
    """A JSON-ready stand-in for an attribute value (see the module docstring for what counts)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, enum.Enum):
        return repr(value)
    if isinstance(value, torch.Tensor):
        try:
            tensor = value.detach().to("cpu").contiguous()
            data = tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        except (RuntimeError, TypeError):  # meta, sparse, ...: no bytes to read
            return ["tensor", str(value.dtype), list(value.shape), str(value.layout), str(value.device)]
        return ["tensor", str(tensor.dtype), list(tensor.shape), hashlib.sha256(data).hexdigest()]
    if isinstance(value, (tuple, list)) and depth < 8:
        return [type(value).__name__, [_plain(v, depth + 1) for v in value]]
    if isinstance(value, dict) and depth < 8:
        return ["dict", sorted(([str(k), _plain(v, depth + 1)] for k, v in value.items()), key=lambda kv: kv[0])]
    if callable(value) and hasattr(value, "__qualname__"):
        return ["callable", f"{getattr(value, '__module__', '')}.{value.__qualname__}"]
    return ["object", f"{type(value).__module__}.{type(value).__qualname__}"]


def module_config_sha256(module: nn.Module) -> str:
    """sha256 over what besides the state_dict decides a module's output and can be read safely:
    each submodule's path, class and plain attributes (non-persistent buffers included)."""
    described = []
    for path, sub in module.named_modules(remove_duplicate=False):
        kind = type(sub)
        attributes = {k: _plain(v) for k, v in vars(sub).items() if not k.startswith("_") and k != "training"}
        buffers = {k: _plain(v) for k, v in sub._buffers.items() if k in sub._non_persistent_buffers_set}
        described.append([path, f"{kind.__module__}.{kind.__qualname__}", sorted(attributes.items()), sorted(buffers.items())])
    return json_sha256(described, default=str)  # no dicts in it (_plain makes them lists): key order cannot matter


def in_memory_card(model: nn.Module | Callable, card: BackboneCard) -> BackboneCard:
    """``card`` with ``source="memory:<token>"`` for ``model`` (kept for the life of the process)."""
    if not callable(model):
        raise ConfigError(f"model must be a torch.nn.Module or a callable batch -> (N, D) features, got {type(model).__name__}")
    if not isinstance(card, BackboneCard):
        raise ConfigError(f"card must be a BackboneCard, got {type(card).__name__}")
    kind = type(model)
    code = f"{kind.__module__}.{kind.__qualname__}"
    # a module without a state_dict has nothing to hash: unique to the call, like a plain callable
    sha = state_dict_sha256(model) if isinstance(model, nn.Module) and model.state_dict() else None
    token = f"{sha[:16]}-{module_config_sha256(model)[:16]}" if sha else uuid.uuid4().hex
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
        out = self._as_features(out, x)
        if out.ndim != 2 or out.shape[0] != x.shape[0] or out.shape[1] != self.feature_dim:
            raise DataError(
                f"in-memory model for '{self.card_name}' returned shape {tuple(out.shape)} for {x.shape[0]} images; "
                f"expected ({x.shape[0]}, {self.feature_dim}) (the card's feature_dim)"
            )
        return out.to(device=x.device, dtype=torch.float32)

    def _as_features(self, out: Any, x: torch.Tensor) -> torch.Tensor:
        """The model's output as a real tensor; anything else is a one-line error saying what to return."""
        expected = f"a real-valued tensor (or array) of shape ({x.shape[0]}, {self.feature_dim})"
        if isinstance(out, (tuple, list, dict)):
            kind = type(out).__name__
            raise DataError(
                f"in-memory model for '{self.card_name}' returned a {kind}; it must return {expected}: "
                "wrap it so forward returns only the features (e.g. lambda x: model(x)[0])"
            )
        try:
            out = torch.as_tensor(out)
        except (TypeError, ValueError, RuntimeError):
            raise DataError(
                f"in-memory model for '{self.card_name}' returned a {type(out).__name__}; it must return {expected}"
            ) from None
        if out.is_complex():
            raise DataError(
                f"in-memory model for '{self.card_name}' returned complex values ({out.dtype}); it must return {expected}: "
                "take the part you mean (e.g. .abs() or .real) inside the model"
            )
        if not (out.is_floating_point() or out.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)):
            raise DataError(f"in-memory model for '{self.card_name}' returned {out.dtype} values; it must return {expected}")
        return out
