"""``ocbench data ...``: list, get, inspect, segment, split and export datasets."""

from __future__ import annotations

from pathlib import Path

import click

from ocbench.cli._app import _Group, cli
from ocbench.cli._common import _dataset_options, _open_dataset, _resolve_dataset, _split_list


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
@click.option("--workers", type=click.IntRange(1), default=None,
              help="Processes that segment FOVs [default: one per core for classical, one for cellpose].")
def data_cells(dataset, annotations, min_grade, backend, overrides, cell_labels, contact_sheet, recompute, workers):
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
        workers=workers,
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
