"""The seed paper's own numbers, kept in one place for the backbone cards and the leaderboard.

Every score the paper reports for channel maps, frozen-feature probes, fine-tuning and the
single-cell k-NN (Isselmann et al., "Using Deep Learning Models Pretrained by Self-Supervised
Learning for Protein Localization"), with the configuration that produced it. The leaderboard shows them as "reported" rows apart from computed rows (never
ranked with them unless asked: they come from the paper's own split and code, not from ocbench);
``ocbench backbones list`` / ``show`` print them per backbone.

This module imports nothing (no torch, no other ocbench module), so both the backbones layer and
the leaderboard layer may use it.

Scores are macro-F1, mean +- std over the paper's 5 cross-validation folds of its by-image split
(the paper calls the same number a validation and a test score in different places). Table 4
(single-cell k-NN) gives one macro-F1 per neighbourhood size for five increasing k; ocbench does
not know which k values those are, so they are reported by position (k#1 < ... < k#5).

Channel maps use the paper's notation ``[1, 2] -> [a, b]``: OpenCell channel 1 (protein) goes to
model input ``a`` and channel 2 (nucleus) to input ``b``. HPA inputs are RGBY (0 microtubules,
1 protein, 2 nucleus, 3 ER); ImageNet inputs are R, G, B = 0, 1, 2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = [
    "PAPER",
    "REPORTED_DATASET",
    "PAPER_N_FOVS",
    "not_comparable_reason",
    "SETTINGS",
    "ReportedResult",
    "REPORTED",
    "ZERO_SHOT_BASELINE",
    "reported_for",
    "reported_for_backbone",
    "headline",
]

#: Entries on this dataset (``entry.dataset.name``) are comparable with the paper's numbers.
REPORTED_DATASET = "opencell"

#: Labelled FOVs of the full public OpenCell set (6,301 FOVs, 181 without a label). A run on far fewer
#: (e.g. a `--limit`ed download) is not comparable with the paper's numbers.
PAPER_N_FOVS = 6120
PAPER_MIN_GRADE = 1
_MIN_SHARE_OF_PAPER_FOVS = 0.95


def not_comparable_reason(dataset: Mapping[str, Any]) -> str | None:
    """Why results on ``dataset`` (an entry's ``dataset`` block) cannot stand beside the paper's
    numbers, or None when they can: real OpenCell, (nearly) all labelled FOVs, all grades."""
    name = dataset.get("name")
    if name != REPORTED_DATASET:
        return f"not OpenCell ({name})"
    n_items = int(dataset.get("n_items") or 0)
    if n_items < _MIN_SHARE_OF_PAPER_FOVS * PAPER_N_FOVS:
        return f"subset: {n_items} of ~{PAPER_N_FOVS} FOVs"
    min_grade = dataset.get("min_grade", PAPER_MIN_GRADE)
    if min_grade != PAPER_MIN_GRADE:
        return f"min_grade {min_grade} (paper: all grades)"
    return None

PAPER = (
    'Isselmann et al., "Using Deep Learning Models Pretrained by Self-Supervised Learning for '
    'Protein Localization"'
)

#: How the backbone's weights came about before the number was measured.
SETTINGS: tuple[str, ...] = ("zero-shot", "fine-tuned", "from-scratch")

_RGB = "RGB"


@dataclass(frozen=True)
class ReportedResult:
    """One number (or one row of numbers) the paper reports, with its configuration."""

    backbone: str  # ocbench card name
    task: str  # fov-mlp | finetune | sc-knn
    strategy: str  # replicate | map
    channel_map: tuple[int, int] | None  # model input index of (protein, nucleus); None for replicate
    mean: float | None
    std: float | None
    source: str  # where in the paper
    config: dict[str, Any] = field(default_factory=dict)  # non-default protocol settings of this number
    per_k: tuple[float, ...] = ()  # sc-knn: macro-F1 for increasing k
    n: int = 5
    track: str = "paper"
    primary: bool = True  # the default configuration among same-map rows (for "reported" lookup)
    #: What the paper leaves open about this number (shown next to it wherever it is printed).
    note: str = ""
    #: One of SETTINGS; empty means derived: "fine-tuned" for the finetune task, "from-scratch"
    #: for the OpenCell backbones, "zero-shot" otherwise.
    setting: str = ""

    def __post_init__(self) -> None:
        if not self.setting:
            derived = (
                "fine-tuned"
                if self.task == "finetune"
                else "from-scratch"
                if self.backbone.startswith("opencell")
                else "zero-shot"
            )
            object.__setattr__(self, "setting", derived)
        if self.setting not in SETTINGS:
            raise ValueError(f"reported row {self.backbone}/{self.task}: setting '{self.setting}' is not one of {SETTINGS}")

    @property
    def channels_label(self) -> str:
        if self.strategy == "replicate":
            return "replicate"
        if self.channel_map is None:
            return self.strategy
        letters = _RGB if self.backbone.startswith("imagenet") else None
        a, b = self.channel_map
        target = f"[{letters[a]}, {letters[b]}]" if letters else f"[{a}, {b}]"
        natural = " natural" if self.natural else ""
        return f"[1, 2] -> {target}{natural}"

    @property
    def natural(self) -> bool:
        """The map that puts protein and nucleus into their like-named model inputs."""
        return (self.backbone.startswith("hpa") and self.channel_map == (1, 2)) or (
            self.backbone.startswith("opencell") and self.channel_map == (0, 1)
        )

    @property
    def config_label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.items())

    def value_label(self) -> str:
        """``0.822±0.007``; sc-knn rows: the per-k values in increasing k, space-separated."""
        if self.per_k:
            return " ".join(f"{v:.3f}" for v in self.per_k)
        if self.mean is None:
            return "-"
        return f"{self.mean:.3f}" if self.std is None else f"{self.mean:.3f}±{self.std:.3f}"


def _r(backbone, task, strategy, channel_map, mean, std, source, **kw) -> ReportedResult:
    return ReportedResult(backbone, task, strategy, channel_map, mean, std, source, **kw)


_G_B = (1, 2)  # ImageNet: protein -> G, nucleus -> B (the best map, appendix D)
_HPA_NATURAL = (1, 2)
_OC_NATURAL = (0, 1)

# The paper's tables say only "channel-wise embedding" for these ImageNet rows. Section 1 (Figure
# 1a) describes protein -> R, nucleus -> G; section 3.1.1 says the best map of appendix D ([G, B],
# measured on ViT-B/8 only) was adopted. ocbench assumes [G, B] and says so.
_MAP_UNSTATED = "the paper does not say which map; [G, B] assumed (best for ViT-B/8, appendix D)"
_MAP_ADOPTED = "the paper says only 'channel-wise'; [G, B] assumed (the map adopted after appendix D)"

#: Every reported number. Rows with an identical configuration are merged (sources joined).
REPORTED: tuple[ReportedResult, ...] = (
    # Task A, zero-shot MLP probe: Table 1 (section 4) ...
    _r("opencell-dino-vits8", "fov-mlp", "map", _OC_NATURAL, 0.810, 0.015, "Table 1"),
    _r("opencell-dino-vitb8", "fov-mlp", "map", _OC_NATURAL, 0.792, 0.010, "Table 1"),
    _r("imagenet-dino-vits8", "fov-mlp", "map", _G_B, 0.761, 0.010, "Table 1", note=_MAP_UNSTATED),
    _r("imagenet-dino-vitb8", "fov-mlp", "map", _G_B, 0.818, 0.007, "Table 1; appendix D Table 7"),
    _r("hpa-fov-vitb8", "fov-mlp", "map", _HPA_NATURAL, 0.822, 0.007, "Table 1; appendix D Table 8"),
    _r("imagenet-dino-vits8", "fov-mlp", "replicate", None, 0.761, 0.010, "Table 1"),
    _r("imagenet-dino-vitb8", "fov-mlp", "replicate", None, 0.798, 0.010, "Table 1"),
    _r("hpa-fov-vitb8", "fov-mlp", "replicate", None, 0.768, 0.010, "Table 1"),
    # ... and every channel map tried (section 2, appendix D Tables 7 and 8).
    _r("imagenet-dino-vitb8", "fov-mlp", "map", (1, 0), 0.813, 0.005, "appendix D Table 7"),
    _r("imagenet-dino-vitb8", "fov-mlp", "map", (0, 1), 0.806, 0.010, "appendix D Table 7"),
    _r("imagenet-dino-vitb8", "fov-mlp", "map", (0, 2), 0.800, 0.008, "appendix D Table 7"),
    _r("imagenet-dino-vitb8", "fov-mlp", "map", (2, 1), 0.790, 0.011, "appendix D Table 7"),
    _r("imagenet-dino-vitb8", "fov-mlp", "map", (2, 0), 0.789, 0.009, "appendix D Table 7"),
    _r("hpa-fov-vitb8", "fov-mlp", "map", (1, 3), 0.763, 0.011, "appendix D Table 8"),
    _r("hpa-fov-vitb8", "fov-mlp", "map", (1, 0), 0.754, 0.013, "appendix D Table 8"),
    _r("hpa-fov-vitb8", "fov-mlp", "map", (0, 2), 0.695, 0.004, "appendix D Table 8"),
    _r("hpa-fov-vitb8", "fov-mlp", "map", (0, 1), 0.690, 0.011, "appendix D Table 8"),
    _r("hpa-fov-vitb8", "fov-mlp", "map", (3, 0), 0.685, 0.009, "appendix D Table 8"),
    _r("hpa-fov-vitb8", "fov-mlp", "map", (2, 1), 0.676, 0.004, "appendix D Table 8"),
    # Task B, DINO fine-tuning on OpenCell then the MLP probe: Table 2 (100 epochs, full train split).
    _r(
        "imagenet-dino-vits8", "finetune", "map", _G_B, 0.844, 0.007, "Table 2",
        config={"epochs": 100, "fraction": 1.0}, note=_MAP_UNSTATED,
    ),
    _r(
        "imagenet-dino-vitb8", "finetune", "map", _G_B, 0.844, 0.011, "Table 2",
        config={"epochs": 100, "fraction": 1.0}, note=_MAP_ADOPTED,
    ),
    _r(
        "hpa-fov-vitb8", "finetune", "map", _HPA_NATURAL, 0.860, 0.013, "Table 2; section 3.1.3 (fraction 1.0)",
        config={"epochs": 100, "fraction": 1.0},
    ),
    _r("imagenet-dino-vits8", "finetune", "replicate", None, 0.740, 0.004, "Table 2", config={"epochs": 100, "fraction": 1.0}),
    _r("imagenet-dino-vitb8", "finetune", "replicate", None, 0.710, 0.010, "Table 2", config={"epochs": 100, "fraction": 1.0}),
    _r("hpa-fov-vitb8", "finetune", "replicate", None, 0.787, 0.016, "Table 2", config={"epochs": 100, "fraction": 1.0}),
    # Fine-tuning on a fraction of the train split (section 3.1.3, Figure 3): recorded for the two ends, 0.2 and 1.0.
    _r(
        "hpa-fov-vitb8", "finetune", "map", _HPA_NATURAL, 0.820, 0.013, "section 3.1.3 (Figure 3)",
        config={"epochs": 100, "fraction": 0.2}, primary=False,
    ),
    # Natural vs other maps after 60 epochs of fine-tuning (Table 3, section 3.1.4).
    _r("hpa-fov-vitb8", "finetune", "map", _HPA_NATURAL, 0.832, 0.007, "Table 3", config={"epochs": 60, "fraction": 1.0}, primary=False),
    _r("hpa-fov-vitb8", "finetune", "map", (0, 3), 0.804, 0.012, "Table 3", config={"epochs": 60, "fraction": 1.0}),
    _r("hpa-fov-vitb8", "finetune", "map", (2, 1), 0.804, 0.015, "Table 3", config={"epochs": 60, "fraction": 1.0}),
    # Task C, single-cell leave-one-out k-NN on the 591 expert cells (Table 4; channel-wise embedding).
    _r("hpa-sc-vitb16", "sc-knn", "map", _HPA_NATURAL, None, None, "Table 4", per_k=(0.852, 0.844, 0.842, 0.823, 0.796), n=591),
    _r("hpa-fov-vitb8", "sc-knn", "map", _HPA_NATURAL, None, None, "Table 4", per_k=(0.773, 0.764, 0.740, 0.714, 0.674), n=591),
    _r(
        "hpa-fov-vitb8", "sc-knn", "map", _HPA_NATURAL, None, None, "Table 4 (fine-tuned on OpenCell cells)",
        per_k=(0.780, 0.759, 0.767, 0.743, 0.700), n=591, primary=False, setting="fine-tuned",
    ),
    _r(
        "imagenet-dino-vitb16", "sc-knn", "map", _G_B, None, None, "Table 4",
        per_k=(0.646, 0.671, 0.694, 0.679, 0.669), n=591, note=_MAP_UNSTATED,
    ),
    _r(
        "imagenet-dino-vitb8", "sc-knn", "map", _G_B, None, None, "Table 4",
        per_k=(0.714, 0.721, 0.721, 0.709, 0.682), n=591, note=_MAP_ADOPTED,
    ),
)

#: The zero-shot score the fine-tuning fraction curve starts from (fraction 0 = no fine-tuning).
ZERO_SHOT_BASELINE = next(r for r in REPORTED if r.task == "fov-mlp" and r.backbone == "hpa-fov-vitb8" and r.natural)


def reported_for(
    backbone: str,
    task: str,
    track: str,
    strategy: str,
    channel_map: tuple[int, int] | None,
    task_config: dict[str, Any] | None = None,
) -> ReportedResult | None:
    """The paper's number for this configuration, or None when the paper has none."""
    candidates = [
        r
        for r in REPORTED
        if r.backbone == backbone
        and r.task == task
        and r.track == track
        and r.strategy == strategy
        and (strategy == "replicate" or r.channel_map == channel_map)
    ]
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    config = task_config or {}
    # Prefer the row whose settings the run shares; otherwise the paper's default setting.
    matching = [r for r in candidates if r.config and all(config.get(k) == v for k, v in r.config.items())]
    if len(matching) == 1:
        return matching[0]
    primary = [r for r in candidates if r.primary]
    return primary[0] if primary else None


def reported_for_backbone(backbone: str) -> list[ReportedResult]:
    """Every reported row of one backbone (by card name), in REPORTED order; [] when none."""
    return [r for r in REPORTED if r.backbone == backbone]


# The paper's default map per backbone family: what a card's default channel spec selects.
_DEFAULT_MAP_BY_PREFIX = {"imagenet": _G_B, "hpa": _HPA_NATURAL, "opencell": _OC_NATURAL}
_HEADLINE_TASKS = ("fov-mlp", "sc-knn", "finetune")  # the probe on frozen features first


def headline(backbone: str) -> ReportedResult | None:
    """The one number to quote for a backbone: its default channel map, zero-shot (or from scratch)
    FOV probe if the paper has it, else its first single-cell k-NN row, else None."""
    default_map = next((m for prefix, m in _DEFAULT_MAP_BY_PREFIX.items() if backbone.startswith(prefix)), None)
    rows = [r for r in reported_for_backbone(backbone) if r.primary and r.channel_map == default_map]
    for task in _HEADLINE_TASKS:
        for r in rows:
            if r.task == task:
                return r
    return None
