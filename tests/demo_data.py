"""Small demo datasets for tests: every protein labelled and joined by ENSG, so counts are exact."""

from __future__ import annotations

from pathlib import Path


def labelled_demo(root: str | Path, *, proteins: int, fovs_per_protein: int, size: int) -> Path:
    """Write a demo of ``proteins`` x ``fovs_per_protein`` FOVs of ``size`` px at ``root``; return it."""
    from ocbench.data.demo import DemoConfig, write_demo

    config = DemoConfig(proteins=proteins, fovs_per_protein=fovs_per_protein, size=size, unlabelled_proteins=0,
                        annotation_only_proteins=0, name_joined_proteins=0)
    return Path(write_demo(root, config))
