"""Damaged or hostile backbone inputs (issue 23): each test failed before its fix."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from bb_hub import add_hub_files, hub_config, offline_hub, state_bytes, timm_random  # noqa: F401
from cli_assertions import one_line_error, one_line_message
from ocbench.backbones.derive import resolve_backbone
from ocbench.cli import cli
from ocbench.errors import ConfigError


def invoke(*args):
    return CliRunner().invoke(cli, list(args))


# -- hf-hub:ORG/NAME@ (an empty revision) --------------------------------------------------------
def test_an_empty_hub_revision_is_named_with_how_to_write_one(offline_hub):
    with pytest.raises(ConfigError) as info:
        resolve_backbone("hf-hub:mylab/cells-vit@")
    one_line_message(info, "hf-hub:mylab/cells-vit@", "revision after '@' is empty", "hf-hub:mylab/cells-vit@main")
    one_line_error(invoke("backbones", "show", "hf-hub:mylab/cells-vit@"), "revision after '@' is empty")


# -- timm arguments that load files ----------------------------------------------------------------
def test_a_hub_config_asking_timm_to_load_a_checkpoint_is_refused_before_timm_runs(offline_hub, tmp_path):
    import torch

    planted = tmp_path / "planted.pth"
    torch.save({"cls_token": torch.zeros(1, 1, 64)}, planted)
    model = timm_random("test_vit")
    config = hub_config(model, "r160_in1k", checkpoint_path=str(planted))
    snapshot = add_hub_files(offline_hub, "mylab/planted", {"config.json": config})
    result = invoke("backbones", "show", "hf-hub:mylab/planted")
    one_line_error(result, "model_args.checkpoint_path", str(snapshot / "config.json"), "load a file or code")


@pytest.mark.parametrize("field, value", [
    ("checkpoint_path", "/etc/passwd"),
    ("pretrained_cfg_overlay", {"file": "/tmp/x.pth"}),
    ("pretrained", True),
    ("cache_dir", "/tmp"),
])
def test_a_card_file_with_a_loading_timm_argument_is_refused(tmp_path, field, value):
    from ocbench.backbones.cards import BACKBONES
    from ocbench.backbones.derive import CARD_FILENAME

    card = BACKBONES.get("tiny-vit-random").to_dict()
    card.update(name="mine", arch_kwargs={**card["arch_kwargs"], field: value})
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / CARD_FILENAME).write_text(json.dumps(card))
    with pytest.raises(ConfigError) as info:
        resolve_backbone(f"local:{folder}")
    one_line_message(info, str(folder / CARD_FILENAME), f"arch_kwargs.{field}", "load a file or code")


# -- config.json sizes checked against the weights' header ------------------------------------------
@pytest.mark.parametrize("field, value", [("embed_dim", 2 ** 26), ("depth", 40)])
def test_config_sizes_that_do_not_fit_the_weights_are_refused_before_building(tmp_path, monkeypatch, field, value):
    """2**26 wide: the old loader tried to allocate the model (hundreds of GB) before any shape check."""
    from ocbench.backbones.loader import load_backbone

    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path / "oc"))
    model = timm_random("test_vit", num_classes=0)
    folder = tmp_path / "hostile"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(state_bytes(model.state_dict(), tmp_path))
    config = json.loads(hub_config(model, "r160_in1k"))
    config["model_args"] = {"embed_dim": 64, "depth": 6, "num_heads": 2, field: value}
    (folder / "config.json").write_text(json.dumps(config))
    card = resolve_backbone(f"local:{folder}")  # derived on the meta device: no memory
    with pytest.raises(ConfigError) as info:
        load_backbone(card)
    one_line_message(info, f"{folder / 'config.json'} field model_args.{field}={value}", str(folder / "model.safetensors"))
    checked = invoke("backbones", "check", f"local:{folder}")
    assert checked.exit_code != 0 and f"model_args.{field}={value}" in checked.output and "Traceback" not in checked.output
