"""The runner: backbone card -> channel adapter -> cached embeddings -> split -> task -> entry.

``run_grid`` is what ``ocbench run`` calls; ``ocbench demo`` and ``ocbench sweep-channels`` are
grids too. Every (backbone, channel strategy, task, split track) cell writes one entry JSON; a cell
whose entry already exists is skipped unless ``overwrite``, so a killed grid resumes where it
stopped (and a killed extraction resumes from its last shard, see ``embeddings.py``).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ocbench.errors import ConfigError
from ocbench.reported import PAPER_MIN_GRADE

__all__ = ["RunSpec", "RunOutcome", "RunOptions", "expand_grid", "run_one", "run_grid", "split_for"]


@dataclass(frozen=True)
class RunSpec:
    """One cell of the benchmark grid."""

    backbone: str
    task: str = "fov-mlp"
    channels: str | None = None  # None: the card's default strategy
    track: str = "paper"
    overrides: tuple[str, ...] = ()  # task settings, "key=value"


@dataclass(frozen=True)
class RunOptions:
    """How to run (never changes a result, except ``seed``)."""

    output_dir: Path
    seed: int = 0
    device: str = "auto"
    batch_size: int = 16
    num_workers: int = 0
    cache_dir: Path | None = None
    overwrite: bool = False
    split_file: Path | None = None
    dataset_name: str = "opencell"
    progress: bool = True


@dataclass
class RunOutcome:
    spec: RunSpec
    path: Path
    entry: Any  # ocbench.benchmark.entry.Entry
    skipped: bool = False
    details: dict[str, Any] = field(default_factory=dict)


def expand_grid(
    backbones: Sequence[str],
    tasks: Sequence[str],
    channels: Sequence[str | None],
    tracks: Sequence[str],
    overrides: Sequence[str] = (),
) -> list[RunSpec]:
    """Every combination, backbone-major (one model load and extraction per backbone/adapter)."""
    return [
        RunSpec(backbone=b, task=t, channels=c, track=tr, overrides=tuple(overrides))
        for b, c, tr, t in itertools.product(backbones, channels or [None], tracks, tasks)
    ]


def split_for(dataset, track: str, options: RunOptions):
    """The split for this dataset and track: ``options.split_file`` if given, else made from
    (manifest, seed) and saved beside the entries, so every entry's split sha points at a file."""
    from ocbench.benchmark.splits import TRACKS, load_split, make_split

    if options.split_file is not None:
        split = load_split(options.split_file, manifest=dataset.manifest, dataset_version=dataset.version)
        if split.track != track:
            raise ConfigError(
                f"{options.split_file}: split track is {split.track!r} but --split {track} was asked; "
                "pass the matching --split or another --split-file"
            )
        return split
    if track not in TRACKS:
        raise ConfigError(f"unknown split track {track!r}; valid: {', '.join(TRACKS)}")
    split = make_split(dataset.manifest, track=track, seed=options.seed)
    path = options.output_dir / "splits" / f"{track}-seed{options.seed}-{dataset.version[:12]}.json"
    if not path.exists() or path.read_bytes() != split.to_json_bytes():
        split.save(path)  # the file beside the entries is always the split their sha256 names
    return split


def _entry_path(spec: RunSpec, adapter_key: str, output_dir: Path) -> tuple[str, Path]:
    from ocbench.benchmark.entry import entry_key

    key = entry_key(spec.backbone, adapter_key, spec.task, spec.track)
    return key, output_dir / f"{key}.json"


def _dataset_block(dataset, name: str) -> dict[str, Any]:
    """The entry's ``dataset``: which data, which labels (grade policy and annotation table)."""
    from ocbench._io import sha256_file

    source = Path(dataset.annotation_source)
    return {
        "name": name,
        "version": dataset.version,
        "n_items": len(dataset),
        "min_grade": dataset.min_grade,
        "annotations": source.name if source.is_file() else None,
        "annotations_sha256": sha256_file(source) if source.is_file() else None,
    }


def validate_specs(specs: Sequence[RunSpec], options: RunOptions) -> None:
    """Check every grid cell (names, channel specs, settings, track, device) before any runs, so a
    typo in the last cell does not surface after an hour of work on the first ones."""
    from ocbench.backbones.adapters import parse_channels
    from ocbench.backbones.cards import get_card
    from ocbench.backbones.loader import resolve_device
    from ocbench.benchmark.splits import TRACKS
    from ocbench.tasks import get_task

    resolve_device(options.device)
    for spec in specs:
        card = get_card(spec.backbone)
        parse_channels(spec.channels, card)
        task, _ = get_task(spec.task).with_overrides(spec.overrides)
        if task.inputs != "fov_embeddings":
            raise ConfigError(f"task {task.name} needs {task.inputs!r} inputs, which `ocbench run` cannot provide yet")
        if spec.track not in TRACKS:
            raise ConfigError(f"unknown split track {spec.track!r}; valid: {', '.join(TRACKS)}")


