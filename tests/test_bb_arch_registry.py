"""The architecture registry (issue 26 item 2): a non-timm family is a plugin, like a card.

A plugin file registers a tiny conv net with ``register_arch`` and a card whose ``arch`` names it,
reading ``model.safetensors`` from a local folder; ``ocbench --plugin FILE run`` then loads it like
any built-in backbone and writes an entry. The built-in families (timm, SubCell, the weightless
baselines) are found through the same registry.
"""

from __future__ import annotations

import sys

import pytest
import torch
from click.testing import CliRunner

from cli_assertions import one_line_error, one_line_message
from ocbench.backbones.archs import ARCHS, TIMM, arch_for, get_arch, import_checkpoint, register_arch
from ocbench.backbones.cards import BACKBONES, get_card
from ocbench.benchmark.entry import load_entry
from ocbench.cli import cli
from ocbench.errors import ConfigError
from ocbench.registry import load_plugin

PLUGIN = '''
"""A lab's own architecture: not timm, built from the card, weights from a local folder."""
import torch
from torch import nn

from ocbench.backbones import BackboneCard, register_card
from ocbench.backbones.archs import register_arch


class TinyConvNet(nn.Module):
    def __init__(self, in_chans, width):
        super().__init__()
        self.stem = nn.Conv2d(in_chans, width, 3, stride=2, padding=1)
        self.body = nn.Conv2d(width, width, 3, stride=2, padding=1)
        self.feature_dim = width

    def forward(self, x):
        x = torch.relu(self.body(torch.relu(self.stem(x))))
        return x.mean(dim=(2, 3))


def build(card):
    return TinyConvNet(card.in_chans, card.arch_kwargs.get("width", 8))


def adapt(card, network, state, *, from_card_source):
    # the lab saved its weights from a wrapper: "net." before every key
    return {key.removeprefix("net."): value for key, value in state.items()}


register_arch("mylab-tinyconv", build, adapt)

register_card(BackboneCard(
    name="mylab-tinyconv-card", source="local:__FOLDER__", arch="__ARCH__", arch_kwargs={"width": 8},
    in_chans=2, input_channels=("protein", "nucleus"), default_channels="natural",
    normalization="self", resize="resize-32", input_size=32, feature_dim=8,
    pretraining="none: a test's seeded conv net", license="MIT",
))
'''


def _write_plugin(tmp_path, arch="mylab-tinyconv", stem="mylab_archs"):
    folder = tmp_path / "weights"
    folder.mkdir(exist_ok=True)
    plugin = tmp_path / f"{stem}.py"
    plugin.write_text(PLUGIN.replace("__FOLDER__", str(folder)).replace("__ARCH__", arch))
    return plugin, folder


@pytest.fixture()
def plugin_cleanup():
    names = []
    yield names
    for name in ("mylab-tinyconv-card",):
        BACKBONES.unregister(name)
    ARCHS.unregister("mylab-tinyconv")
    for stem in names:
        sys.modules.pop(f"ocbench_plugin_{stem}", None)


def test_a_plugin_architecture_runs_through_ocbench_run(module_cache, tmp_path, plugin_cleanup):
    from safetensors.torch import save_file

    plugin, folder = _write_plugin(tmp_path)
    plugin_cleanup.append("mylab_archs")
    load_plugin(str(plugin))  # the CLI's --plugin below finds it imported already
    module = sys.modules["ocbench_plugin_mylab_archs"]
    torch.manual_seed(0)
    net = module.TinyConvNet(2, 8)
    save_file({f"net.{k}": v.contiguous() for k, v in net.state_dict().items()}, str(folder / "model.safetensors"))

    card = get_card("mylab-tinyconv-card")
    assert arch_for(card) is ARCHS.get("mylab-tinyconv") and arch_for(card) is not TIMM
    out = tmp_path / "res"
    result = CliRunner().invoke(cli, [
        "--plugin", str(plugin), "run", "--backbone", "mylab-tinyconv-card", "--task", "fov-linear",
        "--dataset", "demo", "--output", str(out),
    ])
    assert result.exit_code == 0, result.output
    [path] = sorted(out.glob("*.json"))
    entry = load_entry(path)
    assert entry.backbone.name == "mylab-tinyconv-card" and entry.task == "fov-linear"
    assert 0.0 <= entry.main.mean <= 1.0

    # the loaded model is the saved one (adapt_state_dict renamed the keys; the load is strict)
    from ocbench.backbones.loader import load_backbone

    loaded = load_backbone(card)
    x = torch.rand(2, 2, 32, 32)
    assert torch.allclose(loaded.embed(x), net.eval()(x), atol=1e-6)
    # the family has no importer: `backbones import` says so in one line
    one_line_error(CliRunner().invoke(cli, ["--plugin", str(plugin), "backbones", "import", "mylab-tinyconv-card",
                                            "--checkpoint", str(plugin)]), "'mylab-tinyconv' has no checkpoint importer")


def test_an_unknown_architecture_is_one_line_with_did_you_mean(module_cache, tmp_path, plugin_cleanup):
    from safetensors.torch import save_file

    plugin, folder = _write_plugin(tmp_path, stem="mylab_archs_typo")
    plugin_cleanup.append("mylab_archs_typo")
    load_plugin(str(plugin))
    save_file({"x": torch.zeros(1)}, str(folder / "model.safetensors"))
    # a card naming a misspelt architecture
    import dataclasses

    from ocbench.backbones.loader import load_backbone

    typo = dataclasses.replace(get_card("mylab-tinyconv-card"), name="mylab-typo", arch="mylab-tinyconvv")
    with pytest.raises(ConfigError) as excinfo:
        load_backbone(typo)
    one_line_message(excinfo, "backbone card 'mylab-typo'", "unknown architecture 'mylab-tinyconvv'", "did you mean", "mylab-tinyconv")
    with pytest.raises(ConfigError) as excinfo:
        get_arch("subcell-vit-b16-pol")
    one_line_message(excinfo, "did you mean", "subcell-vit-b16-pool")
    # through the CLI: one line too
    BACKBONES.register(typo.name, typo)
    try:
        result = CliRunner().invoke(cli, ["--plugin", str(plugin), "run", "--backbone", "mylab-typo",
                                          "--task", "fov-linear", "--dataset", "demo", "--output", str(tmp_path / "r")])
        one_line_error(result, "unknown architecture 'mylab-tinyconvv'", "did you mean")
    finally:
        BACKBONES.unregister("mylab-typo")


def test_builtin_families_are_registered():
    assert {"subcell-vit-b16-pool", "subcell-vit-b16-cls", "classical-stats", "cellprofiler"} <= set(ARCHS.names())
    assert arch_for(get_card("hpa-fov-vitb8")) is TIMM
    assert arch_for(get_card("tiny-vit-random")) is TIMM
    assert arch_for(get_card("subcell-bg-mae-pool")).importer is not None
    assert arch_for(get_card("classical-stats")).importer is None


def test_a_builtin_architecture_cannot_be_taken_by_a_plugin():
    with pytest.raises(ConfigError, match="already registered"):
        register_arch("subcell-vit-b16-pool", lambda card: None)
    with pytest.raises(ConfigError, match="must be an Arch"):
        ARCHS.register("mylab-not-an-arch", object())


def test_weightless_cards_still_refuse_an_import(tmp_path):
    with pytest.raises(ConfigError) as excinfo:
        import_checkpoint(get_card("classical-stats"), tmp_path / "x.pth", out_dir=tmp_path / "out")
    one_line_message(excinfo, "backbone 'classical-stats' has no weights to import (source builtin:")
