"""Cost beside the score: device-seconds per 1,000 images from what each entry recorded."""

from __future__ import annotations

import csv

from ocbench.benchmark.entry import write_entry
from ocbench.leaderboard import build_board
from ocbench.leaderboard.examples import example_entry_dict
from ocbench.leaderboard.render import COST_HEADER


def test_board_shows_device_seconds_per_1000_images(tmp_path):
    cheap = example_entry_dict("model-a")
    costly = example_entry_dict("model-b", val_folds=[0.5, 0.52, 0.49, 0.51, 0.5])
    # 690 FOVs in 69 s on one process -> 100 s per 1k; 690 in 34.5 s on 4 GPUs (bf16) -> 200 device-s per 1k
    cheap["timings"].update(extraction_s=69.0, extraction_items=690, extraction_processes=1, extraction_device="cpu")
    costly["timings"].update(extraction_s=34.5, extraction_items=690, extraction_processes=4,
                             extraction_device="cuda:0 (NVIDIA H200)")
    costly["environment"]["precision"] = "bf16"
    old = example_entry_dict("model-c")  # an entry from before costs were recorded
    for key in ("extraction_items", "extraction_images_per_s", "extraction_device", "extraction_processes",
                "peak_host_memory_gib", "peak_device_memory_gib"):
        old["timings"].pop(key)
    for d in (cheap, costly, old):
        write_entry(d, tmp_path / "entries")
    build_board([tmp_path / "entries"], tmp_path / "board")

    md = (tmp_path / "board" / "LEADERBOARD.md").read_text()
    assert COST_HEADER in md
    assert "100 s (cpu)" in md and "200 s (cuda:0 (NVIDIA H200), bf16, 4 processes)" in md
    with open(tmp_path / "board" / "leaderboard.csv", newline="") as fh:
        rows = {r["backbone"]: r for r in csv.DictReader(fh)}
    assert float(rows["model-a"]["cost_device_s_per_1000"]) == 100.0
    assert float(rows["model-b"]["cost_device_s_per_1000"]) == 200.0
    assert rows["model-c"]["cost_device_s_per_1000"] == ""  # not recorded: empty, never a made-up number
    assert COST_HEADER in (tmp_path / "board" / "index.html").read_text()
