"""The ``ocbench`` command line.

Thin by design: each command parses options, calls one library function and prints. torch, timm
and the heavier parts of ocbench are imported inside the commands that need them, so ``--help``
and the leaderboard commands start fast.
"""

from __future__ import annotations

import sys

import click

from ocbench import __version__
from ocbench.errors import OcbenchError


class _Group(click.Group):
    """Turns user errors into one line on stderr and exit code 2 (``--debug`` shows the traceback)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except OcbenchError as exc:
            if ctx.find_root().params.get("debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted: partial files were removed; run the same command again to resume", err=True)
            ctx.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ocbench")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
def cli(debug: bool) -> None:
    """ocbench: benchmark pretrained vision backbones on protein localization (OpenCell).

    \b
    Example (offline, about a minute):
      ocbench demo
    """


def main() -> None:
    cli(prog_name="ocbench")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
