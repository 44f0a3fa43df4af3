"""Cost beside the score: device-seconds per 1,000 images from what each entry recorded."""

from __future__ import annotations

import csv

from ocbench.benchmark.entry import write_entry
from ocbench.leaderboard import build_board
from ocbench.leaderboard.render import COST_HEADER

from board_examples import example_entry_dict


def test_board_shows_device_seconds_per_1000_images(tmp_path):
    cheap = example_entry_dict("model-a")
    costly = example_entry_dict("model-b", val_folds=[0.5, 0.52, 0.49, 0.51, 0.5])
    # 10 images/s on one process -> 100 s per 1k; 20 images/s over 4 GPUs (bf16) -> 200 device-s per 1k.
    # The wall times include loading the model: a cost per run, which the per-image figure leaves out.
    cheap["timings"].update(extraction_s=75.0, extraction_items=690, extraction_processes=1, extraction_device="cpu",
                            extraction_images_per_s=10.0)
    costly["timings"].update(extraction_s=40.0, extraction_items=690, extraction_processes=4,
                             extraction_device="cuda:0 (NVIDIA H200)", extraction_images_per_s=20.0)
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


def test_a_resumed_extraction_costs_what_its_throughput_says(tmp_path):
    """A run that resumed an interrupted extraction computed only the rest: its wall time over all
    items would make the backbone look cheaper the more had been done before."""
    from ocbench.backbones.adapters import parse_channels
    from ocbench.benchmark.embeddings import extract_embeddings
    from ocbench.backbones.cards import get_card
    from ocbench.benchmark.entry import Timings
    from ocbench.data.cards import open_dataset
    from demo_data import labelled_demo

    data = open_dataset(str(labelled_demo(tmp_path / "demo", proteins=10, fovs_per_protein=4, size=32)))
    card = get_card("tiny-vit-random")
    kwargs = dict(device="cpu", cache_dir=tmp_path / "cache", shard_size=10, batch_size=10, progress=False, num_workers=0)
    full = extract_embeddings(data, card, parse_channels(None, card, data.card), **kwargs).meta
    assert full["n_computed"] == 40
    (key_dir,) = [p.parent for p in (tmp_path / "cache").rglob("manifest.json")]
    (key_dir / "manifest.json").unlink()
    sorted(key_dir.glob("shard-*.safetensors"))[-1].unlink()  # as if killed before the last shard
    resumed = extract_embeddings(data, card, parse_channels(None, card, data.card), **kwargs).meta
    assert resumed["n_computed"] == 10 and resumed["n_reused"] == 30

    def cost(meta):
        return Timings(extraction_s=meta["wall_time_s"], task_s=1.0, extraction_items=meta["n"],
                       extraction_images_per_s=meta["images_per_s"], extraction_processes=1).device_seconds_per_1000

    # The cost is the computed items' throughput, never the run's wall time over all items (which
    # counts the reused ones as free); comparing the two times themselves would depend on the load.
    assert resumed["images_per_s"] > 0 and cost(resumed) == 1000 / resumed["images_per_s"]
    assert cost(resumed) != 1000 * resumed["wall_time_s"] / resumed["n"]
