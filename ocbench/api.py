"""The Python API: evaluate a model you hold in memory, the way MTEB's ``evaluate(model)`` does.

::

    import ocbench
    from ocbench.backbones import BackboneCard

    card = BackboneCard(name="mylab-vit", source="memory:model", arch="mylab-vit", feature_dim=384,
                        in_chans=3, input_channels=("R", "G", "B"), default_channels="imagenet-best")
    entry = ocbench.evaluate(model, card=card, task="fov-mlp", dataset="demo", output_dir="results")
    print(entry.main.mean)                     # the task's main score (mean over folds)

``model`` is a ``torch.nn.Module`` or any callable taking the normalized model input
``(N, in_chans, H, W)`` float32 and returning ``(N, card.feature_dim)`` features. ``card`` says how
dataset images become that input (intensity rule, resize, normalization, channel default) and what
the model is (name, training data, licence); a registered card name or a ``timm:``/``hf-hub:``/
``local:`` spec may be given instead, to describe the preprocessing of a known model (the entry
then names the backbone ``<that card's name>-in-memory``; a ``BackboneCard`` whose name is
registered is refused, as entries and the paper's reported numbers go by name). The result is
a normal entry written by the runner (same checks, cache and files as ``ocbench run``); its backbone
block says the weights are unverified in-memory weights and records the sha256 of the module's
``state_dict``. Cached embeddings are keyed by that sha256 plus the module's submodule classes and
plain attributes, never by the code of ``forward``; a plain callable or a module with an empty
``state_dict`` is never served cached embeddings (exactly what counts: :mod:`ocbench.backbones.memory`).

:func:`embed` and :func:`finetune` are what ``ocbench embed`` and ``ocbench finetune`` do, for
Python callers: names in, results out (the commands only parse their options, call these and
print). Under ``torchrun`` every process calls them; rank 0 alone writes the shared files.

This module sits at the top of the layers, beside the command line.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["evaluate", "embed", "EmbedResult", "finetune"]


def evaluate(
    model: Any | Callable,
    *,
    card: Any,
    task: str = "fov-mlp",
    dataset: str | os.PathLike = "demo",
    output_dir: str | os.PathLike = "results",
    channels: str | None = None,
    track: str = "paper",
    overrides: Sequence[str] = (),
    seed: int = 0,
    device: str = "auto",
    batch_size: int = 16,
    annotations: str | os.PathLike | None = None,
    min_grade: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = False,
):
    """Benchmark an in-memory ``model`` on one task and write its entry; returns the Entry.

    ``dataset``: "demo", "opencell" (a dataset card name) or a folder in OpenCell's raw layout.
    ``channels``: a channel spec (default: the card's). ``track``: "paper" or "protein".
    ``overrides``: task settings as "key=value" (recorded; they mark the entry off-protocol).
    ``cache_dir``: where embeddings are cached (default under the ocbench cache).
    The written file is ``<output_dir>/<entry key>.json`` (``entry.key``).
    """
    from ocbench.backbones.card import BackboneCard
    from ocbench.backbones.cards import BACKBONES
    from ocbench.backbones.derive import resolve_backbone
    from ocbench.backbones.memory import in_memory_card
    from ocbench.benchmark.runner import RunOptions, RunSpec, run_grid
    from ocbench.data.cards import open_dataset
    from ocbench.errors import ConfigError

    if card is None:
        raise ConfigError("evaluate: pass card= (a BackboneCard, or a card name / timm: spec whose preprocessing the model expects)")
    if isinstance(card, BackboneCard):
        base = card
        if base.name in BACKBONES:
            raise ConfigError(
                f"evaluate: card name '{base.name}' is a registered backbone; an in-memory model is not that model "
                f"(its entries and reported numbers go by name): give your card another name (e.g. '{base.name}-mine')"
            )
    else:
        # a known model's preprocessing, under a name of its own: never the registered model's entries or numbers
        known = resolve_backbone(str(card))
        base = dataclasses.replace(known, name=f"{known.name}-in-memory")
    memory_card = in_memory_card(model, base)
    ds = open_dataset(dataset, annotations=annotations, min_grade=min_grade)
    options = RunOptions(
        output_dir=Path(output_dir), seed=seed, device=device, batch_size=batch_size,
        cache_dir=Path(cache_dir) if cache_dir is not None else None, overwrite=overwrite, progress=progress,
        replace_hint="pass overwrite=True to replace it or another output_dir= to keep both",
    )
    # The card object itself stands in the spec: the runner uses a card as it is.
    spec = RunSpec(backbone=memory_card, task=task, channels=channels, track=track, overrides=tuple(overrides))
    (outcome,) = run_grid([spec], ds, options)
    return outcome.entry


@dataclasses.dataclass(frozen=True)
class EmbedResult:
    """What :func:`embed` produced."""

    embeddings: Any  # ocbench.benchmark.embeddings.Embeddings: features (N, D), fov_ids, key, meta
    exported: Path | None = None  # the file ``export`` was written to (None: none asked, or not rank 0)
    evaluation: Any = None  # with cells=True: the evaluation cells (ocbench.data.cells.EvaluationSet) embedded


def embed(
    backbone: str,
    *,
    dataset: str | os.PathLike = "demo",
    channels: str | None = None,
    cells: bool = False,
    overrides: Sequence[str] = (),
    export: str | os.PathLike | None = None,
    annotations: str | os.PathLike | None = None,
    min_grade: int | None = None,
    device: str = "auto",
    batch_size: int = 16,
    workers: int | None = None,
    recompute: bool = False,
    progress: bool = False,
) -> EmbedResult:
    """Extract (or find cached) the embeddings of every FOV of ``dataset``, or with ``cells`` of
    its evaluation cells, as ``ocbench embed`` does; returns them and where they were exported.

    ``backbone``: a card name, or ``timm:``/``hf-hub:``/``local:`` weights. ``overrides``: with
    ``cells``, the cell selection settings as "key=value" (segmentation, crop_size, ...).
    ``export``: also write them to this ``.npz`` or ``.parquet`` file. ``workers``: DataLoader
    workers (None: auto). ``recompute``: discard this key's cached embeddings first.
    """
    from functools import partial

    from ocbench.backbones.adapters import parse_channels
    from ocbench.backbones.derive import resolve_backbone
    from ocbench.benchmark import distributed
    from ocbench.benchmark.embeddings import extract_embeddings
    from ocbench.data.cards import open_dataset, resolve_dataset
    from ocbench.errors import ConfigError

    if overrides and not cells:
        raise ConfigError("embed: overrides are cell selection settings; they apply with cells=True")
    card = resolve_backbone(backbone)
    source = resolve_dataset(dataset)
    adapter = parse_channels(channels, card, source.card)
    selection = None
    if cells:
        from ocbench.tasks.cell_task import CellSelection

        selection = CellSelection().for_dataset(source.card).with_overrides(overrides)
    device = distributed.setup(device)
    ds = open_dataset(source, annotations=annotations, min_grade=min_grade)
    main = distributed.is_main()
    extract = partial(
        extract_embeddings, backbone=card, adapter=adapter, batch_size=batch_size, device=device,
        num_workers=workers, recompute=recompute, progress=progress and main,
    )
    if selection is None:
        emb = extract(ds)
        if not (export and main):
            return EmbedResult(emb)
        from ocbench.data.export import export_embeddings

        groups = [str(g) for g in ds.groups]
        return EmbedResult(emb, export_embeddings(export, emb.features, emb.fov_ids, ds.labels, groups, ds.card.class_names))

    from ocbench.data import cells as cell_data
    from ocbench.tasks import Progress

    # segmentation fills a shared cache: under torchrun rank 0 segments, the other ranks read
    _, evaluation = distributed.main_first(lambda: selection.evaluation_cells(ds, progress=Progress(progress and main)))
    emb = extract(evaluation.crops)  # under torchrun every rank takes part; rank 0 alone writes
    exported = cell_data.export_cell_embeddings(export, evaluation, emb) if export and main else None
    return EmbedResult(emb, exported, evaluation)


def finetune(
    backbone: str | None = None,
    *,
    from_scratch: str | None = None,
    dataset: str | os.PathLike = "demo",
    channels: str | None = None,
    epochs: int | None = None,
    fraction: float | None = None,
    overrides: Sequence[str] = (),
    track: str = "paper",
    split_file: str | os.PathLike | None = None,
    annotations: str | os.PathLike | None = None,
    min_grade: int | None = None,
    seed: int = 0,
    device: str = "auto",
    workers: int | None = None,
    precision: str = "fp32",
    resume: bool = False,
    threads: int | None = None,
    progress: bool = False,
):
    """DINO training of ``backbone`` (or, ``from_scratch``, of a timm ViT architecture from random
    weights) on the train part of the split, as ``ocbench finetune`` does; see
    :mod:`ocbench.tasks.finetune`. Returns its :class:`~ocbench.tasks.finetune.FineTuneOutcome`
    (the derived card, the weights folder, the run folder with the loss curve), or None on
    processes other than rank 0 under ``torchrun``.

    ``epochs``, ``fraction`` and ``overrides`` ("key=value"): training settings (see ``ocbench
    tasks show finetune``). ``resume``: continue an unfinished run of the same settings.
    ``threads``: CPU threads for torch (default: the cores available). ``workers``: DataLoader
    workers (None: auto).
    """
    from ocbench._cores import available_cores
    from ocbench.backbones.adapters import parse_channels
    from ocbench.backbones.derive import resolve_backbone
    from ocbench.benchmark.runner import RunOptions, split_for
    from ocbench.data.cards import open_dataset, resolve_dataset
    from ocbench.errors import ConfigError
    from ocbench.tasks import get_task
    from ocbench.tasks.finetune import finetune_command, scratch_card

    if (backbone is None) == (from_scratch is None):
        raise ConfigError("finetune: give exactly one of backbone= or from_scratch=")
    settings = [*overrides, *([f"epochs={epochs}"] if epochs else []), *([f"fraction={fraction}"] if fraction else [])]
    config, _ = get_task("finetune").with_overrides(settings)  # settings checked before the data is opened
    source = resolve_dataset(dataset)
    base = resolve_backbone(backbone) if backbone else scratch_card(from_scratch, source.card, seed)
    adapter = parse_channels(channels, base, source.card)
    ds = open_dataset(source, annotations=annotations, min_grade=min_grade)
    split = split_for(ds, track, RunOptions(output_dir=Path("."), seed=seed, split_file=Path(split_file) if split_file else None))
    return finetune_command(
        base=base, adapter=adapter, dataset=ds, split=split, config=config, seed=seed, device=device,
        workers=workers, precision=precision, resume=resume, threads=threads or available_cores(), progress=progress,
    )
