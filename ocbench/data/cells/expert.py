"""Expert cell labels: the file format (:data:`CELL_LABELS_FORMAT`), reading it against a cell table, writing one."""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ocbench._io import atomic_write
from ocbench.data.cells.labels import _LABEL_SEP
from ocbench.data.cells.table import CellTable
from ocbench.errors import DataError

#: What ``--cell-labels FILE`` reads (also in ``ocbench data cells --help``).
CELL_LABELS_FORMAT = """\
Expert cell labels: a UTF-8 CSV file with a header row and one row per reviewed cell.
Identify each cell either by its cell id (as in the cell table that `ocbench data cells` writes):
    cell_id,labels
    OC-FOV_..._FID00030311#c0007,nucleoplasm;cytoplasmic
or by its FOV and a point inside the cell (pixel row y and column x of the FOV image; the cell
whose mask contains the point is taken, so the file does not depend on the segmentation backend):
    fov_id,y,x,labels
    OC-FOV_..._FID00030311,212.5,388,nucleoplasm
labels: the cell's compartments, separated by ';', from the dataset's class names. A cell id or a
point listed twice, an unknown FOV, cell id or class is an error. A point outside every cell mask, or a point
whose mask also holds another listed point (the segmentation merged cells the expert told apart),
is left out and counted in the summary. Only the listed cells are evaluated.""".strip()


