"""What a predictor that never looks at an image scores: chance references, and collapse warnings.

Every entry carries references computed from the labels alone, on the same split, the same
evaluated items and with the same interval as its own score, so a reader sees at once whether a
backbone learned anything:

- ``all-positive`` (multi-label data): every class predicted for every item. A class with a share
  ``p`` of positive items scores F1 ``2p / (1 + p)``, so on rare classes this is far from 0;
- ``majority-class`` (single-label data): every item gets the most frequent training class;
- ``class-prior``: each class predicted positive at random with its frequency in the training
  part. Its expected macro-F1 is estimated from seeded draws until its standard error is below
  :data:`CLASS_PRIOR_MAX_STANDARD_ERROR` (draws and error are recorded). F1 needs only the per-class
  counts, and with independent draws per item the true/false positives of a class among ``n``
  positive (negative) items are Binomial(``n``, prior), so the counts are drawn directly (for
  single-label data one class per item is drawn; each class's counts have the same marginal
  distribution, which is all an expected macro-F1 depends on);
- ``shuffled-labels``: the task's own probe (or k-NN vote) run with the training labels permuted
  across items, scored on the true labels: what the protocol makes of features with no link to
  the labels. The task computes its predictions; this module scores them.

:func:`collapse_warnings` says when an entry's predictions look like one of those: the same labels
for every item, no positive at all for most of the classes present, or a score whose interval
reaches the best chance reference.

numpy only (no torch): the runner, the leaderboard and ``ocbench compare`` use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ocbench.stats import (
    LEVEL, N_RESAMPLES, SEED, bootstrap_interval, group_codes, macro_f1, macro_f1_from_counts, resample_weights,
)
from ocbench.summaries import summarize

__all__ = [
    "LABEL_MODES",
    "REFERENCE_NAMES",
    "CLASS_PRIOR_MAX_STANDARD_ERROR",
    "COLLAPSE_KINDS",
    "Repetition",
    "all_positive_predictions",
    "majority_class_predictions",
    "reference_record",
    "class_prior_record",
    "chance_references",
    "shuffled_rows",
    "collapse_warnings",
    "best_reference",
]

#: How items carry labels: several classes each (OpenCell) or exactly one.
LABEL_MODES: tuple[str, ...] = ("multilabel", "single")
REFERENCE_NAMES: tuple[str, ...] = ("all-positive", "majority-class", "class-prior", "shuffled-labels")
#: The class-prior reference draws until the standard error of its expected macro-F1 is below this.
CLASS_PRIOR_MAX_STANDARD_ERROR = 0.002
_DRAW_BATCH = 200
_MAX_DRAWS = 20_000
#: Draws averaged inside each bootstrap resample of the class-prior's interval (bounds its cost).
_INTERVAL_DRAWS = 50
#: Warning kinds that mean the model's predictions collapsed (``compare`` reports when both did).
COLLAPSE_KINDS: tuple[str, ...] = ("constant-predictions", "few-classes-predicted")

_DESCRIPTIONS = {
    "all-positive": "every class predicted positive for every item (labels only)",
    "majority-class": "every item predicted as the most frequent training class (labels only)",
    "class-prior": "each class predicted positive at random with its training frequency (expected over seeded draws)",
    "shuffled-labels": "the task's own probe trained on labels shuffled across items, scored on the true labels",
}


@dataclass(frozen=True)
class Repetition:
    """One model of a task's protocol, as a chance predictor sees it: the labels it would learn
    from (``train``, (n, C) 0/1) and the true labels of each set it is scored on (``scored``:
    ``{eval_set: (m, C)}``; e.g. a cross-validation fold's validation rows and the test set)."""

    train: np.ndarray
    scored: Mapping[str, np.ndarray]


def all_positive_predictions(y: np.ndarray) -> np.ndarray:
    return np.ones_like(np.asarray(y), dtype=np.uint8)


def majority_class_predictions(train: np.ndarray, y: np.ndarray) -> np.ndarray:
    """One-hot of the training part's most frequent class (lowest index on a tie) for every item."""
    out = np.zeros_like(np.asarray(y), dtype=np.uint8)
    out[:, int(np.argmax(np.asarray(train).sum(axis=0)))] = 1
    return out


def _interval(y_true: np.ndarray, preds: np.ndarray, groups: Sequence[Any], group_name: str) -> dict[str, Any]:
    return bootstrap_interval(y_true, preds, groups, group_name=group_name).to_dict()


def reference_record(
    name: str,
    truth: Mapping[str, Sequence[np.ndarray]],
    preds: Mapping[str, Sequence[np.ndarray]],
    *,
    predictions_set: str | None,
    groups: Sequence[Any] | None,
    group_name: str,
    description: str | None = None,
) -> dict[str, Any]:
    """The entry's record of a deterministic reference: ``{"name", "description", "scores"}`` with
    ``scores[set]["macro_f1"]`` summarized over the repetitions (one value per repetition, as the
    entry's own scores) and, on ``predictions_set``, the same interval as the entry's."""
    scores: dict[str, dict[str, Any]] = {}
    for part, truths in truth.items():
        values = [macro_f1(t, p) for t, p in zip(truths, preds[part])]
        summary = summarize(values)
        if part == predictions_set and groups is not None:
            summary["interval"] = {**_interval(truths[0], np.stack(preds[part]), groups, group_name),
                                   "estimate": summary["mean"]}
        scores[part] = {"macro_f1": summary}
    return {"name": name, "description": description or _DESCRIPTIONS[name], "scores": scores}


def _per_group(y: np.ndarray, codes: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Positive and negative items per group and class: two (G, C) int arrays."""
    onehot = np.zeros((n_groups, codes.size))
    onehot[codes, np.arange(codes.size)] = 1.0
    pos = np.rint(onehot @ y.astype(np.float64)).astype(np.int64)
    return pos, np.bincount(codes, minlength=n_groups)[:, None] - pos


def _draw_counts(rng: np.random.Generator, pos: np.ndarray, neg: np.ndarray, prior: np.ndarray, draws: int) -> np.ndarray:
    """(draws, ..., 3, C) counts of ``draws`` class-prior predictors on items with ``pos``/``neg`` (..., C)."""
    tp = rng.binomial(pos, prior, size=(draws, *pos.shape))
    fp = rng.binomial(neg, prior, size=(draws, *neg.shape))
    return np.stack([tp, fp, pos[None] - tp], axis=-2)


def class_prior_record(
    repetitions: Sequence[Repetition],
    *,
    predictions_set: str | None,
    groups: Sequence[Any] | None,
    group_name: str,
    label_mode: str = "multilabel",
    seed: int = 0,
) -> dict[str, Any]:
    """The class-prior reference: each value is a repetition's expected macro-F1 (mean over draws),
    drawn until the standard error of every set's mean is below the limit; the record adds
    ``draws`` and ``standard_error`` per set. Its interval (on ``predictions_set``) resamples groups
    as the entry's does, each resample scored by the mean over the first draws."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7919]))
    parts = list(repetitions[0].scored)
    priors = []
    for rep in repetitions:
        train = np.asarray(rep.train, dtype=np.float64)
        prior = train.mean(axis=0) if train.shape[0] else np.zeros(train.shape[1])
        if label_mode == "single" and prior.sum() > 0:
            prior = prior / prior.sum()
        priors.append(prior)
    totals = {part: [(np.asarray(rep.scored[part]).sum(0).astype(np.int64),
                      np.int64(len(rep.scored[part])) - np.asarray(rep.scored[part]).sum(0).astype(np.int64))
                     for rep in repetitions] for part in parts}
    samples: dict[str, list[np.ndarray]] = {part: [] for part in parts}  # (draws, repetitions) per batch
    n = 0
    standard_error: dict[str, float] = {}
    while True:
        for part in parts:
            batch = np.stack([
                macro_f1_from_counts(_draw_counts(rng, pos, neg, prior, _DRAW_BATCH))
                for (pos, neg), prior in zip(totals[part], priors)
            ], axis=1)
            samples[part].append(batch)
        n += _DRAW_BATCH
        for part in parts:
            per_draw = np.concatenate(samples[part]).mean(axis=1)  # one draw: the mean over repetitions
            standard_error[part] = float(per_draw.std(ddof=1) / np.sqrt(per_draw.size))
        if max(standard_error.values()) < CLASS_PRIOR_MAX_STANDARD_ERROR or n >= _MAX_DRAWS:
            break
    scores: dict[str, dict[str, Any]] = {}
    for part in parts:
        values = np.concatenate(samples[part]).mean(axis=0)  # per repetition: mean over draws
        summary = summarize([float(v) for v in values])
        if part == predictions_set and groups is not None:
            summary["interval"] = _class_prior_interval(
                [rep.scored[part] for rep in repetitions], priors, groups, group_name, rng, summary["mean"],
            )
        scores[part] = {"macro_f1": summary}
    return {
        "name": "class-prior", "description": _DESCRIPTIONS["class-prior"], "scores": scores,
        "draws": n, "standard_error": standard_error,
    }


def _class_prior_interval(truths: Sequence[np.ndarray], priors: Sequence[np.ndarray], groups: Sequence[Any],
                          group_name: str, rng: np.random.Generator, estimate: float) -> dict[str, Any]:
    codes, n_groups = group_codes(groups)
    weights = resample_weights(n_groups, N_RESAMPLES, SEED)  # the resamples of the entry's own interval
    resampled = np.zeros(N_RESAMPLES)
    for truth, prior in zip(truths, priors):
        pos, neg = _per_group(np.asarray(truth), codes, n_groups)
        counts = _draw_counts(rng, pos, neg, prior, _INTERVAL_DRAWS)  # (D, G, 3, C)
        d, g, k, c = counts.shape
        summed = np.matmul(weights, counts.reshape(d, g, k * c).astype(np.float64))  # (D, B, 3C)
        resampled += macro_f1_from_counts(summed.reshape(d, -1, k, c)).mean(axis=0)
    resampled /= len(truths)
    a = (1.0 - LEVEL) / 2.0
    low, high = (float(v) for v in np.quantile(resampled[np.isfinite(resampled)], [a, 1.0 - a]))
    return {
        "estimate": estimate, "low": min(low, estimate), "high": max(high, estimate), "level": LEVEL,
        "method": f"cluster bootstrap (each resample: mean over {_INTERVAL_DRAWS} draws)", "group": group_name,
        "n_groups": n_groups, "n_resamples": N_RESAMPLES, "seed": SEED,
    }


def chance_references(
    repetitions: Sequence[Repetition],
    *,
    predictions_set: str | None,
    groups: Sequence[Any] | None,
    group_name: str = "protein",
    label_mode: str = "multilabel",
    seed: int = 0,
    shuffled: Mapping[str, Sequence[np.ndarray]] | None = None,
) -> list[dict[str, Any]]:
    """The references of one run: all-positive (multi-label) or majority-class (single-label),
    class-prior, and shuffled-labels when the task passes its predictions (``{eval_set: one (m, C)
    array per repetition}``). ``groups``: the group of each item of ``predictions_set`` (the
    interval's resampled unit), the same for every repetition."""
    if label_mode not in LABEL_MODES:
        raise ValueError(f"label_mode must be one of {', '.join(LABEL_MODES)}, got {label_mode!r}")
    truth = {part: [np.asarray(rep.scored[part]) for rep in repetitions] for part in repetitions[0].scored}
    common = dict(predictions_set=predictions_set, groups=groups, group_name=group_name)
    if label_mode == "single":
        trivial = reference_record("majority-class", truth, {
            part: [majority_class_predictions(rep.train, rep.scored[part]) for rep in repetitions] for part in truth
        }, **common)
    else:
        trivial = reference_record("all-positive", truth, {
            part: [all_positive_predictions(t) for t in truths] for part, truths in truth.items()
        }, **common)
    out = [trivial, class_prior_record(repetitions, label_mode=label_mode, seed=seed, **common)]
    if shuffled is not None:
        out.append(reference_record("shuffled-labels", truth, shuffled, **common))
    return out


def shuffled_rows(n: int, seed: int) -> np.ndarray:
    """The permutation of ``n`` label rows the shuffled-labels reference trains with (seeded)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), 104729])).permutation(n)


# ---------------------------------------------------------------------------------------------
# collapse
# ---------------------------------------------------------------------------------------------
def best_reference(references: Sequence[Mapping[str, Any]], eval_set: str, metric: str = "macro_f1",
                   higher_is_better: bool = True) -> Mapping[str, Any] | None:
    """The reference with the best mean of ``metric`` on ``eval_set``: the highest, or the lowest when
    lower is better (None when none is scored there)."""
    scored = [r for r in references if r.get("scores", {}).get(eval_set, {}).get(metric) is not None]
    pick = max if higher_is_better else min
    return pick(scored, key=lambda r: r["scores"][eval_set][metric]["mean"], default=None)


def collapse_warnings(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    *,
    interval: Mapping[str, Any] | None,
    references: Sequence[Mapping[str, Any]],
    eval_set: str,
    metric: str = "macro_f1",
    higher_is_better: bool = True,
) -> list[dict[str, str]]:
    """Warnings about an entry's predictions ``y_pred`` (R, N, C) (R repeated models scored on the
    same N items; the main point of an axis) against ``y_true`` (N, C): ``[{"kind", "message"}]``.

    - ``constant-predictions``: a model gives every item the same labels;
    - ``few-classes-predicted``: on average over the models, no item is predicted positive for more
      than half of the classes present in ``y_true``;
    - ``chance-level``: the score's interval reaches the best chance reference's interval (or its
      mean, when it has none); the message says "lies below" when it is wholly under that mean."""
    t = np.asarray(y_true).astype(bool)
    p = np.asarray(y_pred).astype(bool)
    if p.ndim == 2:
        p = p[None]
    out: list[dict[str, str]] = []
    models = p.shape[0]
    constant = [bool((p[r] == p[r][:1]).all()) for r in range(models)]
    if any(constant):
        which = "every model" if all(constant) else f"{sum(constant)} of {models} models"
        labels = sorted({int(c) for r in range(models) if constant[r] for c in np.flatnonzero(p[r][0])})
        said = f"{len(labels)} class{'es' if len(labels) != 1 else ''}" if labels else "no class"
        out.append({"kind": "constant-predictions",
                    "message": f"constant predictions: {which} gives every {eval_set} item the same labels ({said})"})
    present = t.any(axis=0)
    if present.any():
        missing = np.array([(present & ~p[r].any(axis=0)).sum() for r in range(models)], dtype=float)
        share = float(missing.mean()) / int(present.sum())
        if share > 0.5:
            out.append({"kind": "few-classes-predicted",
                        "message": f"no positive prediction for {missing.mean():.1f} of the {int(present.sum())} classes "
                                   f"present in {eval_set} (mean over {models} model{'s' if models != 1 else ''})"})
    best = best_reference(references, eval_set, metric, higher_is_better)
    if interval is not None and best is not None:
        ref = best["scores"][eval_set][metric]
        name = metric.replace("macro_f1", "macro-F1")
        if higher_is_better:
            bound = (ref.get("interval") or {}).get("high", ref["mean"])
            at_chance, beyond = interval["low"] <= bound, interval["high"] < ref["mean"]
            said = f"up to {bound:.3f}"
        else:  # lower is better: the score must come below the reference's interval
            bound = (ref.get("interval") or {}).get("low", ref["mean"])
            at_chance, beyond = interval["high"] >= bound, interval["low"] > ref["mean"]
            said = f"down to {bound:.3f}"
        if at_chance:
            # An interval wholly on the wrong side of the reference's mean is worse than chance, not level with it.
            where = ("lies below" if higher_is_better else "lies above") if beyond else "reaches"
            out.append({"kind": "chance-level",
                        "message": f"{eval_set} {name} interval [{interval['low']:.3f}, {interval['high']:.3f}] {where} the "
                                   f"best chance reference ({best['name']} {ref['mean']:.3f}, {said})"})
    return out
