"""Damaged or hostile entries on the board (issue 23): each test failed before its fix."""

from __future__ import annotations

import json

import pytest

from ocbench.benchmark.entry import entry_from_dict, write_entry
from ocbench.errors import DataError
from ocbench.leaderboard import validate_entries
from ocbench.leaderboard.examples import example_entry_dict

FOLDS = [0.70, 0.72, 0.69, 0.71, 0.73]


# -- a `created` in the future, and which duplicate is shown --------------------------------------
def test_a_created_in_the_future_is_refused():
    data = example_entry_dict("model-a", created="2099-01-01T00:00:00+00:00")
    with pytest.raises(DataError) as info:
        entry_from_dict(data, source="x.json")
    assert "\n" not in str(info.value) and "x.json" in str(info.value) and "in the future" in str(info.value)


def test_a_duplicate_says_which_entry_is_shown_and_why(tmp_path):
    genuine = example_entry_dict("model-a", val_folds=FOLDS, created="2025-02-01T00:00:00+00:00")
    copy = example_entry_dict("model-a", val_folds=[f - 0.1 for f in FOLDS], created="2025-01-01T00:00:00+00:00")
    write_entry(genuine, tmp_path / "run1")
    write_entry(copy, tmp_path / "run2")
    (problem,) = validate_entries([tmp_path / "run1", tmp_path / "run2"])
    assert problem.startswith(f"{tmp_path / 'run2'}/model-a__replicate__fov-mlp__paper.json: same key")
    assert f"{tmp_path / 'run1'}/model-a__replicate__fov-mlp__paper.json is shown because it is newer" in problem
    assert "2025-02-01T00:00:00+00:00" in problem and "2025-01-01T00:00:00+00:00" in problem
    future = dict(copy, created="2099-01-01T00:00:00+00:00")
    (tmp_path / "run2" / "model-a__replicate__fov-mlp__paper.json").write_text(json.dumps(future))
    problems = validate_entries([tmp_path / "run1", tmp_path / "run2"])
    assert len(problems) == 1 and "in the future" in problems[0] and "run2" in problems[0]
