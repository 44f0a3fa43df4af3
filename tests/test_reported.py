"""ocbench.reported: the paper's numbers, one place; every number the paper reports is there, none invented."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ocbench.reported import (
    REPORTED,
    SETTINGS,
    ZERO_SHOT_BASELINE,
    ReportedResult,
    headline,
    reported_for,
    reported_for_backbone,
)

# Transcribed by hand from the paper (channel maps, Table 1, fine-tuning, Table 4), independently of
# ocbench/reported.py:
# (backbone, task, strategy, map of (protein, nucleus) or None, config, mean, std).
G, B, R = 1, 2, 0  # ImageNet RGB inputs
_FT = {"epochs": 100, "fraction": 1.0}
_FT60 = {"epochs": 60, "fraction": 1.0}
PROTOCOL_FOV = [
    # section 2: every map tried (zero-shot MLP probe)
    ("imagenet-dino-vitb8", "fov-mlp", "map", (G, B), {}, 0.818, 0.007),
    ("imagenet-dino-vitb8", "fov-mlp", "map", (G, R), {}, 0.813, 0.005),
    ("imagenet-dino-vitb8", "fov-mlp", "map", (R, G), {}, 0.806, 0.010),
    ("imagenet-dino-vitb8", "fov-mlp", "map", (R, B), {}, 0.800, 0.008),
    ("imagenet-dino-vitb8", "fov-mlp", "map", (B, G), {}, 0.790, 0.011),
    ("imagenet-dino-vitb8", "fov-mlp", "map", (B, R), {}, 0.789, 0.009),
    ("hpa-fov-vitb8", "fov-mlp", "map", (1, 2), {}, 0.822, 0.007),
    ("hpa-fov-vitb8", "fov-mlp", "map", (1, 3), {}, 0.763, 0.011),
    ("hpa-fov-vitb8", "fov-mlp", "map", (1, 0), {}, 0.754, 0.013),
    ("hpa-fov-vitb8", "fov-mlp", "map", (0, 2), {}, 0.695, 0.004),
    ("hpa-fov-vitb8", "fov-mlp", "map", (0, 1), {}, 0.690, 0.011),
    ("hpa-fov-vitb8", "fov-mlp", "map", (3, 0), {}, 0.685, 0.009),
    ("hpa-fov-vitb8", "fov-mlp", "map", (2, 1), {}, 0.676, 0.004),
    # section 4: Table 1 (the ImageNet ViT-B/8 and HPA channel-wise rows repeat section 2)
    ("opencell-dino-vits8", "fov-mlp", "map", (0, 1), {}, 0.810, 0.015),
    ("opencell-dino-vitb8", "fov-mlp", "map", (0, 1), {}, 0.792, 0.010),
    ("imagenet-dino-vits8", "fov-mlp", "map", (G, B), {}, 0.761, 0.010),
    ("imagenet-dino-vits8", "fov-mlp", "replicate", None, {}, 0.761, 0.010),
    ("imagenet-dino-vitb8", "fov-mlp", "replicate", None, {}, 0.798, 0.010),
    ("hpa-fov-vitb8", "fov-mlp", "replicate", None, {}, 0.768, 0.010),
    # section 5: fine-tuned then probed; the fraction curve's end; 60-epoch map ablation
    ("hpa-fov-vitb8", "finetune", "map", (1, 2), _FT, 0.860, 0.013),
    ("imagenet-dino-vits8", "finetune", "map", (G, B), _FT, 0.844, 0.007),
    ("imagenet-dino-vitb8", "finetune", "map", (G, B), _FT, 0.844, 0.011),
    ("imagenet-dino-vits8", "finetune", "replicate", None, _FT, 0.740, 0.004),
    ("imagenet-dino-vitb8", "finetune", "replicate", None, _FT, 0.710, 0.010),
    ("hpa-fov-vitb8", "finetune", "replicate", None, _FT, 0.787, 0.016),
    ("hpa-fov-vitb8", "finetune", "map", (1, 2), {"epochs": 100, "fraction": 0.2}, 0.820, 0.013),
    ("hpa-fov-vitb8", "finetune", "map", (1, 2), _FT60, 0.832, 0.007),
    ("hpa-fov-vitb8", "finetune", "map", (0, 3), _FT60, 0.804, 0.012),
    ("hpa-fov-vitb8", "finetune", "map", (2, 1), _FT60, 0.804, 0.015),
]
# section 6: Table 4, macro-F1 for increasing k: (backbone, setting, values)
PROTOCOL_KNN = [
    ("hpa-sc-vitb16", "zero-shot", (0.852, 0.844, 0.842, 0.823, 0.796)),
    ("hpa-fov-vitb8", "zero-shot", (0.773, 0.764, 0.740, 0.714, 0.674)),
    ("hpa-fov-vitb8", "fine-tuned", (0.780, 0.759, 0.767, 0.743, 0.700)),
    ("imagenet-dino-vitb16", "zero-shot", (0.646, 0.671, 0.694, 0.679, 0.669)),
    ("imagenet-dino-vitb8", "zero-shot", (0.714, 0.721, 0.721, 0.709, 0.682)),
]


@pytest.mark.parametrize("backbone, task, strategy, channel_map, config, mean, std", PROTOCOL_FOV)
def test_every_protocol_fov_number_is_reported_for_its_configuration(backbone, task, strategy, channel_map, config, mean, std):
    result = reported_for(backbone, task, "paper", strategy, channel_map, config)
    assert result is not None, f"the paper's number {mean} {std} is missing"
    assert (result.mean, result.std, result.n) == (mean, std, 5)
    assert result.config == config


def test_every_protocol_knn_row_is_reported():
    got = {(r.backbone, r.setting, r.per_k) for r in REPORTED if r.task == "sc-knn"}
    assert got == set(PROTOCOL_KNN)
    assert all(r.n == 591 and r.mean is None and r.track == "paper" for r in REPORTED if r.task == "sc-knn")


def test_no_number_is_invented():
    """REPORTED holds exactly the configurations above (rows the paper repeats appear once)."""
    expected = {(b, t, s, m, tuple(sorted(c.items())), mean, std) for b, t, s, m, c, mean, std in PROTOCOL_FOV}
    got = {
        (r.backbone, r.task, r.strategy, r.channel_map, tuple(sorted(r.config.items())), r.mean, r.std)
        for r in REPORTED
        if not r.per_k
    }
    assert got == expected
    assert len(REPORTED) == len(expected) + len(PROTOCOL_KNN)  # no duplicate rows
    assert len([r for r in REPORTED if r.task == "fov-mlp"]) == 19
    assert len([r for r in REPORTED if r.task == "finetune"]) == 10


def test_reported_for_picks_the_default_or_the_runs_configuration():
    assert reported_for("hpa-fov-vitb8", "finetune", "paper", "map", (1, 2)).mean == 0.860  # default: 100 epochs
    assert reported_for("hpa-fov-vitb8", "finetune", "paper", "map", (1, 2), {"epochs": 60, "fraction": 1.0}).mean == 0.832
    assert reported_for("hpa-fov-vitb8", "finetune", "paper", "map", (1, 2), {"epochs": 100, "fraction": 0.2}).mean == 0.820
    assert reported_for("hpa-fov-vitb8", "fov-mlp", "protein", "map", (1, 2)) is None  # other track: no paper number
    assert reported_for("hpa-fov-vitb8", "fov-mlp", "paper", "map", (2, 3)) is None  # a map the paper did not try
    assert reported_for("classical-stats", "fov-mlp", "paper", "map", (0, 1)) is None
    assert (ZERO_SHOT_BASELINE.mean, ZERO_SHOT_BASELINE.std) == (0.822, 0.007)


def test_labels_use_the_papers_notation():
    by_map = {r.channel_map: r for r in reported_for_backbone("imagenet-dino-vitb8") if r.task == "fov-mlp"}
    assert by_map[(1, 2)].channels_label == "[1, 2] -> [G, B]"
    assert by_map[None].channels_label == "replicate"
    hpa = reported_for("hpa-fov-vitb8", "fov-mlp", "paper", "map", (1, 2))
    assert hpa.channels_label == "[1, 2] -> [1, 2] natural" and hpa.value_label() == "0.822±0.007"
    knn = reported_for("hpa-sc-vitb16", "sc-knn", "paper", "map", (1, 2))
    assert knn.value_label() == "0.852 0.844 0.842 0.823 0.796"


def test_settings():
    assert {r.setting for r in REPORTED} == set(SETTINGS)
    assert all(r.setting == "fine-tuned" for r in REPORTED if r.task == "finetune")
    assert all(r.setting == "from-scratch" for r in REPORTED if r.backbone.startswith("opencell"))
    assert reported_for("hpa-fov-vitb8", "fov-mlp", "paper", "replicate", None).setting == "zero-shot"
    with pytest.raises(ValueError, match="setting"):
        ReportedResult("x", "fov-mlp", "replicate", None, 0.5, 0.1, "nowhere", setting="pretrained")


def test_notes_say_which_imagenet_maps_the_paper_leaves_open():
    # Table 1 and Table 2 say only "channel-wise" for ImageNet; appendix D measured ViT-B/8 only.
    vits8 = [r for r in reported_for_backbone("imagenet-dino-vits8") if r.strategy == "map"]
    assert len(vits8) == 2 and all("does not say which map" in r.note for r in vits8)
    # Where the paper prints the map (appendix D, HPA natural maps), there is nothing to add.
    assert all(not r.note for r in reported_for_backbone("hpa-fov-vitb8"))
    assert all(not r.note for r in reported_for_backbone("imagenet-dino-vitb8") if r.task == "fov-mlp")


def test_reported_for_backbone_and_headline():
    assert len(reported_for_backbone("hpa-fov-vitb8")) == 16
    assert reported_for_backbone("classical-stats") == [] and headline("classical-stats") is None
    assert headline("tiny-vit-random") is None
    expected = {
        "hpa-fov-vitb8": ("fov-mlp", 0.822, 0.007),
        "imagenet-dino-vitb8": ("fov-mlp", 0.818, 0.007),
        "imagenet-dino-vits8": ("fov-mlp", 0.761, 0.010),
        "opencell-dino-vits8": ("fov-mlp", 0.810, 0.015),
        "opencell-dino-vitb8": ("fov-mlp", 0.792, 0.010),
    }
    for name, (task, mean, std) in expected.items():
        h = headline(name)
        assert (h.task, h.mean, h.std, h.strategy) == (task, mean, std, "map"), name
    for name, first_k in (("hpa-sc-vitb16", 0.852), ("imagenet-dino-vitb16", 0.646)):
        h = headline(name)
        assert h.task == "sc-knn" and h.per_k[0] == first_k and h.setting == "zero-shot"


def test_module_is_dependency_free():
    code = (
        "import sys\n"
        "import ocbench.reported\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('ocbench'))\n"
        "assert loaded == ['ocbench', 'ocbench.reported'], loaded\n"
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
