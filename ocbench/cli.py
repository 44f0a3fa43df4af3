"""The ``ocbench`` command line.

Thin by design: each command parses options, calls one library function and prints. torch, timm
and the heavier parts of ocbench are imported inside the commands that need them, so ``--help``
and the leaderboard commands start fast.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import click

from ocbench import __version__
from ocbench.errors import OcbenchError


class _Group(click.Group):
    """Turns user errors into one line on stderr and exit code 2 (``--debug`` shows the traceback)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except OcbenchError as exc:
            if ctx.find_root().params.get("debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)
        except OSError as exc:  # unwritable folder, path that is a file, disk full, ...
            if ctx.find_root().params.get("debug"):
                raise
            where = f"{exc.filename}: " if exc.filename else ""
            click.echo(f"error: {where}{exc.strerror or exc}; check the path and its permissions", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo(
                "interrupted: no half-written file was kept; run the same command again to resume", err=True
            )
            ctx.exit(130)


def _group(**kwargs):
    return click.group(cls=_Group, **kwargs)


@_group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ocbench")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.option(
    "--cache-dir", type=click.Path(file_okay=False), default=None,
    help="Cache for demo data, embeddings and converted weights (default $OCBENCH_CACHE or ~/.cache/ocbench).",
)
@click.option(
    "--plugin", "plugins", multiple=True, metavar="MODULE",
    help="Import MODULE (a module name or a .py file) first, so its backbones, tasks or datasets are registered.",
)
def cli(debug: bool, cache_dir: str | None, plugins: tuple[str, ...]) -> None:
    """ocbench: benchmark pretrained vision backbones on protein localization (OpenCell).

    \b
    Example (offline, about a minute):
      ocbench demo
    """
    if cache_dir:
        os.environ["OCBENCH_CACHE"] = str(Path(cache_dir).expanduser().resolve())
    if not debug:
        warnings.showwarning = _show_warning
    if plugins:
        from ocbench.registry import load_plugin

        for module in plugins:
            load_plugin(module)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line on stderr, without the source line Python adds."""
    click.echo(f"warning: {message}", err=True)


# ------------------------------------------------------------------------------------------------
# shared options


def _dataset_options(default: str = "opencell"):
    """--dataset DIR|demo|opencell, --annotations FILE, --min-grade G."""

    def decorate(fn):
        fn = click.option(
            "--min-grade", type=int, default=None,
            help="OpenCell reader option: lowest annotation grade counted as a positive label (3 prominent, "
            "1 weak; default 1). Datasets without graded annotations refuse it.",
        )(fn)
        fn = click.option(
            "--annotations", type=click.Path(dir_okay=False), default=None,
            help="Annotation table (flat or portal format) to use instead of the one under the dataset root; for "
            "hpa2021, a public HPA metadata table (ID, gene) to group images by gene.",
        )(fn)
        fn = click.option(
            "--dataset", default=default, show_default=True,
            help="A dataset name (see `ocbench data list`: 'opencell' = where `ocbench data download opencell` "
            "puts the real data, 'demo' = the synthetic demo, written if missing), a folder in the OpenCell raw layout, "
            "a table of your own images (.csv, .tsv, .parquet: path, label, optional group; see README), "
            "hf:ORG/NAME[@REVISION] or a save_to_disk / parquet folder (a Hugging Face dataset), "
            "or NAME:DIR for a registered layout (hpa2021:DIR).",
        )(fn)
        return fn

    return decorate


def _open_dataset(dataset, annotations: str | None, min_grade: int | None):
    """The dataset object (it carries its card and the name entries record). ``dataset``: what
    ``--dataset`` named, or its :class:`~ocbench.data.cards.DatasetSource` when already resolved."""
    from ocbench.data.cards import open_dataset

    return open_dataset(dataset, annotations=annotations, min_grade=min_grade)


def _resolve_dataset(dataset: str):
    """What ``--dataset`` named, resolved once (card, folder, recorded name), not opened yet."""
    from ocbench.data.cards import resolve_dataset

    return resolve_dataset(dataset)


def _split_list(values: tuple[str, ...]) -> list[str]:
    """Options given several times and/or comma-separated: ('a,b', 'c') -> ['a', 'b', 'c']."""
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def _parse_workers(ctx, param, value):
    if value is None or str(value).lower() == "auto":
        return None
    try:
        workers = int(value)
    except ValueError:
        workers = -1
    if workers < 0:
        raise click.BadParameter(f"{value!r} is not 'auto' or a whole number >= 0")
    return workers


def _workers_option(fn):
    return click.option(
        "--workers", default="auto", show_default=True, callback=_parse_workers, metavar="N|auto",
        help="DataLoader workers decoding TIFFs; auto = up to 8 on a GPU (the cores minus one, shared by "
        "the node's ranks), none on CPU (the model uses every core).",
    )(fn)


class _SeedList(click.ParamType):
    """``0`` or ``0,1,2``: seeds of repeated runs (each seed its own split, probe and entry)."""

    name = "SEEDS"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            seeds = tuple(int(v) for v in str(value).split(",") if v.strip())
        except ValueError:
            self.fail(f"{value!r} is not a seed or a comma-separated list of seeds (e.g. 0,1,2)", param, ctx)
        if not seeds or any(v < 0 for v in seeds) or len(set(seeds)) != len(seeds):
            self.fail(f"{value!r}: give distinct integers >= 0 (e.g. 0,1,2)", param, ctx)
        return seeds


def _one_seed(seeds: tuple[int, ...]) -> int:
    if len(seeds) != 1:
        raise click.UsageError("this command takes one --seed")
    return seeds[0]


def _run_options(fn):
    fn = click.option(
        "--seed", type=_SeedList(), default="0", show_default=True,
        help="Seed of the split and the probe; several (0,1,2) run each cell once per seed, one entry each.",
    )(fn)
    fn = click.option(
        "--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda, cuda:1, ..."
    )(fn)
    fn = click.option("--batch-size", type=click.IntRange(1), default=16, show_default=True, help="Extraction batch size.")(fn)
    fn = _workers_option(fn)
    fn = click.option(
        "--output", type=click.Path(file_okay=False), default="results", show_default=True,
        help="Folder for entry JSON files (and the splits they used).",
    )(fn)
    fn = click.option("--overwrite", is_flag=True, help="Recompute entries that already exist.")(fn)
    fn = click.option(
        "--recompute", is_flag=True, help="Discard the cached embeddings of each backbone/channel key and extract again."
    )(fn)
    fn = click.option(
        "--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
        help="Numeric precision of the backbone: fp32 (comparable across hardware) or bf16 (CUDA autocast, faster). "
        "Part of the cache key; recorded in entries and shown on the board.",
    )(fn)
    fn = click.option(
        "--threads", type=click.IntRange(1), default=None,
        help="CPU threads for torch (default: the cores this process may use; fewer on a shared machine). "
        "Recorded in entries.",
    )(fn)
    return fn


def _available_cores() -> int:
    from ocbench._cores import available_cores

    return available_cores()


def _is_main_rank() -> bool:
    from ocbench.benchmark import distributed

    return distributed.is_main()


def _join_ranks(device: str) -> str:
    """Under ``torchrun``: join the process group and return this rank's device; only rank 0 prints
    results (every rank still reports its errors)."""
    from ocbench.benchmark import distributed

    device = distributed.setup(device)
    if not distributed.is_main():
        sys.stdout = open(os.devnull, "w")
    return device


# ------------------------------------------------------------------------------------------------
# ocbench run / demo / sweep-channels / embed


def _say_done(outcome) -> None:
    """Printed as each cell finishes, so a later failure never hides what was already written."""
    click.echo(f"{'skipped (exists)' if outcome.skipped else 'wrote'}: {outcome.path}")


def _print_outcomes(outcomes) -> None:
    from ocbench.leaderboard.summary import format_run_table

    click.echo(format_run_table([o.entry for o in outcomes]))


def _print_warnings(outcomes) -> None:
    """The entries' collapse and chance-level warnings, last, so they are not scrolled away."""
    from ocbench.leaderboard.summary import format_warnings

    text = format_warnings([o.entry for o in outcomes if o.entry is not None])
    if text:
        click.echo(text, err=True)


@cli.command()
@click.option(
    "--backbone", "backbones", multiple=True, required=True,
    help="Backbone card name(s) (see `ocbench backbones list`), or weights named directly: timm:NAME[.TAG], "
    "hf-hub:ORG/NAME[@REV], local:DIR (a card is derived from their config).",
)
@click.option("--task", "tasks", multiple=True, default=("fov-mlp",), show_default=True,
              help="Task(s), comma-separated: fov-mlp, fov-linear, sc-knn, sc-knn-fov, finetune (`ocbench tasks list`; plugins add more).")
@click.option(
    "--channels", "channels", multiple=True,
    help="Channel strategy: 'replicate' (each dataset channel alone in every model input, features "
    "concatenated), a preset ('natural': channels into the like-named inputs, 'imagenet-best': protein->G, "
    "nucleus->B), or a map such as protein=G,nucleus=B (target: 0-based input index, input name or letter; "
    "inputs left out get zeros). Tables write maps as [1, 2] -> [G, B] (1 = protein, 2 = nucleus, the "
    "paper's notation) and keys as map-p1-n2 (protein into input 1, nucleus into input 2, 0-based). "
    "Repeat the option for several. Default: the card's.",
)
@click.option("--split", "tracks", multiple=True, default=("paper",), show_default=True, help="Split track: paper (by FOV) or protein (grouped by protein).")
@click.option("--split-file", type=click.Path(dir_okay=False, exists=True), default=None, help="Use this split file instead of making one.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a task setting (marks the entry off-protocol).")
@_dataset_options()
@_run_options
def run(backbones, tasks, channels, tracks, split_file, overrides, dataset, annotations, min_grade,
        seed, device, batch_size, workers, output, overwrite, recompute, threads, precision):
    """Benchmark backbone(s) on a task and write one entry JSON per configuration.

    \b
    Examples:
      ocbench run --backbone hpa-fov-vitb8
      ocbench run --backbone classical-stats --dataset demo --task fov-mlp,fov-linear --split paper,protein
      ocbench run --backbone imagenet-dino-vitb8 --channels protein=G,nucleus=B --set epochs=50
      ocbench run --backbone classical-stats --dataset demo --seed 0,1,2   # repeated splits and probe seeds
    """
    from dataclasses import replace

    from ocbench.benchmark.runner import RunOptions, expand_grid, resolve_cells, run_grid

    specs = expand_grid(
        _split_list(backbones), _split_list(tasks), list(channels) or [None], _split_list(tracks), overrides
    )
    resolved: list = []  # the dataset, resolved once: after the names are checked, before the data is opened

    def dataset_card():
        resolved.append(_resolve_dataset(dataset))
        return resolved[0].card

    cells = resolve_cells(specs, dataset_card)
    device = _join_ranks(device)
    ds = _open_dataset(resolved[0] if resolved else dataset, annotations, min_grade)
    options = RunOptions(
        output_dir=Path(output), seed=seed[0], device=device, batch_size=batch_size, num_workers=workers,
        overwrite=overwrite, split_file=Path(split_file) if split_file else None,
        threads=threads or _available_cores(), recompute=recompute, precision=precision, progress=_is_main_rank(),
    )
    outcomes = []
    recomputed: set = set()  # --recompute: each embedding key once, not once per seed
    for one in seed:  # each seed: its own split (unless --split-file) and probe seed, its own entries
        outcomes += run_grid(cells, ds, replace(options, seed=one), on_done=_say_done, recomputed=recomputed)
    _print_outcomes(outcomes)
    _print_warnings(outcomes)


@cli.command("sweep-channels")
@click.option("--backbone", required=True, help="Backbone card name, or timm:NAME[.TAG], hf-hub:ORG/NAME[@REV], local:DIR.")
@click.option("--task", default="fov-mlp", show_default=True, help="Task run for every channel map (see `ocbench tasks list`).")
@click.option("--split", "track", default="paper", show_default=True, help="Split track: paper (by FOV) or protein (grouped by protein).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a task setting.")
@_dataset_options()
@_run_options
def sweep_channels(backbone, task, track, overrides, dataset, annotations, min_grade,
                   seed, device, batch_size, workers, output, overwrite, recompute, threads, precision):
    """Probe every injective map of (protein, nucleus) into the backbone's input channels.

    \b
    Example:
      ocbench sweep-channels --backbone tiny-vit-random --dataset demo
    """
    from ocbench.backbones.adapters import sweep_adapters
    from ocbench.backbones.derive import resolve_backbone
    from ocbench.leaderboard.summary import format_sweep_table
    from ocbench.benchmark.runner import RunOptions, RunSpec, run_grid

    card = resolve_backbone(backbone)
    device = _join_ranks(device)
    ds = _open_dataset(dataset, annotations, min_grade)
    # the card and the adapters themselves: the runner takes resolved objects as they are
    specs = [RunSpec(card, task, adapter, track, tuple(overrides)) for adapter in sweep_adapters(card, ds.card)]
    options = RunOptions(
        output_dir=Path(output), seed=_one_seed(seed), device=device, batch_size=batch_size, num_workers=workers,
        overwrite=overwrite, threads=threads or _available_cores(), recompute=recompute, precision=precision,
        progress=_is_main_rank(),
    )
    outcomes = run_grid(specs, ds, options, on_done=_say_done)
    click.echo(format_sweep_table(card.name, [o.entry for o in outcomes]))
    _print_warnings(outcomes)


@cli.command()
@click.option("--output", type=click.Path(file_okay=False), default="ocbench-demo-results", show_default=True,
              help="Folder for the demo's entries and its leaderboard.")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
@click.option("--overwrite", is_flag=True, help="Recompute entries that already exist.")
def demo(output, device, overwrite):
    """The offline tour: demo data, two offline backbones, both probes (paper split track), a board.

    \b
    Example:
      ocbench demo --output demo-results
    """
    from ocbench.benchmark.runner import RunOptions, demo_specs, run_grid
    from ocbench.leaderboard import build_board

    ds = _open_dataset("demo", None, 1)
    out = Path(output)
    options = RunOptions(output_dir=out / "entries", device=device, overwrite=overwrite, threads=_available_cores())
    outcomes = run_grid(demo_specs(), ds, options, on_done=_say_done)
    _print_outcomes(outcomes)
    click.echo(
        "note: the demo runs the protocol's own settings on synthetic images: its scores show that the "
        "pipeline works and that the classical baseline's features carry the classes (tiny-vit-random is an "
        "untrained control), not how a backbone does on real cells."
    )
    report = build_board([out / "entries"], out / "board")
    click.echo(report.summary())
    _print_warnings(outcomes)


@cli.command()
@click.option("--backbone", default=None, help="Backbone card to fine-tune (see `ocbench backbones list`).")
@click.option("--from-scratch", "from_scratch", default=None, metavar="ARCH",
              help="Train a timm ViT (e.g. vit_small_patch8) from random weights on the dataset's channels instead.")
@click.option("--channels", default=None, help="Channel strategy (default: the card's); see `ocbench run --help`.")
@click.option("--epochs", type=click.IntRange(1), default=None, help="Training epochs (protocol: 100; 60 for ablations).")
@click.option("--fraction", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Train on this fraction of the split's train part (seeded, nested: 0.2 lies inside 0.4).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run of the same settings from its last epoch.")
@click.option("--split", "track", default="paper", show_default=True, help="Split track whose train part is used: paper or protein.")
@click.option("--split-file", type=click.Path(dir_okay=False, exists=True), default=None, help="Use this split file instead of making one.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Any other training setting (see `ocbench tasks show finetune`).")
@_dataset_options()
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True, help="Seed of the split, the subset, the data order and augmentations.")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda, cuda:1, ... (under torchrun: each process's GPU).")
@click.option("--workers", default="auto", show_default=True, callback=_parse_workers, metavar="N|auto",
              help="DataLoader workers decoding and augmenting images; auto = on a GPU the cores minus one (up to 16), "
              "none on CPU; never more than the cores.")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True, help="bf16: CUDA autocast.")
@click.option("--threads", type=click.IntRange(1), default=None, help="CPU threads for torch.")
def finetune(backbone, from_scratch, channels, epochs, fraction, resume, track, split_file, overrides, dataset, annotations,
             min_grade, seed, device, workers, precision, threads):
    """DINO self-supervised training of a backbone on the train part of a split (never its test part).

    Writes the teacher backbone to <cache>/weights/<derived name>/ (model.safetensors, config.json,
    ocbench_card.json) and a loss curve; several GPUs: `torchrun --nproc-per-node N -m ocbench finetune ...`.

    \b
    Examples:
      ocbench finetune --backbone hpa-fov-vitb8 --channels natural --epochs 100
      ocbench finetune --from-scratch vit_small_patch8 --dataset opencell
      ocbench finetune --backbone tiny-vit-random --dataset demo --epochs 2 --set global_crop_size=64 --set local_crop_size=32
    """
    from ocbench.backbones.adapters import parse_channels
    from ocbench.backbones.derive import resolve_backbone
    from ocbench.benchmark.runner import RunOptions, split_for
    from ocbench.tasks import get_task
    from ocbench.tasks.finetune import finetune_command, scratch_card

    if (backbone is None) == (from_scratch is None):
        raise click.UsageError("give exactly one of --backbone NAME or --from-scratch ARCH")
    settings = [*overrides, *([f"epochs={epochs}"] if epochs else []), *([f"fraction={fraction}"] if fraction else [])]
    config, _ = get_task("finetune").with_overrides(settings)  # settings checked before the data is opened
    source = _resolve_dataset(dataset)
    base = resolve_backbone(backbone) if backbone else scratch_card(from_scratch, source.card, seed)
    adapter = parse_channels(channels, base, source.card)
    ds = _open_dataset(source, annotations, min_grade)
    split = split_for(ds, track, RunOptions(output_dir=Path("."), seed=seed, split_file=Path(split_file) if split_file else None))
    outcome = finetune_command(
        base=base, adapter=adapter, dataset=ds, split=split, config=config, seed=seed, device=device,
        workers=workers, precision=precision, resume=resume, threads=threads or _available_cores(),
    )
    if outcome is None:  # not rank 0 of a distributed run
        return
    state = "trained" if outcome.trained else "already trained (same settings)"
    click.echo(f"{state}: {outcome.card.name}")
    click.echo(f"weights: {outcome.folder}")
    click.echo(f"loss curve: {outcome.run_dir / 'loss.png'}")
    click.echo(f"probe it: ocbench run --task finetune --backbone {backbone or '<base>'} (same settings), "
               f"or embed with the card in {outcome.folder / 'ocbench_card.json'}")


@cli.command()
@click.option("--backbone", required=True, help="Backbone card name, or timm:NAME[.TAG], hf-hub:ORG/NAME[@REV], local:DIR.")
@click.option("--channels", default=None, help="Channel strategy (default: the card's); see `ocbench run --help`.")
@click.option("--recompute", is_flag=True, help="Discard this key's cached embeddings and extract again.")
@click.option("--cells", is_flag=True, help="Embed the single-cell evaluation crops (the dataset card's cell selection, as the single-cell tasks take them) instead of FOVs.")
@click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE",
    help="With --cells: cell selection settings that choose the cells (segmentation, crop_size, zoom, label_grade, ...).",
)
@click.option(
    "--export", "export_path", type=click.Path(dir_okay=False), default=None,
    help="Also write the embeddings to FILE.npz (or .parquet): features (N, D), ids, labels (N, classes), "
    "groups (FOV id for cells, protein for FOVs), class_names.",
)
@_dataset_options()
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
@click.option("--batch-size", type=click.IntRange(1), default=16, show_default=True, help="Extraction batch size.")
@_workers_option
def embed(backbone, channels, recompute, cells, overrides, export_path, dataset, annotations, min_grade, device, batch_size, workers):
    """Extract (or find cached) embeddings of every FOV, or of the evaluation cells, and export them.

    \b
    Examples:
      ocbench embed --backbone classical-stats --dataset demo
      ocbench embed --backbone classical-stats --dataset demo --cells --export cells.npz
    """
    from functools import partial

    from ocbench.backbones.adapters import parse_channels
    from ocbench.backbones.derive import resolve_backbone
    from ocbench.benchmark.embeddings import extract_embeddings

    card = resolve_backbone(backbone)
    source = _resolve_dataset(dataset)
    adapter = parse_channels(channels, card, source.card)
    selection = None
    if cells:
        from ocbench.tasks.cell_task import CellSelection

        selection = CellSelection().for_dataset(source.card).with_overrides(overrides)
    elif overrides:
        raise click.UsageError("--set applies to --cells (the settings that choose the cells)")
    device = _join_ranks(device)
    ds = _open_dataset(source, annotations, min_grade)
    extract = partial(
        extract_embeddings, backbone=card, adapter=adapter, batch_size=batch_size, device=device,
        num_workers=workers, recompute=recompute, progress=_is_main_rank(),
    )
    if selection is not None:
        from ocbench.data import cells as cell_data
        from ocbench.tasks import Progress

        from ocbench.benchmark import distributed

        # segmentation fills a shared cache: under torchrun rank 0 segments, the other ranks read
        _, evaluation = distributed.main_first(lambda: selection.evaluation_cells(ds, progress=Progress(_is_main_rank())))
        emb = extract(evaluation.crops)  # under torchrun every rank takes part; rank 0 alone writes
        if export_path:
            if _is_main_rank():
                click.echo(f"wrote {cell_data.export_cell_embeddings(export_path, evaluation, emb)}")
            return
    else:
        emb = extract(ds)
        if export_path and _is_main_rank():
            from ocbench.data.export import export_embeddings

            groups = [str(g) for g in ds.groups]
            path = export_embeddings(export_path, emb.features, emb.fov_ids, ds.labels, groups, ds.card.class_names)
            click.echo(f"wrote {path}")
    m = emb.meta
    state = "cache hit" if m.get("cache_hit") else f"extracted in {m.get('wall_time_s', 0):.1f} s ({m.get('images_per_s', 0):.1f} images/s)"
    click.echo(f"{len(emb)} x {emb.dim} embeddings, {state}; key {emb.key}")


