"""The ``ocbench`` command line.

Thin by design: each command parses options, calls one library function and prints. torch, timm
and the heavier parts of ocbench are imported inside the commands that need them, so ``--help``
and the leaderboard commands start fast.

Commands live in modules by group: ``_app`` (the root group, error handling, global options,
``main``), ``_common`` (options and helpers shared by commands), ``run`` (run, sweep-channels,
demo, finetune, embed), ``data``, ``backbones``, ``tasks`` and ``board`` (compare, leaderboard).
"""

from ocbench.cli._app import _accept_global_options, cli, main

# importing the command modules registers their commands on ``cli`` (this order: their order)
from ocbench.cli import run, data, backbones, tasks, board  # noqa: E402,F401  isort: skip

# after every command exists: it walks them
_accept_global_options(cli)

__all__ = ["cli", "main"]
