"""What a grid runs: cells as the user named them (:class:`RunSpec`), how to run them
(:class:`RunOptions`), and cells resolved into objects (:class:`Cell`).

:func:`expand_grid` crosses names into specs; :func:`resolve_cells` resolves every name once and
checks the whole grid (names, channel specs, settings, tracks, optional dependencies, two cells
that would write one entry) before any work, expanding swept settings into one cell per value.
Also the demo's grid. Nothing here loads weights or imports torch.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence, Union

from ocbench.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from ocbench.backbones.adapters import ChannelAdapter
    from ocbench.backbones.card import BackboneCard
    from ocbench.backbones.loader import BackboneIdentity
    from ocbench.data.cards import DatasetCard
    from ocbench.tasks.base import Task, TaskConfig


@dataclass(frozen=True)
class RunSpec:
    """One cell of the benchmark grid, as the user named it. ``backbone`` and ``channels`` may also
    be objects already resolved (a BackboneCard, a ChannelAdapter): the runner uses them as they are."""

    backbone: "str | BackboneCard"
    task: str = "fov-mlp"
    channels: "str | ChannelAdapter | None" = None  # None: the card's default strategy
    track: str = "paper"
    #: Task settings, "key=value"; a comma list for a setting that takes one value is a sweep.
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunOptions:
    """How to run (never changes a result, except ``seed`` and ``precision``)."""

    output_dir: Path
    seed: int = 0
    device: str = "auto"
    batch_size: int = 16
    num_workers: int | None = None  # None: embeddings.default_workers for the device
    cache_dir: Path | None = None
    overwrite: bool = False
    split_file: Path | None = None
    progress: bool = True
    precision: str = "fp32"
    recompute: bool = False
    threads: int | None = None
    #: How a caller replaces an existing entry or keeps both, in its own words (CLI flags by default).
    replace_hint: str = "pass --overwrite to replace it or --output DIR to keep both"


#: A task setting as an entry records it (JSON: lists for tuples).
Setting = Union[bool, int, float, str, None, list]


@dataclass(frozen=True)
class Cell:
    """One grid cell resolved into objects: card, adapter, task config, track."""

    spec: RunSpec
    card: "BackboneCard"
    adapter: "ChannelAdapter"
    task: "Task"  # with the dataset's settings and the overrides applied
    overrides: dict[str, Setting]
    identity: "BackboneIdentity | None"  # weights sha256 and revision, known before any work
    #: The backbone the entry records when the task derives one from ``card`` (fine-tuning): named
    #: by the task's ``derived_backbone`` before any work, so the entry's key is known up front.
    entry_card: "BackboneCard | None" = None

    @property
    def track(self) -> str:
        return self.spec.track

    @property
    def recorded_card(self) -> "BackboneCard":
        return self.entry_card if self.entry_card is not None else self.card

    @property
    def key(self) -> str:
        return self.key_for(0)

    def key_for(self, seed: int) -> str:
        """The entry key of this cell run with ``seed`` (seeds other than 0 end in ``__seed<N>``):
        computed here, once per cell run, and handed to the entry."""
        from ocbench.benchmark.entry import entry_key

        return entry_key(self.recorded_card.name, self.adapter.key, self.task.name, self.track, seed)

    def label(self) -> str:
        return f"{self.recorded_card.name} · {self.adapter.key} · {self.task.name} · {self.track}"


def expand_grid(
    backbones: Sequence[str],
    tasks: Sequence[str],
    channels: Sequence[str | None],
    tracks: Sequence[str],
    overrides: Sequence[str] = (),
) -> list[RunSpec]:
    """Every combination, backbone-major (one model load and extraction per backbone/adapter).

    Names only, nothing resolved: a comma list given to a setting that takes one value
    (``--set fraction=0.2,0.4,1.0``) is a sweep, which :func:`resolve_cells` expands into one cell
    per value (per combination of values when several settings are swept) once it holds the task.
    """
    return [
        RunSpec(backbone=b, task=t, channels=c, track=tr, overrides=tuple(overrides))
        for b, c, tr, t in itertools.product(backbones, channels or [None], tracks, tasks)
    ]


def _swept_overrides(task_class: "type[TaskConfig]", overrides: Sequence[str]) -> list[tuple[str, ...]]:
    import typing

    hints = typing.get_type_hints(task_class)

    def takes_many(hint: object) -> bool:
        return typing.get_origin(hint) is tuple or any(typing.get_origin(a) is tuple for a in typing.get_args(hint))

    choices = []
    for item in overrides:
        key, sep, raw = str(item).partition("=")
        hint = hints.get(key.strip())
        if sep and hint is not None and "," in raw and not takes_many(hint):
            choices.append([f"{key.strip()}={value.strip()}" for value in raw.split(",") if value.strip()])
        else:
            choices.append([item])
    return [tuple(combination) for combination in itertools.product(*choices)]



@dataclass
class _Names:
    """Each name of a grid resolved once: backbone cards, task classes, parsed settings."""

    cards: dict["str | BackboneCard", "BackboneCard"] = field(default_factory=dict)
    classes: dict[str, "type[TaskConfig]"] = field(default_factory=dict)
    settings: dict[tuple[str, tuple[str, ...]], dict[str, Setting]] = field(default_factory=dict)
    specs: list[RunSpec] = field(default_factory=list)  # the grid with its sweeps expanded


def _resolve_names(specs: Sequence[RunSpec]) -> _Names:
    """What needs no dataset: backbone and task names, settings (parsed once per task and
    settings), tracks, explicit channel maps' targets; sweeps expanded."""
    from dataclasses import replace

    from ocbench.backbones.adapters import ChannelAdapter, parse_channels
    from ocbench.backbones.card import BackboneCard
    from ocbench.backbones.derive import resolve_backbone
    from ocbench.backbones.specs import spec_channel_names
    from ocbench.benchmark.splits import TRACKS
    from ocbench.tasks import get_task_class

    names = _Names()
    for spec in specs:
        if spec.backbone not in names.cards:  # a card given as such is used as it is
            names.cards[spec.backbone] = (spec.backbone if isinstance(spec.backbone, BackboneCard)
                                          else resolve_backbone(spec.backbone))
        if spec.task not in names.classes:
            names.classes[spec.task] = get_task_class(spec.task)
        task_class = names.classes[spec.task]
        if spec.track not in TRACKS:
            raise ConfigError(f"unknown split track {spec.track!r}; valid: {', '.join(TRACKS)}")
        if spec.channels is not None and not isinstance(spec.channels, ChannelAdapter):
            named = spec_channel_names(spec.channels)
            if named:  # an explicit map: its targets, against the channels it names
                parse_channels(spec.channels, names.cards[spec.backbone], named)
        for overrides in _swept_overrides(task_class, spec.overrides):
            if (spec.task, overrides) not in names.settings:
                settings = task_class.parse_overrides(overrides)
                task_class().with_settings(settings)  # the whole config checked at the protocol's values
                names.settings[(spec.task, overrides)] = settings
            names.specs.append(replace(spec, overrides=overrides))
    return names


