"""The backbone, embedding, sweep and leaderboard commands through the real CLI."""

import importlib.util
import json

import pytest
from click.testing import CliRunner

from ocbench.cli import cli

from cli_assertions import one_line_error


@pytest.fixture()
def cache(module_cache):
    return module_cache


def invoke(*args):
    return CliRunner().invoke(cli, list(args))




def test_backbones_list_and_show(cache):
    listing = invoke("backbones", "list")
    assert listing.exit_code == 0
    for name in ("hpa-fov-vitb8", "imagenet-dino-vits8", "classical-stats", "tiny-vit-random"):
        assert name in listing.output
    assert "0.822" in listing.output  # the paper's number for hpa-fov-vitb8, natural map
    shown = invoke("backbones", "show", "hpa-fov-vitb8")
    assert shown.exit_code == 0 and "microtubules" in shown.output and "z-score" in shown.output


def test_unknown_backbone_suggests_names(cache):
    one_line_error(invoke("backbones", "show", "hpa-fov-vit8"), "did you mean", "hpa-fov-vitb8")


_NO_CP_MEASURE = importlib.util.find_spec("cp_measure") is None


@pytest.mark.parametrize("name", [
    "classical-stats", "tiny-vit-random",
    pytest.param("cellprofiler", marks=pytest.mark.skipif(_NO_CP_MEASURE, reason="needs cp-measure (pip install 'ocbench[cellprofiler]')")),
])
def test_backbones_check_passes_for_offline_cards(cache, name):
    result = invoke("backbones", "check", name)
    assert result.exit_code == 0, result.output
    assert "FAIL" not in result.output


@pytest.mark.slow
def test_embed_then_cache_hit(cache):
    first = invoke("embed", "--backbone", "tiny-vit-random", "--dataset", "demo")
    assert first.exit_code == 0, first.output
    assert "extracted" in first.output and "x 64 embeddings" in first.output
    second = invoke("embed", "--backbone", "tiny-vit-random", "--dataset", "demo")
    assert second.exit_code == 0 and "cache hit" in second.output


def test_embed_bad_channel_spec_is_one_line(cache):
    one_line_error(invoke("embed", "--backbone", "tiny-vit-random", "--dataset", "demo", "--channels", "dna=G"), "dna")


@pytest.mark.slow
def test_sweep_channels_covers_every_injective_map(cache, tmp_path):
    result = invoke(
        "sweep-channels", "--backbone", "tiny-vit-random", "--dataset", "demo", "--output", str(tmp_path),
        "--set", "epochs=5", "--set", "hidden_dims=16",
    )
    assert result.exit_code == 0, result.output
    entries = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    assert len(entries) == 6  # 3 RGB inputs: 3 x 2 injective maps of (protein, nucleus)
    assert len({e["channels"]["key"] for e in entries}) == 6
    means = [e["scores"]["val"]["macro_f1"]["mean"] for e in entries]
    lines = [line for line in result.output.splitlines() if line.startswith("tiny-vit-random")]
    shown = [float(line.split("±")[0].split()[-1]) for line in lines]
    assert shown == sorted(shown, reverse=True) and len(shown) == 6
    assert sorted(round(m, 3) for m in means) == sorted(shown)


def test_leaderboard_build_validate_publish(cache, tmp_path):
    entries = tmp_path / "entries"
    ran = invoke(
        "run", "--backbone", "classical-stats", "--dataset", "demo", "--task", "fov-linear",
        "--split", "paper,protein", "--set", "epochs=5", "--output", str(entries),
    )
    assert ran.exit_code == 0, ran.output
    (entries / "broken.json").write_text("{not json")
    validated = invoke("leaderboard", "validate", str(entries))
    assert validated.exit_code == 1 and "broken.json" in validated.stderr
    built = invoke("leaderboard", "build", str(entries), "--out", str(tmp_path / "board"))
    assert built.exit_code == 0, built.output
    for name in ("LEADERBOARD.md", "leaderboard.csv", "index.html"):
        assert (tmp_path / "board" / name).is_file()
    assert "classical-stats" in (tmp_path / "board" / "LEADERBOARD.md").read_text()
    (entries / "broken.json").unlink()
    built = invoke("leaderboard", "build", str(entries), "--out", str(tmp_path / "board"))
    refused = invoke("leaderboard", "publish", str(tmp_path / "board"), "--repo-id", "org/board", "--dry-run")
    assert refused.exit_code == 2 and "--allow-synthetic" in refused.output  # demo rows are not published by accident
    published = invoke("leaderboard", "publish", str(tmp_path / "board"), "--repo-id", "org/board", "--dry-run",
                       "--allow-synthetic", "--allow-off-protocol")
    assert published.exit_code == 0, published.output
    assert "LEADERBOARD.md" in published.output
