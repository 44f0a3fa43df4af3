"""What a task is, what it returns, and the registry that finds one by name.

A task is a frozen dataclass whose fields are every number of its protocol (defaults = the
protocol), plus three class-level attributes:

- ``name``: registry name (``fov-mlp``);
- ``protocol_version``: recorded in every entry (``fov-probe/1``); bump it when a default or the
  algorithm changes, so old and new numbers are never mixed;
- ``inputs``: the kind of input ``run`` consumes. The runner asks the task what it needs instead
  of every task sharing one signature, so new kinds of task register without touching this module:

  ==================  ===========================================================================
  ``inputs``          ``run`` signature (all keyword arguments after ``*``: ``seed``, ``device``)
  ==================  ===========================================================================
  ``fov_embeddings``  ``run(features (N, D), labels (N, 17), test_idx, folds_idx, *, seed, device)``
  ==================  ===========================================================================

  Planned: ``fov_images`` for DINO fine-tuning (``run(dataset, split, backbone, ...)`` trains a
  backbone, embeds, then runs ``fov-mlp`` on the result) and ``cell_embeddings`` for the
  single-cell k-NN (``run(features, labels, groups, ...)``). Each adds a row here and a branch in
  the runner; ``TaskConfig`` itself stays as it is.

Overrides (``--set epochs=50``) go through :meth:`TaskConfig.with_overrides`, which parses each
value with the field's annotated type and re-validates the whole config.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Union

from ocbench.errors import ConfigError

__all__ = ["TaskConfig", "TaskResult", "register_task", "get_task", "list_tasks"]


@dataclass(frozen=True)
class TaskResult:
    """The outcome of one ``task.run``.

    ``metrics`` has the entry's shape verbatim (see ``ocbench.tasks.metrics``);
    ``details`` holds task-specific facts worth keeping (training set sizes, final loss, the
    learning rate actually used) and is not part of the entry schema.
    """

    task: str
    protocol_version: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    seed: int
    device: str
    wall_time_s: float
    details: dict[str, Any] = field(default_factory=dict)


class TaskConfig:
    """Base of every task config; subclasses are ``@dataclass(frozen=True)``."""

    name: ClassVar[str] = ""
    protocol_version: ClassVar[str] = ""
    inputs: ClassVar[str] = ""

    def run(self, *args: Any, seed: int = 0, device: str = "cpu") -> TaskResult:
        """Run the task on the inputs named by ``self.inputs`` (see the module docstring)."""
        raise NotImplementedError(f"task {self.name!r} does not implement run()")

    # -- config handling -------------------------------------------------------------------
    @classmethod
    def keys(cls) -> list[str]:
        """The overridable setting names, in declaration order."""
        return [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (tuples become lists)."""
        return {k: _jsonable(getattr(self, k)) for k in self.keys()}

    def protocol_deviations(self) -> dict[str, Any]:
        """Settings that differ from the protocol defaults (empty: the run is on protocol)."""
        default = type(self)()
        return {k: _jsonable(getattr(self, k)) for k in self.keys() if getattr(self, k) != getattr(default, k)}

    def with_overrides(self, assignments: Iterable[str]) -> tuple["TaskConfig", dict[str, Any]]:
        """Apply ``["key=value", ...]``; return the new config and the parsed overrides.

        Every assignment given is returned (even one equal to the default) so the entry records
        what the user asked for; :meth:`protocol_deviations` says what actually changed.
        """
        hints = typing.get_type_hints(type(self))
        valid = ", ".join(self.keys())
        changes: dict[str, Any] = {}
        for assignment in assignments:
            key, sep, raw = str(assignment).partition("=")
            key, raw = key.strip(), raw.strip()
            if not sep or not key:
                raise ConfigError(f"task {self.name}: override {assignment!r} is not key=value; valid keys: {valid}")
            if key not in self.keys():
                close = difflib.get_close_matches(key, self.keys(), n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise ConfigError(f"task {self.name}: unknown setting {key!r}{hint}; valid keys: {valid}")
            if key in changes:
                raise ConfigError(f"task {self.name}: setting {key!r} given twice; give each key once")
            try:
                changes[key] = _parse_value(raw, hints[key])
            except ValueError as exc:
                raise ConfigError(f"task {self.name}: bad value for {key}: {exc}") from None
        new = dataclasses.replace(self, **changes)  # type: ignore[type-var]  # re-runs validation
        return new, {k: _jsonable(v) for k, v in changes.items()}


def _jsonable(value: Any) -> Any:
    return [_jsonable(v) for v in value] if isinstance(value, (tuple, list)) else value


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _parse_value(raw: str, annotation: Any) -> Any:
    """Parse ``raw`` as ``annotation``: bool, int, float, str, Optional[...], tuple[T, ...]."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        if type(None) in args and raw.lower() in {"none", "null", ""}:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _parse_value(raw, inner[0])
        raise ValueError(f"unsupported setting type {annotation}")
    if origin is tuple:
        items = [s.strip() for s in raw.strip("()[] ").split(",") if s.strip()]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_parse_value(s, args[0]) for s in items)
        if len(items) != len(args):
            raise ValueError(f"expected {len(args)} comma-separated values, got {raw!r}")
        return tuple(_parse_value(s, a) for s, a in zip(items, args))
    if annotation is bool:
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise ValueError(f"expected true or false, got {raw!r}")
    if annotation is int:
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"expected an integer, got {raw!r}") from None
    if annotation is float:
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"expected a number, got {raw!r}") from None
    if annotation is str:
        return raw
    raise ValueError(f"unsupported setting type {annotation}")


# -- registry ---------------------------------------------------------------------------------
_REGISTRY: dict[str, type[TaskConfig]] = {}


def register_task(cls: type[TaskConfig]) -> type[TaskConfig]:
    """Class decorator: make ``cls`` available as ``get_task(cls.name)``."""
    if not (isinstance(cls, type) and issubclass(cls, TaskConfig) and dataclasses.is_dataclass(cls)):
        raise TypeError("register_task expects a TaskConfig dataclass")
    if not cls.name or not cls.protocol_version or not cls.inputs:
        raise TypeError(f"{cls.__name__} must set name, protocol_version and inputs")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"task {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def list_tasks() -> list[str]:
    """Registered task names, sorted."""
    return sorted(_REGISTRY)


def get_task(name: str) -> TaskConfig:
    """A task with its protocol defaults; ConfigError (with a did-you-mean) for unknown names."""
    try:
        return _REGISTRY[name]()
    except KeyError:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ConfigError(f"unknown task {name!r}; {hint}known tasks: {', '.join(list_tasks())}") from None
