"""Channel maps in the paper's notation (``[1, 2] -> [G, B]``), read off an entry's channels block.

Used by the board's tables and by the run summary; imports nothing of ocbench, so both may use it
(see :data:`ocbench.leaderboard.formatting.CHANNEL_LEGEND` for what the notation means).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

__all__ = ["resolve_channel_map", "map_label", "entry_channel_map", "channels_label"]

_LETTERS = "RGBY"


def _target_index(token: str, input_channels: Sequence[str]) -> int | None:
    token = token.strip().strip("'\"")
    if token.isdigit():
        return int(token)
    lowered = [c.lower() for c in input_channels]
    if token.lower() in lowered:
        return lowered.index(token.lower())
    if len(token) == 1 and token.upper() in _LETTERS and len(input_channels) in (3, 4):
        return _LETTERS.index(token.upper())
    return None


def resolve_channel_map(strategy: str, spec: str | None, key: str, card: dict[str, Any]) -> tuple[int, int] | None:
    """Model input index of (protein, nucleus) for a ``map`` entry, when it can be read off.

    Understands the presets ``natural`` (inputs named protein and nucleus) and ``best-imagenet``
    (G, B), ``protein:G,nucleus:B`` / ``protein=1,nucleus=2`` / ``protein->1`` forms and a bare
    pair ``[1, 2] -> [G, B]`` or ``G,B``. Returns None when it cannot tell (no paper value shown).
    """
    if strategy == "replicate":
        return None
    inputs = [str(c) for c in card.get("input_channels") or ()]
    keyed = re.fullmatch(r"map-p(\d+)-n(\d+)", key or "")  # the adapter key names the indices
    if keyed:
        return int(keyed.group(1)), int(keyed.group(2))
    for text in (spec, key):
        if not text:
            continue
        low = text.strip().lower()
        if low in ("natural", "map:natural"):
            names = [c.lower() for c in inputs]
            if "protein" in names and "nucleus" in names:
                return names.index("protein"), names.index("nucleus")
            continue
        if low in ("best-imagenet", "imagenet-best", "map:best-imagenet", "map:imagenet-best"):
            return (1, 2) if len(inputs) == 3 else None
        named = {
            name: re.search(rf"{name}\s*(?:->|[:=>])\s*([A-Za-z0-9_]+)", text, flags=re.IGNORECASE)
            for name in ("protein", "nucleus")
        }
        if named["protein"] and named["nucleus"]:
            pair = [_target_index(m.group(1), inputs) for m in named.values()]  # type: ignore[union-attr]
        else:
            target = text.split("->")[-1]
            tokens = [t for t in re.split(r"[\s,\[\]()]+", target) if t]
            pair = [_target_index(t, inputs) for t in tokens] if len(tokens) == 2 else [None]
        if len(pair) == 2 and None not in pair:
            return pair[0], pair[1]  # type: ignore[return-value]
    return None


def map_label(backbone_card: dict[str, Any], channel_map: tuple[int, int]) -> str:
    """``[1, 2] -> [a, b]`` as the paper writes it (letters for RGB models), ``natural`` when the
    inputs are the like-named channels."""
    inputs = [str(c).lower() for c in backbone_card.get("input_channels") or ()]
    if len(inputs) == 3 and max(channel_map) < 3:
        label = f"[1, 2] -> [{_LETTERS[channel_map[0]]}, {_LETTERS[channel_map[1]]}]"
    else:
        label = f"[1, 2] -> [{channel_map[0]}, {channel_map[1]}]"
    natural = "protein" in inputs and "nucleus" in inputs and channel_map == (inputs.index("protein"), inputs.index("nucleus"))
    return label + (" natural" if natural else "")


def entry_channel_map(entry: Any) -> tuple[int, int] | None:
    """The entry's (protein, nucleus) input indices; None for replicate or an unreadable map."""
    c = entry.channels
    return resolve_channel_map(c.strategy, c.spec, c.key, entry.backbone.card)


def channels_label(entry: Any, channel_map: tuple[int, int] | None) -> str:
    """What the board shows for an entry's channels: the paper's notation when the map is known,
    else the spec as given (prefixed with the strategy when it does not say it)."""
    if channel_map is not None:
        return map_label(entry.backbone.card, channel_map)
    shown = entry.channels.spec or entry.channels.key
    return shown if shown.startswith(entry.channels.strategy) else f"{entry.channels.strategy} {shown}"
