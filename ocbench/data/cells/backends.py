"""Segmentation backends (a FOV -> a label image) and their registry (``ocbench.segmentation`` entry points)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np

from ocbench.data.cells.classical import _need_skimage, segment_cells_classical
from ocbench.errors import ConfigError, DataError
from ocbench.registry import Registry


def _channel(image: np.ndarray, channel_names: Sequence[str], name: str, backend: str) -> np.ndarray:
    names = list(channel_names)
    if name not in names:
        raise ConfigError(f"segmentation backend {backend}: the dataset has no {name!r} channel (it has {', '.join(names)})")
    return np.asarray(image[names.index(name)])


class SegmentationBackend:
    """One way of turning a FOV into a label image (0 background, 1..n cells).

    Subclasses are frozen dataclasses whose fields are their settings (every field changes the
    masks, so all of them key the mask folder) and set ``name``; ``segment`` gets the FOV as the
    reader returns it (C, H, W) with the dataset card's channel names.
    """

    name: ClassVar[str] = ""
    #: Whether FOVs may be segmented in several processes at once (one per core): true for
    #: backends that run single-threaded on the CPU; a GPU or multi-threaded model keeps one process.
    one_process_per_core: ClassVar[bool] = False
    #: Bump when the algorithm's output changes: saved masks of another version are not reused.
    version: ClassVar[int] = 1
    #: pip extra providing what the backend needs (named in the error when it is missing).
    extra: ClassVar[str | None] = "singlecell"

    def settings(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def identity(self) -> dict[str, Any]:
        """Everything that changes the masks (keys the mask store)."""
        return {"name": self.name, "version": self.version, "settings": self.settings()}

    def describe(self) -> str:
        text = ", ".join(f"{k}={v}" for k, v in self.settings().items())
        return f"{self.name} ({text})" if text else self.name

    def check_available(self) -> None:
        """Import what the backend needs; a one-line ConfigError naming what to install."""

    def check_channels(self, channel_names: Sequence[str]) -> None:
        for name in (getattr(self, "segmentation_channel", None), getattr(self, "nucleus_channel", None)):
            if name is not None and name not in channel_names:
                raise ConfigError(
                    f"segmentation backend {self.name}: the dataset has no {name!r} channel "
                    f"(it has {', '.join(channel_names)}); set segmentation_channel / nucleus_channel"
                )

    def segment(self, image: np.ndarray, channel_names: Sequence[str]) -> np.ndarray:
        raise NotImplementedError


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


@dataclass(frozen=True)
class ClassicalBackend(SegmentationBackend):
    """Nucleus seeds and a watershed (scikit-image), no model download.

    Nuclei: Otsu threshold of the log of the smoothed nucleus channel, touching nuclei split by a
    watershed from one seed per smooth intensity bump (:func:`segment_nuclei`). Cells: from
    each nucleus outwards (watershed on the distance to the nuclei, so touching cells split half
    way) over the protein foreground (Otsu on the log of the protein channel smoothed at a quarter
    nucleus diameter) and the nuclei, at most ``cell_reach`` nucleus diameters beyond the nucleus.
    ``nucleus_diameter`` 0 estimates it per FOV (twice the median of the nuclei's largest inscribed
    radius), like Cellpose's automatic diameter.
    """

    name: ClassVar[str] = "classical"
    one_process_per_core: ClassVar[bool] = True
    version: ClassVar[int] = 2

    nucleus_diameter: float = 0.0
    cell_reach: float = 0.6
    min_nucleus_fraction: float = 0.15
    segmentation_channel: str = "protein"
    nucleus_channel: str = "nucleus"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.nucleus_diameter) and self.nucleus_diameter >= 0):
            raise ConfigError(f"classical segmentation: nucleus_diameter must be >= 0 px (0: estimate), got {self.nucleus_diameter!r}")
        if not (math.isfinite(self.cell_reach) and 0 <= self.cell_reach <= 10):
            raise ConfigError(f"classical segmentation: cell_reach must be in [0, 10] nucleus diameters, got {self.cell_reach!r}")
        if not 0 <= self.min_nucleus_fraction < 1:
            raise ConfigError(f"classical segmentation: min_nucleus_fraction must be in [0, 1), got {self.min_nucleus_fraction!r}")

    def check_available(self) -> None:
        _need_skimage("segmentation backend classical")

    def segment(self, image: np.ndarray, channel_names: Sequence[str]) -> np.ndarray:
        protein = _channel(image, channel_names, self.segmentation_channel, self.name)
        nucleus = _channel(image, channel_names, self.nucleus_channel, self.name)
        return segment_cells_classical(
            protein, nucleus, nucleus_diameter=self.nucleus_diameter, cell_reach=self.cell_reach,
            min_nucleus_fraction=self.min_nucleus_fraction,
        )


_CELLPOSE_MODELS: dict[tuple[str, bool], Any] = {}


@dataclass(frozen=True)
class CellposeBackend(SegmentationBackend):
    """Cellpose v3 (``cyto3`` by default) as the paper ran it: protein as the segmentation channel,
    nucleus as the second channel, default settings, automatic diameter (``diameter`` 0), on the
    GPU when there is one. Cellpose downloads its weights on first use (kept in ~/.cellpose)."""

    name: ClassVar[str] = "cellpose"

    model: str = "cyto3"
    diameter: float = 0.0
    segmentation_channel: str = "protein"
    nucleus_channel: str = "nucleus"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.diameter) and self.diameter >= 0):
            raise ConfigError(f"cellpose segmentation: diameter must be >= 0 px (0: automatic), got {self.diameter!r}")

    def identity(self) -> dict[str, Any]:
        # The package version too: the same model name may give other masks in another release.
        try:
            import cellpose  # noqa: F401

            package = _cellpose_version()
        except ImportError:
            package = None
        return {**super().identity(), "cellpose": package}

    def check_available(self) -> None:
        try:
            import cellpose  # noqa: F401
        except ImportError:
            raise ConfigError(
                "segmentation backend cellpose needs the Python package cellpose 3.x, which is not installed; "
                "run: pip install 'ocbench[singlecell]' (or use the classical backend)"
            ) from None
        version = _cellpose_version()
        if not version.startswith("3."):
            raise ConfigError(
                f"segmentation backend cellpose needs cellpose 3.x (the paper's cyto3 model; {version} changed the "
                "models); run: pip install 'cellpose>=3,<4'"
            )

    def _load(self):
        self.check_available()
        import torch

        gpu = bool(torch.cuda.is_available())
        key = (self.model, gpu)
        if key not in _CELLPOSE_MODELS:
            from cellpose import models

            try:
                _CELLPOSE_MODELS[key] = models.Cellpose(gpu=gpu, model_type=self.model)
            except Exception as exc:  # urllib/HTTP/OS errors from cellpose's weight download
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise DataError(
                    f"cellpose could not load its {self.model} model ({type(exc).__name__}: {first}); it downloads the "
                    "weights on first use, which needs internet access once (they are kept in ~/.cellpose/models); "
                    "or use the classical backend"
                ) from None
        return _CELLPOSE_MODELS[key]

    def segment(self, image: np.ndarray, channel_names: Sequence[str]) -> np.ndarray:
        model = self._load()
        protein = _channel(image, channel_names, self.segmentation_channel, self.name)
        nucleus = _channel(image, channel_names, self.nucleus_channel, self.name)
        stacked = np.stack([protein, nucleus], axis=-1).astype(np.float32)
        # channels=[1, 2]: segment on the first channel with the second as the nucleus channel.
        result = model.eval(stacked, channels=[1, 2], channel_axis=2, diameter=self.diameter or None)
        return np.asarray(result[0]).astype(np.int32)


def _cellpose_version() -> str:
    try:
        from importlib.metadata import version

        return version("cellpose")
    except Exception:
        import cellpose

        return str(getattr(cellpose, "__version__", "unknown"))


def _check_backend_class(cls: Any) -> None:
    if not (isinstance(cls, type) and issubclass(cls, SegmentationBackend) and dataclasses.is_dataclass(cls) and cls.name):
        raise ConfigError(f"a segmentation backend must be a SegmentationBackend dataclass with a name, got {cls!r}")


def _register_builtin_backends() -> None:
    SEGMENTATION_BACKENDS.register("classical", ClassicalBackend)
    SEGMENTATION_BACKENDS.register("cellpose", CellposeBackend)


SEGMENTATION_BACKENDS: Registry[type[SegmentationBackend]] = Registry(
    "segmentation backend",
    entry_point_group="ocbench.segmentation",
    check=_check_backend_class,
    on_first_use=_register_builtin_backends,
)


def backend_names() -> list[str]:
    return sorted(SEGMENTATION_BACKENDS.names())


def get_backend(backend: str | SegmentationBackend, **settings: Any) -> SegmentationBackend:
    """A backend object from its name (and settings), or ``backend`` itself."""
    if isinstance(backend, SegmentationBackend):
        if settings:
            return dataclasses.replace(backend, **settings)  # type: ignore[type-var]
        return backend
    cls = SEGMENTATION_BACKENDS.get(str(backend))
    try:
        return cls(**settings)
    except TypeError as exc:
        valid = ", ".join(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
        raise ConfigError(f"segmentation backend {backend}: bad settings {sorted(settings)} ({exc}); valid: {valid}") from None
