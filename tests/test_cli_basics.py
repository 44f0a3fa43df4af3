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
