"""Task C: leave-one-out soft-vote k-NN on single-cell embeddings (``sc-knn``; paper Table 4).

Protocol (the seed paper, section 2.6.2 and appendix B), over the evaluation cells (:mod:`ocbench.data.cells`: weak
labels of grade-3 FOVs by default, or an expert file; chosen by :class:`~ocbench.tasks.cell_task.CellSelection`):

1. every cell is a query once; its candidates are all *other* evaluation cells (``exclude="self"``,
   the paper) or all cells of *other FOVs* (``exclude="fov"``: cells of one FOV share their weak
   labels and their imaging context, so the ``self`` track flatters every backbone);
2. cosine similarity, the ``k`` most similar candidates, weights ``exp(sim / T)`` with
   ``T = temperature`` (0.07, DINO's);
3. class scores = the weighted sum of the neighbours' label vectors, normalised per query to
   [0, 1] (``normalization``):

   - ``weight-sum`` (default): divided by the sum of the weights, so a class's score is the
     weighted fraction of the neighbours that carry it; ``>= 0.5`` is then a weighted majority
     vote *for each class on its own*. Chosen because labels are multi-label: a cell's two
     compartments do not compete for one unit of score, a class's score does not depend on the
     other classes, and k = 1 copies the neighbour's labels exactly. It is DINO's k-NN vote
     (weighted class sums) made a per-class probability;
   - ``max``: divided by the largest class score, so the top class always scores 1 and classes at
     least half as supported follow; every query then predicts at least one class;
4. positive where the score ``>= threshold`` (0.5); macro-F1 per k over the classes present
   (:mod:`ocbench.tasks.metrics`), one entry with the k axis (``main_k`` ranks).

On a single-label dataset (card ``label_mode: single``) step 3-4 is DINO's k-NN classifier rule:
the class with the largest weighted sum wins (a one-hot prediction; the lowest class index on an
exact tie), ``threshold`` and ``normalization`` are unused, and everything else is the same.

Computation is blocked: queries in chunks of rows, each chunk's similarity rows (chunk x N) in one
reused buffer, the top-k kept per chunk and the vote done on the chunk, so memory is
O(N * (D + k) + chunk * N), never N x N. On a GPU it runs there (TF32 off: fp32 similarities, so
neighbours do not depend on the device's matmul mode). Ties at the k-th place (identical
embeddings) are broken by ``torch.topk``; any choice gives the same similarities, so the vote only
changes through the tied neighbours' labels.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import numpy as np

from ocbench.errors import ConfigError, DataError
from ocbench.summaries import summarize
from ocbench.tasks.base import TaskConfig, TaskResult, register_task
from ocbench.tasks.cell_task import CellTask
from ocbench.tasks.context import Progress, RunContext

__all__ = [
    "PROTOCOL_VERSION",
    "EVAL_SET",
    "NORMALIZATIONS",
    "EXCLUSIONS",
    "KnnOutput",
    "knn_predict",
    "knn_chunk_rows",
    "ScKnn",
    "ScKnnFov",
]

PROTOCOL_VERSION = "sc-knn/1"
#: The entry's eval set: leave-one-out over the evaluation cells.
EVAL_SET = "loo"
NORMALIZATIONS: tuple[str, ...] = ("weight-sum", "max")
EXCLUSIONS: tuple[str, ...] = ("self", "fov")
#: Scores within this of the threshold count as on it: cumulative sums may round an exact 1/2 down.
_TIE_TOLERANCE = 1e-9
_MiB = 1 << 20


@dataclass
class KnnOutput:
    """What :func:`knn_predict` returns.

    ``predictions[k]``: (N, C) uint8; ``scores[k]`` (N, C) float64 when asked for; ``neighbours``
    (N, k_max) int64 row positions (-1 where a query had fewer candidates) and ``similarities``
    (N, k_max) float32 (-inf there), most similar first; ``n_candidates`` (N,) candidates per query.
    """

    ks: tuple[int, ...]
    predictions: dict[int, np.ndarray]
    neighbours: np.ndarray | None
    similarities: np.ndarray | None
    n_candidates: np.ndarray
    scores: dict[int, np.ndarray] = field(default_factory=dict)
    chunk_rows: int = 0
    device: str = "cpu"


def knn_chunk_rows(n: int, memory_bytes: int) -> int:
    """Query rows per chunk so that one chunk's similarity rows (rows x n float32) fit ``memory_bytes``."""
    return int(max(1, min(n, memory_bytes // max(1, 4 * n))))


@contextlib.contextmanager
def _fp32_matmul(device):
    import torch

    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def _group_index(groups: Sequence[Any], n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(code per row, rows sorted by code, start of each code's run, size of each code's run)."""
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise DataError(f"groups: expected one group per row ({n}), got shape {groups.shape}")
    _, codes = np.unique(groups, return_inverse=True)
    codes = codes.astype(np.int64).ravel()
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return codes, order, starts, counts


def knn_predict(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    ks: Sequence[int] = (1, 5, 10, 20, 50),
    temperature: float = 0.07,
    threshold: float = 0.5,
    normalization: str = "weight-sum",
    exclude: str = "self",
    groups: Sequence[Any] | None = None,
    device: str = "cpu",
    chunk_rows: int | None = None,
    memory_mb: int | None = None,
    keep_neighbours: bool = True,
    return_scores: bool = False,
    progress: Progress | bool = False,
    label_mode: str = "multilabel",
) -> KnnOutput:
    """Leave-one-out soft-vote k-NN of every row against the others (see the module docstring).

    ``features`` (N, D); ``labels`` (N, C) 0/1; ``groups`` (N,) (the FOV of each cell) is needed
    for ``exclude="fov"``. ``label_mode="single"``: each row is predicted the class with the largest
    weighted sum (one-hot; no class for a query without candidates).
    ``chunk_rows`` (query rows per block) or ``memory_mb`` (budget for one
    block's similarity rows; default 256 MiB on CPU, 1 GiB on GPU) only change speed and memory.
    """
    import torch

    x, y, ks, single = _checked_knn_inputs(features, labels, ks, normalization, exclude, groups, label_mode)
    n = x.shape[0]
    dev = torch.device(device)
    k_max = min(max(ks), n)  # masked candidates come back as -inf and carry no weight
    if chunk_rows is None:
        budget = (memory_mb if memory_mb is not None else (1024 if dev.type == "cuda" else 256)) * _MiB
        chunk_rows = knn_chunk_rows(n, budget)
    chunk_rows = int(max(1, min(chunk_rows, n)))
    rule = _VoteRule(ks, k_max, float(temperature), float(threshold), normalization, single)

    fov = _group_index(groups, n) if exclude == "fov" else None  # type: ignore[arg-type]
    out_idx = np.empty((n, k_max), np.int64) if keep_neighbours else None
    out_sim = np.empty((n, k_max), np.float32) if keep_neighbours else None
    predictions = {k: np.empty(y.shape, np.uint8) for k in ks}
    scores: dict[int, np.ndarray] = {k: np.empty(y.shape, np.float64) for k in ks} if return_scores else {}

    report = progress if isinstance(progress, Progress) else Progress(bool(progress))
    with torch.inference_mode(), _fp32_matmul(dev):
        rows = _UnitRows(x, dev)
        yt = torch.from_numpy(y.astype(np.float64)).to(dev)
        buffer = torch.empty((chunk_rows, n), dtype=torch.float32, device=dev)
        with report.bar(n, "k-NN", unit="cell") as bar:
            for a in range(0, n, chunk_rows):
                b = min(n, a + chunk_rows)
                sims = rows.similarities(buffer[: b - a], a, b)
                _mask_non_candidates(sims, a, fov)
                top_sim, top_idx = torch.topk(sims, k_max, dim=1, largest=True, sorted=True)
                rule.vote(top_sim, top_idx, yt, predictions, scores, a, b)
                if keep_neighbours:
                    finite = torch.isfinite(top_sim)
                    out_idx[a:b] = torch.where(finite, top_idx, torch.full_like(top_idx, -1)).cpu().numpy()  # type: ignore[index]
                    out_sim[a:b] = top_sim.cpu().numpy()  # type: ignore[index]
                bar.update(b - a)
    if fov is None:
        n_candidates = np.full(n, n - 1, np.int64)
    else:
        codes, _, _, counts = fov
        n_candidates = (n - counts[codes]).astype(np.int64)
    return KnnOutput(ks, predictions, out_idx, out_sim, n_candidates, scores, chunk_rows, str(dev))


def _checked_knn_inputs(features, labels, ks, normalization: str, exclude: str, groups, label_mode: str):
    """``(features, labels, ks, single-label?)`` after checking every argument of :func:`knn_predict`."""
    x = np.asarray(features)
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
        raise DataError(f"features: expected a numeric (items x dims) array, got shape {x.shape}")
    n = x.shape[0]
    y = np.asarray(labels)
    if y.ndim != 2 or y.shape[0] != n or not np.isin(y, (0, 1)).all():
        raise DataError(f"labels: expected ({n}, classes) 0/1 values, got shape {y.shape}")
    if n < 2:
        raise DataError(f"leave-one-out k-NN needs at least 2 items, got {n}")
    if exclude not in EXCLUSIONS:
        raise ConfigError(f"exclude must be one of {', '.join(EXCLUSIONS)}, got {exclude!r}")
    if normalization not in NORMALIZATIONS:
        raise ConfigError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {normalization!r}")
    ks = tuple(int(k) for k in ks)
    if not ks or any(k < 1 for k in ks):
        raise ConfigError(f"ks must be integers >= 1, got {ks}")
    if exclude == "fov" and groups is None:
        raise ConfigError("exclude='fov' needs the group (FOV) of every item")
    from ocbench.tasks.metrics import check_label_mode

    return x, y, ks, check_label_mode(y, label_mode) == "single"


class _UnitRows:
    """The features on the device with their inverse norms: cosine similarities of query rows to all rows."""

    def __init__(self, x: np.ndarray, dev):
        import torch

        host = np.ascontiguousarray(x, dtype=np.float32)
        self.xt = torch.from_numpy(host).to(dev)
        norms = torch.linalg.vector_norm(self.xt, dim=1)
        if not bool(torch.isfinite(norms).all()):  # a NaN/inf anywhere in a row makes its norm NaN/inf
            raise DataError("features: NaN/inf values; re-extract the embeddings (--recompute)")
        self.inv_norm = 1.0 / norms.clamp_min(1e-12)
        # Our own copy (on the GPU, or converted on the host) is normalised in place; the caller's
        # array is never written to, and no second copy is made (it would double the memory):
        # then the queries are scaled before the product and the columns after it.
        self.owned = dev.type != "cpu" or host is not x
        if self.owned:
            self.xt.mul_(self.inv_norm[:, None])

    def similarities(self, out, a: int, b: int):
        """Cosine similarities of rows ``a:b`` to every row, written into ``out`` ((b - a) x N)."""
        import torch

        xt, inv_norm = self.xt, self.inv_norm
        if self.owned:
            torch.mm(xt[a:b], xt.T, out=out)
        else:
            torch.mm(xt[a:b] * inv_norm[a:b, None], xt.T, out=out)
            out.mul_(inv_norm[None, :])
        return out


def _mask_non_candidates(sims, a: int, fov) -> None:
    """Set to -inf the similarity of each query (row ``a + i`` of ``sims``'s row ``i``) to itself
    and, with ``fov`` (:func:`_group_index`), to every row of its own group."""
    import torch

    dev = sims.device
    m = sims.shape[0]
    minus_inf = float("-inf")
    rows = torch.arange(m, device=dev)
    sims[rows, rows + a] = minus_inf
    if fov is not None:
        codes, order, starts, counts = fov
        c = codes[a : a + m]
        size = counts[c]
        rep_rows = np.repeat(np.arange(m), size)
        within = np.arange(int(size.sum())) - np.repeat(np.cumsum(size) - size, size)
        cols = order[np.repeat(starts[c], size) + within]
        sims[torch.from_numpy(rep_rows).to(dev), torch.from_numpy(cols).to(dev)] = minus_inf


@dataclass(frozen=True)
class _VoteRule:
    """How the neighbours' labels become each query's class scores and predictions, per k."""

    ks: tuple[int, ...]
    k_max: int
    temperature: float
    threshold: float
    normalization: str
    single: bool

    def vote(self, top_sim, top_idx, yt, predictions: dict, scores: dict, a: int, b: int) -> None:
        """Fill rows ``a:b`` of ``predictions[k]`` (and of ``scores[k]`` when asked for) from the
        queries' ``k_max`` nearest candidates, most similar first."""
        import torch

        m = b - a
        # exp((s - s_best) / T): the common factor cancels in every normalization, nothing
        # overflows, and masked candidates (-inf) get weight exactly 0. Cosines are >= -1, so
        # clamping s_best there only matters for a query without any candidate (all -inf).
        s64 = top_sim.double()
        weights = torch.exp((s64 - s64[:, :1].clamp_min(-1.0)) / self.temperature)
        votes = torch.cumsum(weights.unsqueeze(2) * yt[top_idx], dim=1)  # (m, k_max, C)
        total = torch.cumsum(weights, dim=1)
        for k in self.ks:
            kk = min(k, self.k_max) - 1
            class_sum = votes[:, kk]
            if self.normalization == "weight-sum" or self.single:
                denom = total[:, kk : kk + 1]
            else:
                denom = class_sum.amax(dim=1, keepdim=True)
            # A zero denominator has zero class sums: the score is 0, not NaN.
            score = class_sum / denom.clamp_min(1e-300)
            if self.single:  # the weighted majority class; none for a query without candidates
                top = torch.zeros_like(class_sum, dtype=torch.bool)
                top[torch.arange(m, device=top.device), class_sum.argmax(dim=1)] = True
                predictions[k][a:b] = (top & (total[:, kk : kk + 1] > 0)).cpu().numpy()
            else:
                predictions[k][a:b] = (score >= self.threshold - _TIE_TOLERANCE).cpu().numpy()
            if scores:
                scores[k][a:b] = score.cpu().numpy()


# -- the task -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _KnnVote(TaskConfig):
    """sc-knn's own settings. A base of :class:`ScKnn` before :class:`CellTask` so that they come
    first in its settings (and its entries' ``task_config``), as they always have."""

    #: neighbourhood sizes (the axis of the entry)
    ks: tuple[int, ...] = field(default=(1, 5, 10, 20, 50), metadata={"help": "neighbourhood sizes k (the entry's axis)"})
    #: the k whose score ranks the entry: the largest, as the paper's abstract quotes it (0.796)
    main_k: int = field(default=50, metadata={"help": "the k that ranks the entry (the paper's abstract quotes the largest)"})
    temperature: float = field(default=0.07, metadata={"help": "T of the neighbour weights exp(similarity / T) (DINO's)"})
    threshold: float = field(default=0.5, metadata={"help": "a class is predicted where its normalised score >= this (multi-label; single-label predicts the weighted majority class)"})
    normalization: str = field(
        default="weight-sum",
        metadata={"help": "weight-sum: score = weighted fraction of neighbours with the class; max: divided by the top class"},
    )
    exclude: str = field(default="self", metadata={"help": "self: the query only (paper); fov: all cells of the query's FOV"})


@dataclass(frozen=True)
class ScKnn(CellTask, _KnnVote):
    """Single-cell embeddings scored by leave-one-out soft-vote k-NN (paper Table 4).

    The cells (segmentation, crops, filter, labels) are :class:`~ocbench.tasks.cell_task.CellSelection`'s
    settings, held as :class:`CellTask` fields after the k-NN's own."""

    name: ClassVar[str] = "sc-knn"
    protocol_version: ClassVar[str] = PROTOCOL_VERSION
    main_score: ClassVar[tuple[str, str]] = (EVAL_SET, "macro_f1")
    axis: ClassVar[str | None] = "k"
    description: ClassVar[str] = (
        "Leave-one-out soft-vote k-NN on single-cell crops (segmented cells), macro-F1 per k (paper Table 4)"
    )
    label_modes: ClassVar[tuple[str, ...]] = ("multilabel", "single")

    def __post_init__(self) -> None:
        def bad(key: str, what: str) -> ConfigError:
            return ConfigError(f"task {self.name}: {key} must be {what}, got {getattr(self, key)!r}")

        if not self.ks or not all(isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= 100_000 for k in self.ks):
            raise bad("ks", "integers between 1 and 100,000")
        if len(set(self.ks)) != len(self.ks):
            raise bad("ks", "distinct values")
        if self.main_k not in self.ks:
            raise bad("main_k", f"one of ks {self.ks}")
        if not (math.isfinite(self.temperature) and 1e-4 <= self.temperature <= 100):
            raise bad("temperature", "in [0.0001, 100]")
        if not 0 < self.threshold <= 1:
            raise bad("threshold", "in (0, 1]")
        if self.normalization not in NORMALIZATIONS:
            raise bad("normalization", f"one of {', '.join(NORMALIZATIONS)}")
        if self.exclude not in EXCLUSIONS:
            raise bad("exclude", f"one of {', '.join(EXCLUSIONS)}")
        super().__post_init__()  # the cell selection

    # -- running -------------------------------------------------------------------------------
    def evaluate(self, context: "RunContext") -> TaskResult:
        """Segment (or reuse masks), cut and embed the evaluation cells, score them by k-NN."""
        started = time.perf_counter()
        dataset = context.dataset
        cells = self.cell_items(context)
        # The interval resamples proteins (the dataset card's group): cells of one protein share its labels.
        result = self.run(
            cells.features, cells.labels, cells.parent_ids,
            class_names=context.class_names, device=context.device, seed=context.seed, progress=context.progress,
            item_ids=cells.ids, interval_groups=cells.groups, group_name=dataset.card.group_name,
            references=True, label_mode=dataset.card.label_mode,
            feature_standardization=context.backbone.feature_standardization,
        )
        details = {**result.details, **self.cell_details(cells, dataset.card)}
        return _replace(result, wall_time_s=time.perf_counter() - started, details=details)

    def run(
        self,
        features: np.ndarray,
        labels: np.ndarray,
        groups: Sequence[Any] | None = None,
        *,
        class_names: Sequence[str],
        device: str = "cpu",
        seed: int = 0,
        progress: Progress | bool = False,
        chunk_rows: int | None = None,
        item_ids: Sequence[Any] | None = None,
        interval_groups: Sequence[Any] | None = None,
        group_name: str | None = None,
        references: bool = False,
        label_mode: str = "multilabel",
        feature_standardization: str = "none",
    ) -> TaskResult:
        """Score ``features`` (N, D) with ``labels`` (N, C) by leave-one-out k-NN; ``groups``: FOV per row.

        ``interval_groups`` (N,): the unit the interval resamples (protein per cell; default the
        FOVs of ``groups``, else each cell), named ``group_name``; ``item_ids``: cell ids.
        ``references``: also compute the chance references (:mod:`ocbench.chance`) at ``main_k``;
        the shuffled-labels one votes with the neighbours' labels permuted across cells.
        ``feature_standardization="robust"``: standardise every feature robustly over all the
        evaluated cells first (:mod:`ocbench.tasks.standardize`; no labels are used); the result
        records the nearest-neighbour diagnostics and the main k's score before and after."""
        from ocbench.predictions import Predictions
        from ocbench.tasks.metrics import SCORE_KINDS

        started = time.perf_counter()
        names = tuple(class_names)
        y = np.asarray(labels)
        if y.ndim != 2 or y.shape[1] != len(names):
            raise DataError(f"labels: expected (cells, {len(names)}) for the classes {', '.join(names)}, got {y.shape}")
        if not y.any():
            raise DataError("no evaluation cell has a positive label, so no class can be scored")
        vote = dict(temperature=self.temperature, threshold=self.threshold, normalization=self.normalization,
                    exclude=self.exclude, groups=groups, device=device, chunk_rows=chunk_rows, label_mode=label_mode)
        features, standardization = self._standardize(features, y, feature_standardization, vote)
        out = knn_predict(features, y, ks=self.ks, keep_neighbours=True, progress=progress, **vote)
        if standardization is not None:
            standardization["after"] = _knn_diagnostics(out, y, self.main_k)
        points, (s, scores, per_class) = self._score_points(y, out, names)
        per_class_values = {EVAL_SET: {**{kind: [list(map(float, s[kind]))] for kind in SCORE_KINDS},
                                       "support": [list(map(float, s["support"]))]}}
        n = y.shape[0]
        unit, unit_name = _interval_units(n, interval_groups, groups, group_name)
        predictions = Predictions.build(
            eval_set=EVAL_SET, item_ids=item_ids if item_ids is not None else np.arange(n), groups=unit,
            group_name=unit_name, y_true=y, y_pred=np.stack([out.predictions[k][None] for k in self.ks]),
            class_names=names, axis_name="k", axis_values=self.ks,
        )
        refs = self._chance_references(features, y, vote, unit, unit_name, seed, label_mode) if references else []
        return TaskResult(
            task=self.name,
            protocol_version=self.protocol_version,
            config=self.to_dict(),
            scores=scores,
            class_names=names,
            seed=int(seed),
            device=out.device,
            wall_time_s=time.perf_counter() - started,
            per_class=per_class,
            per_class_values=per_class_values,
            axis={"name": "k", "main": self.main_k, "points": points},
            details=self._details(y, features, groups, points, out),
            predictions=predictions,
            references=refs,
            feature_standardization=standardization,
        )

    def _standardize(self, features, y: np.ndarray, feature_standardization: str, vote: dict[str, Any]):
        """``(features to vote with, the record of the standardisation or None)``; the record holds the
        neighbour diagnostics and the main k's score before (here) and after (by the caller)."""
        if feature_standardization == "robust":
            from ocbench.tasks.standardize import standardize_robust

            raw = knn_predict(features, y, ks=tuple(sorted({self.main_k, 2})), keep_neighbours=True, **vote)
            standardization = {
                "declared": "robust",
                "method": "per feature: (x - median) / (IQR / 1.349), the std where the IQR is 0, 1 where constant",
                "fitted_on": "all evaluation cells (the k-NN uses no labels to fit)",
                "applied": True,
                "before": _knn_diagnostics(raw, y, self.main_k),
            }
            return standardize_robust(features), standardization
        if feature_standardization != "none":
            raise ConfigError(f"feature_standardization must be 'none' or 'robust', got {feature_standardization!r}")
        return features, None

    def _score_points(self, y: np.ndarray, out: KnnOutput, names: tuple[str, ...]):
        """The entry's k axis (scores and per-class scores per k), and the main k's
        ``(raw scores, scores, per_class)``."""
        from ocbench.tasks.metrics import SCORE_KINDS, multilabel_scores

        points = []
        main = None
        for k in self.ks:
            s = multilabel_scores(y, out.predictions[k])
            present = np.asarray(s["support"]) > 0
            scores = {EVAL_SET: {"macro_f1": summarize([s["macro_f1"]]), "macro_f1_all": summarize([s["macro_f1_all"]])}}
            per_class = {EVAL_SET: {kind: {c: float(v) for c, v, p in zip(names, s[kind], present) if p} for kind in SCORE_KINDS}}
            points.append({"value": k, "scores": scores, "per_class": per_class})
            if k == self.main_k:
                main = (s, scores, per_class)
        assert main is not None
        return points, main

    def _chance_references(self, features, y: np.ndarray, vote: dict[str, Any], unit: np.ndarray, unit_name: str,
                           seed: int, label_mode: str) -> list[dict[str, Any]]:
        """The chance references (:mod:`ocbench.chance`) at ``main_k``; the shuffled-labels one
        votes with the neighbours' labels permuted across cells."""
        from ocbench.chance import Repetition, chance_references, shuffled_rows

        n = y.shape[0]
        shuffled = knn_predict(features, y[shuffled_rows(n, seed)], ks=(self.main_k,), keep_neighbours=False, **vote)
        # leave-one-out: each query's "training part" is every other cell, so the priors are the cells' own
        return chance_references(
            [Repetition(train=y, scored={EVAL_SET: y})], predictions_set=EVAL_SET, groups=unit,
            group_name=unit_name, label_mode=label_mode, seed=seed,
            shuffled={EVAL_SET: [shuffled.predictions[self.main_k]]},
        )

    def _details(self, y: np.ndarray, features, groups, points: list[dict[str, Any]], out: KnnOutput) -> dict[str, Any]:
        from ocbench.tasks.standardize import neighbour_diagnostics

        fewer = {str(k): int((out.n_candidates < k).sum()) for k in self.ks if (out.n_candidates < k).any()}
        neighbours = neighbour_diagnostics(out.similarities)
        details = {
            "n_cells": int(y.shape[0]),
            "feature_dim": int(np.asarray(features).shape[1]),
            "n_groups": int(len(set(np.asarray(groups).tolist()))) if groups is not None else None,
            "macro_f1_by_k": {str(p["value"]): p["scores"][EVAL_SET]["macro_f1"]["mean"] for p in points},
            "chunk_rows": out.chunk_rows,
            "min_candidates": int(out.n_candidates.min()),
            **{f"neighbours_{k}": v for k, v in neighbours.items()},
        }
        if fewer:
            details["queries_with_fewer_candidates_than_k"] = fewer
        return details


def _knn_diagnostics(out: KnnOutput, y: np.ndarray, main_k: int) -> dict[str, Any]:
    """Nearest-neighbour diagnostics and the main k's macro-F1 of one k-NN run."""
    from ocbench.stats import macro_f1
    from ocbench.tasks.standardize import neighbour_diagnostics

    return {**neighbour_diagnostics(out.similarities), f"macro_f1_at_k{main_k}": macro_f1(y, out.predictions[main_k])}


def _interval_units(n: int, interval_groups, groups, group_name: str | None) -> tuple[np.ndarray, str]:
    """The unit the interval resamples, per cell, and its name: ``interval_groups`` (protein per
    cell), else the FOVs of ``groups``, else each cell."""
    if interval_groups is not None:
        return np.asarray(interval_groups).astype(str), group_name or "protein"
    if groups is not None:
        return np.asarray(groups).astype(str), group_name or "FOV"
    return np.arange(n).astype(str), group_name or "cell"


def _replace(result: TaskResult, **changes: Any) -> TaskResult:
    import dataclasses

    return dataclasses.replace(result, **changes)


@dataclass(frozen=True)
class ScKnnFov(ScKnn):
    """``sc-knn`` with the neighbours of the query's own FOV left out (its own entry key and board row)."""

    name: ClassVar[str] = "sc-knn-fov"
    description: ClassVar[str] = (
        "sc-knn without neighbours from the query's own FOV (same-FOV cells share weak labels and context)"
    )
    exclude: str = field(default="fov", metadata={"help": "self: the query only; fov: all cells of the query's FOV (this task's default)"})


register_task(ScKnn)
register_task(ScKnnFov)