# ------------------------------------------------------------------------------------------------
# ocbench data ...


@cli.group(cls=_Group)
def data() -> None:
    """Get, inspect, split and export OpenCell data (or the synthetic demo).

    \b
    Example:
      ocbench data demo && ocbench data info --dataset demo
    """


@data.command("list")
def data_list():
    """List the registered datasets (cards): channels, classes, groups.

    \b
    Example:
      ocbench data list
    """
    from tabulate import tabulate

    from ocbench.data.cards import list_dataset_cards

    rows = [
        [c.name, ", ".join(c.channel_names), len(c.class_names), c.group_name, "yes" if c.synthetic else "no", c.description]
        for c in list_dataset_cards()
    ]
    click.echo(tabulate(rows, headers=["name", "channels", "classes", "groups", "synthetic", "what"], tablefmt="simple",
                        maxcolwidths=[None, None, None, None, None, 60]))
    click.echo("\n--dataset also takes a folder in the OpenCell raw layout (recorded as local:<folder name>), a table "
               "of your own images (.csv, .tsv, .parquet; see `ocbench data card init`), a Hugging Face dataset "
               "(hf:ORG/NAME[@REVISION], or a save_to_disk / parquet folder), or NAME:DIR for a folder in a "
               "registered layout (e.g. hpa2021:DIR).")


