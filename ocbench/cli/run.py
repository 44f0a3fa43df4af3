"""``ocbench run``, ``sweep-channels``, ``demo``, ``finetune`` and ``embed``: the commands that run
backbones on a dataset."""

from __future__ import annotations

from pathlib import Path

import click

from ocbench.cli._app import cli
from ocbench.cli._common import (
    _available_cores,
    _dataset_options,
    _is_main_rank,
    _join_ranks,
    _one_seed,
    _open_dataset,
    _parse_workers,
    _print_outcomes,
    _print_warnings,
    _resolve_dataset,
    _run_options,
    _say_done,
    _split_list,
    _workers_option,
)


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
    from ocbench import api

    if (backbone is None) == (from_scratch is None):
        raise click.UsageError("give exactly one of --backbone NAME or --from-scratch ARCH")
    outcome = api.finetune(
        backbone, from_scratch=from_scratch, dataset=dataset, channels=channels, epochs=epochs, fraction=fraction,
        overrides=overrides, track=track, split_file=split_file, annotations=annotations, min_grade=min_grade,
        seed=seed, device=device, workers=workers, precision=precision, resume=resume, threads=threads, progress=True,
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
    from ocbench import api

    if overrides and not cells:
        raise click.UsageError("--set applies to --cells (the settings that choose the cells)")
    result = api.embed(
        backbone, dataset=dataset, channels=channels, cells=cells, overrides=overrides, export=export_path,
        annotations=annotations, min_grade=min_grade, device=device, batch_size=batch_size, workers=workers,
        recompute=recompute, progress=True,
    )
    if not _is_main_rank():  # under torchrun only rank 0 prints
        return
    if result.exported is not None:
        click.echo(f"wrote {result.exported}")
    if cells and export_path:
        return
    m = result.embeddings.meta
    state = "cache hit" if m.get("cache_hit") else f"extracted in {m.get('wall_time_s', 0):.1f} s ({m.get('images_per_s', 0):.1f} images/s)"
    click.echo(f"{len(result.embeddings)} x {result.embeddings.dim} embeddings, {state}; key {result.embeddings.key}")
