"""``ocbench backbones check NAME``: does a backbone behave the way the benchmark relies on?

Named checks, run in order on a small synthetic OpenCell-like batch (uint16, made in memory):

- ``loads``: the card resolves and the model builds with its weights;
- ``embeds``: ``embed_raw`` runs with the card's default channels;
- ``shape``: output is (N, feature_dim x views);
- ``finite``: no NaN/inf;
- ``varies``: different images give different features (a constant output is broken);
- ``deterministic``: two calls give the same features;
- ``batch-invariant``: embedding images one at a time equals embedding the batch (within tolerance);
- ``protein-sensitive``: changing one image's protein channel changes that image's features and
  no other's (the adapter really feeds the protein channel; images do not leak into each other);
- ``adapters``: replicate and every preset work; for small models also every injective map.

A failed check never stops the report (except ``loads``: nothing else can run without a model).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from ocbench.backbones.card import BackboneCard
from ocbench.errors import OcbenchError

if TYPE_CHECKING:  # pragma: no cover - torch and the loader are imported when a check runs
    import torch

    from ocbench.backbones.adapters import ChannelAdapter
    from ocbench.backbones.loader import Backbone

#: Models with fewer parameters than this get the full sweep of channel maps in ``adapters``.
SMALL_MODEL_PARAMETERS = 5_000_000


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool | None  # None: not run
    detail: str
    seconds: float = 0.0

    @property
    def status(self) -> str:
        return {True: "PASS", False: "FAIL", None: "SKIP"}[self.passed]


@dataclass(frozen=True)
class CheckReport:
    backbone: str
    device: str
    results: tuple[CheckResult, ...]

    @property
    def ok(self) -> bool:
        """True when every check ran and passed."""
        return all(result.passed is True for result in self.results)

    @property
    def failed(self) -> list[CheckResult]:
        return [result for result in self.results if result.passed is False]

    def __getitem__(self, name: str) -> CheckResult:
        for result in self.results:
            if result.name == name:
                return result
        raise KeyError(name)


def synthetic_batch(n: int = 4, size: int = 64, seed: int = 0) -> np.ndarray:
    """(n, 2, size, size) uint16 in CHANNELS order (protein, nucleus): nuclei as bright blobs, the
    protein nuclear, cytoplasmic or punctate depending on the image, camera-like background noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    batch = np.zeros((n, 2, size, size), dtype=np.float64)
    for i in range(n):
        nuclei = np.zeros((size, size))
        cells = np.zeros((size, size))
        for _ in range(rng.integers(2, 5)):
            cy, cx = rng.uniform(0.15, 0.85, size=2) * size
            radius = rng.uniform(0.06, 0.12) * size
            distance2 = (yy - cy) ** 2 + (xx - cx) ** 2
            nuclei += np.exp(-distance2 / (2 * radius**2))
            cells += np.exp(-distance2 / (2 * (2.2 * radius) ** 2))
        pattern = i % 3
        if pattern == 0:  # nuclear
            protein = nuclei
        elif pattern == 1:  # cytoplasmic: cell body minus nucleus
            protein = np.clip(cells - nuclei, 0, None)
        else:  # punctate
            protein = cells * (rng.random((size, size)) > 0.97) * 3
        batch[i, 0] = 200 + 6000 * protein + rng.normal(0, 40, (size, size))
        batch[i, 1] = 300 + 12000 * nuclei + rng.normal(0, 60, (size, size))
    return np.clip(batch, 0, 65535).astype(np.uint16)


def _relative_difference(a, b) -> float:
    scale = float(max(a.abs().max().item(), b.abs().max().item(), 1e-12))
    return float((a - b).abs().max().item()) / scale


class _Recorder:
    """Runs named checks in order, timing each; a check that raises is a FAIL with the error's
    first line, never a crash (a contributor's model may raise anything)."""

    def __init__(self) -> None:
        self.results: list[CheckResult] = []

    def run(self, check_name: str, body: Callable[[], tuple[bool, str]]) -> bool:
        started = time.perf_counter()
        try:
            passed, detail = body()
        except OcbenchError as exc:
            passed, detail = False, str(exc)
        except Exception as exc:  # a contributor's model may raise anything: report it, do not crash
            passed, detail = False, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        self.results.append(CheckResult(check_name, passed, detail, time.perf_counter() - started))
        return passed

    def skip(self, check_names: tuple[str, ...], detail: str) -> None:
        self.results.extend(CheckResult(check_name, None, detail) for check_name in check_names)


