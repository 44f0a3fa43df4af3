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

Speed: the standardized training rows stay on the device as one tensor; batches are gathered
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
        kept: dict[str, Any] = {}
        result = _run_probe(self, features, labels, test_idx, folds_idx, keep=kept, **common)
        if feature_standardization == "robust":
            result = replace(result, feature_standardization={
                "declared": "robust",
                "method": "per feature: (x - median) / (IQR / 1.349), the std where the IQR is 0, 1 where constant",
                "fitted_on": "each fold's training rows",
                "applied": robust,
                **({} if robust else {"note": "subsumed by the probe's own z-score fitted on the same rows "
                                              "(invariant to a per-feature shift and rescaling)"}),
            })
        if not references:
            return result

        from ocbench.chance import Repetition, chance_references, shuffled_rows

        y = np.asarray(labels)
        cv_rows = np.concatenate([np.asarray(f, dtype=np.int64) for f in folds_idx])
        fit_labels = y.copy()
        fit_labels[cv_rows] = y[cv_rows[shuffled_rows(cv_rows.size, seed)]]
        shuffled: dict[str, Any] = {}
        if isinstance(progress, Progress):
            common["progress"] = Progress(progress.enabled, progress.describe("shuffled-labels reference"))
        _run_probe(self, features, labels, test_idx, folds_idx, keep=shuffled, fit_labels=fit_labels,
                   n_folds_trained=self.shuffled_reference_models, **common)
        test = np.asarray(test_idx, dtype=np.int64)
        repetitions = [
            Repetition(train=y[np.concatenate([np.asarray(f) for j, f in enumerate(folds_idx) if j != k])],
                       scored={"val": y[np.asarray(fold)], "test": y[test]})
            for k, fold in enumerate(folds_idx)
        ]
        predictions = result.predictions
        refs = chance_references(
            repetitions, predictions_set="test", groups=predictions.groups, group_name=predictions.group_name,
            label_mode=label_mode, seed=seed, shuffled={"val": shuffled["val"], "test": shuffled["test"]},
        )
        return replace(result, references=refs)


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


# -- training --------------------------------------------------------------------------------
@dataclass
class _FoldPlan:
    fold: int
    train: np.ndarray
    val: np.ndarray
    weights: np.ndarray | None
    standardizer: Standardizer
    seed: int
    steps_per_epoch: int


