"""Text that reaches users (docstrings, messages, skip reasons) says what they need to know, not
how the project was written: no references to files a user does not have or to the tools and
folders of the people who wrote it (issue 17 item 23)."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = [
    "ocbench/_io.py",
    "ocbench/reported.py",
    *(f"ocbench/data/{name}.py" for name in ("opencell", "demo", "download", "layout", "annotations", "export")),
    *(
        f"tests/{name}.py"
        for name in (
            "test_demo", "test_demo_signal", "test_opencell_reader", "test_layout", "test_download",
            "test_io", "test_reported", "test_annotations", "test_export", "test_cli_data",
        )
    ),
]
# Internal wording: the paper's text as extracted for the authors, their protocol notes, their
# shared folder, and who is or is not "a contributor".
INTERNAL = ("legible", "PROTOCOL.md", "../shared", "contributor clone", "offline machine", "data/opencell/README")


@pytest.mark.parametrize("relpath", FILES)
def test_no_internal_wording(relpath):
    text = (ROOT / relpath).read_text(encoding="utf-8")
    found = [phrase for phrase in INTERNAL if phrase in text and phrase not in _ALLOWED.get(relpath, ())]
    assert not found, f"{relpath}: {found}"


# This file lists the phrases themselves.
_ALLOWED = {"tests/test_data_wording.py": INTERNAL}
