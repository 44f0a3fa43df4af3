"""DINO / Dino4Cells .pth import: safe unpickling, teacher weights, shape checks, identical outputs."""

from __future__ import annotations

import argparse
import json
import os
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ocbench._io import sha256_file
from ocbench.backbones.card import BackboneCard
from ocbench.backbones.dino_import import import_backbone, import_dino_checkpoint, refused_global
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
    message = one_line_message(excinfo, str(pth), "refused to unpickle", "NotAllowedDict")
    assert "weights_only" not in message and "download it again" not in message
    assert not out.exists()


class _RunsCode:
    """A pickle payload: unpickling it would call os.system (module level so torch.save pickles it)."""

    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def test_code_payload_names_the_refused_global_not_a_download_error(tmp_path):
    checkpoint = dino_checkpoint(tiny_vit())
    checkpoint["args"] = _RunsCode()
    pth = tmp_path / "payload.pth"
    torch.save(checkpoint, pth)
    with pytest.raises(DataError) as excinfo:
        import_dino_checkpoint(pth, tiny_card(), tmp_path / "out")
    message = one_line_message(excinfo, str(pth), "refused to unpickle", "system")
    assert "download it again" not in message and "truncated" not in message and "weights_only" not in message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "message, expected",
    [
        ("WeightsUnpickler error: Unsupported global: GLOBAL __main__.Foo was not an allowed global by default.", "__main__.Foo"),
        ("Trying to load unsupported GLOBAL posix.system whose module posix is blocked.", "posix.system"),
        ("Trying to call reduce for unrecognized function <built-in function system>", "<built-in function system>"),
        ("Can only build Tensor, Parameter, OrderedDict or types allowlisted via add_safe_globals, but got <class 'mymod.Evil'>", "mymod.Evil"),
        ("WeightsUnpickler error: Unsupported operand 149", None),
    ],
)
def test_refused_global_is_read_from_each_torch_wording(message, expected):
    assert refused_global(message) == expected


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


GARBAGE = [
    b"\x00\x01\x02\x03",  # 4 bytes: torch reads a legacy pickle and suggests weights_only=False
    b"not a torch file at all",
    b"junk",
    b"",
]


def assert_unreadable(excinfo, path: Path) -> None:
    message = one_line_message(excinfo, str(path), "not a readable torch checkpoint (truncated or wrong file): ", "; download it again")
    # torch's advice (re-run with weights_only=False) would execute whatever the file carries.
    assert "weights_only" not in message and "Re-running" not in message and "will likely succeed" not in message


@pytest.mark.parametrize("content", GARBAGE, ids=["4-bytes", "text", "junk", "empty"])
def test_garbage_checkpoint_says_download_again(tmp_path, content):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(content)
    with pytest.raises(DataError) as excinfo:
        import_dino_checkpoint(junk, tiny_card(), tmp_path / "out")
    assert_unreadable(excinfo, junk)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("keep", [2000, 100, -50])
def test_truncated_checkpoint_says_download_again(tmp_path, keep):
    truncated = tmp_path / "truncated.pth"
    torch.save(dino_checkpoint(tiny_vit()), truncated)
    truncated.write_bytes(truncated.read_bytes()[:keep])
    with pytest.raises(DataError) as excinfo:
        import_dino_checkpoint(truncated, tiny_card(), tmp_path / "out")
    assert_unreadable(excinfo, truncated)


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(ConfigError):
        import_dino_checkpoint(tmp_path / "absent.pth", tiny_card(), tmp_path / "out")
    no_teacher = tmp_path / "no_teacher.pth"
    torch.save({"epoch": 3, "args": argparse.Namespace(a=1)}, no_teacher)
    with pytest.raises(DataError) as excinfo:
        import_dino_checkpoint(no_teacher, tiny_card(), tmp_path / "out")
    assert "'teacher'" in one_line_message(excinfo)


def imported_folder(tmp_path: Path, folder: Path, seed: int) -> Path:
    pth = tmp_path / f"seed{seed}.pth"
    torch.save(dino_checkpoint(tiny_vit(seed=seed)), pth)
    return import_backbone(tiny_card(), pth, out_dir=folder)