def _adapter_for(channels: "str | ChannelAdapter | None", card: "BackboneCard", dataset_card: "DatasetCard") -> "ChannelAdapter":
    """The channel spec parsed for the card and dataset; an adapter given as an object is checked to fit them."""
    from ocbench.backbones.adapters import ChannelAdapter, parse_channels

    if not isinstance(channels, ChannelAdapter):
        return parse_channels(channels, card, dataset_card)
    if channels.in_chans != card.in_chans:
        raise ConfigError(f"channel adapter {channels.key} is for {channels.in_chans} input channels; {card.name} has {card.in_chans}")
    if tuple(c.lower() for c in channels.channels) != tuple(c.lower() for c in dataset_card.channel_names):
        raise ConfigError(f"channel adapter {channels.key} is for the channels {', '.join(channels.channels)}; "
                          f"dataset {dataset_card.name!r} has {', '.join(dataset_card.channel_names)}")
    return channels


def resolve_cells(specs: Sequence[RunSpec], dataset_card: "DatasetCard | Callable[[], DatasetCard]") -> list[Cell]:
    """Resolve every cell's names into objects, once, and check them (fast: no torch, no weights).

    Names, channel specs (against the dataset card's channels), task settings, tracks and each
    task's optional dependencies are checked for the whole grid before anything runs, so a typo in
    the last cell does not surface after an hour of work on the first ones. ``dataset_card`` may be
    a function that resolves it (called once): then what needs no dataset (backbone and task names,
    settings, tracks, explicit channel maps' targets) is checked first, so a typo is named before a
    missing dataset. A swept setting (``fraction=0.2,0.4``) gives one cell per value.
    """
    names = _resolve_names(specs)
    if callable(dataset_card):
        dataset_card = dataset_card()
    adapters: dict[tuple["str | BackboneCard", "str | ChannelAdapter | None"], "ChannelAdapter"] = {}
    tasks: dict[tuple[str, tuple[str, ...]], tuple["Task", dict[str, Setting]]] = {}
    cells = []
    for spec in names.specs:
        card = names.cards[spec.backbone]
        if (spec.backbone, spec.channels) not in adapters:
            adapters[(spec.backbone, spec.channels)] = _adapter_for(spec.channels, card, dataset_card)
        if (spec.task, spec.overrides) not in tasks:
            base = names.classes[spec.task]().for_dataset(dataset_card)
            task, overrides = base.with_settings(names.settings[(spec.task, spec.overrides)])
            task.validate_for(dataset_card)
            tasks[(spec.task, spec.overrides)] = (task, overrides)
        task, overrides = tasks[(spec.task, spec.overrides)]
        cells.append(Cell(spec, card, adapters[(spec.backbone, spec.channels)], task, overrides, None))
    for task_class in names.classes.values():
        task_class.check_requirements()
    _refuse_shared_keys(cells)
    return cells