def _run_probe(cfg: FovProbe, features, labels, test_idx, folds_idx, *, seed, device, progress, max_parallel_folds, class_names,
               item_ids=None, item_groups=None, group_name="protein", fit_labels=None, keep=None, robust=False,
               n_folds_trained=None, label_mode="multilabel"):
    """``fit_labels``: labels to train on instead of ``labels`` (which are still what is scored);
    ``keep``: a dict that receives each fold model's predictions (``val``, ``test``: lists);
    ``robust``: without the z-score, standardise robustly on each fold's training rows;
    ``n_folds_trained``: train only the first this many fold models (None: all);
    ``label_mode``: ``single`` trains with softmax cross-entropy and predicts the argmax class."""
    from ocbench.predictions import Predictions
    from ocbench.tasks.metrics import check_label_mode, cross_validation_metrics, multilabel_scores

    started = time.perf_counter()
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed: expected an integer >= 0, got {seed!r}")
    if max_parallel_folds is not None and max_parallel_folds < 1:
        raise ConfigError(f"max_parallel_folds: expected an integer >= 1, got {max_parallel_folds!r}")
    x, y, test, folds = _check_inputs(features, labels, test_idx, folds_idx, len(class_names))
    y_fit = y if fit_labels is None else _check_inputs(features, fit_labels, test_idx, folds_idx, len(class_names))[1]
    single = check_label_mode(y, label_mode) == "single"
    dev = _resolve_device(device)

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
    # Folds with the same number of steps per epoch can share every optimizer step.
    limit = max_parallel_folds or (1 if dev.type == "cpu" else len(plans))
    groups: list[list[_FoldPlan]] = []
    for steps in sorted({p.steps_per_epoch for p in plans}):
        same = [p for p in plans if p.steps_per_epoch == steps]
        groups += [same[i : i + limit] for i in range(0, len(same), limit)]


    val_scores: list[Any] = [None] * len(plans)
    test_scores: list[Any] = [None] * len(plans)
    test_preds: list[Any] = [None] * len(plans)
    val_preds: list[Any] = [None] * len(plans)
    final_loss: list[Any] = [None] * len(plans)
    report = progress if isinstance(progress, Progress) else Progress(bool(progress))
    with report.bar(cfg.epochs * len(groups), cfg.name, unit="epoch") as bar:
        for group in groups:
            folds_text = f"fold{'s' if len(group) > 1 else ''} {','.join(str(p.fold + 1) for p in group)}/{len(folds)}"
            bar.set_description(report.describe(f"{cfg.name} {folds_text}"))
            params, losses = _train_group(cfg, group, x, y_fit, dev, bar, single=single)
            for g, plan in enumerate(group):
                final_loss[plan.fold] = losses[g]
                fold_params = [(w[g], b[g]) for w, b in params]
                val_pred = _predict(cfg, fold_params, plan.standardizer.apply(x[plan.val]), dev, single)
                test_pred = _predict(cfg, fold_params, plan.standardizer.apply(x[test]), dev, single)
                val_scores[plan.fold] = multilabel_scores(y[plan.val], val_pred)
                test_scores[plan.fold] = multilabel_scores(y[test], test_pred)
                test_preds[plan.fold] = test_pred
                val_preds[plan.fold] = val_pred
                report.step(
                    f"{cfg.name} fold {plan.fold + 1}/{len(folds)} done: val macro-F1 "
                    f"{val_scores[plan.fold]['macro_f1']:.3f}, test {test_scores[plan.fold]['macro_f1']:.3f}"
                )

    if keep is not None:
        keep.update(val=val_preds, test=test_preds)
    metrics = cross_validation_metrics(val_scores, test_scores, class_names)
    details = {
        "effective_lr": cfg.effective_lr,
        "n_train": [int(p.train.size) for p in plans],
        "n_val": [int(p.val.size) for p in plans],
        "n_test": int(test.size),
        "feature_dim": int(x.shape[1]),
        "final_train_loss": final_loss,
        "fold_groups": [[p.fold for p in grp] for grp in groups],
    }
    ids = np.asarray([str(i) for i in item_ids]) if item_ids is not None else np.arange(x.shape[0]).astype(str)
    if item_groups is None:
        group_of, group_name = ids, "item"
    else:
        group_of = np.asarray([str(g) for g in item_groups])
    if ids.size != x.shape[0] or group_of.size != x.shape[0]:
        raise DataError(f"item_ids/groups: expected {x.shape[0]} values each, got {ids.size} and {group_of.size}")
    predictions = Predictions.build(
        eval_set="test", item_ids=ids[test], groups=group_of[test], group_name=group_name,
        y_true=y[test], y_pred=np.stack(test_preds), class_names=class_names,
    )
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


def _dropout_bits(p: float) -> tuple[Any, int, int, float]:
    """How to draw dropout masks from random integers: (dtype, bits, keep threshold, 1/keep).

    A unit is kept iff its random ``bits``-bit signed integer is >= the threshold, so the keep
    probability is ``1 - round(p * 2**bits) / 2**bits``: exact with 8 bits for p = 0.5 (half the
    random numbers of 16 bits), within 2**-17 otherwise.
    """
    import torch

    bits = 8 if float(p * 256).is_integer() else 16
    dropped = round(p * 2**bits)
    dtype = torch.int8 if bits == 8 else torch.int16
    return dtype, bits, dropped - 2 ** (bits - 1), 2**bits / (2**bits - dropped)


def _matmul_per_fold(dev) -> bool:
    """On CPU one matmul per fold: a batched matmul over 5 folds splits them 3/2 over 2 cores (-15%)."""
    return dev.type == "cpu"


