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

This module sits at the top of the layers, beside the command line.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["evaluate"]


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
