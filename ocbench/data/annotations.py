"""OpenCell localization annotations: both published table formats, grades kept.

Two formats are published (both read here); the format is detected from the header
and columns are found by name, because producers differ in column order:

- flat: ``ensg_id, target_name, annotation_name, annotation_grade`` (one row per protein x
  compartment; the table of the OpenCell paper's figure repository);
- portal export: ``target_name, ensg_id, annotations_grade_3, annotations_grade_2,
  annotations_grade_1`` (one row per protein; each cell a ``;``-separated list, empty allowed;
  what https://opencell.czbiohub.org/download offers).

:func:`load_annotations` returns the long table (one row per protein x compartment, with its
grade); :func:`build_labels` applies the ``min_grade`` policy and gives one row per protein.
"""

from __future__ import annotations

import csv
import difflib
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ocbench.data.compartments import COMPARTMENTS, GRADES
from ocbench.errors import ConfigError, DataError

FLAT_COLUMNS: tuple[str, ...] = ("ensg_id", "target_name", "annotation_name", "annotation_grade")
PORTAL_COLUMNS: tuple[str, ...] = (
    "target_name",
    "ensg_id",
    "annotations_grade_3",
    "annotations_grade_2",
    "annotations_grade_1",
)
#: Columns of the table :func:`load_annotations` returns.
ANNOTATION_COLUMNS: tuple[str, ...] = ("ensg_id", "target_name", "compartment", "grade")

LABEL_COLUMNS: tuple[str, ...] = tuple(f"label_{c}" for c in COMPARTMENTS)
GRADE_COLUMNS: tuple[str, ...] = tuple(f"grade_{c}" for c in COMPARTMENTS)

_VALID_NAMES = ", ".join(COMPARTMENTS)


def detect_format(columns: list[str] | tuple[str, ...], path: str | os.PathLike = "<table>") -> str:
    """``"flat"`` or ``"portal"`` from a header; DataError naming the missing column otherwise."""
    present = {_normalize_column(c) for c in columns}
    # The format whose distinctive columns are present wins; the shared ones decide nothing.
    flat_hits = len(present & {"annotation_name", "annotation_grade"})
    portal_hits = len(present & {"annotations_grade_3", "annotations_grade_2", "annotations_grade_1"})
    if flat_hits == 0 and portal_hits == 0:
        raise DataError(
            f"{path}: header has neither annotation format (found columns: {', '.join(map(str, columns)) or 'none'}); "
            f"expected flat columns {', '.join(FLAT_COLUMNS)} or portal columns {', '.join(PORTAL_COLUMNS)}"
        )
    is_flat = flat_hits / 2 >= portal_hits / 3  # share of each format's distinctive columns
    fmt, expected = ("flat", FLAT_COLUMNS) if is_flat else ("portal", PORTAL_COLUMNS)
    missing = [c for c in expected if c not in present]
    if missing:
        raise DataError(
            f"{path}: missing column '{missing[0]}' ({fmt} format expects columns {', '.join(expected)}); "
            "fix the header or pass the right table with --annotations"
        )
    return fmt


def load_annotations(path: str | os.PathLike) -> pd.DataFrame:
    """Read an annotation table in either format.

    Returns columns ``ensg_id, target_name, compartment, grade`` (grade an int in 1..3), one row per
    protein x compartment, in file order. ``df.attrs`` holds ``source`` (path) and ``format``.
    Raises DataError (one line naming the file, line and value) on anything malformed.
    """
    path = Path(path)
    raw = _read_table(path)
    fmt = detect_format(list(raw.columns), path)
    raw.columns = [_normalize_column(c) for c in raw.columns]
    rows = _parse_flat(raw, path) if fmt == "flat" else _parse_portal(raw, path)
    if not rows:
        raise DataError(f"{path}: the annotation table has a header but no annotations")
    table = pd.DataFrame(rows, columns=[*ANNOTATION_COLUMNS, "line"])
    table["grade"] = table["grade"].astype("int64")
    _check_consistency(table, path)
    table = table.drop(columns="line")
    table.attrs.update(source=str(path), format=fmt)
    return table


def build_labels(annotations: pd.DataFrame, min_grade: int = 1) -> pd.DataFrame:
    """One row per annotated protein: ``ensg_id, target_name, label_<c> x17, grade_<c> x17``.

    ``grade_<c>`` is the annotation grade (0 when absent) and ``label_<c>`` is 1 where
    ``grade >= min_grade``. Every annotated protein is kept, also one whose labels are all 0 under
    ``min_grade`` (callers decide what to do with it: :class:`OpenCellDataset` leaves it out).
    Sorted by ``ensg_id``.
    """
    if min_grade not in GRADES:
        raise ConfigError(f"min_grade={min_grade!r} is not a grade; use one of {', '.join(map(str, GRADES))}")
    proteins = annotations.groupby("ensg_id", sort=True)["target_name"].first()
    grades = np.zeros((len(proteins), len(COMPARTMENTS)), dtype=np.int64)
    row_of = {ensg: i for i, ensg in enumerate(proteins.index)}
    col_of = {c: j for j, c in enumerate(COMPARTMENTS)}
    for ensg, comp, grade in zip(annotations["ensg_id"], annotations["compartment"], annotations["grade"]):
        grades[row_of[ensg], col_of[comp]] = grade
    labels = (grades >= min_grade).astype(np.int64)
    out = pd.DataFrame({"ensg_id": proteins.index.to_list(), "target_name": proteins.to_list()})
    out = pd.concat(
        [out, pd.DataFrame(labels, columns=list(LABEL_COLUMNS)), pd.DataFrame(grades, columns=list(GRADE_COLUMNS))],
        axis=1,
    )
    out.attrs.update(annotations.attrs, min_grade=min_grade)
    return out


