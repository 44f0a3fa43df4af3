"""DINO / Dino4Cells .pth import: safe unpickling, teacher weights, shape checks, identical outputs."""

from __future__ import annotations

import argparse
import json
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ocbench._io import sha256_file
from ocbench.backbones.cards import BackboneCard
from ocbench.backbones.dino_import import import_backbone, import_dino_checkpoint
from ocbench.backbones.vit import build_vit, vit_cls_features
from ocbench.errors import ConfigError, DataError

from cli_assertions import one_line_message

TINY_KWARGS = dict(patch_size=8, embed_dim=32, depth=2, num_heads=2, img_size=32)
HPA_CHANNELS = ("microtubules", "protein", "nucleus", "er")


class NotAllowedDict(OrderedDict):
    """A class the import must refuse to unpickle (module level so that torch.save can pickle it)."""


def tiny_card(name: str = "tiny-dino-test", **changes) -> BackboneCard:
    fields = dict(
        name=name,
        source="url:http://127.0.0.1:9/never-fetched.pth",
        arch="vit_tiny_patch16_224",
        arch_kwargs=dict(TINY_KWARGS),
        feature_dim=32,
        in_chans=4,
        patch_size=8,
        input_channels=HPA_CHANNELS,
        default_channels="natural",
        normalization="self",
        license="apache-2.0",
        citation="@article{tiny, title={Tiny}}",
    )
    fields.update(changes)
    return BackboneCard(**fields)


def tiny_vit(seed: int = 0, in_chans: int = 4, **changes) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_vit("vit_tiny_patch16_224", {**TINY_KWARGS, **changes}, in_chans)
    # timm initialises biases/LayerNorms to constants; randomise everything so a mix-up shows.
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model.eval()


def dino_checkpoint(backbone: torch.nn.Module, prefix: str = "backbone.") -> dict:
    """The dict Dino4Cells' main_dino.py saves: student, teacher, optimizer, epoch, args, dino_loss."""
    teacher = OrderedDict((prefix + key, value.clone()) for key, value in backbone.state_dict().items())
    head_prefix = prefix.replace("backbone.", "head.")
    teacher[head_prefix + "mlp.0.weight"] = torch.randn(64, 32)
    teacher[head_prefix + "last_layer.weight_g"] = torch.ones(100, 1)
    # The student differs from the teacher: importing it by mistake must show.
    student = OrderedDict((key, value + 1.0) for key, value in teacher.items())
    return {
        "student": student,
        "teacher": teacher,
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.0005, "params": [0, 1]}]},
        "epoch": 100,
        "args": argparse.Namespace(arch="vit_tiny", patch_size=8, out_dim=100, lr=0.0005, data_path="/data/hpa"),
        "dino_loss": {"center": torch.zeros(1, 100)},
    }


def card_model_features(card: BackboneCard, folder: Path, x: torch.Tensor) -> torch.Tensor:
    model = build_vit(card)
    model.load_state_dict(load_file(folder / "model.safetensors"), strict=True)
    with torch.inference_mode():
        return vit_cls_features(model.eval(), x, card.patch_size)


@pytest.mark.parametrize("prefix", ["backbone.", "module.backbone."])
def test_import_gives_identical_outputs(tmp_path, prefix):
    source = tiny_vit(seed=1)
    pth = tmp_path / "DINO_FOV_checkpoint.pth"
    torch.save(dino_checkpoint(source, prefix), pth)
    card = tiny_card()

    folder = import_dino_checkpoint(pth, card, tmp_path / "converted")

    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    tensors = load_file(folder / "model.safetensors")
    assert not any(key.startswith(("head.", "backbone.", "module.")) for key in tensors)
    assert tensors.keys() == source.state_dict().keys()
    x = torch.randn(3, 4, 32, 32)
    wide = torch.randn(2, 4, 40, 56)  # other grid: DINO position-embedding interpolation path
    with torch.inference_mode():
        assert torch.equal(card_model_features(card, folder, x), source(x))
        assert torch.equal(card_model_features(card, folder, wide), vit_cls_features(source, wide, 8))

    config = json.loads((folder / "config.json").read_text())
    meta = config["ocbench"]
    assert config["architecture"] == "vit_tiny_patch16_224"
    assert config["model_args"] == {**TINY_KWARGS, "in_chans": 4}
    assert (meta["patch_size"], meta["in_chans"], meta["feature_dim"]) == (8, 4, 32)
    assert meta["input_channels"] == list(HPA_CHANNELS)
    assert meta["checkpoint_key"] == "teacher"
    assert meta["source_sha256"] == sha256_file(pth)
    assert meta["weights_sha256"] == sha256_file(folder / "model.safetensors")
    readme = (folder / "README.md").read_text()
    assert readme.startswith("---\nlicense: apache-2.0\n")
    assert "| 2 | nucleus |" in readme and "@article{tiny" in readme


