"""Weight sources, for real but offline: a pre-filled Hub cache, a local HTTP server, local folders."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import threading
from collections import OrderedDict
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from ocbench._io import sha256_file
from ocbench.backbones.cards import BackboneCard
from ocbench.backbones.sources import UNVERIFIED_NOTE, ResolvedWeights, resolve_weights
from ocbench.backbones.vit import build_vit
from ocbench.errors import ConfigError, DataError

from bb_hub import offline_hub  # noqa: F401  (fixture: an empty offline Hub cache)

TINY_KWARGS = dict(patch_size=8, embed_dim=32, depth=2, num_heads=2, img_size=32)
COMMIT = "a" * 40
OTHER_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def tiny_card(source: str, **changes) -> BackboneCard:
    fields = dict(
        name="tiny-source-test",
        source=source,
        arch="vit_tiny_patch16_224",
        arch_kwargs=dict(TINY_KWARGS),
        feature_dim=32,
        in_chans=4,
        patch_size=8,
        input_channels=("microtubules", "protein", "nucleus", "er"),
        default_channels="natural",
        normalization="self",
    )
    fields.update(changes)
    return BackboneCard(**fields)


def tiny_vit(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_vit("vit_tiny_patch16_224", TINY_KWARGS, 4)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model.eval()


def safetensors_bytes(model: torch.nn.Module, tmp_path: Path) -> bytes:
    path = tmp_path / f"weights-{id(model)}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path.read_bytes()


def outputs_with(path: Path, x: torch.Tensor) -> torch.Tensor:
    model = build_vit("vit_tiny_patch16_224", TINY_KWARGS, 4)
    model.load_state_dict(load_file(path), strict=True)
    with torch.inference_mode():
        return model.eval()(x)


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------------ hf-hub


def add_to_hub_cache(cache: Path, repo_id: str, commit: str, data: bytes, refs: tuple[str, ...] = ("main",)) -> None:
    """The layout huggingface_hub writes: blobs by content hash, snapshots/<commit> symlinks, refs."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (snapshot / "model.safetensors").symlink_to(Path("..") / ".." / "blobs" / blob.name)
    (repo / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(commit)


def test_hf_hub_from_prefilled_offline_cache(tmp_path, offline_hub):
    main, pinned = tiny_vit(1), tiny_vit(2)
    main_bytes, pinned_bytes = safetensors_bytes(main, tmp_path), safetensors_bytes(pinned, tmp_path)
    add_to_hub_cache(offline_hub, "ocbench-test/tiny-vit", COMMIT, main_bytes)
    add_to_hub_cache(offline_hub, "ocbench-test/tiny-vit", OTHER_COMMIT, pinned_bytes, refs=("v1",))
    x = torch.randn(2, 4, 32, 32)

    resolved = resolve_weights(tiny_card("hf-hub:ocbench-test/tiny-vit"))
    assert resolved.revision == COMMIT
    # the cache keeps the file under the sha256 the Hub publishes for it: these are the published bytes
    assert (resolved.verified, resolved.note) == (True, None)
    assert resolved.path.parent == offline_hub / "models--ocbench-test--tiny-vit" / "snapshots" / COMMIT
    assert resolved.sha256 == hashlib.sha256(main_bytes).hexdigest()
    assert torch.equal(outputs_with(resolved.path, x), main(x))

    for revision in (OTHER_COMMIT, "v1"):
        pinned_resolved = resolve_weights(tiny_card(f"hf-hub:ocbench-test/tiny-vit@{revision}"))
        assert pinned_resolved.revision == OTHER_COMMIT
        assert pinned_resolved.sha256 == hashlib.sha256(pinned_bytes).hexdigest()
        assert torch.equal(outputs_with(pinned_resolved.path, x), pinned(x))


def test_hf_hub_missing_offline_says_what_to_do(offline_hub):
    with pytest.raises(ConfigError) as excinfo:
        resolve_weights(tiny_card("hf-hub:ocbench-test/not-cached"))
    message = one_line(excinfo)
    assert "HF_HUB_OFFLINE" in message and "pre-fill the cache" in message and "ocbench-test/not-cached" in message
    assert "`hf download ocbench-test/not-cached model.safetensors`" in message
    # A pinned revision is part of the command to copy (inside the backticks).
    with pytest.raises(ConfigError) as excinfo:
        resolve_weights(tiny_card("hf-hub:ocbench-test/not-cached@v1"))
    assert "`hf download ocbench-test/not-cached model.safetensors --revision v1`" in one_line(excinfo)


def closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens there once closed


@pytest.fixture()
def unreachable_hub(tmp_path, monkeypatch):
    """Online mode, but the Hub endpoint refuses connections (huggingface_hub alone retries ~25 s)."""
    from huggingface_hub import constants

    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "HF_HUB_VERBOSITY"):
        monkeypatch.delenv(var, raising=False)
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path / "ocbench-cache"))
    return cache


