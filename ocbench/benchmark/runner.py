"""The runner: resolve a grid of names into objects once, check every cell, run tasks, write entries.

``run_grid`` is what ``ocbench run`` calls; ``ocbench demo`` and ``ocbench sweep-channels`` are
grids too. Every (backbone, channel strategy, task, split track) cell writes one entry JSON.

The runner knows nothing about what a task needs: it builds a
:class:`~ocbench.tasks.context.RunContext` (dataset, split, backbone card and adapter, a cached
``embed``, device, seed, progress) and calls ``task.evaluate(context)``, so a new kind of task is
one module. What stays here: grid expansion, checking every cell before any work (names, channel
specs, settings, tracks, weights present or obtainable), reuse of an existing entry only for the
very same run (same weights too), and writing the entry. A cell whose entry exists is skipped
unless ``overwrite``, so a killed grid resumes where it stopped (and a killed extraction resumes
from its last shard, see ``embeddings.py``).
"""

from __future__ import annotations

import itertools
import json
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence, Union

from ocbench.benchmark import distributed
from ocbench.data.content import listing_version
from ocbench.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from ocbench.backbones.adapters import ChannelAdapter
    from ocbench.backbones.card import BackboneCard
    from ocbench.backbones.loader import BackboneIdentity
    from ocbench.benchmark.entry import Entry
    from ocbench.data.base import ItemSet
    from ocbench.data.cards import DatasetCard
    from ocbench.benchmark.splits import Split
    from ocbench.tasks.base import Task, TaskConfig, TaskResult
    from ocbench.tasks.context import EmbeddingsLike, RunContext

__all__ = [
    "RunSpec",
    "RunOptions",
    "RunOutcome",
    "Cell",
    "expand_grid",
    "resolve_cells",
    "run_cell",
    "run_grid",
    "split_for",
    "off_protocol_reasons",
    "demo_specs",
]


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


@dataclass
class RunOutcome:
    spec: RunSpec
    path: Path
    entry: "Entry"
    skipped: bool = False
    details: dict[str, object] = field(default_factory=dict)


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


# ---------------------------------------------------------------------------------------------
# resolving and checking, before any work


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


def _with_identities(cells: Sequence[Cell], options: RunOptions) -> list[Cell]:
    """Each backbone's weights sha256 and revision, fetching weights that are missing now (before
    the first cell), and the device checked: a missing checkpoint fails before any work."""
    from dataclasses import replace

    from ocbench.backbones.loader import resolve_device, resolve_identity

    resolve_device(options.device)
    identities: dict[str, BackboneIdentity] = {}
    out = []
    for cell in cells:
        if cell.card.name not in identities:
            identities[cell.card.name] = resolve_identity(cell.card)
        out.append(replace(cell, identity=identities[cell.card.name]))
    return out


# ---------------------------------------------------------------------------------------------
# one cell


def split_for(dataset: "ItemSet", track: str, options: RunOptions):
    """The split for this dataset and track: ``options.split_file`` if given, else made from
    (manifest, seed). Nothing is written here (see :func:`_save_split`)."""
    from ocbench.benchmark.splits import TRACKS, load_split, make_split

    if options.split_file is not None:
        split = load_split(options.split_file, manifest=dataset, dataset_version=listing_version(dataset))
        if split.track != track:
            raise ConfigError(
                f"{options.split_file}: split track is {split.track!r} but --split {track} was asked; "
                "pass the matching --split or another --split-file"
            )
        return split
    if track not in TRACKS:
        raise ConfigError(f"unknown split track {track!r}; valid: {', '.join(TRACKS)}")
    return make_split(dataset, track=track, seed=options.seed)


def _save_split(split: "Split", dataset: "ItemSet", options: RunOptions) -> None:
    """Save a made split beside the entries (once an entry that names it is written), so every
    entry's split sha256 points at a file."""
    if options.split_file is not None:
        return
    path = options.output_dir / "splits" / f"{split.track}-seed{split.seed}-{listing_version(dataset)[:12]}.json"
    if not path.exists() or path.read_bytes() != split.to_json_bytes():
        split.save(path)


