"""Publish converted backbones on the Hugging Face Hub, and write their model cards.

A folder made by ``ocbench backbones import`` (``model.safetensors`` + ``config.json`` +
``README.md``) is uploaded as it is; afterwards anyone can use the weights through an
``hf-hub:<org>/<name>`` card source, or with timm alone (``config.json`` follows timm's Hub format:
``timm.create_model("hf-hub:<org>/<name>", pretrained=True)``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ocbench._io import read_json
from ocbench.backbones.download import offline_mode
from ocbench.backbones.model_card import render_model_card
from ocbench.backbones.weights_folder import (
    CONFIG_FILENAME,
    README_FILENAME,
    WEIGHTS_FILENAME,
    check_recorded_sha256,
    check_safetensors_header,
    file_sha256,
)
from ocbench.errors import ConfigError, DataError

__all__ = ["PushResult", "push_backbone", "read_config", "render_model_card"]

REQUIRED_FILES = (WEIGHTS_FILENAME, CONFIG_FILENAME)


@dataclass(frozen=True)
class PushResult:
    """What was (or, with ``dry_run``, would be) uploaded."""

    repo_id: str
    revision: str | None
    files: tuple[str, ...]  # paths relative to the folder
    total_bytes: int
    dry_run: bool
    commit_url: str | None = None
    commit_sha: str | None = None

    def summary(self) -> str:
        size = f"{self.total_bytes / 1e6:.1f} MB"
        where = f"{self.repo_id}" + (f"@{self.revision}" if self.revision else "")
        if self.dry_run:
            return f"dry run: would upload {len(self.files)} files ({size}) to {where}: {', '.join(self.files)}"
        return f"uploaded {len(self.files)} files ({size}) to {where}: {self.commit_url or self.commit_sha}"


def push_backbone(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool = False,
    dry_run: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
) -> PushResult:
    """Upload a Hub-style backbone folder to the model repo ``repo_id`` (created if missing).

    A missing ``README.md`` is written from ``config.json`` first. ``revision`` names a branch
    (created from main if missing). ``dry_run`` checks everything locally and uploads nothing.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such folder; run `ocbench backbones import NAME` first")
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise DataError(f"{folder}: missing {', '.join(missing)}; re-run `ocbench backbones import NAME`")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ConfigError(f"--repo-id {repo_id!r} must look like ORG/NAME")
    config = read_config(folder)
    weights = folder / WEIGHTS_FILENAME
    check_safetensors_header(weights)
    # Never publish weights damaged since the import (config.json records their sha256).
    check_recorded_sha256(weights, file_sha256(weights), config.get("ocbench", {}).get("card") or folder.name)
    if not dry_run and offline_mode():  # before anything is written into the user's folder
        raise ConfigError("HF_HUB_OFFLINE is set; unset it to push to the Hub")
    readme = folder / README_FILENAME
    if not readme.is_file() and not dry_run:
        from ocbench._io import atomic_write

        with atomic_write(readme) as fh:
            fh.write(render_model_card(config))

    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    if "README.md" not in files:
        files = sorted(files + ["README.md"])  # dry run: it would be written
    total = sum((folder / name).stat().st_size for name in files if (folder / name).is_file())
    if dry_run:
        return PushResult(repo_id=repo_id, revision=revision, files=tuple(files), total_bytes=total, dry_run=True)

    from huggingface_hub import HfApi
    from huggingface_hub.utils import HfHubHTTPError

    card_name = config.get("ocbench", {}).get("card", folder.name)
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type="model",
            revision=revision,
            commit_message=commit_message or f"Upload {card_name} (converted by ocbench)",
            allow_patterns=files,
        )
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        hint = "log in with `hf auth login` or set HF_TOKEN (a token with write access)" if status in (401, 403) else "check the repo id and your access"
        raise ConfigError(f"push to {repo_id} failed ({_first_line(exc)}); {hint}") from exc
    except (OSError, ValueError) as exc:  # no token, no network
        raise ConfigError(f"push to {repo_id} failed ({_first_line(exc)}); log in with `hf auth login` and check the network") from exc
    return PushResult(
        repo_id=repo_id,
        revision=revision,
        files=tuple(files),
        total_bytes=total,
        dry_run=False,
        commit_url=getattr(commit, "commit_url", None) or str(commit),
        commit_sha=getattr(commit, "oid", None),
    )


def read_config(folder: Path) -> dict[str, Any]:
    path = Path(folder) / CONFIG_FILENAME
    config = read_json(path, what="backbone config", advice="re-run `ocbench backbones import NAME`")
    if not isinstance(config, dict) or "architecture" not in config:
        raise DataError(f"{path}: field architecture is missing; re-run `ocbench backbones import NAME`")
    return config


def _first_line(exc: object) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