def _refuse_shared_keys(cells: Sequence[Cell]) -> None:
    """Two cells that would write one entry (a swept setting that is not part of the key, e.g.
    ``--set lr=0.001,0.01``) are refused here, before any work: otherwise the second would find the
    first's entry from other settings after the first cell's work was done. Tasks that derive the
    recorded backbone from their settings (fine-tuning) give each setting its own key."""
    first: dict[tuple[str, str, str, str], Cell] = {}
    for number, cell in enumerate(cells, start=1):
        if cell.task.derives_backbone:
            continue
        # the entry key's parts (the key itself is computed once, when the cell runs)
        other = first.setdefault((cell.card.name, cell.adapter.key, cell.task.name, cell.track), cell)
        if other is cell:
            continue
        then, now = dict(_settings_of(other.spec)), dict(_settings_of(cell.spec))
        differ = [f"{k}={then.get(k, 'default')} vs {k}={now.get(k, 'default')}"
                  for k in sorted(set(then) | set(now)) if then.get(k) != now.get(k)]
        raise ConfigError(
            f"cells {cells.index(other) + 1} and {number} of this grid would write the same entry {cell.key} "
            + (f"(they differ only in {', '.join(differ)}, which is not part of an entry's key); "
               "run each setting on its own with its own --output folder" if differ
               else "(the same cell twice); name each backbone, task, channel map and track once")
        )


def _settings_of(spec: RunSpec) -> list[tuple[str, str]]:
    return [(k.strip(), v.strip()) for k, _, v in (str(o).partition("=") for o in spec.overrides)]


#: What ``ocbench demo`` runs: both offline backbones, both probes, the paper's split track (the
#: protein track is one more command; both together would double the tour's minute).
DEMO_BACKBONES: tuple[str, ...] = ("classical-stats", "tiny-vit-random")
DEMO_TASKS: tuple[str, ...] = ("fov-mlp", "fov-linear")
DEMO_TRACKS: tuple[str, ...] = ("paper",)


def demo_specs() -> list[RunSpec]:
    """The demo grid at the protocol's own settings (the demo data is sized to show signal there)."""
    return expand_grid(DEMO_BACKBONES, DEMO_TASKS, [None], DEMO_TRACKS)