@data.command("demo")
@click.option("--root", type=click.Path(file_okay=False), default=None, help="Where to write (default: the demo cache folder).")
@click.option("--proteins", type=click.IntRange(1), default=None, help="Number of proteins.")
@click.option("--fovs-per-protein", type=click.IntRange(1), default=None, help="FOV images per protein (default: the demo's).")
@click.option("--size", type=click.IntRange(32), default=None, help="FOV size in pixels.")
@click.option("--seed", type=click.IntRange(0), default=None, help="Seed of the synthetic images and labels (default: the demo's).")
@click.option("--scale", default=None, metavar="F",
              help="A fraction of OpenCell's real size (e.g. 1/16; 1 = 1,310 proteins, ~6,550 FOVs of 600 px, "
                   "~150k cells, ~9 GB) instead of the small demo. --proteins/--fovs-per-protein override it; --size "
                   "shrinks fields and cells together.")
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True,
              help="Processes that render FOVs (the files are the same for any number).")
def data_demo(root, proteins, fovs_per_protein, size, seed, scale, workers):
    """Write the synthetic demo dataset in the exact OpenCell raw layout.

    \b
    Example:
      ocbench data demo --root demo-data --proteins 20 --size 128
      ocbench data demo --root opencell-sized --scale 1/16 --workers 4
    """
    import dataclasses

    from ocbench import paths
    from ocbench.data.demo import DemoConfig, parse_fraction, scaled_config, write_demo

    if scale is not None and root is None:
        raise click.UsageError("--scale writes a large set: give its folder with --root")
    base = scaled_config(parse_fraction(scale), **({"size": size} if size else {})) if scale is not None else DemoConfig()
    given = {"proteins": proteins, "fovs_per_protein": fovs_per_protein, "size": size, "seed": seed}
    if fovs_per_protein is not None:
        given["fovs_per_protein_max"] = 0
    config = dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})
    out = write_demo(Path(root) if root else paths.demo_root(), config, workers=workers)
    click.echo(f"wrote demo dataset: {out} ({config.proteins} proteins, {config.n_fovs} FOVs, {config.size} px)")


