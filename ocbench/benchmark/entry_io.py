"""Reading and writing entry files: decode, upgrade and validate an entry with one-line errors
naming the file and field, and write its canonical JSON text atomically as ``<key>.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from pydantic import ValidationError

from ocbench._io import atomic_write, read_json
from ocbench.benchmark.entry_schema import SCHEMA_VERSION, Entry
from ocbench.benchmark.entry_upgrades import upgrade_entry_data
from ocbench.errors import DataError


def _describe_validation_error(exc: ValidationError, source: str) -> str:
    errors = exc.errors()
    first = errors[0]
    loc = ".".join(str(p) for p in first["loc"]) or "entry"
    if first["type"] == "extra_forbidden":
        msg = f"unknown field (not part of schema version {SCHEMA_VERSION})"
    elif first["type"] == "missing":
        msg = "missing"
    else:
        msg = str(first["msg"]).removeprefix("Value error, ")
    more = f" (+{len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return f"{source}: field {loc}: {msg}{more}; fix the file or re-run `ocbench run` to regenerate it"


def entry_from_dict(data: Any, *, source: str = "entry") -> Entry:
    """Upgrade and validate a decoded entry; DataError (one line naming source and field) if bad."""
    if isinstance(data, Entry):
        return data
    if not isinstance(data, Mapping):
        raise DataError(f"{source}: expected a JSON object, got {type(data).__name__}; this is not an ocbench entry")
    upgraded = upgrade_entry_data(data, source=source)
    try:
        return Entry.model_validate(upgraded)
    except ValidationError as exc:
        raise DataError(_describe_validation_error(exc, source)) from None


def entry_to_json(entry: Entry) -> str:
    """The canonical file text of an entry (2-space indent, trailing newline)."""
    return json.dumps(entry.model_dump(mode="json"), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def write_entry(entry: Entry | Mapping[str, Any], directory: str | os.PathLike) -> Path:
    """Validate and write ``<directory>/<key>.json`` atomically; return its path.

    A dict being written is a new entry, so a missing ``schema_version`` means the current one
    (files read back must state it).
    """
    if not isinstance(entry, Entry):
        data = dict(entry)
        data.setdefault("schema_version", SCHEMA_VERSION)
        entry = entry_from_dict(data, source="entry to write")
    path = Path(directory) / f"{entry.key}.json"
    with atomic_write(path) as fh:
        fh.write(entry_to_json(entry))
    return path


def load_entry(path: str | os.PathLike) -> Entry:
    """Read, upgrade and validate one entry file; DataError naming the file and field if bad."""
    path = Path(path)
    data = read_json(path, what="entry", advice="fix or delete the file", missing="give the path of an entry file")
    return entry_from_dict(data, source=str(path))