def test_converted_folder_loads_with_timm_alone(tmp_path):
    """config.json follows timm's Hub format, so the pushed repo also works without ocbench."""
    import timm

    source = tiny_vit(seed=2)
    pth = tmp_path / "ckpt.pth"
    torch.save(dino_checkpoint(source), pth)
    folder = import_dino_checkpoint(pth, tiny_card(), tmp_path / "out")
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    x = torch.randn(2, 4, 32, 32)
    with torch.inference_mode():
        assert torch.equal(model(x), source(x))


def test_conversion_is_deterministic(tmp_path):
    pth = tmp_path / "ckpt.pth"
    torch.save(dino_checkpoint(tiny_vit(seed=3)), pth)
    first = import_dino_checkpoint(pth, tiny_card(), tmp_path / "a")
    second = import_dino_checkpoint(pth, tiny_card(), tmp_path / "b")
    assert sha256_file(first / "model.safetensors") == sha256_file(second / "model.safetensors")


def test_bare_state_dict_fallback_and_student_key(tmp_path):
    source = tiny_vit(seed=4)
    bare = tmp_path / "dino_vittiny8_pretrain.pth"
    torch.save(source.state_dict(), bare)
    folder = import_dino_checkpoint(bare, tiny_card(), tmp_path / "bare")
    assert json.loads((folder / "config.json").read_text())["ocbench"]["checkpoint_key"] is None
    x = torch.randn(1, 4, 32, 32)
    assert torch.equal(card_model_features(tiny_card(), folder, x), source(x))

    pth = tmp_path / "ckpt.pth"
    torch.save(dino_checkpoint(source), pth)
    student = import_dino_checkpoint(pth, tiny_card(), tmp_path / "student", checkpoint_key="student")
    assert not torch.equal(card_model_features(tiny_card(), student, x), source(x))




def test_pickle_with_other_class_is_refused(tmp_path):
    checkpoint = dino_checkpoint(tiny_vit())
    checkpoint["teacher"] = NotAllowedDict(checkpoint["teacher"])
    pth = tmp_path / "evil.pth"
    torch.save(checkpoint, pth)
    out = tmp_path / "out"
    with pytest.raises(DataError) as excinfo:
        import_dino_checkpoint(pth, tiny_card(), out)
    message = one_line_message(excinfo)
    assert str(pth) in message and "NotAllowedDict" in message
    assert not out.exists()


@pytest.mark.parametrize(
    "changes, expected",
    [
        (dict(patch_size=16), "patch size 16 (card: 8)"),
        (dict(in_chans=3), "3 input channels (card: 4)"),
    ],
)
def test_wrong_shape_checkpoint_is_refused(tmp_path, changes, expected):
    in_chans = changes.pop("in_chans", 4)
    pth = tmp_path / "other.pth"
    torch.save(dino_checkpoint(tiny_vit(in_chans=in_chans, **changes)), pth)
    with pytest.raises(DataError) as excinfo:
        import_dino_checkpoint(pth, tiny_card(), tmp_path / "out")
    message = one_line_message(excinfo)
    assert expected in message and "patch_embed.proj.weight" in message and str(pth) in message
    assert not (tmp_path / "out").exists()


def test_other_architecture_is_refused(tmp_path):
    pth = tmp_path / "deeper.pth"
    torch.save(dino_checkpoint(tiny_vit(depth=3)), pth)
    with pytest.raises(DataError) as excinfo:
        import_dino_checkpoint(pth, tiny_card(), tmp_path / "out")
    assert "12 unexpected" in one_line_message(excinfo) and "blocks.2." in str(excinfo.value)