@data.command("path")
@click.argument("name")
def data_path(name):
    """Print the folder a dataset card's data lives in (under --cache-dir / $OCBENCH_CACHE; the demo
    is written there on first use).

    \b
    Example:
      ocbench data path demo
      ocbench run --backbone classical-stats --dataset demo --task sc-knn --set cell_labels=$(ocbench data path demo)/synthetic_expert_cell_labels.csv
    """
    from ocbench.data.cards import get_dataset_card
    from ocbench.errors import ConfigError

    folder = get_dataset_card(name).default_folder()
    if folder is None:
        raise ConfigError(f"dataset {name} has no default folder; pass its folder as --dataset DIR")
    click.echo(str(folder))


@data.command("info")
@_dataset_options(default="opencell")
def data_info(dataset, annotations, min_grade):
    """Counts: FOVs, proteins, how labels were joined, what was skipped, FOVs per class.

    \b
    Example:
      ocbench data info --dataset demo
    """
    from ocbench.data.cards import resolve_dataset

    source = resolve_dataset(dataset)
    if source.card.reader == "ocbench.data.table:TableDataset":
        from ocbench.data.table import table_report

        if annotations is not None or min_grade is not None:
            raise click.UsageError("--annotations and --min-grade are options of the OpenCell layout; a table has its labels")
        click.echo(table_report(source.root))
        return
    ds = _open_dataset(source, annotations, min_grade)
    if callable(getattr(ds, "report", None)):  # readers other than OpenCell's say what they hold
        click.echo(ds.report())
        return
    from ocbench.data.opencell import format_info

    click.echo(format_info(ds.info()))