#: The checks that look at the features of the default adapter, in the order they run.
_FEATURE_CHECKS = ("shape", "finite", "varies", "deterministic", "batch-invariant", "protein-sensitive")


@dataclass(frozen=True)
class _FeatureChecks:
    """The checks on the features ``embed_raw`` gave for the synthetic batch ``raw``."""

    backbone: Backbone
    card: BackboneCard
    adapter: ChannelAdapter
    raw: np.ndarray  # (N, 2, size, size) uint16
    batch: torch.Tensor  # the same images as a tensor
    features: torch.Tensor  # (N, feature_dim x views)
    tolerance: float

    def checks(self) -> tuple[tuple[str, Callable[[], tuple[bool, str]]], ...]:
        bodies = (self.shape, self.finite, self.varies, self.deterministic, self.batch_invariant, self.protein_sensitive)
        return tuple(zip(_FEATURE_CHECKS, bodies))

    @property
    def batch_size(self) -> int:
        return len(self.raw)

    def shape(self) -> tuple[bool, str]:
        import torch

        features, adapter = self.features, self.adapter
        got = tuple(features.shape)
        want = (self.batch_size, self.card.feature_dim * adapter.n_views)
        ok = got == want and features.dtype == torch.float32
        return ok, f"{got} {str(features.dtype).replace('torch.', '')}, expected {want} float32 " \
                   f"(dim {self.card.feature_dim} x {adapter.n_views} view{'s' if adapter.n_views > 1 else ''})"

    def finite(self) -> tuple[bool, str]:
        import torch

        bad = int((~torch.isfinite(self.features)).sum().item())
        return bad == 0, "all values finite" if bad == 0 else f"{bad} NaN/inf values"

    def varies(self) -> tuple[bool, str]:
        spread = float((self.features - self.features[:1]).abs().max().item())
        return spread > 0, f"max difference between images {spread:.3g}"

    def deterministic(self) -> tuple[bool, str]:
        import torch

        again = self.backbone.embed_raw(self.batch, self.adapter)
        diff = _relative_difference(self.features, again)
        exact = self.backbone.device.type == "cpu"
        ok = bool(torch.equal(self.features, again)) if exact else diff <= 1e-3
        return ok, f"second call: max relative difference {diff:.2e}" + (" (bit-identical required on CPU)" if exact else "")

    def batch_invariant(self) -> tuple[bool, str]:
        import torch

        n, tolerance = self.batch_size, self.tolerance
        singles = torch.cat([self.backbone.embed_raw(self.batch[i : i + 1], self.adapter) for i in range(n)])
        diff = _relative_difference(self.features, singles)
        return diff <= tolerance, f"batch of 1 vs {n}: max relative difference {diff:.2e} (tolerance {tolerance:g})"

    def protein_sensitive(self) -> tuple[bool, str]:
        import torch

        raw, n, tolerance = self.raw, self.batch_size, self.tolerance
        changed = raw.copy()
        changed[0, 0] = raw[1 % n, 0] if n > 1 else raw[0, 0][::-1] // 2 + 500
        other = self.backbone.embed_raw(torch.from_numpy(changed), self.adapter)
        moved = _relative_difference(self.features[:1], other[:1])
        leaked = _relative_difference(self.features[1:], other[1:]) if n > 1 else 0.0
        ok = moved > tolerance and leaked <= tolerance
        return ok, f"image 0 features moved {moved:.2e} (must exceed {tolerance:g}); other images moved {leaked:.2e}"