@pytest.mark.parametrize(
    "make, why",
    [
        (lambda d: (d / "notes.txt").write_text("my notes"), "it holds notes.txt"),
        (lambda d: [(d / n).write_text("x") for n in ("a.txt", "b.txt", "model.safetensors")], "it holds a.txt and 1 more"),
        (lambda d: (d / "config.json").write_text('{"ocbench": {}}'), "no model.safetensors"),
        (lambda d: [(d / "model.safetensors").write_bytes(b"x"), (d / "config.json").write_text('{"architecture": "vit"}')],
         "config.json has no ocbench section"),
        (lambda d: [(d / "model.safetensors").write_bytes(b"x"), (d / "config.json").write_text("{not json")], "no readable config.json"),
    ],
    ids=["other-file", "several-files", "no-weights", "foreign-config", "broken-config"],
)
def test_out_folder_that_is_not_an_import_is_left_alone(tmp_path, make, why):
    out = tmp_path / "results"
    out.mkdir()
    make(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    pth = tmp_path / "ckpt.pth"
    torch.save(dino_checkpoint(tiny_vit(seed=7)), pth)
    with pytest.raises(ConfigError) as excinfo:
        import_backbone(tiny_card(), pth, out_dir=out)
    one_line_message(excinfo, str(out), why, "not an earlier ocbench import", "nothing was written")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp folder left


def test_out_that_is_a_file_or_link_is_refused(tmp_path):
    pth = tmp_path / "ckpt.pth"
    torch.save(dino_checkpoint(tiny_vit(seed=7)), pth)
    a_file = tmp_path / "file"
    a_file.write_text("keep me")
    with pytest.raises(ConfigError) as excinfo:
        import_backbone(tiny_card(), pth, out_dir=a_file)
    one_line_message(excinfo, str(a_file), "not a folder")
    assert a_file.read_text() == "keep me"
    real = imported_folder(tmp_path, tmp_path / "real", seed=1)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(ConfigError) as excinfo:
        import_backbone(tiny_card(), pth, out_dir=link)
    one_line_message(excinfo, str(link), "symbolic link")
    assert link.is_symlink()


def test_earlier_import_or_empty_folder_may_be_replaced(tmp_path):
    out = tmp_path / "converted"
    out.mkdir()  # empty: fine
    first = imported_folder(tmp_path, out, seed=1)
    first_sha = sha256_file(first / "model.safetensors")
    (out / "README.md").unlink()  # an import without its model card is still an import
    second = imported_folder(tmp_path, out, seed=2)
    assert second == out and sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    meta = json.loads((out / "config.json").read_text())["ocbench"]
    assert meta["source_sha256"] == sha256_file(tmp_path / "seed2.pth") != first_sha
    assert meta["weights_sha256"] == sha256_file(out / "model.safetensors") != first_sha


def test_cli_import_refuses_to_wipe_a_folder(tmp_path, monkeypatch):
    """The reported case: `ocbench backbones import NAME --checkpoint X.pth --out DIR` with DIR holding results."""
    from click.testing import CliRunner

    from cli_assertions import one_line_error
    from ocbench.cli import cli

    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "my-results"
    out.mkdir()
    (out / "results.json").write_text("{}")
    pth = tmp_path / "ckpt.pth"
    torch.save(dino_checkpoint(tiny_vit()), pth)
    result = CliRunner().invoke(cli, ["backbones", "import", "hpa-fov-vitb8", "--checkpoint", str(pth), "--out", str(out)])
    one_line_error(result, str(out), "results.json")
    assert (out / "results.json").read_text() == "{}"


@pytest.mark.parametrize("name", ["classical-stats", "tiny-vit-random"])
def test_builtin_card_has_no_weights_to_import(tmp_path, name):
    pth = tmp_path / "ckpt.pth"
    torch.save(dino_checkpoint(tiny_vit()), pth)
    for checkpoint in (pth, None):
        with pytest.raises(ConfigError) as excinfo:
            import_backbone(name, checkpoint, out_dir=tmp_path / "out", cache_dir=tmp_path / "cache")
        one_line_message(excinfo, f"backbone '{name}' has no weights to import (source builtin:")
    assert not (tmp_path / "out").exists()


def test_imported_files_are_readable_by_others(tmp_path):
    """safetensors writes 0600 files; the converted folder gets a plain file's mode (0666 less the umask)."""
    old = os.umask(0o022)
    try:
        folder = imported_folder(tmp_path, tmp_path / "out", seed=1)
    finally:
        os.umask(old)
    assert {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()} == {
        "README.md": 0o644, "config.json": 0o644, "model.safetensors": 0o644,
    }


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

    # Weights damaged since the import are never published.
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    stat = weights.stat()
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # past the checksum memo
    with pytest.raises(DataError) as excinfo:
        push_backbone(folder, "ocbench-test/tiny-dino", dry_run=True)
    one_line_message(excinfo, str(weights), "weights_sha256")


def test_import_records_the_file_and_whether_a_published_checksum_matched(tmp_path, monkeypatch):
    """`backbones import CARD --checkpoint ANY.pth` for a card without a published sha256 installs
    the file, recorded by name and sha256, and entries say it is not matched to a published checksum."""
    from ocbench.backbones.loader import resolve_identity
    from ocbench.backbones.sources import UNVERIFIED_NOTE

    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path / "cache"))
    pth = tmp_path / "ANY.pth"
    torch.save(dino_checkpoint(tiny_vit(seed=8)), pth)
    have = sha256_file(pth)
    unpublished = tiny_card(name="tiny-unpublished")
    folder = import_backbone(unpublished, pth)
    meta = json.loads((folder / "config.json").read_text())["ocbench"]
    assert (meta["source_filename"], meta["source_sha256"], meta["source_verified"]) == ("ANY.pth", have, False)
    identity = resolve_identity(unpublished)
    assert identity.weights_verified is False and identity.weights_note == UNVERIFIED_NOTE
    assert (identity.source_filename, identity.source_sha256) == ("ANY.pth", have)
    assert "ANY.pth" in (folder / "README.md").read_text()

    published = tiny_card(name="tiny-published", sha256=have)
    folder = import_backbone(published, pth)
    assert json.loads((folder / "config.json").read_text())["ocbench"]["source_verified"] is True
    identity = resolve_identity(published)
    assert identity.weights_verified is True and identity.weights_note is None
    assert identity.provenance()["weights_source_file"] == "ANY.pth"