@data.group("card", cls=_Group)
def data_card():
    """Dataset cards of your own tables.

    \b
    Example:
      ocbench data card init my_images.csv
    """


@data_card.command("init")
@click.argument("table", type=click.Path(dir_okay=False, exists=True))
@click.option("--overwrite", is_flag=True, help="Write the card again over an existing one.")
def data_card_init(table, overwrite):
    """Write TABLE's sidecar card (<stem>.dataset.json) from what the table says, for you to edit.

    \b
    Example:
      ocbench data card init my_images.csv
    """
    from ocbench.data.table import write_sidecar

    path = write_sidecar(table, overwrite=overwrite)
    click.echo(f"wrote {path}: edit its name, channel and class order, label mode, pixel size and cell diameter")


@data.command("download")
@click.argument("collection", type=click.Choice(["opencell"]))
@click.option("--root", type=click.Path(file_okay=False), default=None, help="Target folder (default: <cache>/opencell).")
@click.option("--targets", default=None, help="Comma-separated gene names or ENSG ids to fetch (default: all).")
@click.option("--limit", type=click.IntRange(1), default=None, help="At most this many FOVs.")
@click.option("--workers", type=click.IntRange(1), default=8, show_default=True, help="Parallel downloads.")
@click.option("--endpoint", default=None, help="Bucket endpoint (default: the public czb-opencell bucket).")
@click.option("--no-annotations", is_flag=True, help="Do not fetch the annotation table (pass --annotations later).")
def data_download(collection, root, targets, limit, workers, endpoint, no_annotations):
    """Download OpenCell FOV projections (resumable; verifies sizes and checksums).

    \b
    Example:
      ocbench data download opencell --targets LMNB1,NPM1 --limit 20
    """
    from ocbench import paths
    from ocbench.data.download import DEFAULT_ANNOTATIONS_URLS, DEFAULT_ENDPOINT, download_opencell

    report = download_opencell(
        Path(root) if root else paths.opencell_root(),
        targets=_split_list((targets,)) if targets else None,
        limit=limit,
        endpoint=endpoint or DEFAULT_ENDPOINT,
        annotations_url=None if no_annotations else DEFAULT_ANNOTATIONS_URLS,
        workers=workers,
    )
    click.echo(report.summary())


