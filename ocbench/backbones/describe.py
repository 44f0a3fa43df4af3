"""Text for ``ocbench backbones list`` and ``show``: a card (and the paper's numbers for it) in words.

Rendering only: every function takes card objects (names are resolved by the caller, e.g.
:func:`ocbench.backbones.cards.format_card`). No torch.
"""

from __future__ import annotations

import re

from ocbench.backbones.adapters import available_presets, default_adapter, parse_channels, sweep_adapters
from ocbench.backbones.card import BackboneCard
from ocbench.backbones.preprocess import describe_preprocess, preprocess_key
from ocbench.reported import ReportedResult, headline, reported_for_backbone

__all__ = ["format_card", "format_cards_table", "reported_channels"]


def _short_source(source: str) -> str:
    # Hub revisions are 40-hex commits: the table shows the first 7, like git.
    match = re.match(r"^(hf-hub:[^@]+)@([0-9a-f]{40})$", source)
    if match:
        return f"{match.group(1)}@{match.group(2)[:7]}"
    if source.startswith("url:"):
        from urllib.parse import urlsplit

        parts = urlsplit(source[len("url:") :])
        filename = parts.path.rstrip("/").rsplit("/", 1)[-1]
        return f"url:{parts.netloc}/…/{filename}" if filename else source
    return source


def _channels_cell(card: BackboneCard) -> str:
    names = card.channel_letters or card.input_channels
    joined = "".join(names) if all(len(n) == 1 for n in names) else ",".join(names)
    return f"{joined} <- {card.default_channels}"


def reported_channels(result: ReportedResult, card: BackboneCard) -> str:
    """A reported row's channel handling as a channel spec this card runs: ``replicate``, the card's
    default (``natural``, ``imagenet-best``) when the map is that one, else ``protein=G,nucleus=R``."""
    if result.strategy == "replicate" or result.channel_map is None:
        return result.strategy
    if max(result.channel_map) >= card.in_chans:  # a card that does not fit the paper's model
        return result.channels_label
    if parse_channels(card.default_channels, card).targets == result.channel_map:
        return card.default_channels
    # Letters for RGB-style cards, indices otherwise (as the paper writes HPA maps).
    names = card.input_channels if all(len(n) == 1 for n in card.input_channels) else None
    protein, nucleus = (names[i] if names else str(i) for i in result.channel_map)
    return f"protein={protein},nucleus={nucleus}"


def _headline_cell(card: BackboneCard) -> str:
    """``0.822±0.007 fov-mlp natural``; sc-knn: ``0.852 sc-knn natural (k#1 of 5)``; ``-`` when none."""
    result = headline(card.name)
    if result is None:
        return "-"
    channels = reported_channels(result, card)
    if result.per_k:  # one number per k: quote the first (smallest) k and say so
        return f"{result.per_k[0]:.3f} {result.task} {channels} (k#1 of {len(result.per_k)})"
    return f"{result.value_label()} {result.task} {channels}"


def format_cards_table(cards: list[BackboneCard]) -> str:
    """The ``ocbench backbones list`` table: name, source, arch, channels, dim, and the paper's
    headline number for the card's default configuration (from ``ocbench.reported``)."""
    from tabulate import tabulate

    rows = []
    for card in cards:
        reported = _headline_cell(card)
        rows.append([card.name, _short_source(card.source), card.arch, _channels_cell(card), card.feature_dim,
                     _training_cell(card), _licence_cell(card), reported])
    headers = ["name", "source", "arch", "channels", "dim", "trained on", "licence", "reported (paper)"]
    return tabulate(rows, headers=headers, tablefmt="simple")


_SUPERVISION_SHORT = {
    "self-supervised": "SSL", "image-text contrastive": "image-text", "class-label supervised": "class labels",
    "protein-label supervised": "protein labels", "unknown": "?",
}