def off_protocol_reasons(cell: Cell, dataset: "ItemSet") -> list[str]:
    """Why this cell's result cannot stand beside on-protocol results, in words ([] when it can)."""
    reasons = []
    deviations = cell.task.protocol_deviations()
    if deviations:
        reasons.append("settings differ from the protocol: " + ", ".join(f"{k}={v}" for k, v in deviations.items()))
    elif cell.overrides:
        reasons.append("settings given with --set: " + ", ".join(sorted(cell.overrides)))
    defaults = dataset.card.reader_option_values({})
    for option, value in sorted(dataset.reader_options.items()):
        if option == "min_grade" and value != defaults[option]:
            reasons.append(f"labels from grade >= {value} only (the protocol counts grades >= {defaults[option]})")
        elif value != defaults.get(option, value):
            reasons.append(f"reader option {option}={value} (the protocol's: {defaults[option]})")
    unused = _unused_channels(cell.adapter, dataset.card.channel_names)
    if unused:
        reasons.append(f"channel map leaves out the {' and '.join(unused)} channel")
    return reasons


def _unused_channels(adapter: "ChannelAdapter", channel_names: Sequence[str]) -> tuple[str, ...]:
    """Dataset channels a ``map`` adapter leaves out (the protocol's maps place every channel)."""
    if adapter.strategy != "map":
        return ()
    return tuple(name for name, target in zip(channel_names, adapter.targets) if target is None)


def _dataset_block(dataset: "ItemSet") -> dict[str, Any]:
    """The entry's ``dataset``: which data, which labels (grade policy and annotation table)."""
    from ocbench._io import sha256_file

    source = Path(str(getattr(dataset, "annotation_source", "")))
    has_table = source.is_file()
    return {
        "name": dataset.name,
        "version": dataset.version,
        "n_items": len(dataset),
        "min_grade": dataset.reader_options.get("min_grade", 1),
        "label_mode": dataset.card.label_mode,
        "reader_options": dict(dataset.reader_options),
        "annotations": source.name if has_table else None,
        "annotations_sha256": sha256_file(source) if has_table else None,
        "card": dataset.card.to_dict(),
        "synthetic": bool(dataset.card.synthetic),
    }


def _with_entry_card(cell: Cell, dataset: "ItemSet", split: "Split", seed: int) -> Cell:
    """A task that scores a backbone it derives from the cell's (fine-tuning: ``derives_backbone``)
    names it up front through its ``derived_backbone(card, adapter, dataset, split, seed)``."""
    if not cell.task.derives_backbone:
        return cell
    from dataclasses import replace

    return replace(cell, entry_card=cell.task.derived_backbone(cell.card, cell.adapter, dataset, split, seed))


def _recorded_identity(cell: Cell) -> "BackboneIdentity | None":
    """The identity of the backbone the entry records (a derived one is resolved from its weights;
    None while they do not exist)."""
    if cell.entry_card is None:
        return cell.identity
    from ocbench.backbones.loader import resolve_identity

    try:
        return resolve_identity(cell.entry_card)
    except ConfigError:
        return None


def _backbone_block(cell: Cell, dataset_card: "DatasetCard | None" = None,
                    ident: "BackboneIdentity | None" = None) -> dict[str, Any]:
    from ocbench.backbones.provenance import not_zero_shot_reasons

    card = cell.recorded_card
    ident = ident if ident is not None else _recorded_identity(cell)
    # not_zero_shot: why the backbone is not zero-shot on this dataset ([] when it is)
    zero_shot = {"not_zero_shot": not_zero_shot_reasons(card, dataset_card)} if dataset_card is not None else {}
    return {
        "name": card.name,
        "source": card.source,
        "arch": card.arch,
        "card": json.loads(json.dumps(card.to_dict(), default=str)),
        "weights_sha256": ident.weights_sha256 if ident is not None else None,
        "revision": ident.revision if ident is not None else None,
        "weights_verified": ident.weights_verified if ident is not None else None,
        "weights_note": ident.weights_note if ident is not None else None,
        **zero_shot,
    }