@data.command("cells")
@_dataset_options()
@click.option(
    "--backend", type=click.Choice(["auto", "classical", "cellpose"]), default="auto", show_default=True,
    help="Segmentation: cellpose (Cellpose v3 cyto3, as the paper; pip install 'ocbench[singlecell]'), classical "
    "(nucleus seeds + watershed, no download), auto (the dataset card's: cellpose on OpenCell, classical on the demo and tables).",
)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Cell selection settings that choose the cells: crop_size, zoom, mask_crops, black_percentile, label_grade, omit_fovs_with.")
@click.option("--cell-labels", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Expert labels CSV (cell_id,labels or fov_id,y,x,labels; labels separated by ';') to check against the table.")
@click.option("--contact-sheet", type=click.Path(dir_okay=False), default="cells.png", show_default=True,
              help="PNG of a few crops with their mask outlines, to see that the segmentation is sane.")
@click.option("--recompute", is_flag=True, help="Segment every FOV again instead of reusing saved masks.")
def data_cells(dataset, annotations, min_grade, backend, overrides, cell_labels, contact_sheet, recompute):
    """Segment cells (resumable), build the cell table, draw a contact sheet.

    \b
    Example:
      ocbench data cells --dataset demo --backend classical
    """
    from ocbench.data import cells as cell_data
    from ocbench.tasks import Progress
    from ocbench.tasks.cell_task import CellSelection

    source = _resolve_dataset(dataset)
    selection = CellSelection().for_dataset(source.card).with_overrides([f"segmentation={backend}", *overrides])
    ds = _open_dataset(source, annotations, min_grade)
    click.echo(cell_data.cells_command(
        ds, backend=selection.backend_for(ds.card), crop=selection.crop_settings(), black_percentile=selection.black_percentile,
        labels=selection.label_policy(), cell_labels=cell_labels or selection.cell_labels or None, contact_sheet=contact_sheet,
        progress=Progress(True),
        recompute=recompute,
    ))


@data.command("split")
@click.option("--track", type=click.Choice(["paper", "protein"]), default="paper", show_default=True, help="paper: split by FOV (as the paper); protein: grouped by protein.")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True, help="Seed of the split (same seed, same split).")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Split file (default: <root>/splits/<track>-seed<seed>.json).")
@_dataset_options()
def data_split(track, seed, out, dataset, annotations, min_grade):
    """Write a split file (10% test + 5 folds) and print class counts per part.

    \b
    Example:
      ocbench data split --dataset demo --track protein
    """
    from ocbench.benchmark.splits import class_counts, format_class_counts, write_split

    ds = _open_dataset(dataset, annotations, min_grade)
    split, path = write_split(ds, out, track=track, seed=seed)
    click.echo(format_class_counts(class_counts(split, ds)))
    click.echo(f"wrote {path} (split id sha256 {split.sha256})")


@data.command("export")
@click.option("--to", "target", type=click.Choice(["hf"]), required=True, help="Export format.")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--split-file", type=click.Path(dir_okay=False, exists=True), default=None, help="Add a split column from this split file.")
@click.option("--push-to-hub", "repo_id", default=None, help="Also push to this Hub dataset repo (ORG/NAME).")
@_dataset_options()
def data_export(target, out_dir, split_file, repo_id, dataset, annotations, min_grade):
    """Export the dataset as a Hugging Face `datasets` dataset (save_to_disk).

    \b
    Example:
      ocbench data export --to hf demo-hf --dataset demo
    """
    from ocbench.data.export import export_hf

    ds = _open_dataset(dataset, annotations, min_grade)
    split = None
    if split_file:
        from ocbench.benchmark.splits import load_split

        from ocbench.data.content import listing_version

        split = load_split(split_file, manifest=ds, dataset_version=listing_version(ds))
    click.echo(f"wrote {export_hf(ds, out_dir, split=split, push_to_hub=repo_id)}")