def _training_cell(card: BackboneCard) -> str:
    """``LVD-142M (SSL)``; ``-`` for cards without training (random init, hand-made features)."""
    if not card.training_datasets:
        return "-"
    how = _SUPERVISION_SHORT.get(card.supervision)
    return "+".join(card.training_datasets) + (f" ({how})" if how else "")


def _licence_cell(card: BackboneCard, width: int = 28) -> str:
    """The licence's first clause, cut to ``width`` characters (``show`` prints it whole)."""
    text = re.split(r"[(;]", card.license or "-", maxsplit=1)[0].strip() or "-"
    return text if len(text) <= width else text[: width - 1] + "…"


def _availability(card: BackboneCard) -> str:
    """Whether the card runs here as it is: weights already on disk are said to be present."""
    if card.source_kind == "local":
        from ocbench.backbones.weights_folder import WEIGHTS_FILENAME, local_folder

        path = local_folder(card.source_target)
        weights = path if path.suffix == ".safetensors" else path / WEIGHTS_FILENAME
        if weights.is_file():
            return f"local weights present: {weights}"
    return card.unavailable_reason() or "offline (no download)"


def format_card(card: BackboneCard) -> str:
    """The ``ocbench backbones show NAME`` text: every card field, preprocessing and channel options."""
    default = default_adapter(card)
    channels = ", ".join(
        f"{i} {name}" + (f" ({card.channel_letters[i]})" if card.channel_letters and card.channel_letters[i] != name else "")
        for i, name in enumerate(card.input_channels)
    )
    revision = card.weights_source.revision
    lines = [
        f"name:            {card.name}",
        f"source:          {card.source}",
    ]
    if card.source_kind == "hf-hub":
        lines.append(f"revision:        {revision or 'unpinned (resolved commit recorded at load time)'}")
    if card.source_kind == "url":
        lines.append(
            f"sha256:          {card.sha256 or 'not published: recorded on first download, enforced afterwards; '}"
            + ("" if card.sha256 else "entries say 'weights not matched to a published checksum'")
        )
    lines += [
        f"availability:    {_availability(card)}",
        f"pretraining:     {card.pretraining or '-'}",
        f"training data:   {', '.join(card.training_datasets) or 'none'} ({card.supervision})",
        f"arch:            {card.arch}" + (f" {card.arch_kwargs}" if card.arch_kwargs else ""),
        f"patch size:      {card.patch_size or '-'}",
        f"input size:      {card.input_size or '-'} (resize policy: {card.resize})",
        f"input channels:  {card.in_chans}: {channels}",
        f"feature dim:     {card.feature_dim} per view",
        f"default channels: {card.default_channels} -> {default.describe(card)} (key {default.key}, "
        f"dim {card.feature_dim * default.n_views})",
        f"presets:         {', '.join(available_presets(card, default.channels)) or '-'}; replicate; sweep = "
        f"{len(sweep_adapters(card, default.channels))} injective maps",
        f"preprocessing:   {describe_preprocess(card)}",
        f"preprocess key:  {preprocess_key(card)}",
        f"license:         {card.license or '-'}",
        f"citation:        {card.citation or '-'}",
    ]
    if card.notes:
        lines.append(f"notes:           {card.notes}")
    lines += _format_reported(card)
    return "\n".join(lines)


def _format_reported(card: BackboneCard) -> list[str]:
    """Every number the paper reports for this backbone, one line each."""
    from tabulate import tabulate

    results = reported_for_backbone(card.name)
    if not results:
        return ["reported (paper): none"]
    rows = []
    for r in results:
        details = "; ".join(part for part in (r.config_label, r.note) if part)
        rows.append([r.value_label(), r.task, r.setting, reported_channels(r, card), r.source, details])
    table = tabulate(rows, headers=["macro-F1", "task", "setting", "channels", "source", "details"], tablefmt="plain")
    knn = "; sc-knn: one value per k, in increasing k (k#1 < ... < k#5)" if any(r.per_k for r in results) else ""
    return [
        f"reported (paper): macro-F1 mean ± std over the paper's 5 folds{knn}",
        *[f"  {line}" for line in table.splitlines()],
    ]
