"""ocbench: benchmark suite and leaderboard for pretrained vision backbones on OpenCell.

Importing the package is cheap: torch and timm are imported only by the modules that need them.
"""

__version__ = "0.1.0"