def test_hf_hub_unreachable_fails_fast_and_quietly(unreachable_hub, capfd, caplog):
    import time

    started = time.monotonic()
    with pytest.raises(ConfigError) as excinfo:
        resolve_weights(tiny_card("hf-hub:ocbench-test/not-cached@v1"))
    elapsed = time.monotonic() - started
    message = one_line(excinfo)
    assert "could not be reached" in message and "`hf download ocbench-test/not-cached model.safetensors --revision v1`" in message
    assert elapsed < 5, f"took {elapsed:.1f} s (huggingface_hub's retry loop?)"
    out, err = capfd.readouterr()
    assert "Retrying" not in out + err and "thrown while requesting" not in out + err
    assert not [r for r in caplog.records if r.name.startswith("huggingface_hub")]


def test_hf_hub_unreachable_uses_the_cache(tmp_path, unreachable_hub):
    data = safetensors_bytes(tiny_vit(11), tmp_path)
    add_to_hub_cache(unreachable_hub, "ocbench-test/tiny-vit", COMMIT, data)
    for source in ("hf-hub:ocbench-test/tiny-vit", f"hf-hub:ocbench-test/tiny-vit@{COMMIT}"):
        resolved = resolve_weights(tiny_card(source))
        assert resolved.revision == COMMIT and resolved.sha256 == hashlib.sha256(data).hexdigest()


def test_timm_source_goes_through_the_hub_repo_timm_names(tmp_path, offline_hub):
    data = safetensors_bytes(tiny_vit(3), tmp_path)
    add_to_hub_cache(offline_hub, "timm/vit_small_patch8_224.dino", COMMIT, data)
    resolved = resolve_weights(tiny_card("timm:vit_small_patch8_224.dino"))
    assert resolved.revision == COMMIT and resolved.sha256 == hashlib.sha256(data).hexdigest()
    with pytest.raises(ConfigError) as excinfo:
        resolve_weights(tiny_card("timm:vit_small_patch8_224.no_such_tag"))
    assert "vit_small_patch8_224.no_such_tag" in one_line(excinfo)


# --------------------------------------------------------------------------------------- url


@pytest.fixture()
def http_server(tmp_path, monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path / "ocbench-cache"))
    root = tmp_path / "served"
    root.mkdir()
    requests: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield SimpleNamespace(root=root, url=f"http://127.0.0.1:{server.server_port}", requests=requests)
    server.shutdown()
    server.server_close()


def dino_pth(model: torch.nn.Module, path: Path) -> str:
    teacher = OrderedDict(("backbone." + k, v.clone()) for k, v in model.state_dict().items())
    teacher["head.last_layer.weight_g"] = torch.ones(10, 1)
    torch.save(
        {"student": teacher, "teacher": teacher, "optimizer": {}, "epoch": 1,
         "args": argparse.Namespace(arch="vit_tiny", patch_size=8), "dino_loss": {"center": torch.zeros(1, 10)}},
        path,
    )
    return sha256_file(path)


def flip_last_byte(path: Path) -> None:
    """Damage a file in its tensor data (the header stays valid); bump the mtime so no checksum memo hides it."""
    import os

    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    stat = path.stat()
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def cache_files(tmp_path: Path) -> list[str]:
    cache = tmp_path / "ocbench-cache"
    return sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*")) if cache.exists() else []


