"""Board and entry edge cases: huge scores, a backbone trained on OpenCell called zero-shot, the unverified
weights note said once, fine-tuning seeds pooled, off-protocol table titles, channel-sweep panels."""

from __future__ import annotations

import json

import pytest

from ocbench.benchmark.entry import entry_from_dict
from ocbench.errors import DataError
from ocbench.leaderboard import build_board, collect_entries, validate_entries
from ocbench.leaderboard.formatting import WEIGHTS_UNVERIFIED
from ocbench.leaderboard.summary import format_run_table
from ocbench.leaderboard.tables import build_tables

from board_examples import example_entry_dict


def test_huge_score_values_are_one_problem_line_not_a_traceback(tmp_path):
    good = example_entry_dict()
    good["scores"]["test"]["macro_f1"]["values"] = [1e308] * 5
    (tmp_path / "big.json").write_text(json.dumps(good))
    problems = validate_entries(tmp_path)
    assert len(problems) == 1 and "big.json" in problems[0] and "too large" in problems[0]


def test_an_entry_cannot_call_a_backbone_trained_on_opencell_zero_shot():
    data = example_entry_dict(not_zero_shot=[])
    data["backbone"]["card"]["training_datasets"] = ["HPA FOV", "OpenCell"]
    data["dataset"]["card"] = {"name": "demo"}
    with pytest.raises(DataError, match="not_zero_shot is \\[\\]"):
        entry_from_dict(data, source="edited.json")
    data["backbone"]["not_zero_shot"] = ["trained on OpenCell: the benchmark's own images (demo)"]
    entry_from_dict(data, source="honest.json")
    data["backbone"]["card"]["training_datasets"] = ["ImageNet-1k"]
    data["backbone"]["not_zero_shot"] = []
    entry_from_dict(data, source="zero-shot.json")


def test_the_unverified_weights_note_is_said_once(tmp_path):
    data = example_entry_dict(weights_verified=False, weights_note=WEIGHTS_UNVERIFIED)
    (tmp_path / "entries").mkdir()
    (tmp_path / "entries" / "e.json").write_text(json.dumps(data))
    loaded = collect_entries(tmp_path / "entries").entries
    build_board(tmp_path / "entries", tmp_path / "board")
    markdown = (tmp_path / "board" / "LEADERBOARD.md").read_text()
    assert f"({WEIGHTS_UNVERIFIED})" not in markdown
    assert WEIGHTS_UNVERIFIED in markdown
    assert f"({WEIGHTS_UNVERIFIED})" not in format_run_table([e.entry for e in loaded])


def _finetuned_entry(seed, shift, *, epochs=100):
    """An entry of a backbone fine-tuned by ocbench: named per run, the run hash covering the seed."""
    import hashlib

    notes = {"fine-tuned from": "model-a", "method": "DINO self-distillation (ocbench finetune)", "dataset": "demo",
             "dataset_version": "v", "split": {"track": "paper", "sha256": f"split{seed}"}, "seed": seed,
             "channels": "natural", "config": {"epochs": epochs, "fraction": 0.1}}
    notes["run_hash"] = hashlib.sha256(json.dumps(notes, sort_keys=True).encode()).hexdigest()[:10]
    name = f"model-a.ft-demo-f0.1-{notes['run_hash']}"
    data = example_entry_dict(name, task="finetune", val_folds=[0.80 + shift, 0.81 + shift, 0.79 + shift, 0.80 + shift, 0.82 + shift], seed=seed)
    data["backbone"]["card"]["notes"] = json.dumps(notes, sort_keys=True)
    return data


def test_seeds_of_one_fine_tuning_configuration_are_pooled_on_the_board(tmp_path):
    from ocbench.benchmark.entry import write_entry

    folder = tmp_path / "entries"
    for seed, shift in ((0, 0.0), (1, 0.01), (2, -0.01)):
        write_entry(_finetuned_entry(seed, shift), folder)
    write_entry(_finetuned_entry(0, -0.1, epochs=10), folder)  # other settings: not pooled with them
    board = build_tables(collect_entries([folder]).entries, include_reported=False)
    [seeds] = board.seed_tables
    by_n = sorted(seeds.rows, key=lambda r: -r.n)
    assert [r.n for r in by_n] == [3, 1]
    assert by_n[0].backbone.startswith("model-a.ft-demo-f0.1-seeds-") and by_n[0].mean == pytest.approx(0.804)
    assert by_n[1].backbone != by_n[0].backbone


def test_a_table_of_overridden_runs_says_so_in_its_title(tmp_path):
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "x.json").write_text(json.dumps(example_entry_dict(overrides={"epochs": 3})))
    [table] = [t for t in build_tables(collect_entries(tmp_path / "e").entries, include_reported=False).tables]
    assert "off-protocol (epochs=3)" in table.title


def test_channel_sweep_panels_never_mix_settings():
    from ocbench.leaderboard.plots import _sweep_rows

    panels = [(name, rows) for t in build_tables([]).tables for name, rows in _sweep_rows(t).items()]
    assert panels  # the paper's reported sweeps are drawn
    for name, rows in panels:
        assert len({r.channels for r in rows}) == len(rows), name  # each map once: nothing else differs
        configs = {json.dumps(r.source.config, sort_keys=True) for r in rows if r.source is not None}
        assert len(configs) <= 1, name
