"""Is a result zero-shot? What a backbone's training data and supervision say about one dataset.

A backbone is *not zero-shot* on a benchmark dataset when

- its ``training_datasets`` include that dataset (its name or an alias: OpenCell for ``opencell``,
  and for ``demo``, which is synthetic data in OpenCell's layout standing in for it), e.g. an
  OpenCell-trained or OpenCell-fine-tuned card, which inherits and extends its parent's list; or
- it was trained with protein localization labels (``supervision`` "protein-label supervised"),
  which may be labels of the benchmark's own proteins.

:func:`not_zero_shot_reasons` says why in words (empty: zero-shot); the runner records the list in
each entry's backbone block (``not_zero_shot``), and the board marks and can hide such rows.
Matching is by name, ignoring case and punctuation, and by prefix ("OpenCell 90% train split"
matches OpenCell). No torch.
"""

from __future__ import annotations

import re
from typing import Any

from ocbench.backbones.card import BackboneCard

__all__ = ["DATASET_ALIASES", "dataset_aliases", "not_zero_shot_reasons"]

#: Training-data names that mean "this benchmark dataset's images", per dataset card name. A dataset
#: card may add its own under ``extra["training_data_names"]``.
DATASET_ALIASES: dict[str, tuple[str, ...]] = {
    "opencell": ("OpenCell",),
    "demo": ("OpenCell", "ocbench demo"),
}


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(text).lower())


def dataset_aliases(dataset_card: Any) -> tuple[str, ...]:
    """The names under which a card's ``training_datasets`` would list this dataset."""
    name = str(getattr(dataset_card, "name", dataset_card))
    extra = getattr(dataset_card, "extra", None) or {}
    names = [name, *DATASET_ALIASES.get(name, ()), *tuple(extra.get("training_data_names", ()))]
    return tuple(dict.fromkeys(n for n in names if n))


def not_zero_shot_reasons(card: BackboneCard, dataset_card: Any) -> list[str]:
    """Why results of ``card`` on ``dataset_card`` are not zero-shot, in words ([] when they are)."""
    aliases = [_norm(a) for a in dataset_aliases(dataset_card)]
    seen = [d for d in card.training_datasets if any(a and _norm(d).startswith(a) for a in aliases)]
    reasons = []
    if seen:
        what = str(getattr(dataset_card, "name", dataset_card))
        reasons.append(f"trained on {', '.join(seen)}: the benchmark's own images ({what})")
    if card.supervision == "protein-label supervised":
        reasons.append("supervised with protein localization labels (possibly of the benchmark's own proteins)")
    return reasons
