"""How many CPU cores this process may use (one answer for torch threads and DataLoader workers)."""

from __future__ import annotations

import os

__all__ = ["available_cores"]


def available_cores() -> int:
    """The cores this process may run on; under torchrun, the node's cores shared by its ranks
    (``LOCAL_WORLD_SIZE``), so N ranks on one node do not each take every core."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        ranks_here = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    except ValueError:
        ranks_here = 1
    return max(1, cores // ranks_here)
