"""Annotation tables: both formats, grades, min_grade, and every malformed input."""

from __future__ import annotations

import csv
from collections import defaultdict
import os
from pathlib import Path

import numpy as np
import pytest

from ocbench.data.annotations import LABEL_COLUMNS, build_labels, load_annotations
from ocbench.data.compartments import COMPARTMENTS
from ocbench.errors import ConfigError, DataError

from cli_assertions import one_line_message

# OpenCell's own public files (annotation table, cell-line table, nucleus frames; not ours to
# redistribute): read from OCBENCH_OPENCELL_SAMPLES, else from the folder kept beside the checkout.
OPENCELL_SAMPLES = Path(
    os.environ.get("OCBENCH_OPENCELL_SAMPLES") or Path(__file__).resolve().parents[2] / "shared" / "data" / "opencell"
)
SAMPLES_HINT = "set OCBENCH_OPENCELL_SAMPLES to a folder that holds it to run this test"
REAL_FLAT = OPENCELL_SAMPLES / "2021-09-29-public-annotations-flat.csv"

# Measured on OpenCell's public annotation table (all grades).
REAL_CLASS_SIZES = {
    "cytoplasmic": 687, "nucleoplasm": 600, "vesicles": 343, "membrane": 178, "nuclear_punctae": 141,
    "er": 140, "chromatin": 124, "golgi": 103, "nucleolus_gc": 97, "centrosome": 68, "big_aggregates": 61,
    "cell_contact": 57, "cytoskeleton": 54, "nuclear_membrane": 38, "nucleolus_fc_dfc": 32,
    "mitochondria": 13, "focal_adhesions": 13,
}

FLAT_HEADER = "ensg_id,target_name,annotation_name,annotation_grade\n"
PORTAL_HEADER = "target_name,ensg_id,annotations_grade_3,annotations_grade_2,annotations_grade_1\n"


def real_flat() -> Path:
    if not REAL_FLAT.is_file():
        pytest.skip(f"needs OpenCell's public annotation table {REAL_FLAT.name}: {SAMPLES_HINT}")
    return REAL_FLAT


