"""Test helpers: tiny timm models written as Hugging Face Hub repositories into a temporary cache.

The layout is the one huggingface_hub writes (``models--org--name/blobs/<sha256>``,
``snapshots/<commit>/<file>`` symlinks, ``refs/main``), so ocbench reads them through
huggingface_hub itself with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

COMMIT = "b" * 40


def add_hub_files(cache: Path, repo_id: str, files: dict[str, bytes], commit: str = COMMIT) -> Path:
    """Put ``files`` (name -> bytes) into the Hub cache as one commit of ``repo_id``; returns the snapshot."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(Path("..") / ".." / "blobs" / blob.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def state_bytes(state: dict[str, torch.Tensor], tmp_path: Path) -> bytes:
    path = tmp_path / f"state-{len(list(tmp_path.iterdir()))}.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    data = path.read_bytes()
    path.unlink()
    return data


def timm_random(arch: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    """A timm model with its published head (the key layout of the Hub checkpoint), seeded random weights."""
    import timm

    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False, **kwargs).eval()
    with torch.no_grad():  # timm zero-inits some tensors (biases, layer scale): make every one count
        for param in model.parameters():
            param.add_(0.02 * torch.randn_like(param))
    return model


def hub_config(model: torch.nn.Module, tag: str, **model_args) -> bytes:
    """A timm-style Hub ``config.json`` for ``model``."""
    cfg = dict(model.pretrained_cfg)
    cfg.update(tag=tag)
    cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if k not in ("url", "hf_hub_id", "file")}
    config = {
        "architecture": cfg["architecture"],
        "num_classes": model.num_classes,
        "num_features": model.num_features,
        "pretrained_cfg": cfg,
    }
    if model_args:
        config["model_args"] = model_args
    return json.dumps(config).encode()


@pytest.fixture()
def offline_hub(tmp_path, monkeypatch):
    """An empty Hub cache with HF_HUB_OFFLINE=1, and an ocbench cache of its own."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # huggingface_hub read the env at import
    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path / "ocbench-cache"))
    return cache
