"""Core v2: one registry type, plugins, and tasks that fetch their own inputs.

The toy task below needs an input the runner has never heard of (the raw images, not
embeddings); it is registered from a plugin file and runs through `ocbench run` unchanged.
"""

import sys
import textwrap

import pytest
from click.testing import CliRunner

from ocbench.benchmark.entry import load_entry
from ocbench.cli import cli
from ocbench.errors import ConfigError
from ocbench.registry import Registry

from cli_assertions import one_line_error

TOY_PLUGIN = '''
"""A user's task: nearest class-mean on each FOV's mean protein intensity (reads raw images)."""
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ocbench.summaries import summarize
from ocbench.tasks import TaskConfig, TaskResult, register_task


@register_task
@dataclass(frozen=True)
class ToyIntensityTask(TaskConfig):
    name: ClassVar[str] = "toy-intensity"
    protocol_version: ClassVar[str] = "toy-intensity/1"
    main_score: ClassVar[tuple[str, str]] = ("test", "accuracy")
    description: ClassVar[str] = "toy: raw-image intensity, no backbone"

    threshold: float = 0.5

    def evaluate(self, context):
        ds = context.dataset
        protein = list(context.dataset.card.channel_names).index("protein")
        x = np.array([ds.read(i)[protein].mean() for i in range(len(ds))])
        y = context.labels.argmax(axis=1)
        test_idx, folds_idx = context.split.indices(ds.fov_ids)
        train = np.concatenate(folds_idx)
        means = {c: x[train][y[train] == c].mean() for c in np.unique(y[train])}
        classes = np.array(list(means))
        centers = np.array(list(means.values()))
        pred = classes[np.abs(x[test_idx][:, None] - centers[None, :]).argmin(axis=1)]
        accuracy = float((pred == y[test_idx]).mean())
        return TaskResult(
            task=self.name, protocol_version=self.protocol_version, config=self.to_dict(),
            scores={"test": {"accuracy": summarize([accuracy])}}, class_names=context.class_names,
            seed=context.seed, device="cpu", wall_time_s=0.0,
        )
'''


@pytest.fixture()
def env(module_cache):
    return module_cache


def test_a_task_with_a_new_kind_of_input_runs_through_ocbench_run(env, tmp_path):
    plugin = tmp_path / "toy_tasks.py"
    plugin.write_text(TOY_PLUGIN)
    out = tmp_path / "res"
    result = CliRunner().invoke(
        cli,
        ["--plugin", str(plugin), "run", "--dataset", "demo", "--backbone", "classical-stats",
         "--task", "toy-intensity", "--output", str(out)],
    )
    assert result.exit_code == 0, result.output
    [path] = sorted(out.glob("*.json"))
    entry = load_entry(path)
    assert entry.task == "toy-intensity" and entry.protocol_version == "toy-intensity/1"
    assert entry.main_score.eval_set == "test" and entry.main_score.metric == "accuracy"
    assert 0.0 <= entry.main.mean <= 1.0 and not entry.off_protocol
    # the task never asked for embeddings, so none were extracted
    assert entry.timings.extraction_s is None
    listed = CliRunner().invoke(cli, ["--plugin", str(plugin), "tasks", "list"])
    assert listed.exit_code == 0 and "toy-intensity" in listed.output and "accuracy (test)" in listed.output


def test_tasks_list_and_show(env):
    listed = CliRunner().invoke(cli, ["tasks", "list"])
    assert listed.exit_code == 0, listed.output
    assert "fov-mlp" in listed.output and "fov-probe/2" in listed.output and "macro_f1 (val)" in listed.output
    shown = CliRunner().invoke(cli, ["tasks", "show", "fov-mlp"])
    assert shown.exit_code == 0, shown.output
    for text in ("epochs", "300", "lr", "0.0001", "hidden_dims", "512,256", "main score: macro_f1 on val"):
        assert text in shown.output
    one_line_error(CliRunner().invoke(cli, ["tasks", "show", "fov-mpl"]), "did you mean: fov-mlp")


def test_data_list_names_the_cards(env):
    result = CliRunner().invoke(cli, ["data", "list"])
    assert result.exit_code == 0, result.output
    assert "opencell" in result.output and "demo" in result.output and "protein, nucleus" in result.output


def test_optional_dependency_of_a_task_is_imported_only_when_it_runs(env, tmp_path):
    plugin = tmp_path / "needs_extra.py"
    plugin.write_text(textwrap.dedent('''
        from dataclasses import dataclass
        from typing import ClassVar
        from ocbench.tasks import TaskConfig, register_task

        @register_task
        @dataclass(frozen=True)
        class NeedsExtra(TaskConfig):
            name: ClassVar[str] = "needs-extra"
            protocol_version: ClassVar[str] = "needs-extra/1"
            requires: ClassVar[tuple[str, ...]] = ("ocbench_no_such_package_xyz",)
            extra: ClassVar[str] = "singlecell"
    '''))
    listed = CliRunner().invoke(cli, ["--plugin", str(plugin), "tasks", "list"])
    assert listed.exit_code == 0 and "needs-extra" in listed.output  # other commands are unaffected
    out = tmp_path / "res"
    result = CliRunner().invoke(
        cli, ["--plugin", str(plugin), "run", "--dataset", "demo", "--backbone", "classical-stats",
              "--task", "fov-mlp,needs-extra", "--output", str(out)],
    )
    one_line_error(result, "pip install 'ocbench[singlecell]'")
    assert not out.exists()  # checked before the first cell ran


def test_bad_plugin_is_a_one_line_error(env, tmp_path):
    one_line_error(CliRunner().invoke(cli, ["--plugin", "ocbench_no_such_plugin", "tasks", "list"]), "ocbench_no_such_plugin")
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('oops')\n")
    one_line_error(CliRunner().invoke(cli, ["--plugin", str(broken), "tasks", "list"]), "oops")


