"""Task A: a probe trained on frozen FOV embeddings (``fov-mlp``, ``fov-linear``).

Protocol (the seed paper, section 2.6.1), per cross-validation fold ``k`` of ``K``:

1. train on the other ``K-1`` folds, validate on fold ``k``, and score the same model on the
   held-out test set;
2. standardize every feature with the mean/std of fold ``k``'s training rows only (population
   std; (near-)constant features are centred, not scaled, as scikit-learn's StandardScaler does);
3. each epoch draws ``n_train`` training rows *with replacement*, row ``i`` with probability
   proportional to ``1 / frequency of its rarest positive label`` (frequencies counted on the
   training rows). Rows without any positive label form a class of their own (their frequency is
   the number of label-less rows), so they are neither dropped nor over-weighted;
4. batches of ``batch_size`` (the epoch's last batch holds the remainder), BCEWithLogits loss
   (mean over the batch and the 17 classes), AdamW (decay on all parameters, like
   ``AdamW(model.parameters())``), learning rate ``lr * batch_size / 256`` annealed per epoch
   with a cosine to 0 (``CosineAnnealingLR(T_max=epochs)``), stepped after each epoch;
5. predict ``sigmoid(logit) >= threshold``; score with :mod:`ocbench.tasks.metrics`.

On a single-label dataset (card ``label_mode: single``) the classes compete for one label: the
loss is softmax cross-entropy (mean over the batch) and the prediction is the argmax class (a
one-hot row, so scoring, the interval and ``compare`` read it like a multi-label prediction);
``threshold`` is then unused. The draw weights of step 3 are then 1 / the frequency of the row's
class, and everything else is the same.

Speed (the training is :mod:`ocbench.tasks.probe_training`'s): the standardized training rows stay on the device as one tensor; batches are gathered
with index tensors; the backward pass is written out over buffers allocated once (no autograd).
Folds can be trained together as one "stacked" model (weights of shape ``(folds, d_in, d_out)``,
batched matmuls): on a GPU that divides the number of kernel launches by 5; on a 2-core CPU one
fold at a time measured ~8% faster (its working set stays in cache), so that is the CPU default.
Each fold has its own random generator (seeded from ``(seed, fold)``) for its initial weights,
draws and dropout masks, so a fold's numbers do not depend on which folds it was stacked with.
Dropout masks come from 8- or 16-bit random integers (exact for the default p = 0.5, see
``_dropout_bits``): drawing a float per unit cost a quarter of a training step on CPU.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import numpy as np

from ocbench.errors import ConfigError, DataError
from ocbench.tasks.base import TaskConfig, TaskResult, register_task
from ocbench.tasks.context import Progress, RunContext
from ocbench.tasks.probe_training import _FoldPlan, _predict, _train_group

__all__ = [
    "FovProbe",
    "FovMlpProbe",
    "FovLinearProbe",
    "Standardizer",
    "fit_standardizer",
    "rarest_label_weights",
]

#: 2: macro-F1 averages the classes present in the evaluated set (1: all 17, absent ones as 0).
PROTOCOL_VERSION = "fov-probe/2"


# -- protocol pieces (numpy, testable on their own) --------------------------------------------
def rarest_label_weights(labels: np.ndarray) -> np.ndarray:
    """Unnormalized draw weight of each row: 1 / (count of its rarest positive label).

    Counts are taken over ``labels`` itself (pass the training rows only). Rows with no
    positive label get 1 / (number of such rows).
    """
    y = np.asarray(labels).astype(bool)
    counts = y.sum(axis=0).astype(np.float64)
    rarest = np.where(y, counts[None, :], np.inf).min(axis=1)
    unlabeled = ~y.any(axis=1)
    rarest[unlabeled] = unlabeled.sum()
    return 1.0 / rarest


@dataclass(frozen=True)
class Standardizer:
    """Per-feature ``(x - mean) / scale`` fitted on training rows."""

    mean: np.ndarray
    scale: np.ndarray

    def apply(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean.astype(np.float32)) / self.scale.astype(np.float32)).astype(np.float32)


def fit_standardizer(train_features: np.ndarray) -> Standardizer:
    """Mean and population std of ``train_features`` (computed in float64)."""
    x = np.asarray(train_features, dtype=np.float64)
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    constant = std <= 1e-6 * np.maximum(1.0, np.abs(mean))  # scaling noise up would only add noise
    return Standardizer(mean=mean, scale=np.where(constant, 1.0, std))


def _robust_standardizer(train_features: np.ndarray) -> Standardizer:
    from ocbench.tasks.standardize import robust_center_scale

    center, scale = robust_center_scale(train_features)
    return Standardizer(mean=center, scale=scale)


def _identity_standardizer(dim: int) -> Standardizer:
    return Standardizer(mean=np.zeros(dim), scale=np.ones(dim))


# -- configs ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class FovProbe(TaskConfig):
    """Training settings shared by the FOV probes (every default is the paper's protocol)."""

    protocol_version: ClassVar[str] = PROTOCOL_VERSION
    main_score: ClassVar[tuple[str, str]] = ("val", "macro_f1")
    label_modes: ClassVar[tuple[str, ...]] = ("multilabel", "single")
    #: Fold models retrained on shuffled labels for the shuffled-labels chance reference: one
    #: (fold 1's validation rows and the test set) adds a fifth of the probe's cost where all
    #: five would double it; a reference near chance needs no spread over folds to be read.
    shuffled_reference_models: ClassVar[int] = 1

    epochs: int = field(default=300, metadata={"help": "training epochs per fold model"})
    batch_size: int = field(default=512, metadata={"help": "rows per optimizer step"})
    lr: float = field(default=1e-4, metadata={"help": "learning rate per lr_reference_batch rows (used: lr * batch_size / lr_reference_batch)"})
    lr_reference_batch: int = field(default=256, metadata={"help": "the batch size lr is given for"})
    weight_decay: float = field(default=0.04, metadata={"help": "AdamW weight decay"})
    betas: tuple[float, float] = field(default=(0.9, 0.999), metadata={"help": "AdamW moment decay rates"})
    adam_eps: float = field(default=1e-8, metadata={"help": "AdamW epsilon"})
    threshold: float = field(default=0.5, metadata={"help": "a class is predicted where its sigmoid output >= this (multi-label; single-label predicts the argmax class)"})
    standardize: bool = field(default=True, metadata={"help": "scale each feature to mean 0, std 1 on the fold's training rows"})
    resample: bool = field(default=True, metadata={"help": "draw each epoch's rows with replacement, weighted by 1 / frequency of their rarest label (False: a plain shuffle)"})

    def __post_init__(self) -> None:
        def bad(key: str, what: str) -> ConfigError:
            return ConfigError(f"task {self.name}: {key} must be {what}, got {getattr(self, key)!r}")

        for key in ("epochs", "batch_size", "lr_reference_batch"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad(key, "an integer >= 1")
        # Bounds far outside any sensible probe: a typo (lr=1e30) would otherwise run for minutes
        # and record a score of 0 as if it meant something.
        for key, upper in (("epochs", 100_000), ("batch_size", 1_000_000), ("lr_reference_batch", 1_000_000)):
            if getattr(self, key) > upper:
                raise bad(key, f"at most {upper:,}")
        for key in ("lr", "adam_eps", "weight_decay", "threshold"):
            if not math.isfinite(getattr(self, key)):
                raise bad(key, "a finite number")
        if not 0 < self.lr <= 1:
            raise bad("lr", "in (0, 1]")
        if not 0 < self.adam_eps <= 1e-2:
            raise bad("adam_eps", "in (0, 0.01]")
        if not 0 <= self.weight_decay <= 10:
            raise bad("weight_decay", "in [0, 10]")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise bad("betas", "two numbers in [0, 1)")
        if not 0 < self.threshold < 1:
            raise bad("threshold", "in (0, 1)")

    @property
    def effective_lr(self) -> float:
        return self.lr * self.batch_size / self.lr_reference_batch

    def head(self) -> tuple[tuple[int, ...], float]:
        """Hidden layer widths and dropout rate of the probe."""
        return (), 0.0

    def evaluate(self, context: "RunContext") -> TaskResult:
        """Probe the backbone's FOV embeddings on the context's split (the paper's protocol)."""
        dataset = context.dataset
        embeddings = context.embed()
        if list(embeddings.fov_ids) != list(dataset.ids):
            raise DataError("the embeddings do not line up with the dataset's items; rerun with --recompute")
        test_idx, folds_idx = context.split.indices_of(dataset)
        return self.run(
            embeddings.features, context.labels, test_idx, folds_idx,
            seed=context.seed, device=context.device, progress=context.progress,
            class_names=context.class_names, item_ids=list(dataset.ids), groups=dataset.groups,
            group_name=dataset.card.group_name,
            references=True, label_mode=dataset.card.label_mode,
            feature_standardization=context.backbone.feature_standardization,
        )

    def run(
        self,
        features: np.ndarray,
        labels: np.ndarray,
        test_idx: Sequence[int] | np.ndarray,
        folds_idx: Sequence[Sequence[int] | np.ndarray],
        *,
        seed: int = 0,
        device: str = "cpu",
        progress: bool | Progress = True,
        max_parallel_folds: int | None = None,
        class_names: Sequence[str] | None = None,
        item_ids: Sequence[Any] | None = None,
        groups: Sequence[Any] | None = None,
        group_name: str = "protein",
        references: bool = False,
        label_mode: str = "multilabel",
        feature_standardization: str = "none",
    ) -> TaskResult:
        """Cross-validate the probe on ``features`` (N, D) and ``labels`` (N, classes).

        ``test_idx``/``folds_idx`` are row positions (``Split.indices``). ``max_parallel_folds``
        only changes how many folds are stacked into one model (results agree up to float
        rounding); ``None``: one at a time on CPU, else all folds with the same steps per epoch.
        ``item_ids``/``groups`` (N,) name the rows and the group each belongs to (``group_name``,
        the unit the test-set interval resamples); without ``groups`` each item is its own group.
        ``class_names``: the label columns' names (None: ``class_0``, ``class_1``, ...).
        ``label_mode``: ``multilabel`` (sigmoid outputs, BCE) or ``single`` (one class per row:
        softmax cross-entropy, argmax predictions).
        ``references``: also compute the chance references (:mod:`ocbench.chance`) on the same
        folds and test items, the shuffled-labels one by training this probe's first
        ``shuffled_reference_models`` fold models once more with the labels of the
        cross-validation rows permuted (the test rows keep theirs).
        ``feature_standardization="robust"`` (:mod:`ocbench.tasks.standardize`): each fold's
        features are standardised robustly on its training rows, unless the probe's own z-score
        (``standardize``) does it already (it is invariant to that rescaling); recorded either way.
        """
        from dataclasses import replace

        if class_names is None:
            class_names = tuple(f"class_{j}" for j in range(np.asarray(labels).shape[1]))
        if feature_standardization not in ("none", "robust"):
            raise ConfigError(f"feature_standardization must be 'none' or 'robust', got {feature_standardization!r}")
        robust = feature_standardization == "robust" and not self.standardize
        common = dict(
            seed=seed, device=device, progress=progress, max_parallel_folds=max_parallel_folds,
            class_names=tuple(class_names), item_ids=item_ids, item_groups=groups, group_name=group_name, robust=robust,
            label_mode=label_mode,
        )
        result = _run_probe(self, features, labels, test_idx, folds_idx, **common)
        if feature_standardization == "robust":
            result = replace(result, feature_standardization=_robust_standardization_record(robust))
        if not references:
            return result
        refs = _chance_references(self, features, labels, test_idx, folds_idx, result, common)
        return replace(result, references=refs)


def _robust_standardization_record(applied: bool) -> dict[str, Any]:
    """What the entry records of a declared robust standardisation, ``applied`` or subsumed by the z-score."""
    return {
        "declared": "robust",
        "method": "per feature: (x - median) / (IQR / 1.349), the std where the IQR is 0, 1 where constant",
        "fitted_on": "each fold's training rows",
        "applied": applied,
        **({} if applied else {"note": "subsumed by the probe's own z-score fitted on the same rows "
                                       "(invariant to a per-feature shift and rescaling)"}),
    }


def _chance_references(cfg: FovProbe, features, labels, test_idx, folds_idx, result: TaskResult,
                       common: dict[str, Any]) -> list[dict[str, Any]]:
    """The chance references (:mod:`ocbench.chance`) on the probe's folds and test items; the
    shuffled-labels one retrains the first ``shuffled_reference_models`` fold models with the
    labels of the cross-validation rows permuted (the test rows keep theirs)."""
    from ocbench.chance import Repetition, chance_references, shuffled_rows

    seed, progress, label_mode = common["seed"], common["progress"], common["label_mode"]
    y = np.asarray(labels)
    cv_rows = np.concatenate([np.asarray(f, dtype=np.int64) for f in folds_idx])
    fit_labels = y.copy()
    fit_labels[cv_rows] = y[cv_rows[shuffled_rows(cv_rows.size, seed)]]
    shuffled: dict[str, Any] = {}
    if isinstance(progress, Progress):
        common = {**common, "progress": Progress(progress.enabled, progress.describe("shuffled-labels reference"))}
    _run_probe(cfg, features, labels, test_idx, folds_idx, keep=shuffled, fit_labels=fit_labels,
               n_folds_trained=cfg.shuffled_reference_models, **common)
    test = np.asarray(test_idx, dtype=np.int64)
    repetitions = [
        Repetition(train=y[np.concatenate([np.asarray(f) for j, f in enumerate(folds_idx) if j != k])],
                   scored={"val": y[np.asarray(fold)], "test": y[test]})
        for k, fold in enumerate(folds_idx)
    ]
    predictions = result.predictions
    return chance_references(
        repetitions, predictions_set="test", groups=predictions.groups, group_name=predictions.group_name,
        label_mode=label_mode, seed=seed, shuffled={"val": shuffled["val"], "test": shuffled["test"]},
    )


@register_task
@dataclass(frozen=True)
class FovMlpProbe(FovProbe):
    """The paper's head: Linear(D,512) ReLU Dropout, Linear(512,256) ReLU Dropout, Linear(256,17)."""

    name: ClassVar[str] = "fov-mlp"
    description: ClassVar[str] = "MLP probe (512-256) on frozen FOV embeddings, 5-fold CV + held-out test (paper Table 1)"

    hidden_dims: tuple[int, ...] = field(default=(512, 256), metadata={"help": "widths of the hidden layers"})
    dropout: float = field(default=0.5, metadata={"help": "dropout after each hidden layer"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not all(isinstance(h, int) and h >= 1 for h in self.hidden_dims):
            raise ConfigError(f"task {self.name}: hidden_dims must be positive integers, got {self.hidden_dims!r}")
        if not 0 <= self.dropout <= 0.99:
            raise ConfigError(f"task {self.name}: dropout must be in [0, 0.99], got {self.dropout!r}")

    def head(self) -> tuple[tuple[int, ...], float]:
        return tuple(self.hidden_dims), float(self.dropout)


@register_task
@dataclass(frozen=True)
class FovLinearProbe(FovProbe):
    """One Linear(D, 17), trained exactly like ``fov-mlp``."""

    name: ClassVar[str] = "fov-linear"
    description: ClassVar[str] = "Linear probe on frozen FOV embeddings, trained like fov-mlp"


# -- input checks ----------------------------------------------------------------------------
def _check_inputs(features, labels, test_idx, folds_idx, n_classes):
    x = np.asarray(features)
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
        raise DataError(f"features: expected a numeric (items x dims) array, got shape {x.shape} dtype {x.dtype}")
    x = x.astype(np.float32, copy=False)
    finite = np.isfinite(x)
    if not finite.all():
        i, j = np.argwhere(~finite)[0]
        raise DataError(
            f"features: {int((~finite).sum())} NaN/inf values (first at item {i}, dim {j}); "
            "re-extract the embeddings (ocbench run --overwrite) or drop those items"
        )
    y = np.asarray(labels)
    if y.shape != (x.shape[0], n_classes):
        raise DataError(f"labels: expected shape ({x.shape[0]}, {n_classes}), got {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise DataError("labels: expected only 0/1 values")
    n = x.shape[0]

    def positions(name: str, idx) -> np.ndarray:
        arr = np.asarray(idx)
        if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
            raise DataError(f"{name}: expected a non-empty 1-D array of integer row positions")
        if arr.min() < 0 or arr.max() >= n:
            raise DataError(f"{name}: row positions must be in [0, {n}); the split does not match the features")
        return arr.astype(np.int64)

    test = positions("test_idx", test_idx)
    folds = [positions(f"folds_idx[{k}]", f) for k, f in enumerate(folds_idx)]
    if len(folds) < 2:
        raise DataError(f"folds_idx: cross-validation needs at least 2 folds, got {len(folds)}")
    everything = np.concatenate([test, *folds])
    if np.unique(everything).size != everything.size:
        raise DataError("folds_idx/test_idx: a row appears twice; test and folds must be disjoint")
    return x, y.astype(np.float32), test, folds


def _fold_seed(seed: int, fold: int) -> int:
    return int(np.random.SeedSequence([seed, fold]).generate_state(1, np.uint64)[0])


def _resolve_device(device: Any):
    import torch

    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device: {device!r} is not a torch device (try cpu, cuda or auto)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {device!r} requested but CUDA is not available; use --device cpu")
    return dev


# -- cross-validation ------------------------------------------------------------------------
def _run_probe(cfg: FovProbe, features, labels, test_idx, folds_idx, *, seed, device, progress, max_parallel_folds, class_names,
               item_ids=None, item_groups=None, group_name="protein", fit_labels=None, keep=None, robust=False,
               n_folds_trained=None, label_mode="multilabel"):
    """``fit_labels``: labels to train on instead of ``labels`` (which are still what is scored);
    ``keep``: a dict that receives each fold model's predictions (``val``, ``test``: lists);
    ``robust``: without the z-score, standardise robustly on each fold's training rows;
    ``n_folds_trained``: train only the first this many fold models (None: all);
    ``label_mode``: ``single`` trains with softmax cross-entropy and predicts the argmax class."""
    from ocbench.tasks.metrics import check_label_mode, cross_validation_metrics

    started = time.perf_counter()
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed: expected an integer >= 0, got {seed!r}")
    if max_parallel_folds is not None and max_parallel_folds < 1:
        raise ConfigError(f"max_parallel_folds: expected an integer >= 1, got {max_parallel_folds!r}")
    x, y, test, folds = _check_inputs(features, labels, test_idx, folds_idx, len(class_names))
    y_fit = y if fit_labels is None else _check_inputs(features, fit_labels, test_idx, folds_idx, len(class_names))[1]
    single = check_label_mode(y, label_mode) == "single"
    dev = _resolve_device(device)

    plans = _plan_folds(cfg, x, y_fit, folds, n_folds_trained, seed, robust)
    groups = _stack_folds(plans, max_parallel_folds or (1 if dev.type == "cpu" else len(plans)))
    outcome = _train_and_score(cfg, groups, len(plans), len(folds), x, y, y_fit, test, dev, progress, single)
    if keep is not None:
        keep.update(val=outcome.val_preds, test=outcome.test_preds)
    metrics = cross_validation_metrics(outcome.val_scores, outcome.test_scores, class_names)
    details = {
        "effective_lr": cfg.effective_lr,
        "n_train": [int(p.train.size) for p in plans],
        "n_val": [int(p.val.size) for p in plans],
        "n_test": int(test.size),
        "feature_dim": int(x.shape[1]),
        "final_train_loss": outcome.final_loss,
        "fold_groups": [[p.fold for p in grp] for grp in groups],
    }
    predictions = _test_predictions(x.shape[0], item_ids, item_groups, group_name, test, y, outcome.test_preds, class_names)
    return TaskResult(
        task=cfg.name,
        protocol_version=cfg.protocol_version,
        config=cfg.to_dict(),
        scores=metrics["scores"],
        per_class=metrics["per_class"],
        per_class_values=metrics["per_class_values"],
        class_names=tuple(class_names),
        seed=int(seed),
        device=str(dev),
        wall_time_s=time.perf_counter() - started,
        details=details,
        predictions=predictions,
    )


def _plan_folds(cfg: FovProbe, x: np.ndarray, y_fit: np.ndarray, folds: list[np.ndarray], n_folds_trained: int | None,
                seed: int, robust: bool) -> list[_FoldPlan]:
    """Fold ``k``'s model trains on the other folds, with draw weights and standardizer from those rows only."""
    plans = []
    for k, val in enumerate(folds[:n_folds_trained]):
        train = np.concatenate([f for j, f in enumerate(folds) if j != k])
        plans.append(
            _FoldPlan(
                fold=k,
                train=train,
                val=val,
                weights=rarest_label_weights(y_fit[train]) if cfg.resample else None,
                standardizer=(fit_standardizer(x[train]) if cfg.standardize else
                              _robust_standardizer(x[train]) if robust else _identity_standardizer(x.shape[1])),
                seed=_fold_seed(int(seed), k),
                steps_per_epoch=math.ceil(train.size / cfg.batch_size),
            )
        )
    return plans


def _stack_folds(plans: list[_FoldPlan], limit: int) -> list[list[_FoldPlan]]:
    """Groups of at most ``limit`` folds trained as one stacked model."""
    # Folds with the same number of steps per epoch can share every optimizer step.
    groups: list[list[_FoldPlan]] = []
    for steps in sorted({p.steps_per_epoch for p in plans}):
        same = [p for p in plans if p.steps_per_epoch == steps]
        groups += [same[i : i + limit] for i in range(0, len(same), limit)]
    return groups


@dataclass
class _FoldOutcomes:
    """Per fold model (by fold number): scores and predictions on its validation fold and the test
    set, and its final training loss."""

    val_scores: list[Any]
    test_scores: list[Any]
    val_preds: list[Any]
    test_preds: list[Any]
    final_loss: list[Any]


def _train_and_score(cfg: FovProbe, groups: list[list[_FoldPlan]], n_plans: int, n_folds: int, x: np.ndarray, y: np.ndarray,
                     y_fit: np.ndarray, test: np.ndarray, dev, progress, single: bool) -> _FoldOutcomes:
    """Train every group of folds (on ``y_fit``), then score each fold model against ``y``."""
    from ocbench.tasks.metrics import multilabel_scores

    out = _FoldOutcomes(*([None] * n_plans for _ in range(5)))
    report = progress if isinstance(progress, Progress) else Progress(bool(progress))
    with report.bar(cfg.epochs * len(groups), cfg.name, unit="epoch") as bar:
        for group in groups:
            folds_text = f"fold{'s' if len(group) > 1 else ''} {','.join(str(p.fold + 1) for p in group)}/{n_folds}"
            bar.set_description(report.describe(f"{cfg.name} {folds_text}"))
            params, losses = _train_group(cfg, group, x, y_fit, dev, bar, single=single)
            for g, plan in enumerate(group):
                out.final_loss[plan.fold] = losses[g]
                fold_params = [(w[g], b[g]) for w, b in params]
                val_pred = _predict(cfg, fold_params, plan.standardizer.apply(x[plan.val]), dev, single)
                test_pred = _predict(cfg, fold_params, plan.standardizer.apply(x[test]), dev, single)
                out.val_scores[plan.fold] = multilabel_scores(y[plan.val], val_pred)
                out.test_scores[plan.fold] = multilabel_scores(y[test], test_pred)
                out.test_preds[plan.fold] = test_pred
                out.val_preds[plan.fold] = val_pred
                report.step(
                    f"{cfg.name} fold {plan.fold + 1}/{n_folds} done: val macro-F1 "
                    f"{out.val_scores[plan.fold]['macro_f1']:.3f}, test {out.test_scores[plan.fold]['macro_f1']:.3f}"
                )
    return out


def _test_predictions(n: int, item_ids, item_groups, group_name: str, test: np.ndarray, y: np.ndarray,
                      test_preds: list[Any], class_names: Sequence[str]):
    """Every fold model's test-set predictions, with the items' ids and the groups the interval resamples."""
    from ocbench.predictions import Predictions

    ids = np.asarray([str(i) for i in item_ids]) if item_ids is not None else np.arange(n).astype(str)
    if item_groups is None:
        group_of, group_name = ids, "item"
    else:
        group_of = np.asarray([str(g) for g in item_groups])
    if ids.size != n or group_of.size != n:
        raise DataError(f"item_ids/groups: expected {n} values each, got {ids.size} and {group_of.size}")
    return Predictions.build(
        eval_set="test", item_ids=ids[test], groups=group_of[test], group_name=group_name,
        y_true=y[test], y_pred=np.stack(test_preds), class_names=class_names,
    )