def read_cell_labels(path: str | os.PathLike, table: CellTable) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Read an expert label file (:data:`CELL_LABELS_FORMAT`): table rows, labels (n, C) uint8 and
    how many listed points were left out (``outside_every_mask``, ``in_a_merged_cell``)."""
    source, reader, by_id, by_point = _open_label_csv(path := Path(path).expanduser())
    class_names = list(table.class_names)
    class_index = {c: j for j, c in enumerate(class_names)}
    cells = table.cells
    row_of_id = {cid: r for r, cid in enumerate(cells["cell_id"])}
    fov_rows: dict[str, list[int]] = {}
    for r, fov in enumerate(cells["fov_id"]):
        fov_rows.setdefault(fov, []).append(r)
    masks: dict[str, np.ndarray] = {}
    listed: dict[int, tuple[int, np.ndarray, bool]] = {}  # table row -> (line, labels, listed by point)
    merged: set[int] = set()
    points: dict[tuple[str, int, int], int] = {}  # (FOV, pixel row, column) -> line, of the listed points
    skipped = {"outside_every_mask": 0, "in_a_merged_cell": 0}
    lines = 0
    for line_no, record in _csv_records(path, reader, source):
        lines += 1
        where = f"{path}: line {line_no}"
        names = [n.strip() for n in (record.get("labels") or "").split(_LABEL_SEP) if n.strip()]
        if not names:
            raise DataError(f"{where}: no labels; leave cells without a confirmed label out of the file")
        bad = [n for n in names if n not in class_index]
        if bad:
            raise DataError(f"{where}: unknown class(es) {bad}; valid: {', '.join(class_names)}")
        vector = np.zeros(len(class_names), np.uint8)
        vector[[class_index[n] for n in names]] = 1
        if by_id and (record.get("cell_id") or "").strip():
            cid = record["cell_id"].strip()
            if cid not in row_of_id:
                raise DataError(f"{where}: unknown cell id {cid!r} (not in the cell table of this segmentation)")
            r = row_of_id[cid]
            if r in listed:
                raise DataError(f"{where}: cell {cid} is already listed on line {listed[r][0]}")
            listed[r] = (line_no, vector, False)
        elif by_point:
            fov = (record.get("fov_id") or "").strip()
            if fov not in fov_rows:
                raise DataError(f"{where}: FOV {fov!r} has no cells in this dataset's cell table")
            try:
                y, x = float(record["y"]), float(record["x"])
            except (TypeError, ValueError):
                y = x = math.nan
            if not (math.isfinite(y) and math.isfinite(x)):  # float() also takes "nan" and "inf"
                raise DataError(
                    f"{where}: y and x must be finite numbers (the cell's pixel row and column, e.g. 41.5), "
                    f"got {record.get('y')!r}, {record.get('x')!r}; fix the point or leave the line out"
                )
            if fov not in masks:
                masks[fov] = table.mask(fov)
            mask = masks[fov]
            yi, xi = int(math.floor(y + 0.5)), int(math.floor(x + 0.5))
            if (fov, yi, xi) in points:  # the same point again is a copy, not a second cell
                raise DataError(f"{where}: duplicate of line {points[fov, yi, xi]} (the same point of FOV {fov}); list each cell once")
            points[fov, yi, xi] = line_no
            label = int(mask[yi, xi]) if 0 <= yi < mask.shape[0] and 0 <= xi < mask.shape[1] else 0
            match = [r for r in fov_rows[fov] if int(cells.at[r, "mask_label"]) == label] if label else []
            if not match:
                skipped["outside_every_mask"] += 1
                continue
            r = match[0]
            if r in listed:
                if not listed[r][2]:
                    raise DataError(f"{where}: cell {cells.at[r, 'cell_id']} is already listed by id on line {listed[r][0]}")
                merged.add(r)  # two reviewed cells in one mask: neither label can be trusted for it
                skipped["in_a_merged_cell"] += 1
                continue
            listed[r] = (line_no, vector, True)
        else:
            raise DataError(f"{where}: no cell_id and no fov_id,y,x given")
    skipped["in_a_merged_cell"] += len(merged)
    rows = sorted(r for r in listed if r not in merged)  # table order: cells of one FOV stay together
    if not rows:
        raise DataError(
            f"{path}: none of the {lines} listed cells matched this segmentation "
            f"({skipped['outside_every_mask']} points outside every cell mask, {skipped['in_a_merged_cell']} in merged cells)"
            if lines else f"{path}: no cells listed"
        )
    return np.asarray(rows, dtype=np.int64), np.stack([listed[r][1] for r in rows]), skipped


def _open_label_csv(path: Path) -> tuple["_CountedLines", Any, bool, bool]:
    """The file's lines, a CSV reader with its header stripped, and whether rows name cells by id
    and by point; one-line DataErrors for an unreadable, non-UTF-8 or wrongly headed file."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise DataError(f"{path}: cannot read the cell labels file ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line}: not UTF-8 text (byte {exc.object[exc.start]:#04x}); "
                        "save the cell labels file as UTF-8 CSV") from None
    source = _CountedLines(text)
    reader = csv.DictReader(source)
    try:
        header = [h.strip() for h in (reader.fieldnames or [])]
    except csv.Error as exc:
        raise _csv_problem(path, source, exc) from None
    reader.fieldnames = header
    by_id = "cell_id" in header
    by_point = {"fov_id", "y", "x"} <= set(header)
    if "labels" not in header or not (by_id or by_point):
        raise DataError(
            f"{path}: expected the columns cell_id,labels or fov_id,y,x,labels (got {','.join(header) or 'no header'}); "
            "see `ocbench data cells --help` for the format"
        )
    return source, reader, by_id, by_point


class _CountedLines:
    """The lines of a text for a CSV reader, counting how many it has taken (the line a row ends
    on, or the one it failed on: csv's own ``line_num`` lags by one on some errors)."""

    def __init__(self, text: str):
        self._lines = iter(io.StringIO(text))
        self.line = 0

    def __iter__(self) -> "_CountedLines":
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        self.line += 1
        return line


def _csv_problem(path: Path, source: _CountedLines, exc: csv.Error) -> DataError:
    """A malformed CSV row (e.g. a field over csv's size limit) as one line naming it."""
    text = str(exc)
    if "field larger than field limit" in text:
        text = f"a field is longer than {csv.field_size_limit():,} characters (csv's limit); is this a cell labels file?"
    return DataError(f"{path}: line {source.line}: not a readable CSV row ({text}); see `ocbench data cells --help` for the format")


def _csv_records(path: Path, reader: Any, source: _CountedLines) -> Iterable[tuple[int, dict]]:
    """``(line number, row)`` of a CSV reader over ``source``; a malformed row is a one-line DataError naming its line."""
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise _csv_problem(path, source, exc) from None
        yield source.line, record


def write_cell_labels(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> Path:
    """Write a cell labels file; each record has ``cell_id`` or ``fov_id, y, x``, and ``labels``
    (a list of class names or a ';'-separated string). The demo writes its synthetic expert file with it."""
    records = list(records)
    by_id = all("cell_id" in r for r in records)
    columns = ["cell_id", "labels"] if by_id else ["fov_id", "y", "x", "labels"]
    path = Path(path)
    with atomic_write(path) as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(columns)
        for r in records:
            labels = r["labels"] if isinstance(r["labels"], str) else _LABEL_SEP.join(r["labels"])
            writer.writerow([r["cell_id"], labels] if by_id else [r["fov_id"], f"{float(r['y']):.2f}", f"{float(r['x']):.2f}", labels])
    return path
