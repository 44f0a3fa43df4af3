import subprocess
import sys

from click.testing import CliRunner

import ocbench
from ocbench.cli import cli


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert ocbench.__version__ in result.output


def test_help_does_not_import_torch():
    code = "import sys; from ocbench.cli import cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def _commands(group, prefix=()):
    import click

    for name, command in group.commands.items():
        yield (*prefix, name), command
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))


def test_every_command_has_help_with_an_example():
    missing = [" ".join(path) for path, command in _commands(cli) if "Example" not in (command.help or "")]
    assert not missing, f"commands without an example in --help: {missing}"
