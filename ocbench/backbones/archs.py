"""Architecture families: how a card's ``arch`` becomes a network, and how weights fit it.

timm's ``register_model`` + ``PretrainedCfg`` idea, for ocbench: an :class:`Arch` says

- ``build(card)``: the features module (``model(x) -> (N, feature_dim)``, with a ``feature_dim``
  attribute), or ``(features module, network)`` when the weights file holds the state dict of a
  module inside it (timm ViTs: the wrapped timm model);
- ``adapt_state_dict(card, network, state, *, from_card_source)``: the safetensors state dict made
  to fit ``network`` before the strict load (drop a classifier head, rename keys); None: as it is.
  ``from_card_source`` is False when the file is a ``--weights FILE`` override;
- ``importer(card, checkpoint, *, out_dir, checkpoint_key)``: converts a training checkpoint into
  the card's weights folder (``ocbench backbones import``); None: the family has no importer.

The loader and ``ocbench backbones import`` find a card's family here and have no branch per
family. Registered by ocbench: SubCell's ViTs (``subcell-vit-b16-pool``, ``subcell-vit-b16-cls``)
and the weightless baselines (``classical-stats``, ``cellprofiler``). Any other ``arch`` is a timm
model name: the :data:`TIMM` family (DINO-layout checkpoints import through ``dino_import``).

A non-timm family is a plugin, like a card: a module passed to ``ocbench --plugin`` (or an
``ocbench.backbones`` entry point module) calls :func:`register_arch`, then registers cards whose
``arch`` names it, with weights in a ``local:`` folder's ``model.safetensors``. An ``arch`` that is
neither registered nor a timm model fails in one line with the closest names.

Importing this module is cheap (no torch): the built-in families import their code when used.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ocbench.backbones.card import BackboneCard
from ocbench.errors import ConfigError
from ocbench.registry import Registry

if TYPE_CHECKING:
    from torch import nn

__all__ = ["Arch", "ARCHS", "TIMM", "register_arch", "get_arch", "arch_for", "import_checkpoint"]


@dataclass(frozen=True)
class Arch:
    """One architecture family (see the module docstring for the three callables)."""

    name: str
    build: Callable[[BackboneCard], Any]
    adapt_state_dict: Callable[..., dict] | None = None
    importer: Callable[..., Any] | None = None

    def build_features(self, card: BackboneCard) -> tuple["nn.Module", "nn.Module"]:
        """``(features module, the module whose state dict the weights file holds)``."""
        built = self.build(card)
        model, network = built if isinstance(built, tuple) else (built, built)
        if not callable(model) or not hasattr(network, "state_dict"):
            raise ConfigError(
                f"architecture {self.name!r}: build({card.name!r}) must return a torch module "
                f"(or a (features, network) pair of them); got {type(built).__name__}"
            )
        return model, network

    def adapt(self, card: BackboneCard, network: "nn.Module", state: dict, *, from_card_source: bool) -> dict:
        """The state dict to load strictly into ``network``."""
        if self.adapt_state_dict is None:
            return state
        return self.adapt_state_dict(card, network, state, from_card_source=from_card_source)


def _check_arch(arch: Any) -> Arch:
    if not isinstance(arch, Arch):
        raise ConfigError(f"an architecture registry entry must be an Arch (use register_arch), got {type(arch).__name__}")
    return arch


# ------------------------------------------------------------------------------------ built-ins
# Each imports its module when used, so this module (and `ocbench backbones list`) stays torch-free.


def _build_timm(card: BackboneCard):
    from ocbench.backbones.vit import build_features

    return build_features(card)


def _adapt_timm(card: BackboneCard, network, state: dict, *, from_card_source: bool) -> dict:
    # a Hub checkpoint's classifier head (or CLIP's projection) is not part of the features;
    # any other file must fit the architecture exactly
    if from_card_source and card.source_kind in ("hf-hub", "timm"):
        from ocbench.backbones.vit import drop_unused_classifier

        return drop_unused_classifier(network, state)
    return state


def _import_dino(card: BackboneCard, checkpoint, *, out_dir=None, checkpoint_key: str = "teacher") -> Path:
    from ocbench.backbones.dino_import import import_backbone

    return import_backbone(card, checkpoint, out_dir=out_dir, checkpoint_key=checkpoint_key)


def _build_subcell(card: BackboneCard):
    from ocbench.backbones.subcell import build_subcell

    return build_subcell(card)


def _adapt_subcell_cls(card: BackboneCard, network, state: dict, *, from_card_source: bool) -> dict:
    # the class-token card reads the pooled card's folder and leaves the pooling out
    return {k: v for k, v in state.items() if not k.startswith("pool.")}


def _import_subcell(card: BackboneCard, checkpoint, *, out_dir=None, checkpoint_key: str = "teacher") -> Path:
    from ocbench.backbones.subcell import import_subcell

    return import_subcell(card, checkpoint, out_dir=out_dir)  # SubCell's own checkpoint layout: no key to pick


def _build_classical(card: BackboneCard):
    from ocbench.backbones.classical import ClassicalFeatures, feature_dim

    if feature_dim(card.in_chans) != card.feature_dim:
        raise ConfigError(
            f"backbone card '{card.name}': feature_dim {card.feature_dim} but classical features of "
            f"{card.in_chans} channels have {feature_dim(card.in_chans)}"
        )
    return ClassicalFeatures(card.in_chans)


def _build_cellprofiler(card: BackboneCard):
    from ocbench.backbones.cellprofiler import CellProfilerFeatures

    features = CellProfilerFeatures(card.input_channels)
    if features.dim != card.feature_dim:
        raise ConfigError(
            f"backbone card '{card.name}': feature_dim {card.feature_dim} but the CellProfiler profile of "
            f"{', '.join(card.input_channels)} has {features.dim} features (with this cp-measure)"
        )
    return features


#: The family of every ``arch`` that is a timm model name (not in :data:`ARCHS`: timm lists them).
TIMM = Arch("timm", _build_timm, _adapt_timm, _import_dino)


def _register_builtins() -> None:
    ARCHS.register("subcell-vit-b16-pool", Arch("subcell-vit-b16-pool", _build_subcell, None, _import_subcell))
    ARCHS.register("subcell-vit-b16-cls", Arch("subcell-vit-b16-cls", _build_subcell, _adapt_subcell_cls, _import_subcell))
    ARCHS.register("classical-stats", Arch("classical-stats", _build_classical))
    ARCHS.register("cellprofiler", Arch("cellprofiler", _build_cellprofiler))


#: Non-timm architectures by name (the built-ins registered on first use, then plugins').
ARCHS: Registry[Arch] = Registry("architecture", check=_check_arch, on_first_use=_register_builtins)


def register_arch(
    name: str,
    build: Callable[[BackboneCard], Any],
    adapt_state_dict: Callable[..., dict] | None = None,
    importer: Callable[..., Any] | None = None,
    *,
    overwrite: bool = False,
) -> Arch:
    """Register a non-timm architecture family under ``name`` (a card's ``arch``); returns it.

    Registering the same callables again is a no-op; another family under a taken name (a
    built-in's included) is refused unless ``overwrite``.
    """
    ARCHS.names()  # the built-ins first, so a plugin cannot take a built-in's name silently
    arch = Arch(name, build, adapt_state_dict, importer)
    ARCHS.register(name, arch, overwrite=overwrite)
    return ARCHS.get(name)


def _is_timm_model(name: str) -> bool:
    import timm

    return bool(timm.is_model(name))


def get_arch(name: str, *, what: str = "") -> Arch:
    """The family of architecture ``name``: a registered one, else :data:`TIMM` for a timm model
    name; anything else is a one-line ConfigError with the closest names of both."""
    if name in ARCHS:
        return ARCHS.get(name)
    if isinstance(name, str) and name and _is_timm_model(name):
        return TIMM
    import timm

    close = difflib.get_close_matches(str(name), [*ARCHS.names(), *timm.list_models()], n=3, cutoff=0.6)
    hint = f"; did you mean: {', '.join(close)}?" if close else f"; registered: {', '.join(ARCHS.names())}"
    raise ConfigError(
        f"{what}unknown architecture {str(name)!r}: not a registered architecture nor a timm model{hint} "
        "(a plugin registers a new one with ocbench.backbones.archs.register_arch)"
    )


def arch_for(card: BackboneCard) -> Arch:
    """The family that builds ``card`` (by its ``arch``)."""
    return get_arch(card.arch, what=f"backbone card '{card.name}': ")


def import_checkpoint(
    card: BackboneCard, checkpoint=None, *, out_dir=None, checkpoint_key: str = "teacher"
) -> Path:
    """``ocbench backbones import``: the card's family converts ``checkpoint`` into a weights folder."""
    if not card.weights_source.needs_weights:
        return _import_dino(card, checkpoint, out_dir=out_dir, checkpoint_key=checkpoint_key)  # its one-line refusal
    arch = arch_for(card)
    if arch.importer is None:
        raise ConfigError(
            f"backbone '{card.name}': architecture {arch.name!r} has no checkpoint importer; save its weights as "
            "model.safetensors in the folder of a local: card"
        )
    return Path(arch.importer(card, checkpoint, out_dir=out_dir, checkpoint_key=checkpoint_key))
