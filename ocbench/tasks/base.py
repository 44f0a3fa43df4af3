"""What a task is, what it receives and returns, and the registry that finds one by name.

A task is a frozen dataclass whose fields are every number of its protocol (defaults = the
protocol), plus class-level attributes:

- ``name``: registry name (``fov-mlp``);
- ``protocol_version``: recorded in every entry (``fov-probe/2``); bump it when a default or the
  algorithm changes, so old and new numbers are never mixed;
- ``main_score``: ``(eval_set, metric)`` that ranks its entries, e.g. ``("val", "macro_f1")``;
- ``axis``: the name of a setting the task sweeps within one entry (``"k"``), or None;
- ``requires``: optional Python modules it needs, imported only when it runs (a missing one is a
  one-line error naming the extra to install, and never breaks other commands);
- ``description``: one line for ``ocbench tasks list``.

Like MTEB's ``AbsTask.evaluate(model)``, a task fetches its own inputs: ``evaluate(context)``
receives a :class:`~ocbench.tasks.context.RunContext` (dataset and its card, split, backbone card
and channel adapter, a cached ``embed``, device, seed, progress) and returns a :class:`TaskResult`.
The runner knows nothing about what a task needs, so a new kind of task is one module.

Overrides (``--set epochs=50``) go through :meth:`TaskConfig.with_overrides`, which parses each
value with the field's annotated type (numbers must be finite) and re-validates the whole config.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Mapping, Protocol, Sequence, Union, runtime_checkable

from ocbench.errors import ConfigError
from ocbench.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from ocbench.backbones.adapters import ChannelAdapter
    from ocbench.backbones.card import BackboneCard
    from ocbench.data.base import ImageSplit, ItemSet
    from ocbench.data.cards import DatasetCard
    from ocbench.tasks.context import RunContext

__all__ = ["Task", "TaskConfig", "TaskResult", "TASKS", "register_task", "get_task", "get_task_class", "list_tasks"]


@dataclass(frozen=True)
class TaskResult:
    """The outcome of one ``task.evaluate``, in the entry's shape.

    ``scores``: ``{eval_set: {metric: summary}}`` (summaries from :func:`ocbench.summaries.summarize`);
    ``class_names``: the dataset's classes, the order of every per-class row;
    ``per_class``: ``{eval_set: {metric: {class: value}}}``; ``per_class_values``: ``{eval_set:
    {metric: [row per repetition]}}``; ``axis``: ``{"name", "main", "points": [{"value", "scores",
    "per_class"}]}`` for tasks that sweep a setting (then ``scores`` are the main point's);
    ``details``: task-specific facts worth printing (sizes, final loss), not part of the entry;
    ``predictions``: the per-item predictions on the evaluated items
    (:class:`ocbench.predictions.Predictions`), written beside the entry so its interval and any
    paired comparison can be computed without the model; None for a task that keeps none;
    ``references``: the chance references of the run (:func:`ocbench.chance.chance_references`:
    scores of predictors that use the labels alone, on the same split and items);
    ``feature_standardization``: what the task did to the features on the card's request
    (:mod:`ocbench.tasks.standardize`), recorded in the entry; None when the card asks for nothing.
    A task returns scores; the task's name, protocol version and settings in an entry come from
    the task the runner holds, not from here.
    """

    scores: dict[str, dict[str, dict[str, Any]]]
    class_names: tuple[str, ...]
    seed: int
    device: str
    wall_time_s: float
    per_class: dict[str, Any] = field(default_factory=dict)
    per_class_values: dict[str, Any] = field(default_factory=dict)
    axis: dict[str, Any] | None = None
    details: dict[str, Any] = field(default_factory=dict)
    predictions: Any = None
    references: list[dict[str, Any]] = field(default_factory=list)
    feature_standardization: dict[str, Any] | None = None
    #: What the task says about itself, for callers of a task outside the runner (``fov_probe.run``);
    #: entries never read them: the runner, which holds the task, records its own name, protocol
    #: version and settings.
    task: str = ""
    protocol_version: str = ""
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def metrics(self) -> dict[str, Any]:
        """Scores with per-class blocks, for code that wants one dict."""
        return {"scores": self.scores, "per_class": self.per_class, "per_class_values": self.per_class_values}


@runtime_checkable
class Task(Protocol):
    """What the runner asks of a task (MTEB's ``AbsTask`` idea): its metadata, the label modes it
    scores, how it adapts to a dataset and to ``--set`` settings, and ``evaluate(context)``.
    :class:`TaskConfig` implements it; the runner types every task as this."""

    name: ClassVar[str]
    protocol_version: ClassVar[str]
    main_score: ClassVar[tuple[str, str]]
    #: False for a main score where lower is better (an error, a distance): the board ranks by it.
    higher_is_better: ClassVar[bool]
    axis: ClassVar[str | None]
    label_modes: ClassVar[tuple[str, ...]]
    #: True when :meth:`derived_backbone` names another backbone than the one given (fine-tuning).
    derives_backbone: ClassVar[bool]

    def evaluate(self, context: "RunContext") -> TaskResult: ...

    def for_dataset(self, dataset_card: "DatasetCard") -> "TaskConfig": ...

    def validate_for(self, dataset_card: "DatasetCard") -> None: ...

    def with_settings(self, changes: Mapping[str, Any]) -> tuple["TaskConfig", dict[str, Any]]: ...

    def to_dict(self) -> dict[str, Any]: ...

    def protocol_deviations(self) -> dict[str, Any]: ...

    def derived_backbone(self, card: "BackboneCard", adapter: "ChannelAdapter", dataset: "ItemSet",
                         split: "ImageSplit", seed: int) -> "BackboneCard | None": ...


class TaskConfig:
    """Base of every task config (it implements :class:`Task`); subclasses are ``@dataclass(frozen=True)``."""

    name: ClassVar[str] = ""
    protocol_version: ClassVar[str] = ""
    main_score: ClassVar[tuple[str, str]] = ("val", "macro_f1")
    #: False for a main score where lower is better (a loss, an error rate): the board ranks it ascending.
    higher_is_better: ClassVar[bool] = True
    axis: ClassVar[str | None] = None
    requires: ClassVar[tuple[str, ...]] = ()
    #: pip extra that provides ``requires`` (named in the error when one is missing).
    extra: ClassVar[str | None] = None
    description: ClassVar[str] = ""
    #: The label modes (dataset card ``label_mode``) the task can score; others are refused.
    label_modes: ClassVar[tuple[str, ...]] = ("multilabel",)
    #: The settings the dataset card gave this config (see :meth:`for_dataset`): the protocol's
    #: values on that dataset, so they are neither overrides nor deviations.
    _dataset_settings: ClassVar[dict[str, Any]] = {}
    derives_backbone: ClassVar[bool] = False

    def evaluate(self, context: "RunContext") -> TaskResult:
        """Fetch inputs from ``context`` (a RunContext), run the protocol, return the scores."""
        raise NotImplementedError(f"task {self.name!r} does not implement evaluate()")

    def derived_backbone(self, card: "BackboneCard", adapter: "ChannelAdapter", dataset: "ItemSet",
                         split: "ImageSplit", seed: int) -> "BackboneCard | None":
        """The backbone the entry will record when the task scores one it derives from ``card``
        (set ``derives_backbone``; the runner asks before any work, for the entry's key); None: ``card``."""
        return None

    @classmethod
    def check_requirements(cls) -> None:
        """Import the optional modules the task needs; one-line ConfigError naming what to install."""
        import importlib

        for module in cls.requires:
            try:
                importlib.import_module(module)
            except ImportError:
                how = f"pip install 'ocbench[{cls.extra}]'" if cls.extra else f"pip install {module}"
                raise ConfigError(f"task {cls.name} needs the Python package {module!r}, which is not installed; run: {how}") from None

    def validate_for(self, dataset_card: "DatasetCard") -> None:
        """Refuse a dataset this task cannot evaluate (checked before any work); default: any."""

    def dataset_settings(self, dataset_card: "DatasetCard") -> dict[str, Any]:
        """The protocol's settings on this dataset: the card's ``task_defaults`` for this task (a
        subclass adds settings it derives from the card, e.g. crop sizes from the cell diameter)."""
        return dict(dataset_card.task_defaults.get(self.name, {}))

    def for_dataset(self, dataset_card: "DatasetCard") -> "TaskConfig":
        """This config on ``dataset_card``: refuses a label mode the task does not score (one line),
        and applies :meth:`dataset_settings` (check the final config with :meth:`validate_for`, after
        any overrides)."""
        if dataset_card.label_mode not in self.label_modes:
            raise ConfigError(
                f"task {self.name} scores {' or '.join(self.label_modes)} labels; dataset {dataset_card.name!r} is "
                f"{dataset_card.label_mode} (label_mode in its card): pick a task that scores it (`ocbench tasks list`)"
            )
        settings = self.dataset_settings(dataset_card)
        unknown = sorted(set(settings) - set(self.keys()))
        if unknown:
            raise ConfigError(f"dataset card {dataset_card.name!r}: task_defaults for {self.name} name unknown setting(s) {unknown}")
        new = dataclasses.replace(self, **settings)  # type: ignore[type-var]
        object.__setattr__(new, "_dataset_settings", settings)
        return new

    @classmethod
    def settings_table(cls) -> list[tuple[str, str, Any, str]]:
        """``(name, type, default, help)`` per setting, for ``ocbench tasks show``."""
        hints = typing.get_type_hints(cls)
        rows = []
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
            )
            rows.append((f.name, _type_name(hints[f.name]), _jsonable(default), str(f.metadata.get("help", ""))))
        return rows

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
        default = dataclasses.replace(type(self)(), **self._dataset_settings)  # type: ignore[type-var]
        return {k: _jsonable(getattr(self, k)) for k in self.keys() if getattr(self, k) != getattr(default, k)}

    def with_overrides(self, assignments: Iterable[str]) -> tuple["TaskConfig", dict[str, Any]]:
        """Apply ``["key=value", ...]``; return the new config and the parsed overrides.

        Every assignment given is returned (even one equal to the default) so the entry records
        what the user asked for; :meth:`protocol_deviations` says what actually changed.
        """
        return self.with_settings(type(self).parse_overrides(assignments))

    @classmethod
    def parse_overrides(cls, assignments: Iterable[str]) -> dict[str, Any]:
        """``["key=value", ...]`` -> ``{key: value}``, each value parsed with the field's annotated type."""
        return parse_assignments(assignments, cls.keys(), typing.get_type_hints(cls), f"task {cls.name}")

    def with_settings(self, changes: Mapping[str, Any]) -> tuple["TaskConfig", dict[str, Any]]:
        """Apply settings parsed by :meth:`parse_overrides`; return the new config (validated as a
        whole) and the overrides as the entry records them."""
        new = dataclasses.replace(self, **changes)  # type: ignore[type-var]  # re-runs validation
        object.__setattr__(new, "_dataset_settings", self._dataset_settings)
        return new, {k: _jsonable(v) for k, v in changes.items()}


def parse_assignments(assignments: Iterable[str], keys: Sequence[str], hints: Mapping[str, Any], what: str) -> dict[str, Any]:
    """``--set`` values (``["key=value", ...]``) -> ``{key: value}``, each parsed with its type in
    ``hints``; a malformed, unknown (with did-you-mean) or repeated key is a one-line error that
    starts with ``what`` ("task fov-mlp", "cell selection")."""
    valid = ", ".join(keys)
    changes: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, raw = str(assignment).partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not key:
            raise ConfigError(f"{what}: override {assignment!r} is not key=value; valid keys: {valid}")
        if key not in keys:
            close = difflib.get_close_matches(key, list(keys), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{what}: unknown setting {key!r}{hint}; valid keys: {valid}")
        if key in changes:
            raise ConfigError(f"{what}: setting {key!r} given twice; give each key once")
        try:
            changes[key] = _parse_value(raw, hints[key])
        except ValueError as exc:
            raise ConfigError(f"{what}: bad value for {key}: {exc}") from None
    return changes


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


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
            value = float(raw)
        except ValueError:
            raise ValueError(f"expected a number, got {raw!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {raw!r}")
        return value
    if annotation is str:
        return raw
    raise ValueError(f"unsupported setting type {annotation}")


# -- registry ---------------------------------------------------------------------------------
def _check_task_class(cls: Any) -> None:
    if not (isinstance(cls, type) and issubclass(cls, TaskConfig) and dataclasses.is_dataclass(cls)):
        raise ConfigError(f"a task must be a TaskConfig dataclass, got {cls!r}")
    if not cls.name or not cls.protocol_version:
        raise ConfigError(f"task class {cls.__name__} must set name and protocol_version")
    eval_set, metric = cls.main_score
    if not eval_set or not metric:
        raise ConfigError(f"task {cls.name}: main_score must be (eval_set, metric)")


def _register_builtin_tasks() -> None:
    # Lazy: a task's module (and its dependencies) is imported when the task is first used.
    TASKS.register("fov-mlp", "ocbench.tasks.fov_probe:FovMlpProbe")
    TASKS.register("fov-linear", "ocbench.tasks.fov_probe:FovLinearProbe")
    TASKS.register("sc-knn", "ocbench.tasks.sc_knn:ScKnn")
    TASKS.register("sc-knn-fov", "ocbench.tasks.sc_knn:ScKnnFov")
    TASKS.register("finetune", "ocbench.tasks.finetune:FineTune")


TASKS: Registry[type[TaskConfig]] = Registry(
    "task",
    entry_point_group="ocbench.tasks",
    check=_check_task_class,
    list_command="ocbench tasks list",
    on_first_use=_register_builtin_tasks,
)


def register_task(cls: type[TaskConfig]) -> type[TaskConfig]:
    """Class decorator: make ``cls`` available as ``get_task(cls.name)``."""
    _check_task_class(cls)
    TASKS._start()  # built-in lazy entries first, so a plugin cannot shadow them silently
    TASKS.register(cls.name, cls)
    return cls


def list_tasks() -> list[str]:
    """Registered task names, sorted."""
    return sorted(TASKS.names())


def get_task_class(name: str) -> type[TaskConfig]:
    return TASKS.get(name)


def get_task(name: str) -> TaskConfig:
    """A task with its protocol defaults; ConfigError (with a did-you-mean) for unknown names."""
    return TASKS.get(name)()