# ------------------------------------------------------------------------------------------------
# ocbench backbones ...


@cli.group(cls=_Group)
def backbones() -> None:
    """The backbone registry: list, show, import checkpoints, push to the Hub, check conformance.

    \b
    Example:
      ocbench backbones show hpa-fov-vitb8
    """


@backbones.command("list")
def backbones_list():
    """Table of registered backbones with the paper's reported score.

    \b
    Example:
      ocbench backbones list
    """
    from ocbench.backbones.cards import format_cards_table

    click.echo(format_cards_table())


@backbones.command("show")
@click.argument("name")
def backbones_show(name):
    """Everything a card declares.

    \b
    Example:
      ocbench backbones show hpa-fov-vitb8
    """
    from ocbench.backbones.cards import format_card
    from ocbench.backbones.derive import resolve_backbone

    click.echo(format_card(resolve_backbone(name)))


@backbones.command("import")
@click.argument("name")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None, help="A downloaded DINO .pth (default: download the card's).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output folder (default: where the card reads its weights: <cache>/weights/NAME for a url: card, its folder for a local: card).")
@click.option("--checkpoint-key", default="teacher", show_default=True, help="Which network of the checkpoint to convert.")
def backbones_import(name, checkpoint, out, checkpoint_key):
    """Convert a Dino4Cells/DINO (or SubCell encoder) .pth checkpoint to safetensors + config (Hub-style folder).

    \b
    Example:
      ocbench backbones import hpa-fov-vitb8 --checkpoint DINO_FOV_checkpoint.pth
    """
    from ocbench.backbones.archs import import_checkpoint
    from ocbench.backbones.derive import resolve_backbone

    # the card's architecture family converts its own checkpoint layout (DINO for timm ViTs, SubCell's)
    folder = import_checkpoint(resolve_backbone(name), checkpoint, out_dir=out, checkpoint_key=checkpoint_key)
    click.echo(f"wrote {folder}")


@backbones.command("push")
@click.argument("name")
@click.option("--repo-id", required=True, help="Hub model repo, ORG/NAME.")
@click.option("--folder", type=click.Path(file_okay=False), default=None, help="Converted folder (default: the card's weights cache).")
@click.option("--dry-run", is_flag=True, help="Check and list what would be uploaded; upload nothing.")
def backbones_push(name, repo_id, folder, dry_run):
    """Upload converted weights (safetensors + config + model card) to the Hugging Face Hub.

    \b
    Example:
      ocbench backbones push hpa-fov-vitb8 --repo-id my-org/hpa-fov-vitb8 --dry-run
    """
    from ocbench.backbones.cards import get_card
    from ocbench.backbones.hub import push_backbone
    from ocbench.backbones.sources import weights_dir

    card = get_card(name)
    result = push_backbone(Path(folder) if folder else weights_dir(card), repo_id, dry_run=dry_run)
    click.echo(result.summary())


@backbones.command("check")
@click.argument("name")
@click.option("--device", default="cpu", show_default=True, help="Where to run the checks: cpu, cuda, cuda:1, ...")
def backbones_check(name, device):
    """Conformance check for contributors: loads, embeds, shapes, determinism, batch invariance.

    \b
    Example:
      ocbench backbones check tiny-vit-random
    """
    from ocbench.backbones.check import check_backbone, format_check

    report = check_backbone(name, device=device)
    click.echo(format_check(report))
    if not report.ok:
        raise click.exceptions.Exit(1)


# ------------------------------------------------------------------------------------------------
# ocbench leaderboard ...


@cli.group(cls=_Group)
def tasks() -> None:
    """List the benchmark tasks (protocols) and show their settings.

    \b
    Example:
      ocbench tasks show fov-mlp
    """


@tasks.command("list")
def tasks_list():
    """Registered tasks with their protocol version, main score and the label modes they score.

    \b
    Example:
      ocbench tasks list
    """
    from tabulate import tabulate

    from ocbench.tasks import TASKS

    rows = []
    for name in sorted(TASKS.names()):
        cls = TASKS.get(name)
        rows.append([name, cls.protocol_version, f"{cls.main_score[1]} ({cls.main_score[0]})",
                     ", ".join(cls.label_modes), cls.description])
    click.echo(tabulate(rows, headers=["task", "protocol", "main score", "labels", "what"], tablefmt="simple"))


@tasks.command("show")
@click.argument("name")
def tasks_show(name):
    """A task's settings with their protocol defaults (change them with `ocbench run --set KEY=VALUE`).

    \b
    Example:
      ocbench tasks show fov-mlp
    """
    from tabulate import tabulate

    from ocbench.tasks import TASKS

    cls = TASKS.get(name)
    click.echo(f"{cls.name}: {cls.description}")
    click.echo(f"protocol version: {cls.protocol_version}")
    click.echo(f"main score: {cls.main_score[1]} on {cls.main_score[0]} (ranks the leaderboard"
               + ("" if cls.higher_is_better else "; lower is better") + ")")
    if cls.axis:
        click.echo(f"axis: {cls.axis}")
    if cls.requires:
        click.echo(f"needs: {', '.join(cls.requires)}" + (f" (pip install 'ocbench[{cls.extra}]')" if cls.extra else ""))
    rows = [[key, kind, default if not isinstance(default, list) else ",".join(map(str, default)), help_]
            for key, kind, default, help_ in cls.settings_table()]
    click.echo(tabulate(rows, headers=["setting", "type", "default", "meaning"], tablefmt="simple"))
    click.echo("\nAny --set that changes a default marks the entry off-protocol.")


