"""ocbench: benchmark suite and leaderboard for pretrained vision backbones on OpenCell.

Importing the package is cheap: torch and timm are imported only by the modules that need them.
``ocbench.evaluate(model, card=...)`` (the Python API, :mod:`ocbench.api`) is loaded on first use.
"""

__version__ = "0.2.0"

__all__ = ["__version__", "evaluate"]


def __getattr__(name: str):
    # Loaded on first use (by name, so importing ocbench stays torch-free and fast).
    if name == "evaluate":
        import importlib

        return importlib.import_module("ocbench.api").evaluate
    raise AttributeError(f"module 'ocbench' has no attribute {name!r}")