def _file_settings(task: "Task") -> list[str]:
    """The task's settings that name an input file (field metadata ``file``, e.g. sc-knn's cell_labels)."""
    import dataclasses

    return [f.name for f in dataclasses.fields(task) if f.metadata.get("file")]


def _file_digests(task: "Task") -> dict[str, str]:
    """``{"<setting>_sha256": sha256}`` of each file a task setting names: the entry's ``task_config``
    records them beside the paths, so a file whose contents changed is another run."""
    from ocbench._io import sha256_file

    digests = {}
    for name in _file_settings(task):
        value = getattr(task, name)
        if not value:
            continue
        try:
            digests[f"{name}_sha256"] = sha256_file(Path(str(value)).expanduser())
        except OSError as exc:
            raise ConfigError(
                f"task {task.name}: cannot read the {name} file {value} ({exc.strerror or exc}); fix --set {name}=FILE"
            ) from None
    return digests


def _weights_missing(path: Path, cell: Cell, replace_hint: str) -> ConfigError:
    """The entry's backbone was trained by its run (fine-tuning) and its weights are gone (not "other")."""
    from ocbench.backbones.sources import local_folder

    card = cell.recorded_card
    source = card.weights_source
    where = str(local_folder(source.target)) if source.kind == "local" else card.source
    return ConfigError(
        f"{path}: the weights of this entry's backbone {card.name} ({where}) are missing; restore them to "
        f"reuse the entry, or train them again: {replace_hint}"
    )


def _content_change(recorded_version: str, dataset) -> str | None:
    """Why an entry recorded with ``recorded_version`` of this very listing is stale (its image
    files changed since), or None when that version is not this listing's (another dataset)."""
    if recorded_version == dataset.version:
        return None
    if recorded_version == getattr(dataset, "manifest_version", None):
        # Older entries recorded the manifest alone, which says nothing about the pixels.
        return "it records a dataset version of an older ocbench that did not cover the images' content"
    changes_since = getattr(dataset, "files_changed_since", None)
    changed = changes_since(recorded_version) if callable(changes_since) else None
    if changed is None:
        return None
    names = ", ".join(Path(p).name for p in changed[:3]) + (", ..." if len(changed) > 3 else "")
    return f"{len(changed)} image file(s) changed since it was computed ({names})"


def _check_same_run(existing: "Entry", path: Path, cell: Cell, *, seed: int, dataset: "ItemSet", split: "Split",
                    digests: dict[str, str] | None = None, replace_hint: str = RunOptions.replace_hint) -> str | None:
    """An existing entry is reused only for the very same run; anything else would be mislabelled.

    The same run means the same card, weights (sha256 and revision: converted, imported or
    fine-tuned weights change under the same card name), protocol, settings (and the contents of
    files they name), seed, data and split. ``digests``: :func:`_file_digests` of the task, if known.

    Returns why the entry is stale when the only difference is the content of the dataset's image
    files (same items and labels, rewritten pixels): the caller computes it again and replaces it.
    Any other difference is an error (the entry is another run, which a rerun must not replace).
    """
    ident = _recorded_identity(cell)
    if ident is None and cell.entry_card is not None and existing.backbone.weights_sha256:
        raise _weights_missing(path, cell, replace_hint)
    backbone_now = _backbone_block(cell, dataset.card, ident)
    digest_keys = {f"{name}_sha256" for name in _file_settings(cell.task)}
    settings_then = {k: v for k, v in existing.task_config.items() if k not in digest_keys}
    differences = [
        what
        for what, have, want in (
            # Fields a later ocbench added to cards (absent from the older entry) are not a difference.
            ("backbone card", existing.backbone.card, {k: v for k, v in backbone_now["card"].items()
                                                       if existing.backbone.card is None or k in existing.backbone.card}),
            # a declaration older entries lack still changes what the task computed
            ("feature standardization", (existing.backbone.card or {}).get("feature_standardization", "none"),
             backbone_now["card"].get("feature_standardization", "none")),
            ("weights (sha256)", existing.backbone.weights_sha256, backbone_now["weights_sha256"]),
            ("weights revision", existing.backbone.revision, backbone_now["revision"]),
            ("protocol version", existing.protocol_version, cell.task.protocol_version),
            ("task settings", settings_then, cell.task.to_dict()),
            ("overrides", existing.overrides, cell.overrides),
            ("seed", existing.seed, seed),
            ("dataset version", existing.dataset.version, dataset.version),
            ("split", existing.split.sha256, split.sha256),
        )
        if have != want
    ]
    for key, now in (_file_digests(cell.task) if digests is None else digests).items():
        then = existing.task_config.get(key)
        name = key[: -len("_sha256")]
        if existing.task_config.get(name) != getattr(cell.task, name):
            continue  # another file altogether: "other task settings" says so already
        if then != now:
            recorded = f"sha256 {then[:12]} then" if then else "no sha256 recorded then"
            differences.append(f"{name} file contents ({getattr(cell.task, name)}: {recorded}, {now[:12]} now)")
    stale = _content_change(existing.dataset.version, dataset) if "dataset version" in differences else None
    if stale is not None and differences == ["dataset version"]:
        return stale
    if differences:
        raise ConfigError(
            f"{path}: an entry with this key exists from a run with other {', '.join(differences)}; "
            f"{replace_hint}"
        )
    return None