def _train_group(cfg: FovProbe, group: list[_FoldPlan], x: np.ndarray, y: np.ndarray, dev, bar, single: bool = False):
    """Train the folds of ``group`` as one stacked model; return [(W, b) per layer], final losses.
    ``single``: softmax cross-entropy over the classes (one label per row) instead of a BCE per class.

    The backward pass is written out (an MLP's is four lines) so that every activation, gradient
    and mask lives in a buffer allocated once: autograd's fresh tensors per op cost more than the
    elementwise work itself on small CPUs. ``tests/test_tasks_probe.py`` checks it against autograd.
    """
    import torch
    import torch.nn.functional as F

    G, B, C = len(group), cfg.batch_size, y.shape[1]
    hidden, p_drop = cfg.head()
    dims = [x.shape[1], *hidden, C]
    n_layers = len(dims) - 1
    steps = group[0].steps_per_epoch
    sizes = [p.train.size for p in group]
    starts = np.cumsum([0, *sizes[:-1]])

    # One tensor of every fold's standardized training rows; batches index into it.
    z_train = torch.from_numpy(np.concatenate([p.standardizer.apply(x[p.train]) for p in group])).to(dev)
    y_train = torch.from_numpy(np.concatenate([y[p.train] for p in group])).to(dev)
    gens = [torch.Generator(device=dev).manual_seed(p.seed) for p in group]
    draw_weights = [torch.from_numpy(p.weights).to(dev) if p.weights is not None else None for p in group]

    # All weights and biases are views of one flat tensor (and their gradients of another), so
    # AdamW updates a single tensor per step.
    shapes = [s for d_in, d_out in zip(dims[:-1], dims[1:]) for s in ((G, d_in, d_out), (G, 1, d_out))]
    flat = torch.empty(sum(math.prod(s) for s in shapes), device=dev)
    flat.grad = torch.zeros_like(flat)  # filled in place by the backward pass below
    views, grads, at = [], [], 0
    for shape in shapes:
        size = math.prod(shape)
        views.append(flat[at : at + size].view(shape))
        grads.append(flat.grad[at : at + size].view(shape))
        at += size
    weights, biases, grad_w, grad_b = views[0::2], views[1::2], grads[0::2], grads[1::2]
    for w, b in zip(weights, biases):
        bound = 1.0 / math.sqrt(w.shape[1])  # nn.Linear's default init
        for g in range(G):
            w[g].uniform_(-bound, bound, generator=gens[g])
            b[g].uniform_(-bound, bound, generator=gens[g])
    opt_kwargs: dict[str, Any] = dict(lr=cfg.effective_lr, betas=cfg.betas, eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
    if dev.type in ("cpu", "cuda"):
        opt_kwargs["fused"] = True  # one kernel instead of a dozen elementwise passes
    opt = torch.optim.AdamW([flat], **opt_kwargs)

    # Flat buffers; a step with `rows` rows per fold uses the first G * rows rows of each.
    inputs = torch.empty(G * B, dims[0], device=dev)
    targets = torch.empty(G * B, C, device=dev)
    acts = [torch.empty(G * B, d, device=dev) for d in dims[1:]]
    deltas = [torch.empty(G * B, d, device=dev) for d in dims[1:]]
    keep = [torch.empty(G * B, h, device=dev) for h in hidden]  # dropout masks, 0.0 or 1.0
    mask_dtype, mask_bits, keep_threshold, keep_scale = _dropout_bits(p_drop)
    use_dropout = p_drop > 0 and bool(hidden)
    in_scale = [1.0] + [keep_scale if use_dropout else 1.0] * len(hidden)  # dropout's 1/keep, per layer input
    # Random integers for the dropout masks, drawn as int64 words: one row per fold and layer,
    # always a full batch's worth so a fold's random stream does not depend on its neighbours.
    per_word = 64 // mask_bits
    mask_words = [torch.empty(G, math.ceil(B * h / per_word), dtype=torch.int64, device=dev) for h in hidden]

    if _matmul_per_fold(dev):
        def matmul_(out, a, b, beta, alpha):
            for g in range(G):
                out[g].addmm_(a[g], b[g], beta=beta, alpha=alpha)

    else:
        def matmul_(out, a, b, beta, alpha):
            out.baddbmm_(a, b, beta=beta, alpha=alpha)

    epoch_idx = torch.empty(G, steps * B, dtype=torch.int64, device=dev)
    offsets = torch.tensor(starts, dtype=torch.int64, device=dev)[:, None]
    last = steps * B - B  # first position of the epoch's last batch
    # The last batch is cut to the longest fold's remainder: rows past it would weigh 0 in every
    # fold and only cost matmul time (4% of an epoch at OpenCell's size).
    last_rows = max(n - last for n in sizes)
    last_valid = torch.arange(last_rows, device=dev)[None, :] < torch.tensor([n - last for n in sizes], device=dev)[:, None]
    # BCE is a mean over rows and classes, cross-entropy (single-label) over rows only
    per_row = 1 if single else C
    last_weight = (last_valid.float() / last_valid.sum(1, keepdim=True) / per_row)[:, :, None]
    epoch_loss = torch.zeros(G, device=dev)

    for epoch in range(cfg.epochs):
        lr = cfg.effective_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.epochs))
        for param_group in opt.param_groups:
            param_group["lr"] = lr
        epoch_idx.copy_(offsets.expand_as(epoch_idx))  # padding rows point at a valid row, weight 0
        for g, n in enumerate(sizes):
            if draw_weights[g] is not None:
                draws = torch.multinomial(draw_weights[g], n, replacement=True, generator=gens[g])
            else:
                draws = torch.randperm(n, generator=gens[g], device=dev)
            epoch_idx[g, :n] += draws
        epoch_loss.zero_()
        # The loss is only shown (every 10th epoch) and returned (last epoch): compute it then only.
        track_loss = epoch % 10 == 0 or epoch == cfg.epochs - 1
        for step in range(steps):
            idx = epoch_idx[:, step * B : step * B + (last_rows if step == steps - 1 else B)]
            rows = idx.shape[1]
            flat = idx.reshape(-1)
            x_b = inputs[: G * rows]
            torch.index_select(z_train, 0, flat, out=x_b)
            y_b = targets[: G * rows]
            torch.index_select(y_train, 0, flat, out=y_b)
            x_b, y_b = x_b.view(G, rows, -1), y_b.view(G, rows, C)

            # forward: a = relu(h @ W + b) * keep, the 1/keep scale folded into the next matmul
            layer_in = [x_b]
            for layer in range(n_layers):
                a = acts[layer][: G * rows].view(G, rows, -1)
                a.copy_(biases[layer].expand_as(a))
                matmul_(a, layer_in[-1], weights[layer], beta=1.0, alpha=in_scale[layer])
                if layer < n_layers - 1:
                    a.clamp_min_(0.0)
                    if use_dropout:
                        for g in range(G):
                            mask_words[layer][g].random_(-(2**63), None, generator=gens[g])
                        bits = mask_words[layer].view(mask_dtype)[:, : rows * hidden[layer]].view(G, rows, -1)
                        mask = keep[layer][: G * rows].view(G, rows, -1)
                        torch.ge(bits, keep_threshold, out=mask)  # (masked_fill_ is 10x slower on CPU)
                        a.mul_(mask)
                layer_in.append(a)
            logits = layer_in[-1]

            # loss: per fold, the mean BCE over its rows and classes, or the mean cross-entropy
            # over its rows (single-label); padding rows weigh 0
            row_weight = last_weight if step == steps - 1 else 1.0 / (rows * per_row)
            delta = deltas[-1][: G * rows].view(G, rows, C)
            if single:
                if track_loss:
                    with torch.no_grad():
                        ce = -(y_b * torch.log_softmax(logits, dim=2)).sum(2, keepdim=True)
                        epoch_loss += (ce * row_weight).sum((1, 2))
                delta.copy_(torch.softmax(logits, dim=2))
            else:
                if track_loss:
                    with torch.no_grad():
                        bce = F.binary_cross_entropy_with_logits(logits, y_b, reduction="none")
                        epoch_loss += (bce * row_weight).sum((1, 2))
                torch.sigmoid(logits, out=delta)
            delta.sub_(y_b).mul_(row_weight)  # d loss / d logits

            # backward
            for layer in reversed(range(n_layers)):
                h_in = layer_in[layer]
                matmul_(grad_w[layer], h_in.transpose(1, 2), delta, beta=0.0, alpha=in_scale[layer])
                torch.sum(delta, dim=1, keepdim=True, out=grad_b[layer])
                if layer > 0:
                    below = deltas[layer - 1][: G * rows].view(G, rows, -1)
                    matmul_(below, delta, weights[layer].transpose(1, 2), beta=0.0, alpha=in_scale[layer])
                    # through relu and dropout: the gradient passes where the unit's output is > 0
                    torch.ops.aten.threshold_backward.grad_input(below, h_in, 0.0, grad_input=below)
                    delta = below
            opt.step()
        bar.update(1)
        if epoch % 10 == 0 or epoch == cfg.epochs - 1:
            bar.set_postfix(loss=f"{float(epoch_loss.mean()) / steps:.4f}")
    final = (epoch_loss / steps).tolist()
    return list(zip(weights, biases)), final


def _predict(cfg: FovProbe, params, features: np.ndarray, dev, single: bool = False) -> np.ndarray:
    """Binary predictions of one fold's model (no dropout): the classes whose sigmoid output
    reaches the threshold, or (``single``) the one-hot row of the largest logit."""
    import torch

    with torch.inference_mode():
        h = torch.from_numpy(features).to(dev)
        for layer, (w, b) in enumerate(params):
            h = torch.addmm(b[0], h, w)
            if layer < len(params) - 1:
                h = torch.relu(h)
        if single:
            return np.eye(h.shape[1], dtype=bool)[h.argmax(dim=1).cpu().numpy()]
        return (torch.sigmoid(h) >= cfg.threshold).cpu().numpy()
