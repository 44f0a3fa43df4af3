"""Where ocbench keeps things on disk (demo data, embeddings, converted weights)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Root of ocbench's cache: ``$OCBENCH_CACHE`` or ``~/.cache/ocbench``."""
    env = os.environ.get("OCBENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ocbench"


def demo_root() -> Path:
    """Default location of the synthetic demo dataset (``--dataset demo``)."""
    return cache_dir() / "demo"


def opencell_root() -> Path:
    """Default location of the real OpenCell data (where ``ocbench data download`` puts it)."""
    return cache_dir() / "opencell"


def entries_dir() -> Path:
    """Default folder for result entries written by ``ocbench run``."""
    return Path("results")
