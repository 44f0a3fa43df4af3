"""Publish a built board (tables, plots and entries) to a Hugging Face Hub dataset repo (`publish`).

A public board is read as evidence, so entries on synthetic data (the demo) or run off-protocol
are refused unless the caller says so (``allow_synthetic`` / ``allow_off_protocol``, the CLI's
``--allow-synthetic`` / ``--allow-off-protocol``); a dry run checks the same, so it rehearses the
real upload.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ocbench.errors import ConfigError, DataError

__all__ = ["publish", "board_files", "publish_refusals", "publish_target"]

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


_PLOT_LINK = re.compile(r"plots/([A-Za-z0-9._-]+\.png)")


def board_files(out_dir: str | os.PathLike, entries: list | None = None) -> list[str]:
    """The files of a built board that get published, as POSIX paths relative to it: the table files,
    the plots they show, ``entries/README.md``, and each entry file with the predictions file it
    names (``entries``: the board's LoadedEntry list, read from ``<out_dir>/entries`` when None).
    Anything else lying in the folder (notes, stale plots, editor files) is not published."""
    root = Path(out_dir)
    if not (root / "LEADERBOARD.md").is_file():
        raise DataError(f"{root}: not a built board (no LEADERBOARD.md); run `ocbench leaderboard build ENTRIES --out {root}` first")
    tables = [name for name in ("LEADERBOARD.md", "leaderboard.csv", "index.html") if (root / name).is_file()]
    shown = set()
    for name in tables:
        if name != "leaderboard.csv":
            shown.update(_PLOT_LINK.findall((root / name).read_text(encoding="utf-8", errors="replace")))
    plots = [f"plots/{name}" for name in sorted(shown) if (root / "plots" / name).is_file()]
    if entries is None and (root / "entries").is_dir():
        from ocbench.leaderboard.collect import collect_entries

        entries = list(collect_entries([root / "entries"]).entries)
    listed = {"entries/README.md"} if (root / "entries" / "README.md").is_file() else set()
    for loaded in entries or []:  # read from <out_dir>/entries: their paths lie under out_dir
        path = Path(loaded.path)
        listed.add(path.relative_to(root).as_posix())
        ref = loaded.entry.predictions
        if ref is not None and (path.parent / ref.file).is_file():
            listed.add((path.parent / ref.file).relative_to(root).as_posix())
    return tables + plots + sorted(listed)


def publish_target(repo_id: str, revision: str | None = None) -> str:
    """Where ``publish`` uploads, in words: the Hub dataset repo and its branch."""
    return f"the Hub dataset repo {repo_id} (https://huggingface.co/datasets/{repo_id}), branch {revision or 'main'}"


def publish_refusals(entries: list, *, allow_synthetic: bool, allow_off_protocol: bool) -> list[str]:
    """Why these entries (LoadedEntry) may not be published as they are; empty: they may."""
    reasons = []
    synthetic = [e.name for e in entries if e.entry.dataset.synthetic]
    if synthetic and not allow_synthetic:
        reasons.append(
            f"{len(synthetic)} entr{'y is' if len(synthetic) == 1 else 'ies are'} on synthetic data (first: {synthetic[0]}); "
            "pass --allow-synthetic to publish them anyway"
        )
    off = [e for e in entries if e.entry.off_protocol]
    if off and not allow_off_protocol:
        why = "; ".join(off[0].entry.off_protocol_reasons) or "settings differ from the protocol"
        reasons.append(
            f"{len(off)} entr{'y is' if len(off) == 1 else 'ies are'} off-protocol (first: {off[0].name}: {why}); "
            "pass --allow-off-protocol to publish them anyway"
        )
    return reasons


def publish(
    out_dir: str | os.PathLike,
    repo_id: str,
    *,
    dry_run: bool = False,
    token: str | None = None,
    commit_message: str = "Update the ocbench leaderboard",
    allow_synthetic: bool = False,
    allow_off_protocol: bool = False,
    revision: str | None = None,
) -> list[str]:
    """Upload a built board to the Hub dataset repo ``repo_id``; return the uploaded paths.

    The board's entries are validated first (an invalid entry stops the upload), and entries on
    synthetic data or off-protocol stop it unless allowed. With ``dry_run`` nothing is contacted
    and the list says what would be uploaded (:func:`board_files`; :func:`publish_target` says where).
    Entries and plots that are on the Hub but no longer in the board are deleted in the same commit.
    ``revision``: the branch to commit to (None: the repo's default branch, main).
    """
    if not _REPO_ID.match(repo_id):
        raise ConfigError(f"--repo-id {repo_id!r}: expected ORG/NAME of a Hub dataset repo")
    if revision is not None and not revision.strip():
        raise ConfigError("--revision: empty; name a branch of the repo (e.g. main), or leave the option out")
    board_files(out_dir, [])  # a built board, before reading its entries
    entries_dir = Path(out_dir) / "entries"
    collection = None
    if entries_dir.is_dir():
        from ocbench.leaderboard.collect import collect_entries, duplicate_problems, unreadable_predictions

        collection = collect_entries([entries_dir])
        problems = [*collection.problems, *unreadable_predictions(collection.entries), *duplicate_problems(collection.entries)]
        if problems:
            raise DataError(
                f"{entries_dir}: {len(problems)} invalid entr{'y' if len(problems) == 1 else 'ies'}, nothing uploaded "
                f"(first: {problems[0]}); fix them and rebuild the board"
            )
        refusals = publish_refusals(
            list(collection.entries), allow_synthetic=allow_synthetic, allow_off_protocol=allow_off_protocol
        )
        if refusals:
            raise ConfigError(f"{out_dir}: nothing uploaded: " + "; ".join(refusals))
    files = board_files(out_dir, list(collection.entries) if collection is not None else [])
    if dry_run:
        return files

    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="dataset", exist_ok=True)
        api.upload_folder(
            folder_path=os.fspath(out_dir),
            repo_id=repo_id,
            repo_type="dataset",
            revision=revision,
            allow_patterns=files,
            delete_patterns=["entries/*", "plots/*"],
            commit_message=commit_message,
        )
    except Exception as exc:  # auth, network, permissions: one line, not a traceback
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(
            f"upload to datasets/{repo_id} failed ({type(exc).__name__}: {first}); "
            "check `hf auth login` / HF_TOKEN and your write access"
        ) from None
    return files
