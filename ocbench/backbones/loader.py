"""Turn a backbone card into a :class:`Backbone`: a model plus everything that identifies its numbers.

The card's architecture family builds the network (``archs``: timm ViTs through ``vit.build_vit``,
SubCell, a plugin's registered architectures); weights come only from safetensors files
(``sources.resolve_weights`` finds or fetches them), loaded strictly: a missing, unexpected or
wrongly shaped tensor is a one-line error naming the file, and so is a ``model.safetensors`` whose
sha256 differs from the ``weights_sha256`` its folder's ``config.json`` records (imported weights,
damaged since). ``builtin:`` cards need no file: the
classical and CellProfiler baselines have no weights, the random-init control is built under a fixed torch seed.

:func:`resolve_identity` gives the same weights sha256 / revision / preprocess key (and the
weights' provenance: matched to a published checksum or not) without building the model, so an
embedding cache hit never loads it.

Precision (``precision=``): ``"fp32"`` (the default everywhere, so numbers compare across
hardware) or ``"bf16"``: bf16 autocast around the ViT forward, on CUDA only. On CPU, bf16 is
refused in one line (CPU autocast is slow without bf16 hardware and would only change the
numbers); the classical baseline always computes in float32 (percentiles, histograms) and is
recorded as ``fp32`` whatever was asked.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ocbench.backbones.adapters import ChannelAdapter, DatasetChannels, parse_channels
from ocbench.backbones.archs import TIMM, arch_for, get_arch
from ocbench.backbones.card import BackboneCard
from ocbench.backbones.preprocess import model_inputs, preprocess_key
from ocbench.backbones.sources import UNVERIFIED_NOTE, resolve_weights
from ocbench.backbones.weights_folder import check_recorded_sha256, file_sha256, read_import_record
from ocbench.data.cards import OPENCELL
from ocbench.errors import ConfigError, DataError

#: ``precision=`` values: float32, or bf16 autocast (CUDA only).
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")


@dataclass(eq=False)
class Backbone:
    """A loaded backbone (it implements :class:`ocbench.backbones.protocol.Backbone`, what the
    embedding cache calls). ``embed`` takes what the network sees; ``embed_raw`` takes OpenCell FOVs."""

    card: BackboneCard
    model: torch.nn.Module  # model(x) -> (N, feature_dim) CLS features (or classical statistics)
    device: torch.device
    weights_sha256: str | None  # sha256 of the safetensors file (None for builtin cards)
    revision: str | None  # resolved Hub commit, url checkpoint sha256, builtin version string, or None
    weights_path: Path | None = None
    load_time_s: float = 0.0
    #: "fp32", or "bf16" (autocast around the forward; CUDA ViTs only, see :func:`effective_precision`).
    precision: str = "fp32"
    #: Provenance of the weights (see :class:`BackboneIdentity`).
    identity: "BackboneIdentity | None" = None

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def autocast_bf16(self) -> bool:
        return self.precision == "bf16"

    @property
    def preprocess_key(self) -> str:
        return preprocess_key(self.card)

    @property
    def feature_dim(self) -> int:
        return self.card.feature_dim

    def adapter(self, spec: str | None = None, dataset: DatasetChannels = OPENCELL) -> ChannelAdapter:
        """Parse a channel spec for this backbone and a dataset (its card or channel names; None spec:
        the backbone card's default)."""
        return parse_channels(spec, self.card, dataset)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Model input (N, in_chans, H, W), already normalized -> (N, feature_dim) float32."""
        if x.ndim != 4 or x.shape[1] != self.card.in_chans:
            raise DataError(f"{self.card.name} expects model input (N, {self.card.in_chans}, H, W); got {tuple(x.shape)}")
        with torch.inference_mode():
            x = x.to(self.device, dtype=torch.float32, non_blocking=True)
            # bf16 autocast only when asked for (CUDA only): fp32 features compare across hardware.
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=self.autocast_bf16):
                features = self.model(x).float()
        # A clone made outside inference mode is an ordinary tensor: callers may modify it in place.
        return features.clone()

    def prepare(self, batch: torch.Tensor, adapter: ChannelAdapter | None = None) -> list[torch.Tensor]:
        """uint16 images (N, C, H, W) in the adapter's channel order -> normalized model inputs, one
        per adapter view. ``adapter`` None: the card's default for OpenCell's channels."""
        if adapter is None:
            adapter = parse_channels(None, self.card)
        elif not isinstance(adapter, ChannelAdapter):
            raise ConfigError(
                f"channel adapter must be a ChannelAdapter, not {type(adapter).__name__}; "
                "use backbone.adapter(spec) or parse_channels(spec, card, channels)"
            )
        if not isinstance(batch, torch.Tensor):
            batch = torch.as_tensor(batch)
        if batch.dtype == torch.uint16 and self.device.type != "cpu":
            batch = batch.to(torch.int32)  # uint16 kernels are sparse off the CPU; int32 is exact
        with torch.inference_mode():
            return model_inputs(batch.to(self.device, non_blocking=True), self.card, adapter)

    def embed_raw(self, batch: torch.Tensor, adapter: ChannelAdapter | None = None) -> torch.Tensor:
        """uint16 images (N, C, H, W) in the adapter's channel order -> (N, feature_dim * adapter.n_views) float32.

        Intensity rule, resize policy, channel adapter and normalization of the card, then the
        model under ``torch.inference_mode``; views (replicate) are concatenated in channel order.
        """
        views = self.prepare(batch, adapter)
        features = [self.embed(view) for view in views]
        return features[0] if len(features) == 1 else torch.cat(features, dim=1)

    def describe(self) -> str:
        sha = (self.weights_sha256 or "-")[:12]
        return f"{self.card.name} on {self.device}, {self.precision} (weights sha256 {sha}, revision {self.revision or '-'})"


# ------------------------------------------------------------------------------------------------


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto``/None -> CUDA when present, else CPU; a CUDA device without CUDA is a ConfigError."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device '{device}' is not a torch device (use auto, cpu, cuda or cuda:N)") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{device}': CUDA is not available here; use cpu or auto")
    return resolved


def load_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file on CPU; an unreadable file is a one-line DataError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise DataError(f"weights file {path} does not exist")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"weights file {path} is not a readable safetensors file ({reason}); delete it and fetch or import the weights again"
        ) from None


def load_state_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str | os.PathLike, what: str) -> None:
    """Load every tensor, or fail in one line naming the file and the first mismatches."""
    from ocbench.backbones.vit import shape_mismatches

    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    problems = shape_mismatches(expected, {key: tuple(value.shape) for key, value in state.items()})
    if problems:
        raise ConfigError(
            f"weights file {path} does not fit {what}: "
            f"{'; '.join(problems)}; check the card or re-import the checkpoint"
        )
    model.load_state_dict(state, strict=True)


@dataclass(frozen=True)
class BackboneIdentity:
    """What identifies a backbone's numbers, known without building the model (embedding cache keys).

    Provenance: ``weights_verified`` is True when the weights match a checksum their publisher
    published (the Hub's sha256, a card's ``sha256``), False when nothing published vouches for
    them (then ``weights_note`` says so in words, for entries and the board), None without weights.
    ``source_sha256``/``source_filename``: the downloaded or imported file the weights came from.
    """

    weights_sha256: str | None
    revision: str | None
    preprocess_key: str
    weights_path: Path | None = None
    weights_verified: bool | None = None
    weights_note: str | None = None
    source_sha256: str | None = None
    source_filename: str | None = None

    def provenance(self) -> dict:
        """The keys embeddings' meta (and entries) record about where the weights came from."""
        return {
            "weights_verified": self.weights_verified,
            "weights_note": self.weights_note,
            "weights_source_sha256": self.source_sha256,
            "weights_source_file": self.source_filename,
        }


def _random_init_revision(card: BackboneCard) -> str:
    # A seeded init is reproduced by the same seed, timm and torch: those versions identify it.
    from importlib.metadata import version

    return f"random-init-seed{card.init_seed}-timm{version('timm')}-torch{torch.__version__}"


def _require_card(card: object, what: str) -> BackboneCard:
    if not isinstance(card, BackboneCard):
        raise ConfigError(
            f"{what} expects a BackboneCard, got {type(card).__name__}; resolve a name once with get_card(name)"
        )
    return card


def resolve_identity(
    card: BackboneCard,
    *,
    cache_dir: str | os.PathLike | None = None,
    weights: str | os.PathLike | None = None,
) -> BackboneIdentity:
    """weights sha256, revision, preprocess key and provenance of a backbone, fetching weights if
    needed but never building the model. ``load_backbone`` reports exactly these values."""
    card = _require_card(card, "resolve_identity")
    key = preprocess_key(card)
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise DataError(f"weights file {path} does not exist")
        sha256 = file_sha256(path)
        check_recorded_sha256(path, sha256, card.name)  # an imported folder's model.safetensors
        record = read_import_record(path.parent) or {}
        return BackboneIdentity(
            sha256, None, key, path, weights_verified=False, weights_note=UNVERIFIED_NOTE,
            source_sha256=record.get("source_sha256"), source_filename=record.get("source_filename") or path.name,
        )
    source = card.weights_source
    if source.kind == "memory":
        from ocbench.backbones.memory import MEMORY_NOTE, MEMORY_NOTE_CALLABLE, lookup

        _, sha, revision = lookup(card)
        return BackboneIdentity(sha, revision, key, weights_verified=False,
                                weights_note=MEMORY_NOTE if sha else MEMORY_NOTE_CALLABLE)
    if source.kind == "builtin":
        if source.target == "classical-stats":
            from ocbench.backbones.classical import CLASSICAL_VERSION

            return BackboneIdentity(None, f"classical-v{CLASSICAL_VERSION}", key)
        if source.target == "cellprofiler":
            from ocbench.backbones.cellprofiler import revision

            return BackboneIdentity(None, revision(), key)
        if source.target == "random-init":
            return BackboneIdentity(None, _random_init_revision(card), key)
        raise ConfigError(
            f"backbone card '{card.name}': unknown builtin source '{card.source}' (known: builtin:classical-stats, builtin:cellprofiler, builtin:random-init)"
        )
    resolved = resolve_weights(card, cache_dir=cache_dir)
    if resolved.path is None:
        raise ConfigError(f"backbone '{card.name}': source {card.source} gave no weights file")
    return BackboneIdentity(
        resolved.sha256, resolved.revision, key, Path(resolved.path),
        weights_verified=resolved.verified, weights_note=resolved.note,
        source_sha256=resolved.source_sha256, source_filename=resolved.source_filename,
    )


def _build_builtin(card: BackboneCard) -> torch.nn.Module:
    if card.source_kind == "memory":
        from ocbench.backbones.memory import CallableFeatures, lookup

        return CallableFeatures(lookup(card)[0], card)
    if card.source_target != "random-init":  # classical-stats, cellprofiler: a weightless family
        return get_arch(card.source_target, what=f"backbone card '{card.name}': ").build_features(card)[0]
    arch = arch_for(card)
    # Seeded init without disturbing the caller's global RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(card.init_seed or 0))
        if arch is not TIMM:
            return arch.build_features(card)[0]
        from ocbench.backbones.vit import ViTCLSFeatures, build_vit

        vit = build_vit(card)
    return ViTCLSFeatures(vit)


def _build_network(card: BackboneCard) -> tuple[torch.nn.Module, torch.nn.Module]:
    """``(features module, the module whose state dict the weights file holds)`` for a card with
    weights, built by the card's architecture family (:mod:`ocbench.backbones.archs`)."""
    return arch_for(card).build_features(card)


def _size_fields(card: BackboneCard, path: Path) -> tuple[str, dict[str, int]]:
    """Where the card's sizes were written (a ``config.json`` the card was derived from, or the card)
    and those sizes: the integer ``arch_kwargs`` and ``in_chans``."""
    config = path.parent / "config.json"
    derived = card.source_kind in ("hf-hub", "local") and card.notes.startswith("card derived") and config.is_file()
    where = f"{config} field model_args." if derived else f"backbone card '{card.name}' field arch_kwargs."
    sizes = {k: v for k, v in card.arch_kwargs.items() if isinstance(v, int) and not isinstance(v, bool)}
    return where, {**sizes, "in_chans": card.in_chans}


def _numel(shapes) -> int:
    return sum(math.prod(shape) for shape in shapes)


def check_sizes_fit_weights(card: BackboneCard, path: str | os.PathLike) -> None:
    """Refuse a card (or the ``config.json`` it came from) whose sizes do not fit the weights file,
    before building the model: the architecture is built on torch's meta device (no memory) and its
    tensor shapes are compared with the safetensors header (no tensor loaded). A config with a huge
    ``embed_dim`` or ``depth`` is a one-line error naming the field, not a failed allocation."""
    from ocbench.backbones.vit import shape_mismatches
    from ocbench.backbones.weights_folder import safetensors_shapes

    path = Path(path)
    found = safetensors_shapes(path)
    try:
        with torch.device("meta"):
            _, network = _build_network(card)
    except (NotImplementedError, RuntimeError):  # an architecture that cannot be built without memory:
        return  # the strict load after the real build checks it
    expected = {key: tuple(value.shape) for key, value in network.state_dict().items()}
    wrong_shape = any(k in found and found[k] != expected[k] for k in expected)
    missing = any(k not in found for k in expected)
    # missing tensors alone are left to the strict load's fuller message, unless the model built from
    # the card is bigger than everything the file holds (a depth of thousands)
    if not wrong_shape and not (missing and _numel(expected.values()) > _numel(found.values())):
        return
    problems = shape_mismatches(expected, {k: v for k, v in found.items() if k in expected})
    where, sizes = _size_fields(card, path)
    # the fields whose value is a size the weights disagree with (or the depth, when blocks are missing)
    wrong_dims = {
        d for k in expected if k in found and found[k] != expected[k]
        for i, d in enumerate(expected[k]) if len(found[k]) != len(expected[k]) or found[k][i] != d
    }
    culprits = [k for k, v in sizes.items() if v in wrong_dims or (k == "depth" and missing)]
    named = culprits or sorted(sizes)
    shown = ", ".join(f"{where}{k}={sizes[k]}" for k in named)
    raise ConfigError(
        f"{shown} does not fit the weights file {path} ({'; '.join(problems)}); "
        "fix the sizes to those the weights were trained with"
    )


#: Built-in feature extractors that always compute in float32 or float64 (statistics, measurements).
_FP32_ONLY = ("builtin:classical-stats", "builtin:cellprofiler")


def effective_precision(card: BackboneCard, device: str | torch.device, precision: str = "fp32") -> str:
    """The precision a run of ``card`` on ``device`` computes in: ``precision`` checked, with the
    classical and CellProfiler baselines always ``fp32``. Part of the embedding cache key, since it changes the numbers."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision '{precision}' is not one of {', '.join(PRECISIONS)}")
    if precision == "fp32" or card.source in _FP32_ONLY:
        return "fp32"
    if torch.device(device).type != "cuda":
        raise ConfigError(
            f"precision bf16 runs on CUDA only (bf16 autocast); this run is on {device}: use precision fp32 (the default)"
        )
    return "bf16"


def load_backbone(
    card: BackboneCard,
    *,
    device: str | torch.device | None = "cpu",
    cache_dir: str | os.PathLike | None = None,
    weights: str | os.PathLike | None = None,
    precision: str = "fp32",
    identity: BackboneIdentity | None = None,
) -> Backbone:
    """Build the card's model on ``device`` with its weights; see :class:`Backbone`.

    ``weights`` loads this safetensors file instead of the card's source (e.g. a checkpoint you
    trained); it must fit the card's architecture exactly. ``precision``: "fp32" or "bf16" (see
    the module docstring). ``identity``: the card's :func:`resolve_identity`, when the caller
    resolved it already (the runner does, once per backbone): the weights are not found and hashed again.
    """
    started = time.perf_counter()
    card = _require_card(card, "load_backbone")
    target = resolve_device(device)
    used_precision = effective_precision(card, target, precision)
    if identity is None:
        identity = resolve_identity(card, cache_dir=cache_dir, weights=weights)
    elif weights is not None:
        raise ConfigError("load_backbone: give weights= or identity=, not both (the identity names its weights file)")
    if identity.weights_path is None:
        model = _build_builtin(card)
    else:
        check_sizes_fit_weights(card, identity.weights_path)  # before anything of the card's size is allocated
        state = load_safetensors(identity.weights_path)
        model, network = _build_network(card)
        state = arch_for(card).adapt(card, network, state, from_card_source=weights is None)
        load_state_strict(network, state, identity.weights_path, f"backbone '{card.name}' ({card.arch}, in_chans={card.in_chans})")
        if model.feature_dim != card.feature_dim:
            raise ConfigError(f"backbone card '{card.name}': feature_dim {card.feature_dim} but the model gives {model.feature_dim}")
    model = model.eval().to(target)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return Backbone(
        card=card,
        model=model,
        device=target,
        weights_sha256=identity.weights_sha256,
        revision=identity.revision,
        weights_path=identity.weights_path,
        load_time_s=time.perf_counter() - started,
        precision=used_precision,
        identity=identity,
    )
