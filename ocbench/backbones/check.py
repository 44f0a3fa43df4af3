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
from typing import Callable

import numpy as np

from ocbench.backbones.card import BackboneCard
from ocbench.errors import OcbenchError

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

    from ocbench.backbones.adapters import available_presets, parse_channels, sweep_adapters
    from ocbench.backbones.loader import effective_precision, load_backbone, resolve_device

    if isinstance(name, BackboneCard):
        card = name
    else:
        from ocbench.backbones.derive import resolve_backbone

        card = resolve_backbone(name, cache_dir=cache_dir)
    target = resolve_device(device)
    effective_precision(card, target, precision)  # a bad precision is a usage error, not a FAIL
    results: list[CheckResult] = []

    def run(check_name: str, body: Callable[[], tuple[bool, str]]) -> bool:
        started = time.perf_counter()
        try:
            passed, detail = body()
        except OcbenchError as exc:
            passed, detail = False, str(exc)
        except Exception as exc:  # a contributor's model may raise anything: report it, do not crash
            passed, detail = False, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        results.append(CheckResult(check_name, passed, detail, time.perf_counter() - started))
        return passed

    state: dict = {}

    def loads():
        state["backbone"] = backbone = load_backbone(card, device=target, cache_dir=cache_dir, precision=precision)
        sha = (backbone.weights_sha256 or "-")[:12]
        return True, f"weights sha256 {sha}, revision {backbone.revision or '-'}"

    if not run("loads", loads):
        for skipped in ("embeds", "shape", "finite", "varies", "deterministic", "batch-invariant", "protein-sensitive", "adapters"):
            results.append(CheckResult(skipped, None, "not run: the backbone did not load"))
        return CheckReport(card.name, str(target), tuple(results))

    backbone = state["backbone"]
    adapter = parse_channels(None, card)
    raw = synthetic_batch(batch_size, image_size)
    batch = torch.from_numpy(raw)
    expected_dim = card.feature_dim * adapter.n_views
    # bf16 autocast on GPU changes the last digits with the batch layout; CPU float32 is near exact.
    tolerance = 5e-2 if backbone.autocast_bf16 else 1e-4

    def embeds():
        started = time.perf_counter()
        state["features"] = backbone.embed_raw(batch, adapter)
        elapsed = time.perf_counter() - started
        return True, f"{batch_size} images of {image_size} px, channels {adapter.key}: {batch_size / max(elapsed, 1e-9):.1f} images/s"

    if not run("embeds", embeds):
        for skipped in ("shape", "finite", "varies", "deterministic", "batch-invariant", "protein-sensitive"):
            results.append(CheckResult(skipped, None, "not run: embedding failed"))
    else:
        features = state["features"]

        def shape():
            got = tuple(features.shape)
            want = (batch_size, expected_dim)
            ok = got == want and features.dtype == torch.float32
            return ok, f"{got} {str(features.dtype).replace('torch.', '')}, expected {want} float32 " \
                       f"(dim {card.feature_dim} x {adapter.n_views} view{'s' if adapter.n_views > 1 else ''})"

        def finite():
            bad = int((~torch.isfinite(features)).sum().item())
            return bad == 0, "all values finite" if bad == 0 else f"{bad} NaN/inf values"

        def varies():
            spread = float((features - features[:1]).abs().max().item())
            return spread > 0, f"max difference between images {spread:.3g}"

        def deterministic():
            again = backbone.embed_raw(batch, adapter)
            diff = _relative_difference(features, again)
            exact = backbone.device.type == "cpu"
            ok = bool(torch.equal(features, again)) if exact else diff <= 1e-3
            return ok, f"second call: max relative difference {diff:.2e}" + (" (bit-identical required on CPU)" if exact else "")

        def batch_invariant():
            singles = torch.cat([backbone.embed_raw(batch[i : i + 1], adapter) for i in range(batch_size)])
            diff = _relative_difference(features, singles)
            return diff <= tolerance, f"batch of 1 vs {batch_size}: max relative difference {diff:.2e} (tolerance {tolerance:g})"

        def protein_sensitive():
            changed = raw.copy()
            changed[0, 0] = raw[1 % batch_size, 0] if batch_size > 1 else raw[0, 0][::-1] // 2 + 500
            other = backbone.embed_raw(torch.from_numpy(changed), adapter)
            moved = _relative_difference(features[:1], other[:1])
            leaked = _relative_difference(features[1:], other[1:]) if batch_size > 1 else 0.0
            ok = moved > tolerance and leaked <= tolerance
            return ok, f"image 0 features moved {moved:.2e} (must exceed {tolerance:g}); other images moved {leaked:.2e}"

        for check_name, body in (
            ("shape", shape),
            ("finite", finite),
            ("varies", varies),
            ("deterministic", deterministic),
            ("batch-invariant", batch_invariant),
            ("protein-sensitive", protein_sensitive),
        ):
            run(check_name, body)

    def adapters():
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

    run("adapters", adapters)
    return CheckReport(card.name, str(target), tuple(results))


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
