"""``ocbench tasks ...``: the registered tasks (protocols) and their settings."""

from __future__ import annotations

import click

from ocbench.cli._app import _Group, cli


@cli.group(cls=_Group)
def tasks() -> None:
    """List the benchmark tasks (protocols) and show their settings.

    \b
    Example:
      ocbench tasks show fov-mlp
    """


@tasks.command("list")
def tasks_list():
    """Registered tasks with their protocol version, main score and the label modes they score.

    \b
    Example:
      ocbench tasks list
    """
    from tabulate import tabulate

    from ocbench.tasks import TASKS

    rows = []
    for name in sorted(TASKS.names()):
        cls = TASKS.get(name)
        rows.append([name, cls.protocol_version, f"{cls.main_score[1]} ({cls.main_score[0]})",
                     ", ".join(cls.label_modes), cls.description])
    click.echo(tabulate(rows, headers=["task", "protocol", "main score", "labels", "what"], tablefmt="simple"))


@tasks.command("show")
@click.argument("name")
def tasks_show(name):
    """A task's settings with their protocol defaults (change them with `ocbench run --set KEY=VALUE`).

    \b
    Example:
      ocbench tasks show fov-mlp
    """
    from tabulate import tabulate

    from ocbench.tasks import TASKS

    cls = TASKS.get(name)
    click.echo(f"{cls.name}: {cls.description}")
    click.echo(f"protocol version: {cls.protocol_version}")
    click.echo(f"main score: {cls.main_score[1]} on {cls.main_score[0]} (ranks the leaderboard"
               + ("" if cls.higher_is_better else "; lower is better") + ")")
    if cls.axis:
        click.echo(f"axis: {cls.axis}")
    if cls.requires:
        click.echo(f"needs: {', '.join(cls.requires)}" + (f" (pip install 'ocbench[{cls.extra}]')" if cls.extra else ""))
    rows = [[key, kind, default if not isinstance(default, list) else ",".join(map(str, default)), help_]
            for key, kind, default, help_ in cls.settings_table()]
    click.echo(tabulate(rows, headers=["setting", "type", "default", "meaning"], tablefmt="simple"))
    click.echo("\nAny --set that changes a default marks the entry off-protocol.")