def test_url_checkpoint_downloaded_verified_converted_once(tmp_path, http_server):
    source = tiny_vit(4)
    pth_sha = dino_pth(source, http_server.root / "DINO_FOV_checkpoint.pth")
    card = tiny_card(f"url:{http_server.url}/DINO_FOV_checkpoint.pth", sha256=pth_sha)

    resolved = resolve_weights(card, progress=False)
    weights = tmp_path / "ocbench-cache" / "weights" / card.name / "model.safetensors"
    assert resolved == ResolvedWeights(
        path=weights, sha256=sha256_file(weights), revision=pth_sha,
        verified=True, note=None, source_sha256=pth_sha, source_filename="DINO_FOV_checkpoint.pth",
    )
    (download,) = (tmp_path / "ocbench-cache" / "downloads").glob("*/DINO_FOV_checkpoint.pth")
    assert sha256_file(download) == pth_sha
    x = torch.randn(2, 4, 40, 32)
    from ocbench.backbones.vit import vit_cls_features

    model = build_vit(card)
    model.load_state_dict(load_file(resolved.path))
    with torch.inference_mode():
        assert torch.equal(vit_cls_features(model.eval(), x, 8), vit_cls_features(source, x, 8))
    assert http_server.requests == ["/DINO_FOV_checkpoint.pth"]

    # Second resolve: no download, no conversion (same bytes, same folder).
    assert resolve_weights(card, progress=False) == resolved
    assert http_server.requests == ["/DINO_FOV_checkpoint.pth"]

    # Converted weights damaged since: converted again from the verified download (no network).
    flip_last_byte(weights)
    assert resolve_weights(card, progress=False) == resolved
    assert http_server.requests == ["/DINO_FOV_checkpoint.pth"]


def test_url_wrong_sha_caches_nothing(tmp_path, http_server):
    dino_pth(tiny_vit(5), http_server.root / "ckpt.pth")
    card = tiny_card(f"url:{http_server.url}/ckpt.pth", sha256="0" * 64)
    with pytest.raises(DataError) as excinfo:
        resolve_weights(card, progress=False)
    message = one_line(excinfo)
    assert "sha256" in message and "0" * 64 in message and "nothing was cached" in message
    assert [name for name in cache_files(tmp_path) if not (tmp_path / "ocbench-cache" / name).is_dir()] == []


def test_url_without_published_sha_is_recorded_then_reused(tmp_path, http_server):
    pth_sha = dino_pth(tiny_vit(6), http_server.root / "ckpt.pth")
    card = tiny_card(f"url:{http_server.url}/ckpt.pth")
    first = resolve_weights(card, progress=False)
    assert first.revision == pth_sha
    # no published checksum: recorded and enforced, but said to be unverified
    assert (first.verified, first.note, first.source_sha256, first.source_filename) == (False, UNVERIFIED_NOTE, pth_sha, "ckpt.pth")
    second = resolve_weights(card, progress=False)
    assert second == first and len(http_server.requests) == 1


def test_url_safetensors_file_and_http_errors(tmp_path, http_server):
    data = safetensors_bytes(tiny_vit(7), tmp_path)
    (http_server.root / "tiny.safetensors").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    resolved = resolve_weights(tiny_card(f"url:{http_server.url}/tiny.safetensors", sha256=digest), progress=False)
    assert resolved.path.parent.parent == tmp_path / "ocbench-cache" / "downloads"
    assert resolved.path.name == "tiny.safetensors"
    assert resolved.sha256 == resolved.revision == digest
    assert resolved.path.stat().st_mode & 0o777 == 0o666 & ~current_umask()  # not mkstemp's 0600

    assert resolved.verified is True

    with pytest.raises(ConfigError) as excinfo:
        resolve_weights(tiny_card(f"url:{http_server.url}/missing.pth"), progress=False)
    message = one_line(excinfo)
    assert "404" in message and "ocbench backbones import tiny-source-test --checkpoint PATH" in message
    assert not any(name.endswith(".part") for name in cache_files(tmp_path))
    # the failed download leaves no empty folder behind (the successful one's folder stays)
    downloads = tmp_path / "ocbench-cache" / "downloads"
    assert [p.parent for p in downloads.glob("*/*")] == [resolved.path.parent]
    assert sorted(p.name for p in downloads.iterdir()) == [resolved.path.parent.name]


def test_failed_first_download_removes_the_folders_it_made(tmp_path, http_server):
    with pytest.raises(ConfigError):
        resolve_weights(tiny_card(f"url:{http_server.url}/missing.safetensors"), progress=False)
    assert not (tmp_path / "ocbench-cache" / "downloads").exists()


