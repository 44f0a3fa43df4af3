"""Running one command on several processes (``torchrun``): who does what, and how they agree.

``torchrun --nproc-per-node N -m ocbench embed|run ...`` starts N copies of the command with
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set. :func:`setup` (called by those commands) joins
the process group: NCCL when the ranks run on GPUs, gloo on CPU. Each rank then

- embeds its own share of the missing cache shards (shard ``i`` of the plan goes to rank
  ``i mod N``: each item is computed exactly once, nothing is padded or duplicated), writing its
  shards into the shared cache folder; rank 0 checks the cache, plans, and writes the manifest
  that merges the shards by item id (see :mod:`ocbench.benchmark.embeddings`);
- runs the task on the merged embeddings (every rank gets the same result; the cost is small next
  to extraction), and only rank 0 writes entries, split files and prints.

The cache folder must be one folder all ranks see (one node, or a shared file system across
nodes). A killed rank loses at most the shard it was writing: run the same command again.

Without ``torchrun`` (or with one process) everything here is a no-op, and nothing imports torch
until a process group is actually needed.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from ocbench.errors import ConfigError, DataError, OcbenchError

__all__ = ["World", "world", "setup", "is_main", "barrier", "broadcast", "from_main", "main_first", "rank_share"]

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def _initialized() -> bool:
    torch = sys.modules.get("torch")
    if torch is None:  # a process group needs torch: without it there is none
        return False
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized()


def world() -> World:
    """This process's place in the process group (rank 0 of 1 when there is none)."""
    if not _initialized():
        return World()
    import torch.distributed as dist

    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def is_main() -> bool:
    return world().main


def _launched_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def setup(device: str | None) -> str | None:
    """Join the process group ``torchrun`` set up (if any) and return the device this rank uses.

    ``device`` as the user gave it: "auto"/"cuda" become this rank's own GPU (``cuda:<LOCAL_RANK>``)
    when GPUs are present; anything explicit is kept.
    """
    if _launched_world_size() <= 1 or _initialized():
        return device
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and (device in (None, "auto", "cuda") or str(device).startswith("cuda"))
    if use_cuda and device in (None, "auto", "cuda"):
        device = f"cuda:{local_rank}"
    if use_cuda:
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return device


def barrier() -> None:
    if _initialized() and world().active:
        import torch.distributed as dist

        dist.barrier()


def broadcast(value: T) -> T:
    """Rank 0's ``value`` on every rank (any picklable object); the value itself without a group."""
    if not (_initialized() and world().active):
        return value
    import torch.distributed as dist

    box: list[Any] = [value if world().main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def from_main(decide: Callable[[], T]) -> T:
    """Run ``decide`` on rank 0 alone and return its result on every rank.

    If it fails, every rank stops instead of waiting for rank 0 until the group breaks: an ocbench
    error (bad input, a damaged cache, an entry in the way) is raised on every rank with the same
    one-line message; any other failure is raised as is on rank 0, whose traceback says what went
    wrong, and as a one-line error naming it on the others. Only the error's kind and message
    travel (a plugin's own exception class may not survive pickling)."""
    if not (_initialized() and world().active):
        return decide()
    if world().main:
        try:
            value = decide()
        except BaseException as exc:
            kind = next((k for k in (ConfigError, DataError) if isinstance(exc, k)), OcbenchError)
            message = str(exc) if isinstance(exc, OcbenchError) else f"rank 0 stopped: {type(exc).__name__}: {exc}"
            broadcast(("error", (kind, message)))
            raise
        return broadcast(("value", value))[1]
    outcome, payload = broadcast(None)
    if outcome == "error":
        kind, message = payload
        raise kind(message)
    return payload


def main_first(work: Callable[[], T]) -> T:
    """Rank 0 does ``work`` first, then the other ranks do it: for work that fills a shared cache
    (segmentation masks, cell tables), which the others then only read. An error on rank 0 stops
    every rank, as in :func:`from_main`."""
    if not (_initialized() and world().active):
        return work()
    done: list[T] = []
    from_main(lambda: done.append(work()))  # broadcasts None once rank 0 is through
    return done[0] if world().main else work()


def rank_share(items: list[T]) -> list[T]:
    """This rank's items: every ``size``-th one starting at its rank (all of them without a group)."""
    w = world()
    return items[w.rank :: w.size] if w.active else list(items)