def _embed(options: RunOptions, recomputed: set, identities: "dict[str, BackboneIdentity | None]",
           memo: dict[tuple[str, str, int], "EmbeddingsLike"], context: "RunContext",
           items: "ItemSet | None" = None) -> "EmbeddingsLike":
    """The context's cached ``embed``: embeddings of the dataset's FOVs (or of ``items``), computed
    once per cell and backbone (``memo``, one per cell); ``--recompute`` discards a key's cache once
    per grid, not once per cell. ``identities``: already resolved identities by card name (others
    are resolved by the embedding cache)."""
    source = context.dataset if items is None else items
    memo_key = (context.backbone.name, context.adapter.key, id(source))
    if memo_key in memo:
        return memo[memo_key]
    from ocbench.benchmark.embeddings import extract_embeddings

    key = (context.backbone.name, context.adapter.key, source.version)
    embeddings = extract_embeddings(
        source, context.backbone, context.adapter,
        batch_size=options.batch_size, device=options.device, num_workers=options.num_workers,
        cache_dir=options.cache_dir, progress=options.progress, precision=options.precision,
        recompute=options.recompute and key not in recomputed, identity=identities.get(context.backbone.name),
    )
    recomputed.add(key)
    memo[memo_key] = embeddings
    if items is None:
        context.inputs.embeddings = dict(embeddings.meta)
    else:
        context.inputs.item_embeddings.append(dict(embeddings.meta))
    return embeddings


def run_cell(
    cell: Cell, dataset: "ItemSet", options: RunOptions, *, position: str = "", recomputed: set | None = None
) -> RunOutcome:
    """Run one resolved cell and write its entry; skip when the same run's entry exists."""
    from ocbench._lock import file_lock

    split = split_for(dataset, cell.track, options)
    cell = _with_entry_card(cell, dataset, split, options.seed)
    key = cell.key_for(options.seed)
    path = options.output_dir / f"{key}.json"
    # One process per entry key: a concurrent run of the same cell waits here, then finds the entry
    # (reused if it is the same run, refused otherwise), so no result is silently replaced. Under
    # torchrun, rank 0 stands for the whole group (the other ranks only help embedding).
    main = distributed.world().main
    lock = file_lock(options.output_dir / ".locks" / f"{key}.lock", what=f"entry {key}") if main else nullcontext()
    with lock:
        return _run_cell_locked(cell, dataset, options, path, split, position=position, recomputed=recomputed)