def test_registry_lazy_entries_did_you_mean_and_duplicates(tmp_path, monkeypatch):
    module = tmp_path / "lazy_target_mod.py"
    module.write_text("VALUE = {'x': 1}\nOTHER = {'x': 2}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("widget", list_command="widgets list")
    reg.register("alpha", "lazy_target_mod:VALUE")
    assert "lazy_target_mod" not in sys.modules  # registering imports nothing
    assert reg.get("alpha") == {"x": 1} and "lazy_target_mod" in sys.modules
    reg.register("alpha", reg.get("alpha"))  # the same object again is fine
    with pytest.raises(ConfigError, match="already registered"):
        reg.register("alpha", {"x": 3})
    with pytest.raises(ConfigError, match="did you mean: alpha"):
        reg.get("alpah")
    with pytest.raises(ConfigError, match=r"known: alpha \(see: widgets list\)"):
        reg.get("zzz")
    reg.register("broken", "lazy_target_mod:MISSING")
    with pytest.raises(ConfigError, match="has no attribute"):
        reg.get("broken")


def _installed_plugin(tmp_path, monkeypatch, name: str, group: str, entry_points: str, module: str, code: str) -> None:
    """An installed distribution (a .dist-info on sys.path) declaring ``entry_points`` in ``group``."""
    dist = tmp_path / f"{name}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{group}]\n{entry_points}\n")
    (tmp_path / f"{module}.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))


def test_entry_points_add_to_a_registry(tmp_path, monkeypatch):
    _installed_plugin(tmp_path, monkeypatch, "ocbench_toy_plugin", "ocbench.toys", "shiny = toy_ep_mod:SHINY",
                      "toy_ep_mod", "SHINY = ('shiny',)\n")
    reg = Registry("toy", entry_point_group="ocbench.toys")
    assert reg.names() == ["shiny"] and reg.get("shiny") == ("shiny",)


def test_every_builtin_registry_uses_the_one_registry_type():
    from ocbench.backbones import cards
    from ocbench.benchmark import entry
    from ocbench.data.cards import DATASETS
    from ocbench.tasks import TASKS

    registries = [DATASETS, TASKS, entry.UPGRADERS] + [v for v in vars(cards).values() if isinstance(v, Registry)]
    assert all(isinstance(r, Registry) for r in registries) and len(registries) == 4
    # one upgrader from each older schema version to the next
    assert sorted(entry.UPGRADERS.names(), key=int) == [str(v) for v in range(entry.SCHEMA_VERSION)]


def test_a_plugin_entry_point_that_fails_its_check_only_warns(tmp_path, monkeypatch):
    _installed_plugin(tmp_path, monkeypatch, "ocbench_bad_plugin", "ocbench.gadgets",
                      "bad = bad_ep_mod:BAD\ngood = bad_ep_mod:GOOD", "bad_ep_mod", "BAD = 42\nGOOD = ('gadget',)\n")

    def must_be_tuple(obj):
        if not isinstance(obj, tuple):
            raise ConfigError("not a gadget")

    reg = Registry("gadget", entry_point_group="ocbench.gadgets", check=must_be_tuple)
    with pytest.warns(UserWarning, match="failed to load"):
        assert reg.names() == ["good"]
    assert reg.get("good") == ("gadget",)


def test_a_plugin_named_like_a_builtin_is_one_warning_saying_it_is_ignored(tmp_path, monkeypatch):
    """It was ignored silently."""
    import warnings

    _installed_plugin(tmp_path, monkeypatch, "ocbench_shadow_plugin", "ocbench.shadows",
                      "alpha = shadow_ep_mod:ALPHA", "shadow_ep_mod", "ALPHA = ('not the built-in',)\n")
    reg = Registry("gadget", entry_point_group="ocbench.shadows",
                   on_first_use=lambda: reg.register("alpha", ("built-in",)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert reg.get("alpha") == ("built-in",)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "is ignored" in messages[0] and "'alpha' is a built-in gadget" in messages[0], messages


def test_a_backbone_entry_point_named_unlike_its_card_is_one_warning(tmp_path, monkeypatch):
    """It gave two warnings: 'registered as X', then 'failed to load' (X was taken)."""
    import warnings

    from ocbench.backbones.cards import _BackboneRegistry, _check_card

    code = ("import dataclasses\nfrom ocbench.backbones.cards import BACKBONES\n"
            "MINE = dataclasses.replace(BACKBONES.get('tiny-vit-random'), name='mine-vit', init_seed=7)\n"
            "TAKEN = dataclasses.replace(BACKBONES.get('tiny-vit-random'), init_seed=8)\n")
    _installed_plugin(tmp_path, monkeypatch, "ocbench_card_plugin", "ocbench.cardtest",
                      "other-name = card_ep_mod:MINE\ncopy = card_ep_mod:TAKEN", "card_ep_mod", code)
    from ocbench.backbones.cards import BACKBONES

    builtin = BACKBONES.get("tiny-vit-random")
    reg = _BackboneRegistry("backbone", entry_point_group="ocbench.cardtest", check=_check_card,
                            on_first_use=lambda: reg.register(builtin.name, builtin))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert reg.get("mine-vit").init_seed == 7 and reg.get("tiny-vit-random") is builtin
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 2, messages  # one per entry point
    renamed, ignored = messages  # sorted by the plugin's value: MINE, TAKEN
    assert "entry point 'copy'" in ignored and "is ignored" in ignored and "'tiny-vit-random' is a built-in backbone" in ignored
    assert "entry point 'other-name'" in renamed and "registered as 'mine-vit'" in renamed and "failed" not in renamed