def _check_same_run(existing, path: Path, *, card, task, overrides: dict, seed: int, dataset, split) -> None:
    """An existing entry is only reused for the very same run; anything else would be mislabelled.

    The card covers the architecture and pinned weights (revision, sha256); converted or locally
    trained weights that change under the same card need --overwrite.
    """
    card_now = json.loads(json.dumps(card.to_dict(), default=str))
    differences = [
        what
        for what, have, want in (
            ("backbone card", existing.backbone.card, card_now),
            ("protocol version", existing.protocol_version, task.protocol_version),
            ("task settings", existing.task_config, task.to_dict()),
            ("overrides", existing.overrides, overrides),
            ("seed", existing.seed, seed),
            ("dataset version", existing.dataset.version, dataset.version),
            ("split", existing.split.sha256, split.sha256),
        )
        if have != want
    ]
    if differences:
        raise ConfigError(
            f"{path}: an entry with this key exists from a run with other {', '.join(differences)}; "
            "pass --overwrite to replace it or --output DIR to keep both"
        )


def run_one(spec: RunSpec, dataset, options: RunOptions) -> RunOutcome:
    """Run one grid cell and write its entry; skip when the entry exists (unless overwrite)."""
    from ocbench.backbones.adapters import parse_channels
    from ocbench.backbones.cards import get_card
    from ocbench.benchmark.entry import environment_info, load_entry, now_iso, write_entry
    from ocbench.tasks import get_task

    card = get_card(spec.backbone)
    adapter = parse_channels(spec.channels, card)
    task, overrides = get_task(spec.task).with_overrides(spec.overrides)
    if task.inputs != "fov_embeddings":
        raise ConfigError(f"task {task.name} needs {task.inputs!r} inputs, which `ocbench run` cannot provide yet")

    key, path = _entry_path(spec, adapter.key, options.output_dir)
    split = split_for(dataset, spec.track, options)
    if path.exists() and not options.overwrite:
        existing = load_entry(path)
        _check_same_run(
            existing, path, card=card, task=task, overrides=overrides, seed=options.seed, dataset=dataset, split=split
        )
        return RunOutcome(spec, path, existing, skipped=True)

    from ocbench.benchmark.embeddings import extract_embeddings

    embeddings = extract_embeddings(
        dataset, card, adapter,
        batch_size=options.batch_size, device=options.device, num_workers=options.num_workers,
        cache_dir=options.cache_dir, progress=options.progress,
    )
    test_idx, folds_idx = split.indices(embeddings.fov_ids)
    device = embeddings.meta.get("device") if options.device == "auto" else options.device
    result = task.run(
        embeddings.features, dataset.labels, test_idx, folds_idx,
        seed=options.seed, device=device or "cpu", progress=options.progress,
    )
    meta = embeddings.meta
    entry = {
        "protocol_version": result.protocol_version,
        "task": task.name,
        "task_config": result.config,
        "overrides": overrides,
        "off_protocol": bool(overrides) or bool(task.protocol_deviations()) or dataset.min_grade != PAPER_MIN_GRADE,
        "backbone": {
            "name": card.name,
            "source": card.source,
            "arch": card.arch,
            "card": card.to_dict(),
            "weights_sha256": meta.get("weights_sha256"),
            "revision": meta.get("revision"),
        },
        "channels": adapter.to_dict(),
        "dataset": _dataset_block(dataset, options.dataset_name),
        "split": {"track": split.track, "seed": split.seed, "sha256": split.sha256},
        "metrics": result.metrics,
        "seed": options.seed,
        "environment": environment_info(result.device),
        "timings": {
            "extraction_s": float(meta.get("wall_time_s", 0.0)),
            "extraction_cached": bool(meta.get("cache_hit")),
            "task_s": float(result.wall_time_s),
        },
        "created": now_iso(),
        "key": key,
    }
    written = write_entry(entry, options.output_dir)
    return RunOutcome(spec, written, load_entry(written), details={"embeddings": meta, **result.details})


def run_grid(specs: Iterable[RunSpec], dataset, options: RunOptions, *, on_done=None) -> list[RunOutcome]:
    """Run every spec in order; ``on_done(outcome)`` is called after each (for printing)."""
    specs = list(specs)
    validate_specs(specs, options)
    outcomes = []
    for spec in specs:
        outcome = run_one(spec, dataset, options)
        outcomes.append(outcome)
        if on_done is not None:
            on_done(outcome)
    return outcomes



#: What ``ocbench demo`` runs: both offline backbones, both probes, both split tracks.
DEMO_BACKBONES: tuple[str, ...] = ("classical-stats", "tiny-vit-random")
DEMO_TASKS: tuple[str, ...] = ("fov-mlp", "fov-linear")
DEMO_TRACKS: tuple[str, ...] = ("paper", "protein")
#: The protocol's learning rate is tuned for ~5,500 training FOVs (300 epochs of ~11 steps); the
#: demo has ~140, so 300 epochs are 300 steps and the probes barely move from their start. A
#: larger rate lets the demo show real signal; the entries record it and are marked off-protocol.
DEMO_OVERRIDES: tuple[str, ...] = ("lr=1e-3",)


def demo_specs() -> list[RunSpec]:
    return expand_grid(DEMO_BACKBONES, DEMO_TASKS, [None], DEMO_TRACKS, DEMO_OVERRIDES)
