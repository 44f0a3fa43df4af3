"""The root ``ocbench`` group: one-line errors and exit codes, warnings on one line, the global
options (``--debug``, ``--cache-dir``, ``--plugin``, also accepted after a command name) and ``main``."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

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
        except OSError as exc:  # unwritable folder, path that is a file, disk full, ...
            if ctx.find_root().params.get("debug"):
                raise
            where = f"{exc.filename}: " if exc.filename else ""
            click.echo(f"error: {where}{exc.strerror or exc}; check the path and its permissions", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo(
                "interrupted: no half-written file was kept; run the same command again to resume", err=True
            )
            ctx.exit(130)


def _group(**kwargs):
    return click.group(cls=_Group, **kwargs)


@_group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ocbench")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.option(
    "--cache-dir", type=click.Path(file_okay=False), default=None,
    help="Cache for demo data, embeddings and converted weights (default $OCBENCH_CACHE or ~/.cache/ocbench).",
)
@click.option(
    "--plugin", "plugins", multiple=True, metavar="MODULE",
    help="Import MODULE (a module name or a .py file) first, so its backbones, tasks or datasets are registered.",
)
def cli(debug: bool, cache_dir: str | None, plugins: tuple[str, ...]) -> None:
    """ocbench: benchmark pretrained vision backbones on protein localization (OpenCell).

    \b
    Example (offline, about a minute):
      ocbench demo
    """
    if cache_dir:
        os.environ["OCBENCH_CACHE"] = str(Path(cache_dir).expanduser().resolve())
    if not debug:
        warnings.showwarning = _show_warning
    if plugins:
        from ocbench.registry import load_plugin

        for module in plugins:
            load_plugin(module)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line on stderr, without the source line Python adds."""
    click.echo(f"warning: {message}", err=True)


def _set_cache_dir(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value:
        os.environ["OCBENCH_CACHE"] = str(Path(value).expanduser().resolve())


def _load_plugins(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> None:
    if values:
        from ocbench.registry import load_plugin

        for module in values:
            load_plugin(module)


def _set_debug(ctx: click.Context, _param, value: bool) -> None:
    if value:  # the error handler reads it from the root context
        ctx.find_root().params["debug"] = True


def _accept_global_options(group: click.Group) -> None:
    """`ocbench run --cache-dir X` works like `ocbench --cache-dir X run`: users put options after the
    command name, and click alone would answer with an unrelated "did you mean"."""
    for command in group.commands.values():
        if isinstance(command, click.Group):
            _accept_global_options(command)
            continue
        command.params.append(click.Option(
            ["--cache-dir"], type=click.Path(file_okay=False), default=None, expose_value=False, is_eager=True,
            callback=_set_cache_dir, help="Same as `ocbench --cache-dir` (the cache of data, embeddings and weights).",
        ))
        command.params.append(click.Option(
            ["--plugin"], multiple=True, metavar="MODULE", expose_value=False, is_eager=True, callback=_load_plugins,
            help="Same as `ocbench --plugin`: import MODULE first (its backbones, tasks, datasets).",
        ))
        command.params.append(click.Option(
            ["--debug"], is_flag=True, expose_value=False, is_eager=True, callback=_set_debug,
            help="Same as `ocbench --debug`: show full tracebacks for errors.",
        ))


def main() -> None:
    cli(prog_name="ocbench")
