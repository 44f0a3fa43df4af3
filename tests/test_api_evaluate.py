"""ocbench.evaluate: an in-memory model writes a normal entry through the runner."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import ocbench
from ocbench.backbones.card import BackboneCard
from ocbench.backbones.memory import MEMORY_NOTE, state_dict_sha256
from ocbench.benchmark.entry import load_entry
from ocbench.errors import DataError

FAST = ("epochs=5",)


def tiny_card(**changes) -> BackboneCard:
    fields = dict(
        name="mylab-pool-linear", source="memory:unset", arch="mylab-pool-linear", feature_dim=8, in_chans=3,
        input_channels=("R", "G", "B"), default_channels="imagenet-best", training_datasets=("ImageNet-1k",),
        supervision="class-label supervised", license="MIT",
    )
    fields.update(changes)
    return BackboneCard(**fields)


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(3 * 16, 8), nn.Dropout(0.5))


def test_importing_ocbench_stays_torch_free():
    code = "import sys, ocbench; ocbench.__version__; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


@pytest.mark.slow
def test_in_memory_module_writes_a_valid_entry(module_cache, tmp_path):
    model = tiny_model()
    model.train()  # the caller's mode: evaluate uses eval mode (dropout off) and gives the model back as it was
    entry = ocbench.evaluate(model, card=tiny_card(), task="fov-linear", dataset="demo", output_dir=tmp_path,
                             overrides=FAST, device="cpu")
    path = tmp_path / f"{entry.key}.json"
    assert path.is_file() and load_entry(path).key == entry.key == "mylab-pool-linear__map-p1-n2__fov-linear__paper"
    backbone = json.loads(path.read_text())["backbone"]
    assert backbone["weights_sha256"] == state_dict_sha256(model)
    assert backbone["weights_verified"] is False and backbone["weights_note"] == MEMORY_NOTE
    assert backbone["source"].startswith("memory:") and backbone["card"]["training_datasets"] == ["ImageNet-1k"]
    assert 0.0 <= entry.main.mean <= 1.0
    assert model.training and all(p.requires_grad for p in model.parameters())

    # same weights again: the entry is reused; changed weights under the same name are refused
    again = ocbench.evaluate(model, card=tiny_card(), task="fov-linear", dataset="demo", output_dir=tmp_path,
                             overrides=FAST, device="cpu")
    assert again.key == entry.key
    with torch.no_grad():
        model[2].weight.add_(1.0)
    with pytest.raises(Exception, match="overwrite=True"):
        ocbench.evaluate(model, card=tiny_card(), task="fov-linear", dataset="demo", output_dir=tmp_path,
                         overrides=FAST, device="cpu")


def test_a_plain_callable_and_a_wrong_feature_dim(module_cache, tmp_path):
    weights = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)

    def features(x: torch.Tensor) -> np.ndarray:  # numpy out is fine
        return x.mean(dim=(2, 3)).numpy() @ weights

    entry = ocbench.evaluate(features, card=tiny_card(name="mylab-fn"), task="fov-linear", dataset="demo",
                             output_dir=tmp_path, overrides=FAST, device="cpu")
    assert entry.backbone.weights_sha256 is None and "in-memory" in entry.backbone.weights_note
    with pytest.raises(DataError, match=r"expected \(\d+, 4\)"):
        ocbench.evaluate(features, card=tiny_card(name="mylab-fn4", feature_dim=4), task="fov-linear",
                         dataset="demo", output_dir=tmp_path, overrides=FAST, device="cpu")


@pytest.mark.parametrize("make, words", [
    (lambda x: torch.complex(x.mean(dim=(2, 3)) @ torch.ones(3, 8), torch.ones(x.shape[0], 8)), ["complex values", "real-valued"]),
    (lambda x: (x.mean(dim=(2, 3)) @ torch.ones(3, 8), None), ["returned a tuple", "model(x)[0]"]),
])
def test_complex_or_tuple_output_is_one_line_saying_what_to_return(module_cache, tmp_path, make, words):
    """Complex features were silently made real (with a warning); a tuple gave a torch error."""
    with pytest.raises(DataError) as info:
        ocbench.evaluate(make, card=tiny_card(name="mylab-odd"), task="fov-linear", dataset="demo",
                         output_dir=tmp_path, overrides=FAST, device="cpu")
    message = str(info.value)
    assert "\n" not in message and "mylab-odd" in message
    for word in words + ["must return", ", 8)"]:
        assert word in message, message