def write(tmp_path: Path, text: str, name: str = "ann.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path




# -- the real table ---------------------------------------------------------------------------


def test_real_flat_table_matches_its_readme():
    table = load_annotations(real_flat())
    assert table.attrs["format"] == "flat"
    assert list(table.columns) == ["ensg_id", "target_name", "compartment", "grade"]
    assert len(table) == 2749
    assert table["ensg_id"].nunique() == 1310 == table["target_name"].nunique()
    assert table["grade"].value_counts().to_dict() == {3: 1798, 2: 560, 1: 391}
    labels = build_labels(table)
    assert len(labels) == 1310
    sizes = {c: int(labels[f"label_{c}"].sum()) for c in COMPARTMENTS}
    assert sizes == REAL_CLASS_SIZES
    per_target = labels[list(LABEL_COLUMNS)].sum(axis=1).value_counts().to_dict()
    assert per_target == {1: 338, 2: 601, 3: 287, 4: 73, 5: 10, 6: 1}


def test_min_grade_3_leaves_four_real_targets_without_positives():
    labels = build_labels(load_annotations(real_flat()), min_grade=3)
    empty = labels.loc[labels[list(LABEL_COLUMNS)].sum(axis=1) == 0, "target_name"]
    assert sorted(empty) == ["CDK13", "CSE1L", "HSPB11", "IPO13"]
    assert int(labels[[f"grade_{c}" for c in COMPARTMENTS]].to_numpy().max()) == 3
    # Grades are kept: a grade-1 positive at min_grade 1 is a negative at min_grade 3.
    assert build_labels(load_annotations(real_flat()))["label_nucleoplasm"].sum() > labels["label_nucleoplasm"].sum()


def test_real_table_converted_to_portal_format_gives_identical_labels(tmp_path):
    # Converted here with the csv module, not with ocbench, so the two readers are compared honestly.
    by_target: dict[tuple[str, str], dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    with open(real_flat(), newline="") as fh:
        for row in csv.DictReader(fh):
            by_target[(row["ensg_id"], row["target_name"])][row["annotation_grade"]].append(row["annotation_name"])
    portal = tmp_path / "opencell-localization-annotations.csv"
    columns = ["ensg_id", "annotations_grade_1", "target_name", "annotations_grade_3", "annotations_grade_2"]
    with open(portal, "w", newline="") as fh:  # column order differs from the flat table on purpose
        writer = csv.writer(fh)
        writer.writerow(columns)
        for (ensg, name), grades in by_target.items():
            cells = {"ensg_id": ensg, "target_name": name}
            cells.update({f"annotations_grade_{g}": ";".join(grades.get(g, [])) for g in "123"})
            writer.writerow([cells[c] for c in columns])
    assert any(not grades.get("1") for grades in by_target.values())  # empty cells are exercised

    flat_table, portal_table = load_annotations(real_flat()), load_annotations(portal)
    assert portal_table.attrs["format"] == "portal"
    key = ["ensg_id", "compartment"]
    assert (
        flat_table.sort_values(key).reset_index(drop=True).equals(portal_table.sort_values(key).reset_index(drop=True))
    )
    for min_grade in (1, 3):
        assert build_labels(flat_table, min_grade).equals(build_labels(portal_table, min_grade))


# -- small tables -----------------------------------------------------------------------------


def test_portal_lists_empty_cells_and_spacing(tmp_path):
    path = write(
        tmp_path,
        PORTAL_HEADER
        + "AAMP,ENSG00000127837,cytoplasmic,,nucleoplasm\n"
        + "H1-0,ENSG00000189060,nucleoplasm; Chromatin ;,,\n"  # stray spaces, case and trailing ';'
        + "EMPTY,ENSG00000000001,,,\n",  # a target without annotations adds no rows
    )
    table = load_annotations(path)
    assert sorted(map(tuple, table.to_numpy().tolist())) == [
        ("ENSG00000127837", "AAMP", "cytoplasmic", 3),
        ("ENSG00000127837", "AAMP", "nucleoplasm", 1),
        ("ENSG00000189060", "H1-0", "chromatin", 3),
        ("ENSG00000189060", "H1-0", "nucleoplasm", 3),
    ]
    labels = build_labels(table, min_grade=2).set_index("target_name")
    assert labels.loc["AAMP", "grade_nucleoplasm"] == 1 and labels.loc["AAMP", "label_nucleoplasm"] == 0
    assert labels.loc["AAMP", "label_cytoplasmic"] == 1
    assert labels.loc["H1-0", ["label_chromatin", "label_nucleoplasm"]].tolist() == [1, 1]
    vector = labels.loc["H1-0", list(LABEL_COLUMNS)].to_numpy()
    assert vector.sum() == 2 and vector[COMPARTMENTS.index("chromatin")] == 1


def test_flat_columns_found_by_name_bom_and_float_grades(tmp_path):
    text = "\ufeffannotation_grade,annotation_name,target_name,ensg_id\n3.0,golgi,GOLGA2,ENSG00000167110\n"
    path = write(tmp_path, text)
    table = load_annotations(path)
    assert table.iloc[0].tolist() == ["ENSG00000167110", "GOLGA2", "golgi", 3]


def test_tab_separated_table_is_read(tmp_path):
    path = write(tmp_path, FLAT_HEADER.replace(",", "\t") + "ENSG00000167110\tGOLGA2\tgolgi\t2\n", "ann.tsv")
    assert load_annotations(path)["grade"].tolist() == [2]


@pytest.mark.parametrize(
    ("header", "missing", "fmt"),
    [
        ("ensg_id,target_name,annotation_name\n", "annotation_grade", "flat"),
        ("ensg_id,annotation_name,annotation_grade\n", "target_name", "flat"),
        ("target_name,ensg_id,annotations_grade_3,annotations_grade_2\n", "annotations_grade_1", "portal"),
    ],
)
def test_missing_column_names_file_column_and_expected_columns(tmp_path, header, missing, fmt):
    path = write(tmp_path, header + "x,y,z\n")
    with pytest.raises(DataError) as excinfo:
        load_annotations(path)
    one_line_message(excinfo, str(path), f"missing column '{missing}'", f"{fmt} format expects columns")


def test_header_of_neither_format(tmp_path):
    path = write(tmp_path, "gene,location\nCANX,er\n")
    with pytest.raises(DataError) as excinfo:
        load_annotations(path)
    one_line_message(excinfo, str(path), "annotation_grade", "annotations_grade_3")


@pytest.mark.parametrize(
    ("text", "line", "bad", "column"),
    [
        (
            FLAT_HEADER + "ENSG00000127837,AAMP,cytoplasmic,3\nENSG00000127837,AAMP,nucleous,2\n",
            3, "nucleous", "annotation_name",
        ),
        (
            PORTAL_HEADER + "AAMP,ENSG00000127837,cytoplasmic,,\nCANX,ENSG00000127022,,er;lysosome,\n",
            3, "lysosome", "annotations_grade_2",
        ),
    ],
)
def test_unknown_compartment_names_file_line_name_and_valid_names(tmp_path, text, line, bad, column):
    path = write(tmp_path, text)
    with pytest.raises(DataError) as excinfo:
        load_annotations(path)
    message = one_line_message(excinfo, str(path), f"line {line}", f"'{bad}'", column, "valid names:")
    assert all(c in message for c in COMPARTMENTS)


def test_unknown_compartment_suggests_the_close_name(tmp_path):
    path = write(tmp_path, FLAT_HEADER + "ENSG00000127837,AAMP,nucleoplasma,3\n")
    with pytest.raises(DataError, match="did you mean 'nucleoplasm'"):
        load_annotations(path)


@pytest.mark.parametrize("grade", ["4", "0", "high", "", "2.5"])
def test_bad_grade(tmp_path, grade):
    path = write(tmp_path, FLAT_HEADER + f"ENSG00000127837,AAMP,cytoplasmic,{grade}\n")
    with pytest.raises(DataError) as excinfo:
        load_annotations(path)
    one_line_message(excinfo, str(path), "line 2", "annotation_grade", f"bad grade '{grade}'")


def test_same_compartment_twice_for_a_protein(tmp_path):
    path = write(tmp_path, PORTAL_HEADER + "AAMP,ENSG00000127837,cytoplasmic,cytoplasmic,\n")
    with pytest.raises(DataError) as excinfo:
        load_annotations(path)
    one_line_message(excinfo, str(path), "'cytoplasmic'", "AAMP", "line")


def test_empty_ids_and_empty_tables(tmp_path):
    with pytest.raises(DataError, match="line 2: empty ensg_id"):
        load_annotations(write(tmp_path, FLAT_HEADER + ",AAMP,cytoplasmic,3\n"))
    with pytest.raises(DataError, match="no annotations"):
        load_annotations(write(tmp_path, FLAT_HEADER))
    with pytest.raises(DataError, match="not a readable CSV"):
        load_annotations(write(tmp_path, ""))
    with pytest.raises(DataError, match="not found"):
        load_annotations(tmp_path / "nope.csv")
    binary = tmp_path / "ann.bin"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 10)
    with pytest.raises(DataError, match="not a UTF-8"):
        load_annotations(binary)


def test_one_name_per_ensg(tmp_path):
    path = write(tmp_path, FLAT_HEADER + "ENSG00000127837,AAMP,cytoplasmic,3\nENSG00000127837,AAMP2,golgi,3\n")
    with pytest.raises(DataError, match="several target names"):
        load_annotations(path)


def test_min_grade_must_be_a_grade(tmp_path):
    table = load_annotations(write(tmp_path, FLAT_HEADER + "ENSG00000127837,AAMP,cytoplasmic,3\n"))
    with pytest.raises(ConfigError, match="min_grade=4"):
        build_labels(table, min_grade=4)
    labels = build_labels(table)
    assert labels[list(LABEL_COLUMNS)].to_numpy().dtype == np.int64
