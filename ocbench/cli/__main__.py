"""`python -m ocbench.cli` is the `ocbench` command, as `python -m ocbench` is."""

import sys

from ocbench.cli import main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