def test_url_offline_mode_refuses_to_download(tmp_path, http_server, monkeypatch):
    dino_pth(tiny_vit(8), http_server.root / "ckpt.pth")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as excinfo:
        resolve_weights(tiny_card(f"url:{http_server.url}/ckpt.pth"), progress=False)
    assert "HF_HUB_OFFLINE" in one_line(excinfo)
    assert http_server.requests == []


def current_umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


# ------------------------------------------------------------------------------ local, builtin


def test_local_folder_and_corrupt_file(tmp_path):
    folder = tmp_path / "my-weights"
    folder.mkdir()
    data = safetensors_bytes(tiny_vit(9), tmp_path)
    (folder / "model.safetensors").write_bytes(data)
    (folder / "config.json").write_text(json.dumps({"architecture": "vit_tiny_patch16_224"}))
    resolved = resolve_weights(tiny_card(f"local:{folder}"))
    assert resolved == ResolvedWeights(
        folder / "model.safetensors", hashlib.sha256(data).hexdigest(), None, verified=False, note=UNVERIFIED_NOTE
    )

    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(DataError) as excinfo:
        resolve_weights(tiny_card(f"local:{folder}"))
    assert str(folder / "model.safetensors") in one_line(excinfo)

    with pytest.raises(ConfigError) as excinfo:
        resolve_weights(tiny_card(f"local:{tmp_path / 'absent'}"))
    assert "does not exist" in one_line(excinfo)


def test_local_imported_folder_is_verified_against_its_config(tmp_path):
    from ocbench.backbones.dino_import import import_dino_checkpoint

    pth = tmp_path / "ckpt.pth"
    dino_pth(tiny_vit(12), pth)
    folder = import_dino_checkpoint(pth, tiny_card("local:unused"), tmp_path / "imported")
    weights = folder / "model.safetensors"
    card = tiny_card(f"local:{folder}")
    assert resolve_weights(card).sha256 == sha256_file(weights)

    flip_last_byte(weights)
    with pytest.raises(DataError) as excinfo:
        resolve_weights(card)
    message = one_line(excinfo)
    assert str(weights) in message and "weights_sha256" in message and "ocbench backbones import tiny-source-test" in message

    # A config.json without a recorded checksum (not an ocbench import) is not checked.
    (folder / "config.json").write_text(json.dumps({"architecture": "vit_tiny_patch16_224", "ocbench": {}}))
    assert resolve_weights(card).sha256 == sha256_file(weights)


def test_local_bare_name_is_under_the_weights_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "cache" / "weights" / "tiny-source-test"
    folder.mkdir(parents=True)
    data = safetensors_bytes(tiny_vit(10), tmp_path)
    (folder / "model.safetensors").write_bytes(data)
    resolved = resolve_weights(tiny_card("local:tiny-source-test"))
    assert resolved.path == folder / "model.safetensors" and resolved.sha256 == hashlib.sha256(data).hexdigest()
    with pytest.raises(ConfigError) as excinfo:
        resolve_weights(tiny_card("local:not-trained-yet"))
    message = one_line(excinfo)
    assert str(tmp_path / "cache" / "weights" / "not-trained-yet") in message and "backbones import" in message


def test_builtin_and_unknown_sources():
    card = tiny_card("builtin:random-init", init_seed=0)
    assert resolve_weights(card) == ResolvedWeights(None, None, None)
    with pytest.raises(ConfigError) as excinfo:
        tiny_card("ftp:somewhere", name="odd")
    assert "odd" in one_line(excinfo) and "source" in str(excinfo.value)
    with pytest.raises(ConfigError) as excinfo:
        resolve_weights("tiny-vit-random")  # names are resolved at the edge
    assert "expects a BackboneCard" in one_line(excinfo)
    assert dataclasses.is_dataclass(ResolvedWeights)


@pytest.mark.parametrize(
    "header, why",
    [
        (b"[1, 2, 3]", "header is a JSON list, not an object"),
        (b'"text"', "header is a JSON str, not an object"),
        (b'{"w": [0, 4]}', "entry 'w' of the header is not an object"),
        (b'{"w": {"dtype": "F32"}}', "data_offsets"),
    ],
)
def test_foreign_safetensors_header_is_one_line(tmp_path, header, why):
    import struct

    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    with pytest.raises(DataError) as excinfo:
        resolve_weights(tiny_card(f"local:{folder}"))
    message = one_line(excinfo)
    assert str(folder / "model.safetensors") in message and "not a valid safetensors file" in message and why in message
