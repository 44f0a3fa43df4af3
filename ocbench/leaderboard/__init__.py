"""The leaderboard: collect result entries, validate them, rank with honest ties, render a board.

Reads entry JSON only: this package never imports torch, timm or the backbones, so a board builds
on a machine without them. The functions behind ``ocbench leaderboard ...``:

- :func:`build_board` (``build``): Markdown, CSV, static HTML and plots of the entries;
- :func:`validate_entries` (``validate``): one problem line per bad file;
- :func:`publish` (``publish``): upload a built board to a Hugging Face Hub dataset repo.

Attributes are imported on first use, so ``import ocbench.leaderboard`` itself is cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "build_board": "ocbench.leaderboard.build",
    "BuildReport": "ocbench.leaderboard.build",
    "validate_entries": "ocbench.leaderboard.collect",
    "collect_entries": "ocbench.leaderboard.collect",
    "publish": "ocbench.leaderboard.hub",
    "REPORTED": "ocbench.reported",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ocbench.leaderboard' has no attribute {name!r}")