def _check_adapters(backbone: Backbone, card: BackboneCard, batch: torch.Tensor, full_sweep: bool | None) -> tuple[bool, str]:
    """``adapters``: replicate and every preset (and, for small models, every injective map) give
    finite features of the right shape on two images."""
    import torch

    from ocbench.backbones.adapters import available_presets, parse_channels, sweep_adapters

    parameters = sum(p.numel() for p in backbone.model.parameters())
    sweep = full_sweep if full_sweep is not None else parameters < SMALL_MODEL_PARAMETERS
    candidates = {parse_channels("replicate", card).key: parse_channels("replicate", card)}
    for preset in available_presets(card):
        candidate = parse_channels(preset, card)
        candidates[candidate.key] = candidate
    if sweep:
        candidates.update((candidate.key, candidate) for candidate in sweep_adapters(card))
    small = batch[:2]
    problems = []
    for key, candidate in candidates.items():
        out = backbone.embed_raw(small, candidate)
        want = (small.shape[0], card.feature_dim * candidate.n_views)
        if tuple(out.shape) != want or not bool(torch.isfinite(out).all()):
            problems.append(f"{key} gave {tuple(out.shape)}")
    what = f"{len(candidates)} adapters ({', '.join(candidates)})" + ("" if sweep else "; sweep skipped for a large model")
    return not problems, what if not problems else f"{'; '.join(problems)} of {what}"


def _resolve_card(name: str | BackboneCard, cache_dir) -> BackboneCard:
    if isinstance(name, BackboneCard):
        return name
    from ocbench.backbones.derive import resolve_backbone

    return resolve_backbone(name, cache_dir=cache_dir)


def check_backbone(
    name: str | BackboneCard,
    *,
    device: str = "cpu",
    cache_dir=None,
    image_size: int = 64,
    batch_size: int = 4,
    full_sweep: bool | None = None,
    precision: str = "fp32",
) -> CheckReport:
    """Run the named checks; never raises for a misbehaving backbone (it shows up as FAIL).

    The command line's entry point: a name is resolved here, once (an unknown name raises
    ConfigError with the closest names, like every command). ``precision``: see ``load_backbone``.
    """
    import torch

    from ocbench.backbones.adapters import parse_channels
    from ocbench.backbones.loader import effective_precision, load_backbone, resolve_device

    card = _resolve_card(name, cache_dir)
    target = resolve_device(device)
    effective_precision(card, target, precision)  # a bad precision is a usage error, not a FAIL
    recorder = _Recorder()
    state: dict = {}

    def loads():
        state["backbone"] = backbone = load_backbone(card, device=target, cache_dir=cache_dir, precision=precision)
        sha = (backbone.weights_sha256 or "-")[:12]
        return True, f"weights sha256 {sha}, revision {backbone.revision or '-'}"

    if not recorder.run("loads", loads):
        recorder.skip(("embeds", *_FEATURE_CHECKS, "adapters"), "not run: the backbone did not load")
        return CheckReport(card.name, str(target), tuple(recorder.results))

    backbone = state["backbone"]
    adapter = parse_channels(None, card)
    raw = synthetic_batch(batch_size, image_size)
    batch = torch.from_numpy(raw)
    # bf16 autocast on GPU changes the last digits with the batch layout; CPU float32 is near exact.
    tolerance = 5e-2 if backbone.autocast_bf16 else 1e-4

    def embeds():
        started = time.perf_counter()
        state["features"] = backbone.embed_raw(batch, adapter)
        elapsed = time.perf_counter() - started
        return True, f"{batch_size} images of {image_size} px, channels {adapter.key}: {batch_size / max(elapsed, 1e-9):.1f} images/s"

    if not recorder.run("embeds", embeds):
        recorder.skip(_FEATURE_CHECKS, "not run: embedding failed")
    else:
        feature_checks = _FeatureChecks(backbone, card, adapter, raw, batch, state["features"], tolerance)
        for check_name, body in feature_checks.checks():
            recorder.run(check_name, body)

    recorder.run("adapters", lambda: _check_adapters(backbone, card, batch, full_sweep))
    return CheckReport(card.name, str(target), tuple(recorder.results))


def format_check(report: CheckReport) -> str:
    """Text for ``ocbench backbones check``: one line per check and a summary line."""
    width = max(len(result.name) for result in report.results)
    lines = [f"backbone {report.backbone} on {report.device}"]
    for result in report.results:
        lines.append(f"  {result.status}  {result.name:<{width}}  {result.seconds:6.2f}s  {result.detail}")
    counts = {status: sum(1 for r in report.results if r.status == status) for status in ("PASS", "FAIL", "SKIP")}
    verdict = "ok" if report.ok else "FAILED"
    lines.append(f"{verdict}: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} not run")
    return "\n".join(lines)
