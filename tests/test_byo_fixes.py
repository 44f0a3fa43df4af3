"""Bring-your-own-backbone fixes: plugins by module name, in-memory model identity, malformed
config.json / ocbench_card.json, user cards with a built-in card's name, imports into a local: source."""

from __future__ import annotations

import json
import sys

import pytest
from click.testing import CliRunner

from cli_assertions import one_line_error
from ocbench.backbones.cards import BACKBONES
from ocbench.cli import cli


def invoke(*args):
    return CliRunner().invoke(cli, list(args))


# ------------------------------------------------------------------------------------------------
# --plugin MODULE


PLUGIN_CARD = '''
from ocbench.backbones import BackboneCard, register_card
register_card(BackboneCard(name="mylab-plugin-by-name", source="local:/nonexistent/w", arch="vit_tiny_patch16_224",
  patch_size=16, feature_dim=192, in_chans=3, input_channels=("R", "G", "B"), default_channels="imagenet-best",
  training_datasets=("ImageNet-1k",), supervision="self-supervised", license="MIT"))
'''


def test_plugin_given_as_a_module_name_is_imported(tmp_path, monkeypatch):
    (tmp_path / "mylab_byo_cards.py").write_text(PLUGIN_CARD)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        result = invoke("--plugin", "mylab_byo_cards", "backbones", "show", "mylab-plugin-by-name")
        assert result.exit_code == 0, result.output
        assert "mylab-plugin-by-name" in result.output
    finally:
        BACKBONES.unregister("mylab-plugin-by-name")
        sys.modules.pop("mylab_byo_cards", None)


def test_plugin_module_that_does_not_exist_says_so(tmp_path, monkeypatch):
    one_line_error(invoke("--plugin", "ocbench_no_such_plugin_mod", "backbones", "list"),
                   "no module named 'ocbench_no_such_plugin_mod'")
    # a module that exists but imports a missing one names what is missing, not the plugin
    (tmp_path / "mylab_needs_missing.py").write_text("import mylab_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    one_line_error(invoke("--plugin", "mylab_needs_missing", "backbones", "list"), "mylab_missing_dependency")