def _run_cell_locked(cell: Cell, dataset: "ItemSet", options: RunOptions, path: Path, split: "Split", *, position: str,
                     recomputed: set | None) -> RunOutcome:
    from ocbench.backbones.loader import resolve_device
    from ocbench.benchmark.entry import build_entry, environment_info, load_entry, write_entry
    from ocbench.tasks.context import Progress, RunContext

    main = distributed.world().main
    existing = None
    digests = _file_digests(cell.task)  # before the task reads the files

    def found_same_run() -> bool:
        nonlocal existing
        if path.exists() and not options.overwrite:
            existing = load_entry(path)
            stale = _check_same_run(existing, path, cell, seed=options.seed, dataset=dataset, split=split,
                                    digests=digests, replace_hint=options.replace_hint)
            if stale is not None:
                warnings.warn(f"{path}: {stale}; computing it again (the entry is replaced)", stacklevel=2)
                existing = None
        return existing is not None

    # rank 0 decides; every rank skips the cell it skips, or stops with the error it found
    if distributed.from_main(found_same_run):
        return RunOutcome(cell.spec, path, existing, skipped=True)

    device = str(resolve_device(options.device))
    context = RunContext(
        dataset=dataset,
        split=split,
        backbone=cell.card,
        adapter=cell.adapter,
        embed_fn=partial(_embed, options, recomputed if recomputed is not None else set(), {cell.card.name: cell.identity}, {}),
        device=device,
        seed=options.seed,
        progress=Progress(options.progress, prefix=" · ".join(p for p in (position, cell.label()) if p)),
        num_workers=options.num_workers,
        precision=options.precision,
        main_first=distributed.main_first,
    )
    result = cell.task.evaluate(context)
    scored = context.scored_backbone.name if context.scored_backbone is not None else cell.card.name
    if scored != cell.recorded_card.name:
        raise RuntimeError(
            f"task {cell.task.name} scored backbone {scored!r} but named "
            f"{cell.recorded_card.name!r} beforehand (derived_backbone); they must agree"
        )
    meta = context.inputs.last  # FOV embeddings, else the items the task embedded (cell crops)
    environment = environment_info(result.device)
    environment["precision"] = meta.get("precision", options.precision)
    environment["threads"] = _torch_threads()
    entry = build_entry(
        result,
        task=cell.task,
        key=path.stem,
        task_config={**cell.task.to_dict(), **digests},  # the task the runner holds, and its files' contents
        overrides=cell.overrides,
        off_protocol_reasons=off_protocol_reasons(cell, dataset),
        backbone=_backbone_block(cell, dataset.card),
        channels=cell.adapter.to_dict(),
        dataset=_dataset_block(dataset),
        split={"track": split.track, "seed": split.seed, "sha256": split.sha256},
        seed=options.seed,
        environment=environment,
        timings={
            "extraction_s": float(meta["wall_time_s"]) if "wall_time_s" in meta else None,
            "extraction_cached": bool(meta["cache_hit"]) if "cache_hit" in meta else None,
            "task_s": float(result.wall_time_s),
            **_cost(meta),
        },
        # rank 0 alone writes (under torchrun the other ranks computed the same result)
        predictions=_write_predictions(result, options.output_dir, path.stem) if main else None,
        feature_standardization=result.feature_standardization,
    )
    if not main:  # the same result as rank 0's: it alone writes
        return RunOutcome(cell.spec, path, entry, details={"rank": distributed.world().rank})
    _save_split(split, dataset, options)
    written = write_entry(entry, options.output_dir)
    details = context.inputs.as_details()
    return RunOutcome(cell.spec, written, entry, details={**details, **result.details})


