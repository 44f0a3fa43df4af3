"""The runner: resolve a grid of names into objects once, check every cell, run tasks, write entries.

``run_grid`` is what ``ocbench run`` calls; ``ocbench demo`` and ``ocbench sweep-channels`` are
grids too. Every (backbone, channel strategy, task, split track) cell writes one entry JSON.

The runner knows nothing about what a task needs: it builds a
:class:`~ocbench.tasks.context.RunContext` (dataset, split, backbone card and adapter, a cached
``embed``, device, seed, progress) and calls ``task.evaluate(context)``, so a new kind of task is
one module. What stays here: running the cells in order, each under its entry's lock, and writing
its entry. Grid expansion and checking every cell before any work (names, channel specs, settings,
tracks) are in :mod:`~ocbench.benchmark.grid`; what the entry records beside the scores in
:mod:`~ocbench.benchmark.run_record`; reuse of an existing entry only for the very same run (same
weights too) in :mod:`~ocbench.benchmark.reuse`. A cell whose entry exists is skipped unless
``overwrite``, so a killed grid resumes where it stopped (and a killed extraction resumes from its
last shard, see ``embeddings.py``).
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

from ocbench.benchmark import distributed
# What callers import from the runner (the demo's grid and Setting included), defined in grid.py
from ocbench.benchmark.grid import (
    DEMO_BACKBONES,
    DEMO_TASKS,
    DEMO_TRACKS,
    Cell,
    RunOptions,
    RunSpec,
    Setting,
    demo_specs,
    expand_grid,
    resolve_cells,
)
from ocbench.benchmark.reuse import check_same_run
from ocbench.benchmark.run_record import (
    backbone_block,
    dataset_block,
    file_digests,
    off_protocol_reasons,
    run_cost,
    save_split,
    torch_threads,
    write_entry_predictions,
)
from ocbench.data.content import listing_version
from ocbench.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from ocbench.backbones.loader import BackboneIdentity
    from ocbench.benchmark.entry import Entry
    from ocbench.data.base import ItemSet
    from ocbench.benchmark.splits import Split
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


@dataclass
class RunOutcome:
    spec: RunSpec
    path: Path
    entry: "Entry"
    skipped: bool = False
    details: dict[str, object] = field(default_factory=dict)



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
    (manifest, seed). Nothing is written here (see :func:`~ocbench.benchmark.run_record.save_split`)."""
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


def _with_entry_card(cell: Cell, dataset: "ItemSet", split: "Split", seed: int) -> Cell:
    """A task that scores a backbone it derives from the cell's (fine-tuning: ``derives_backbone``)
    names it up front through its ``derived_backbone(card, adapter, dataset, split, seed)``."""
    if not cell.task.derives_backbone:
        return cell
    from dataclasses import replace

    return replace(cell, entry_card=cell.task.derived_backbone(cell.card, cell.adapter, dataset, split, seed))


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
    digests = file_digests(cell.task)  # before the task reads the files

    def found_same_run() -> bool:
        nonlocal existing
        if path.exists() and not options.overwrite:
            existing = load_entry(path)
            stale = check_same_run(existing, path, cell, seed=options.seed, dataset=dataset, split=split,
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
    environment["threads"] = torch_threads()
    entry = build_entry(
        result,
        task=cell.task,
        key=path.stem,
        task_config={**cell.task.to_dict(), **digests},  # the task the runner holds, and its files' contents
        overrides=cell.overrides,
        off_protocol_reasons=off_protocol_reasons(cell, dataset),
        backbone=backbone_block(cell, dataset.card),
        channels=cell.adapter.to_dict(),
        dataset=dataset_block(dataset),
        split={"track": split.track, "seed": split.seed, "sha256": split.sha256},
        seed=options.seed,
        environment=environment,
        timings={
            "extraction_s": float(meta["wall_time_s"]) if "wall_time_s" in meta else None,
            "extraction_cached": bool(meta["cache_hit"]) if "cache_hit" in meta else None,
            "task_s": float(result.wall_time_s),
            **run_cost(meta),
        },
        # rank 0 alone writes (under torchrun the other ranks computed the same result)
        predictions=write_entry_predictions(result, options.output_dir, path.stem) if main else None,
        feature_standardization=result.feature_standardization,
    )
    if not main:  # the same result as rank 0's: it alone writes
        return RunOutcome(cell.spec, path, entry, details={"rank": distributed.world().rank})
    save_split(split, dataset, options)
    written = write_entry(entry, options.output_dir)
    details = context.inputs.as_details()
    return RunOutcome(cell.spec, written, entry, details={**details, **result.details})


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