@cli.command()
@click.argument("entry_a", type=click.Path(dir_okay=False))
@click.argument("entry_b", type=click.Path(dir_okay=False))
def compare(entry_a, entry_b):
    """Compare two entries on the same items: difference of main scores, paired intervals, verdict.

    Uses the corrected resampled t-test over the paired folds and the paired protein bootstrap on
    the predictions kept beside the entries; refuses entries of different tasks or splits.

    \b
    Example:
      ocbench compare results/hpa-fov-vitb8__map-p1-n2__fov-mlp__paper.json results/imagenet-dino-vitb8__map-p1-n2__fov-mlp__paper.json
    """
    from ocbench.leaderboard.compare import compare_entries

    click.echo(compare_entries(entry_a, entry_b).text)


@cli.group(cls=_Group)
def leaderboard() -> None:
    """Validate entries, build the board (Markdown, CSV, HTML, plots), publish it to the Hub.

    \b
    Example:
      ocbench leaderboard build results --out board
    """


@leaderboard.command("build")
@click.argument("entries", nargs=-1, required=True)
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Output folder.")
@click.option("--no-reported", is_flag=True, help="Leave out the paper's reported rows.")
@click.option("--rank-reported", is_flag=True, help="Rank reported rows together with computed ones.")
@click.option("--allow-empty", is_flag=True, help="Build even with no valid entry (the paper's reported rows alone).")
@click.option(
    "--zero-shot-only", is_flag=True,
    help="Leave out entries whose backbone was trained on the evaluated data or its labels (backbone.not_zero_shot).",
)
def leaderboard_build(entries, out, no_reported, rank_reported, allow_empty, zero_shot_only):
    """Build LEADERBOARD.md, leaderboard.csv, index.html and plots from entry folders/files/Hub repos.

    \b
    Example:
      ocbench leaderboard build results --out board
      ocbench leaderboard build results --out board-zero-shot --zero-shot-only
    """
    from ocbench.leaderboard import build_board

    report = build_board(
        list(entries), out, include_reported=not no_reported, rank_reported=rank_reported, allow_empty=allow_empty,
        zero_shot_only=zero_shot_only,
    )
    click.echo(report.summary())


@leaderboard.command("validate")
@click.argument("entries", nargs=-1, required=True)
def leaderboard_validate(entries):
    """Check entry files against the schema; one line per problem (exit 1 if any).

    \b
    Example:
      ocbench leaderboard validate results leaderboard/entries
    """
    from ocbench.leaderboard import validate_entries

    problems = validate_entries(list(entries))
    for line in problems:
        click.echo(line, err=True)
    if problems:
        raise click.exceptions.Exit(1)
    click.echo("all entries valid")


@leaderboard.command("publish")
@click.argument("board_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--repo-id", required=True, help="Hub dataset repo, ORG/NAME.")
@click.option("--dry-run", is_flag=True, help="Print what would be uploaded; upload nothing.")
@click.option("--allow-synthetic", is_flag=True, help="Publish entries on synthetic data (the demo) too.")
@click.option("--allow-off-protocol", is_flag=True, help="Publish off-protocol entries too.")
@click.option("--revision", default=None, help="Branch of the repo to commit to (default: main).")
def leaderboard_publish(board_dir, repo_id, dry_run, allow_synthetic, allow_off_protocol, revision):
    """Upload a built board (entries and tables) to a Hugging Face dataset repo.

    \b
    Example:
      ocbench leaderboard publish board --repo-id my-org/ocbench-leaderboard --dry-run
    """
    from ocbench.leaderboard import publish
    from ocbench.leaderboard.hub import publish_target

    files = publish(
        board_dir, repo_id, dry_run=dry_run, allow_synthetic=allow_synthetic, allow_off_protocol=allow_off_protocol,
        revision=revision,
    )
    where = publish_target(repo_id, revision)
    click.echo(f"{'dry run: would upload' if dry_run else 'uploaded'} {len(files)} files to {where}; "
               "entries/ and plots/ files there that are not listed are deleted in the same commit:")
    for line in files:
        click.echo(f"  {line}")


def _set_cache_dir(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value:
        os.environ["OCBENCH_CACHE"] = str(Path(value).expanduser().resolve())


def _load_plugins(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> None:
    if values:
        from ocbench.registry import load_plugin

        for module in values:
            load_plugin(module)


def _set_debug(ctx: click.Context, _param, value: bool) -> None:
    if value:  # the error handler reads it from the root context
        ctx.find_root().params["debug"] = True


def _accept_global_options(group: click.Group) -> None:
    """`ocbench run --cache-dir X` works like `ocbench --cache-dir X run`: users put options after the
    command name, and click alone would answer with an unrelated "did you mean"."""
    for command in group.commands.values():
        if isinstance(command, click.Group):
            _accept_global_options(command)
            continue
        command.params.append(click.Option(
            ["--cache-dir"], type=click.Path(file_okay=False), default=None, expose_value=False, is_eager=True,
            callback=_set_cache_dir, help="Same as `ocbench --cache-dir` (the cache of data, embeddings and weights).",
        ))
        command.params.append(click.Option(
            ["--plugin"], multiple=True, metavar="MODULE", expose_value=False, is_eager=True, callback=_load_plugins,
            help="Same as `ocbench --plugin`: import MODULE first (its backbones, tasks, datasets).",
        ))
        command.params.append(click.Option(
            ["--debug"], is_flag=True, expose_value=False, is_eager=True, callback=_set_debug,
            help="Same as `ocbench --debug`: show full tracebacks for errors.",
        ))


_accept_global_options(cli)


def main() -> None:
    cli(prog_name="ocbench")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
