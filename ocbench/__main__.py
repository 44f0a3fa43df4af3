"""`python -m ocbench` is the `ocbench` command (so `torchrun -m ocbench ...` works too)."""

from ocbench.cli import main

if __name__ == "__main__":
    main()
