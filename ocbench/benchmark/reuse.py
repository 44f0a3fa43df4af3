"""Whether an entry already in the output folder is reused: only for the very same run.

A rerun of a cell whose entry exists skips it when everything that made the entry is unchanged
(card, weights, protocol, settings and the files they name, seed, data, split), computes it again
when only the dataset's image files were rewritten, and refuses anything else: that entry is
another run, which a rerun must not silently replace.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ocbench.benchmark.grid import Cell, RunOptions
from ocbench.benchmark.run_record import backbone_block, file_digests, file_settings, recorded_identity
from ocbench.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from ocbench.benchmark.entry import Entry
    from ocbench.benchmark.splits import Split
    from ocbench.data.base import ItemSet


def _weights_missing(path: Path, cell: Cell, replace_hint: str) -> ConfigError:
    """The entry's backbone was trained by its run (fine-tuning) and its weights are gone (not "other")."""
    from ocbench.backbones.sources import local_folder

    card = cell.recorded_card
    source = card.weights_source
    where = str(local_folder(source.target)) if source.kind == "local" else card.source
    return ConfigError(
        f"{path}: the weights of this entry's backbone {card.name} ({where}) are missing; restore them to "
        f"reuse the entry, or train them again: {replace_hint}"
    )


def _content_change(recorded_version: str, dataset) -> str | None:
    """Why an entry recorded with ``recorded_version`` of this very listing is stale (its image
    files changed since), or None when that version is not this listing's (another dataset)."""
    if recorded_version == dataset.version:
        return None
    if recorded_version == getattr(dataset, "manifest_version", None):
        # Older entries recorded the manifest alone, which says nothing about the pixels.
        return "it records a dataset version of an older ocbench that did not cover the images' content"
    changes_since = getattr(dataset, "files_changed_since", None)
    changed = changes_since(recorded_version) if callable(changes_since) else None
    if changed is None:
        return None
    names = ", ".join(Path(p).name for p in changed[:3]) + (", ..." if len(changed) > 3 else "")
    return f"{len(changed)} image file(s) changed since it was computed ({names})"


def check_same_run(existing: "Entry", path: Path, cell: Cell, *, seed: int, dataset: "ItemSet", split: "Split",
                    digests: dict[str, str] | None = None, replace_hint: str = RunOptions.replace_hint) -> str | None:
    """An existing entry is reused only for the very same run; anything else would be mislabelled.

    The same run means the same card, weights (sha256 and revision: converted, imported or
    fine-tuned weights change under the same card name), protocol, settings (and the contents of
    files they name), seed, data and split. ``digests``: the task's
    :func:`~ocbench.benchmark.run_record.file_digests`, if known.

    Returns why the entry is stale when the only difference is the content of the dataset's image
    files (same items and labels, rewritten pixels): the caller computes it again and replaces it.
    Any other difference is an error (the entry is another run, which a rerun must not replace).
    """
    ident = recorded_identity(cell)
    if ident is None and cell.entry_card is not None and existing.backbone.weights_sha256:
        raise _weights_missing(path, cell, replace_hint)
    backbone_now = backbone_block(cell, dataset.card, ident)
    digest_keys = {f"{name}_sha256" for name in file_settings(cell.task)}
    settings_then = {k: v for k, v in existing.task_config.items() if k not in digest_keys}
    differences = [
        what
        for what, have, want in (
            # Fields a later ocbench added to cards (absent from the older entry) are not a difference.
            ("backbone card", existing.backbone.card, {k: v for k, v in backbone_now["card"].items()
                                                       if existing.backbone.card is None or k in existing.backbone.card}),
            # a declaration older entries lack still changes what the task computed
            ("feature standardization", (existing.backbone.card or {}).get("feature_standardization", "none"),
             backbone_now["card"].get("feature_standardization", "none")),
            ("weights (sha256)", existing.backbone.weights_sha256, backbone_now["weights_sha256"]),
            ("weights revision", existing.backbone.revision, backbone_now["revision"]),
            ("protocol version", existing.protocol_version, cell.task.protocol_version),
            ("task settings", settings_then, cell.task.to_dict()),
            ("overrides", existing.overrides, cell.overrides),
            ("seed", existing.seed, seed),
            ("dataset version", existing.dataset.version, dataset.version),
            ("split", existing.split.sha256, split.sha256),
        )
        if have != want
    ]
    for key, now in (file_digests(cell.task) if digests is None else digests).items():
        then = existing.task_config.get(key)
        name = key[: -len("_sha256")]
        if existing.task_config.get(name) != getattr(cell.task, name):
            continue  # another file altogether: "other task settings" says so already
        if then != now:
            recorded = f"sha256 {then[:12]} then" if then else "no sha256 recorded then"
            differences.append(f"{name} file contents ({getattr(cell.task, name)}: {recorded}, {now[:12]} now)")
    stale = _content_change(existing.dataset.version, dataset) if "dataset version" in differences else None
    if stale is not None and differences == ["dataset version"]:
        return stale
    if differences:
        raise ConfigError(
            f"{path}: an entry with this key exists from a run with other {', '.join(differences)}; "
            f"{replace_hint}"
        )
    return None
