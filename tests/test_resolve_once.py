"""Names resolved once: following ``--backbone``, ``--dataset`` and ``--task`` from the CLI to the
written entry, each name is resolved exactly once (issue 26, item 3).

Every resolver is wrapped to count its calls: the three registries (backbone cards, tasks, dataset
cards), the dataset resolver, the backbone resolver, the channel adapter parser, the weights
identity (on a cache miss, so the loader runs too) and the entry key.
"""

import sys
from collections import Counter

import pytest
from click.testing import CliRunner

from ocbench.cli import cli
from ocbench.errors import ConfigError

FAST = ["--set", "epochs=5"]


@pytest.fixture()
def calls(module_cache, tmp_path, monkeypatch):
    """Counter of resolver calls, keyed by (resolver, name); a fresh embedding cache, so the
    backbone is loaded (a cache miss) and the loader's identity is counted too."""
    from ocbench import registry
    from ocbench.backbones import adapters, derive, loader
    from ocbench.benchmark import entry
    from ocbench.data import cards

    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path / "cache"))
    cards.resolve_dataset("demo")  # the demo data written once, before counting
    counted: Counter = Counter()

    def wrap(module, name, label, key):
        original = getattr(module, name)

        def counting(*args, **kwargs):
            if key(*args, **kwargs) is not None:
                counted[(label, key(*args, **kwargs))] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, counting)

    def entry_key_name(backbone, channels_key, task, track, seed=0):
        # The entry's check of its key against its parts (on every load too) is no resolution.
        return None if sys._getframe(2).f_code.co_name == "_derived_fields_agree" else f"{backbone}/{channels_key}/{task}/{track}"

    wrap(registry.Registry, "get", "registry", lambda self, name: f"{self.kind}:{name}")
    wrap(cards, "resolve_dataset", "dataset", lambda dataset: str(dataset))
    wrap(derive, "resolve_backbone", "backbone", lambda spec, **kw: str(getattr(spec, "name", spec)))
    # keyed by dataset too: registering a card checks its default spec for OpenCell's channels
    wrap(adapters, "parse_channels", "adapter",
         lambda spec, card, dataset=None: f"{card.name}/{spec}/{getattr(dataset, 'name', dataset)}")
    wrap(loader, "resolve_identity", "identity", lambda card, **kw: card.name)
    wrap(entry, "entry_key", "entry key", entry_key_name)
    return counted


def test_ocbench_run_resolves_each_name_once(calls, tmp_path):
    out = tmp_path / "res"
    result = CliRunner().invoke(cli, [
        "run", "--dataset", "demo", "--backbone", "classical-stats", "--task", "fov-mlp,fov-linear",
        "--output", str(out), *FAST,
    ])
    assert result.exit_code == 0, result.output
    assert len(list(out.glob("*.json"))) == 2
    assert calls[("dataset", "demo")] == 1
    assert calls[("backbone", "classical-stats")] == 1
    assert calls[("registry", "backbone:classical-stats")] == 1
    assert calls[("registry", "task:fov-mlp")] == 1 and calls[("registry", "task:fov-linear")] == 1
    assert calls[("adapter", "classical-stats/None/demo")] == 1  # one adapter for both tasks
    assert calls[("identity", "classical-stats")] == 1  # the runner's, handed to the cache and the loader
    adapter = next(p.stem.split("__")[1] for p in out.glob("*.json"))
    assert calls[("entry key", f"classical-stats/{adapter}/fov-mlp/paper")] == 1
    assert calls[("entry key", f"classical-stats/{adapter}/fov-linear/paper")] == 1
    assert all(n == 1 for n in calls.values()), calls


def test_sweep_channels_passes_its_adapters_as_objects(calls, tmp_path):
    out = tmp_path / "sweep"
    result = CliRunner().invoke(cli, [
        "sweep-channels", "--dataset", "demo", "--backbone", "classical-stats", "--output", str(out), *FAST,
    ])
    assert result.exit_code == 0, result.output
    n = len(list(out.glob("*.json")))
    assert n >= 1
    assert calls[("backbone", "classical-stats")] == 1
    assert not [k for k in calls if k[0] == "adapter" and k[1].endswith("/demo")]  # never parsed back from text
    assert calls[("identity", "classical-stats")] == 1
    assert [v for k, v in calls.items() if k[0] == "entry key"] == [1] * n  # once per entry
    assert calls[("dataset", "demo")] == 1


def test_run_grid_refuses_a_mix_of_specs_and_cells(tmp_path):
    from ocbench.benchmark.runner import RunOptions, RunSpec, resolve_cells, run_grid
    from ocbench.data.cards import DATASETS

    spec = RunSpec("classical-stats", "fov-linear")
    (cell,) = resolve_cells([spec], DATASETS.get("demo"))
    with pytest.raises(ConfigError, match="not a mix"):
        run_grid([spec, cell], None, RunOptions(output_dir=tmp_path))
    with pytest.raises(ConfigError, match="RunSpecs or Cells"):
        run_grid(["classical-stats"], None, RunOptions(output_dir=tmp_path))
    assert not list(tmp_path.iterdir())  # refused before any work


def test_built_in_tasks_and_loaded_backbones_implement_the_protocols():
    from ocbench.backbones.cards import get_card
    from ocbench.backbones.loader import load_backbone
    from ocbench.backbones.protocol import Backbone
    from ocbench.tasks import Task, get_task, list_tasks

    for name in list_tasks():
        task = get_task(name)
        assert isinstance(task, Task), name
        assert task.derives_backbone == (name == "finetune")
    card = get_card("classical-stats")
    loaded = load_backbone(card)
    assert isinstance(loaded, Backbone) and not isinstance(card, Backbone)
    again = load_backbone(card, identity=loaded.identity)  # an identity already resolved is used as it is
    assert again.identity is loaded.identity
