"""CLI behaviour for first use: help on every option, global options anywhere, early checks."""

import subprocess
import sys
import time

import click
import pytest
from click.testing import CliRunner

from ocbench.cli import cli

from cli_assertions import one_line_error


def _commands(group: click.Group, prefix=()):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, prefix + (name,))
        else:
            yield prefix + (name,), command


@pytest.mark.parametrize("path, command", list(_commands(cli)), ids=lambda v: " ".join(v) if isinstance(v, tuple) else "")
def test_every_option_says_what_it_does(path, command):
    missing = [p.opts[0] for p in command.params if isinstance(p, click.Option) and not (p.help or "").strip()]
    assert not missing, f"ocbench {' '.join(path)}: options without help: {missing}"


def test_global_options_are_accepted_after_the_command(tmp_path):
    cache = tmp_path / "cache"
    result = CliRunner().invoke(cli, ["data", "demo", "--cache-dir", str(cache), "--proteins", "6", "--size", "40"])
    assert result.exit_code == 0, result.output
    assert (cache / "demo").is_dir()


def test_split_tracks_have_one_default():
    data_split = cli.commands["data"].commands["split"]
    run = cli.commands["run"]
    track_default = next(p.default for p in data_split.params if p.name == "track")
    run_default = next(p.default for p in run.params if p.name == "tracks")
    assert track_default == "paper" and tuple(run_default) == ("paper",)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--backbone", "classical-stat"], "did you mean: classical-stats"),
        (["--backbone", "classical-stats", "--task", "fov-mpl"], "did you mean: fov-mlp"),
        (["--backbone", "classical-stats", "--split", "by-cell"], "by-cell"),
        (["--backbone", "classical-stats", "--set", "lr=inf"], "finite"),
        (["--backbone", "tiny-vit-random", "--channels", "protein=9"], "protein=9"),
    ],
)
def test_bad_names_fail_before_data_or_torch_is_touched(tmp_path, args, fragment):
    # a dataset folder that does not exist: if the names were not checked first, this would be the error
    code = (
        "import sys\n"
        "from ocbench.cli import cli\n"
        "try:\n"
        f"    cli.main({['run', '--dataset', str(tmp_path / 'absent'), *args]!r}, prog_name='ocbench')\n"
        "except SystemExit as e:\n"
        "    print('torch imported:', 'torch' in sys.modules, file=sys.stderr); sys.exit(e.code)\n"
    )
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    assert out.returncode == 2, out.stderr
    first = out.stderr.splitlines()[0]
    assert first.startswith("error: ") and fragment in first and "absent" not in first
    assert "torch imported: False" in out.stderr
    assert elapsed < 15  # generous for a loaded machine; about a second on a quiet one


def test_missing_dataset_after_good_names_is_one_line(tmp_path):
    one_line_error(
        CliRunner().invoke(cli, ["run", "--dataset", str(tmp_path / "absent"), "--backbone", "classical-stats"]),
        "no such folder",
    )
