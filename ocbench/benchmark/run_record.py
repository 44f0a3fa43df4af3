"""What a run records in its entry beside the task's scores: the backbone, dataset and task
settings' provenance (weights identity, zero-shot reasons, digests of files settings name), why a
result is off-protocol, what the extraction cost, and the files written beside the entry (the
split, the per-item predictions).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ocbench.data.content import listing_version
from ocbench.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from ocbench.backbones.adapters import ChannelAdapter
    from ocbench.backbones.loader import BackboneIdentity
    from ocbench.benchmark.grid import Cell, RunOptions
    from ocbench.benchmark.splits import Split
    from ocbench.data.base import ItemSet
    from ocbench.data.cards import DatasetCard
    from ocbench.tasks.base import Task, TaskResult


def save_split(split: "Split", dataset: "ItemSet", options: RunOptions) -> None:
    """Save a made split beside the entries (once an entry that names it is written), so every
    entry's split sha256 points at a file."""
    if options.split_file is not None:
        return
    path = options.output_dir / "splits" / f"{split.track}-seed{split.seed}-{listing_version(dataset)[:12]}.json"
    if not path.exists() or path.read_bytes() != split.to_json_bytes():
        split.save(path)


def off_protocol_reasons(cell: Cell, dataset: "ItemSet") -> list[str]:
    """Why this cell's result cannot stand beside on-protocol results, in words ([] when it can)."""
    reasons = []
    deviations = cell.task.protocol_deviations()
    if deviations:
        reasons.append("settings differ from the protocol: " + ", ".join(f"{k}={v}" for k, v in deviations.items()))
    elif cell.overrides:
        reasons.append("settings given with --set: " + ", ".join(sorted(cell.overrides)))
    defaults = dataset.card.reader_option_values({})
    for option, value in sorted(dataset.reader_options.items()):
        if option == "min_grade" and value != defaults[option]:
            reasons.append(f"labels from grade >= {value} only (the protocol counts grades >= {defaults[option]})")
        elif value != defaults.get(option, value):
            reasons.append(f"reader option {option}={value} (the protocol's: {defaults[option]})")
    unused = _unused_channels(cell.adapter, dataset.card.channel_names)
    if unused:
        reasons.append(f"channel map leaves out the {' and '.join(unused)} channel")
    return reasons


def _unused_channels(adapter: "ChannelAdapter", channel_names: Sequence[str]) -> tuple[str, ...]:
    """Dataset channels a ``map`` adapter leaves out (the protocol's maps place every channel)."""
    if adapter.strategy != "map":
        return ()
    return tuple(name for name, target in zip(channel_names, adapter.targets) if target is None)


def dataset_block(dataset: "ItemSet") -> dict[str, Any]:
    """The entry's ``dataset``: which data, which labels (grade policy and annotation table)."""
    from ocbench._io import sha256_file

    source = Path(str(getattr(dataset, "annotation_source", "")))
    has_table = source.is_file()
    return {
        "name": dataset.name,
        "version": dataset.version,
        "n_items": len(dataset),
        "min_grade": dataset.reader_options.get("min_grade", 1),
        "label_mode": dataset.card.label_mode,
        "reader_options": dict(dataset.reader_options),
        "annotations": source.name if has_table else None,
        "annotations_sha256": sha256_file(source) if has_table else None,
        "card": dataset.card.to_dict(),
        "synthetic": bool(dataset.card.synthetic),
    }


def recorded_identity(cell: Cell) -> "BackboneIdentity | None":
    """The identity of the backbone the entry records (a derived one is resolved from its weights;
    None while they do not exist)."""
    if cell.entry_card is None:
        return cell.identity
    from ocbench.backbones.loader import resolve_identity

    try:
        return resolve_identity(cell.entry_card)
    except ConfigError:
        return None


def backbone_block(cell: Cell, dataset_card: "DatasetCard | None" = None,
                    ident: "BackboneIdentity | None" = None) -> dict[str, Any]:
    from ocbench.backbones.provenance import not_zero_shot_reasons

    card = cell.recorded_card
    ident = ident if ident is not None else recorded_identity(cell)
    # not_zero_shot: why the backbone is not zero-shot on this dataset ([] when it is)
    zero_shot = {"not_zero_shot": not_zero_shot_reasons(card, dataset_card)} if dataset_card is not None else {}
    return {
        "name": card.name,
        "source": card.source,
        "arch": card.arch,
        "card": json.loads(json.dumps(card.to_dict(), default=str)),
        "weights_sha256": ident.weights_sha256 if ident is not None else None,
        "revision": ident.revision if ident is not None else None,
        "weights_verified": ident.weights_verified if ident is not None else None,
        "weights_note": ident.weights_note if ident is not None else None,
        **zero_shot,
    }


def file_settings(task: "Task") -> list[str]:
    """The task's settings that name an input file (field metadata ``file``, e.g. sc-knn's cell_labels)."""
    import dataclasses

    return [f.name for f in dataclasses.fields(task) if f.metadata.get("file")]


def file_digests(task: "Task") -> dict[str, str]:
    """``{"<setting>_sha256": sha256}`` of each file a task setting names: the entry's ``task_config``
    records them beside the paths, so a file whose contents changed is another run."""
    from ocbench._io import sha256_file

    digests = {}
    for name in file_settings(task):
        value = getattr(task, name)
        if not value:
            continue
        try:
            digests[f"{name}_sha256"] = sha256_file(Path(str(value)).expanduser())
        except OSError as exc:
            raise ConfigError(
                f"task {task.name}: cannot read the {name} file {value} ({exc.strerror or exc}); fix --set {name}=FILE"
            ) from None
    return digests


def run_cost(meta: dict) -> dict[str, Any]:
    """Extraction throughput and peak memory for the entry (what the board's cost column reads)."""
    import resource
    import sys

    cost: dict[str, Any] = {
        "extraction_items": int(meta["n"]) if "n" in meta else None,
        "extraction_images_per_s": float(meta["images_per_s"]) if meta.get("images_per_s") else None,
        "extraction_device": meta.get("extraction_device"),
        "extraction_processes": int(meta.get("processes", 1)) if "n" in meta else None,
        # ru_maxrss is in KiB on Linux (bytes on macOS).
        "peak_host_memory_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                      / (2**30 if sys.platform == "darwin" else 2**20), 3),
        "peak_device_memory_gib": None,
    }
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        cost["peak_device_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        device = str(cost["extraction_device"] or "")
        if device.startswith("cuda") and not meta.get("cache_hit"):  # a cached extraction ran elsewhere maybe
            cost["extraction_device"] = f"{device} ({torch.cuda.get_device_name(device)})"
    return cost


def write_entry_predictions(result: "TaskResult", output_dir: Path, key: str) -> dict[str, Any] | None:
    """Write the task's per-item predictions beside the entry (atomically, before the entry that
    names them); return the entry's reference to them, or None when the task kept none."""
    predictions = result.predictions
    if predictions is None:
        return None
    from ocbench.predictions import predictions_file_name, write_predictions

    name = predictions_file_name(key)
    sha256 = write_predictions(predictions, output_dir / name)
    return {
        "file": name, "sha256": sha256, "eval_set": predictions.eval_set, "n_items": int(predictions.y_true.shape[0]),
        "n_groups": predictions.n_groups, "group": predictions.group_name,
    }


def torch_threads() -> int | None:
    import sys

    torch = sys.modules.get("torch")
    return int(torch.get_num_threads()) if torch is not None else None