def _cost(meta: dict) -> dict[str, Any]:
    """Extraction throughput and peak memory for the entry (what the board's cost column reads)."""
    import resource
    import sys

    cost: dict[str, Any] = {
        "extraction_items": int(meta["n"]) if "n" in meta else None,
        "extraction_images_per_s": float(meta["images_per_s"]) if meta.get("images_per_s") else None,
        "extraction_device": meta.get("extraction_device"),
        "extraction_processes": int(meta.get("processes", 1)) if "n" in meta else None,
        # ru_maxrss is in KiB on Linux (bytes on macOS).
        "peak_host_memory_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                      / (2**30 if sys.platform == "darwin" else 2**20), 3),
        "peak_device_memory_gib": None,
    }
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        cost["peak_device_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        device = str(cost["extraction_device"] or "")
        if device.startswith("cuda") and not meta.get("cache_hit"):  # a cached extraction ran elsewhere maybe
            cost["extraction_device"] = f"{device} ({torch.cuda.get_device_name(device)})"
    return cost


def _write_predictions(result: "TaskResult", output_dir: Path, key: str) -> dict[str, Any] | None:
    """Write the task's per-item predictions beside the entry (atomically, before the entry that
    names them); return the entry's reference to them, or None when the task kept none."""
    predictions = result.predictions
    if predictions is None:
        return None
    from ocbench.predictions import predictions_file_name, write_predictions

    name = predictions_file_name(key)
    sha256 = write_predictions(predictions, output_dir / name)
    return {
        "file": name, "sha256": sha256, "eval_set": predictions.eval_set, "n_items": int(predictions.y_true.shape[0]),
        "n_groups": predictions.n_groups, "group": predictions.group_name,
    }


def _torch_threads() -> int | None:
    import sys

    torch = sys.modules.get("torch")
    return int(torch.get_num_threads()) if torch is not None else None


def run_grid(
    grid: Iterable[RunSpec] | Iterable[Cell],
    dataset: "ItemSet",
    options: RunOptions,
    *,
    on_done: Callable[[RunOutcome], None] | None = None,
    recomputed: set | None = None,
) -> list[RunOutcome]:
    """Run a grid in order: all specs (resolved here) or all cells from :func:`resolve_cells` (used as
    they are), never a mix; ``on_done(outcome)`` is called after each cell. ``recomputed``: the
    embedding keys ``--recompute`` has already discarded, for grids run one after another (one per
    seed) that should extract each key once."""
    grid = list(grid)
    cells = [c for c in grid if isinstance(c, Cell)]
    specs = [s for s in grid if isinstance(s, RunSpec)]
    if len(cells) + len(specs) != len(grid):
        other = next(type(g).__name__ for g in grid if not isinstance(g, (Cell, RunSpec)))
        raise ConfigError(f"run_grid takes RunSpecs or Cells, not {other}")
    if cells and specs:
        raise ConfigError(
            f"run_grid takes either RunSpecs (names, resolved here) or Cells (from resolve_cells), not a mix "
            f"({len(specs)} specs and {len(cells)} cells): resolve the specs with resolve_cells first"
        )
    if specs:
        cells = resolve_cells(specs, dataset.card)
    cells = _with_identities(cells, options)
    if options.threads is not None:
        import torch

        torch.set_num_threads(options.threads)
    outcomes: list[RunOutcome] = []
    recomputed = set() if recomputed is None else recomputed
    for i, cell in enumerate(cells, start=1):
        position = f"cell {i}/{len(cells)}" if len(cells) > 1 else ""
        outcome = run_cell(cell, dataset, options, position=position, recomputed=recomputed)
        outcomes.append(outcome)
        if on_done is not None:
            on_done(outcome)
    return outcomes


#: What ``ocbench demo`` runs: both offline backbones, both probes, the paper's split track (the
#: protein track is one more command; both together would double the tour's minute).
DEMO_BACKBONES: tuple[str, ...] = ("classical-stats", "tiny-vit-random")
DEMO_TASKS: tuple[str, ...] = ("fov-mlp", "fov-linear")
DEMO_TRACKS: tuple[str, ...] = ("paper",)


def demo_specs() -> list[RunSpec]:
    """The demo grid at the protocol's own settings (the demo data is sized to show signal there)."""
    return expand_grid(DEMO_BACKBONES, DEMO_TASKS, [None], DEMO_TRACKS)