# ---------------------------------------------------------------------------------------------
# Parsing helpers


def _normalize_column(name: object) -> str:
    return str(name).strip().lower()


def _read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: annotation table not found; pass an existing file with --annotations")
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:  # utf-8-sig: tolerate a BOM from Excel
            header = fh.readline()
        # Some exports are tab-separated; commas win when both could be separators.
        sep = "\t" if "\t" in header and "," not in header else ","
        # Everything as text: grades and names are validated here, not guessed by pandas.
        table = pd.read_csv(
            path, sep=sep, dtype=str, keep_default_na=False, encoding="utf-8-sig", skip_blank_lines=True
        )
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text table; expected a CSV annotation table") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, csv.Error) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "empty file"
        raise DataError(f"{path}: not a readable CSV annotation table ({reason})") from None
    return table.fillna("")  # short rows: missing trailing cells are empty, not NaN


def _line(i: int) -> int:
    """Line number in the file of data row ``i`` (the header is line 1)."""
    return i + 2


def _compartment(name: str, path: Path, i: int, column: str) -> str:
    comp = name.strip().lower()
    if comp in COMPARTMENTS:
        return comp
    close = difflib.get_close_matches(comp, COMPARTMENTS, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise DataError(
        f"{path}: line {_line(i)}, column {column}: unknown compartment '{name.strip()}'{hint}; "
        f"valid names: {_VALID_NAMES}"
    )


def _ids(row: pd.Series, path: Path, i: int) -> tuple[str, str]:
    ensg, name = row["ensg_id"].strip(), row["target_name"].strip()
    for column, value in (("ensg_id", ensg), ("target_name", name)):
        if not value:
            raise DataError(f"{path}: line {_line(i)}: empty {column}; every row needs an ensg_id and a target_name")
    return ensg, name


def _parse_flat(raw: pd.DataFrame, path: Path) -> list[tuple[str, str, str, int, int]]:
    rows = []
    for i, row in enumerate(raw.to_dict("records")):
        ensg, name = _ids(row, path, i)
        comp = _compartment(row["annotation_name"], path, i, "annotation_name")
        grade_text = row["annotation_grade"].strip()
        # Accept "3" and "3.0" (spreadsheets write floats); nothing else.
        try:
            grade = float(grade_text)
        except ValueError:
            grade = float("nan")
        if not grade.is_integer() or int(grade) not in GRADES:
            raise DataError(
                f"{path}: line {_line(i)}, column annotation_grade: bad grade '{grade_text}'; "
                f"grades are {', '.join(map(str, GRADES))} (3 prominent, 2 less pronounced, 1 weak)"
            )
        rows.append((ensg, name, comp, int(grade), _line(i)))
    return rows


def _parse_portal(raw: pd.DataFrame, path: Path) -> list[tuple[str, str, str, int, int]]:
    rows = []
    for i, row in enumerate(raw.to_dict("records")):
        ensg, name = _ids(row, path, i)
        for grade in sorted(GRADES, reverse=True):
            column = f"annotations_grade_{grade}"
            for item in row[column].split(";"):
                if item.strip():  # empty cells and stray ';' carry nothing
                    rows.append((ensg, name, _compartment(item, path, i, column), grade, _line(i)))
    return rows


def _check_consistency(table: pd.DataFrame, path: Path) -> None:
    """One grade per protein x compartment and one name per ENSG id; labels would be ambiguous otherwise."""
    dup = table.duplicated(["ensg_id", "compartment"], keep=False)
    if dup.any():
        first = table[dup].iloc[0]
        same = dup & (table["ensg_id"] == first["ensg_id"]) & (table["compartment"] == first["compartment"])
        lines = ", ".join(str(line) for line in table.loc[same, "line"])
        raise DataError(
            f"{path}: compartment '{first['compartment']}' is annotated more than once for "
            f"{first['target_name']} ({first['ensg_id']}) (rows at lines {lines}); keep one row with one grade"
        )
    names = table.groupby("ensg_id")["target_name"].nunique()
    if (names > 1).any():
        ensg = names[names > 1].index[0]
        found = sorted(table.loc[table["ensg_id"] == ensg, "target_name"].unique())
        raise DataError(
            f"{path}: ensg_id {ensg} has several target names ({', '.join(found)}); one name per ENSG id is expected"
        )