def test_unreadable_and_missing_files(tmp_path):
    junk = tmp_path / "junk.pth"
    for content in (b"not a torch file at all", b"junk", b""):
        junk.write_bytes(content)
        with pytest.raises(DataError) as excinfo:
            import_dino_checkpoint(junk, tiny_card(), tmp_path / "out")
        assert str(junk) in one_line_message(excinfo)
    truncated = tmp_path / "truncated.pth"
    torch.save(dino_checkpoint(tiny_vit()), truncated)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    with pytest.raises(DataError) as excinfo:
        import_dino_checkpoint(truncated, tiny_card(), tmp_path / "out")
    assert str(truncated) in one_line_message(excinfo)
    with pytest.raises(ConfigError):
        import_dino_checkpoint(tmp_path / "absent.pth", tiny_card(), tmp_path / "out")
    no_teacher = tmp_path / "no_teacher.pth"
    torch.save({"epoch": 3, "args": argparse.Namespace(a=1)}, no_teacher)
    with pytest.raises(DataError) as excinfo:
        import_dino_checkpoint(no_teacher, tiny_card(), tmp_path / "out")
    assert "'teacher'" in one_line_message(excinfo)


def test_import_backbone_checks_published_sha(tmp_path, monkeypatch):
    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path / "cache"))
    pth = tmp_path / "ckpt.pth"
    torch.save(dino_checkpoint(tiny_vit(seed=5)), pth)
    published = tiny_card(sha256=sha256_file(pth))
    folder = import_backbone(published, pth)
    assert folder == tmp_path / "cache" / "weights" / published.name
    assert json.loads((folder / "config.json").read_text())["ocbench"]["source_url"] == published.source_target

    other = tiny_card(name="tiny-other", sha256="0" * 64)
    with pytest.raises(DataError) as excinfo:
        import_backbone(other, pth)
    assert "differs from the published" in one_line_message(excinfo)
    # An explicit destination converts it anyway (for use through a local: card).
    assert (import_backbone(other, pth, out_dir=tmp_path / "mine") / "model.safetensors").is_file()


def test_push_backbone(tmp_path, monkeypatch):
    """Dry run checks locally; a real push asks huggingface_hub for exactly one folder upload."""
    import huggingface_hub
    from huggingface_hub import constants

    from ocbench.backbones.hub import push_backbone

    pth = tmp_path / "ckpt.pth"
    torch.save(dino_checkpoint(tiny_vit(seed=6)), pth)
    folder = import_dino_checkpoint(pth, tiny_card(), tmp_path / "converted")

    dry = push_backbone(folder, "ocbench-test/tiny-dino", dry_run=True)
    assert dry.dry_run and dry.files == ("README.md", "config.json", "model.safetensors")
    assert dry.total_bytes == sum(p.stat().st_size for p in folder.iterdir())
    with pytest.raises(ConfigError) as excinfo:
        push_backbone(folder, "no-org", dry_run=True)
    assert "ORG/NAME" in one_line_message(excinfo)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as excinfo:
        push_backbone(tmp_path / "empty", "ocbench-test/tiny-dino", dry_run=True)
    assert "model.safetensors" in one_line_message(excinfo)

    calls = []

    class RecordingApi:  # the Hub is unreachable here: record what would be sent
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs["private"]))

        def create_branch(self, repo_id, **kwargs):
            calls.append(("create_branch", repo_id, kwargs["branch"]))

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs["repo_id"], kwargs["folder_path"], kwargs["revision"], sorted(kwargs["allow_patterns"])))
            return type("Commit", (), {"commit_url": "https://huggingface.co/ocbench-test/tiny-dino/commit/abc", "oid": "abc"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    (folder / "README.md").unlink()  # rewritten from config.json before the upload
    result = push_backbone(folder, "ocbench-test/tiny-dino", revision="v1", private=True)
    assert (folder / "README.md").read_text().startswith("---\nlicense: apache-2.0")
    assert calls == [
        ("init", None),
        ("create_repo", "ocbench-test/tiny-dino", True),
        ("create_branch", "ocbench-test/tiny-dino", "v1"),
        ("upload_folder", "ocbench-test/tiny-dino", str(folder), "v1", ["README.md", "config.json", "model.safetensors"]),
    ]
    assert result.commit_sha == "abc" and not result.dry_run

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE"):
        push_backbone(folder, "ocbench-test/tiny-dino")
