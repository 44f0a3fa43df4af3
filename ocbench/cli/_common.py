"""What several commands share: the dataset and run options, opening the dataset, worker and seed
parsing, torchrun rank helpers, and printing of outcomes and warnings."""

from __future__ import annotations

import os
import sys

import click


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
