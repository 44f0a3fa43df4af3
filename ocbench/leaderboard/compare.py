"""``ocbench compare A.json B.json``: how sure are we that one entry beats the other?

Two entries are compared only on the same items: same task and main score, same dataset version
and same split file (anything else is refused with the reason). The report gives the difference
of the main scores (A - B) and the evidence the two entries allow:

- their cross-validation folds pair up (same split): the corrected resampled t-test of Nadeau &
  Bengio over the folds (the plain paired t-test is over-confident: fold models share most of
  their training data);
- both kept per-item predictions on the same items: the paired cluster bootstrap of the difference
  (resampling the dataset's groups, proteins for OpenCell, the same draws for both entries).

The verdict says "A is better" (or B) only when every available test agrees at the 95% level.
No torch: it reads entry JSON and the ``.npz`` predictions beside them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ocbench.benchmark.entry import Entry, load_entry
from ocbench.errors import DataError
from ocbench.leaderboard.formatting import fmt_axis_value, fmt_score, score_label

__all__ = ["Comparison", "compare_entries"]


@dataclass
class Comparison:
    a: Entry
    b: Entry
    label: str  # the main score's label (val macro-F1)
    difference: float  # of the main score's means, A - B
    lines: list[str] = field(default_factory=list)
    t_test: Any = None  # ocbench.stats.TTestResult
    bootstrap: Any = None  # ocbench.stats.PairedResult
    verdict: str = ""

    @property
    def text(self) -> str:
        return "\n".join([*self.lines, f"verdict: {self.verdict}"])


def _name(entry: Entry) -> str:
    return f"{entry.backbone.name} · {entry.channels.key} · {entry.task} · {entry.split.track}" + (
        f" · seed {entry.seed}" if entry.seed else ""
    ) + (f" · at {entry.axis.name}={fmt_axis_value(entry.axis.main)}" if entry.axis is not None else "")


def _predictions(entry: Entry, path: Path) -> tuple[Any, str]:
    from ocbench.predictions import load_kept_predictions

    if entry.predictions is None:
        return None, f"{path.name} kept no per-item predictions (schema 3 entries written by ocbench run do)"
    predictions, why = load_kept_predictions(entry, path)
    if predictions is None:  # a missing or damaged file is an error here
        raise DataError(why)
    return predictions, ""


def _comparable(a: Entry, b: Entry, pa: Path, pb: Path) -> None:
    checks = (
        ("task", a.task, b.task),
        ("main score", f"{a.main_score.eval_set}/{a.main_score.metric}", f"{b.main_score.eval_set}/{b.main_score.metric}"),
        ("protocol", a.protocol_version, b.protocol_version),
        ("dataset version", a.dataset.version[:12], b.dataset.version[:12]),
        ("label mode", a.dataset.labels, b.dataset.labels),
    )
    for what, x, y in checks:
        if x != y:
            raise DataError(f"{pa.name} and {pb.name} are not comparable: different {what} ({x} vs {y})")
    if a.split.sha256 != b.split.sha256:
        raise DataError(
            f"{pa.name} and {pb.name} were scored on different splits (sha256 {a.split.sha256[:12]} vs "
            f"{b.split.sha256[:12]}): a paired comparison needs the same items; run both with one --split-file and seed"
        )


def _flat(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flat(f"{prefix}.{key}", item))
        return out
    return {prefix: value}


def _short(value: Any) -> str:
    text = str(value)
    return text[:12] + "..." if isinstance(value, str) and len(value) == 64 else text


def _differing(a: dict[str, Any], b: dict[str, Any]) -> str:
    """``field (A's vs B's)`` for every field whose value differs, or '' when none does."""
    return ", ".join(
        f"{name} ({_short(a.get(name, 'unset'))} vs {_short(b.get(name, 'unset'))})"
        for name in sorted(set(a) | set(b)) if a.get(name, "unset") != b.get(name, "unset")
    )


def _setting_and_data_notes(a: Entry, b: Entry) -> list[str]:
    """Lines naming the task settings and the data fields in which two comparable entries differ:
    the difference of scores is then not the backbones' alone."""
    notes = []
    settings = _differing(
        {**_flat("task_config", a.task_config), **_flat("overrides", a.overrides), "environment.precision": a.environment.precision},
        {**_flat("task_config", b.task_config), **_flat("overrides", b.overrides), "environment.precision": b.environment.precision},
    )
    if settings:
        notes.append(f"  note: different settings: {settings}; this compares settings as well as backbones")
    fields = ("name", "version", "n_items", "min_grade", "annotations", "annotations_sha256", "synthetic")
    data = _differing(
        {f"dataset.{name}": getattr(a.dataset, name) for name in fields},
        {f"dataset.{name}": getattr(b.dataset, name) for name in fields},
    )
    if data:
        notes.append(f"  note: different data: {data}; the labels or items may differ, not only the backbones")
    return notes


def _entry_lines(out: Comparison, pa: Path, pb: Path) -> None:
    """The two entries, their scores and warnings, the difference of means, and what else differs."""
    a, b, label = out.a, out.b, out.label
    for tag, entry, path in (("A", a, pa), ("B", b, pb)):
        line = f"{tag}: {_name(entry)} ({path.name}): {label} {fmt_score(entry.main)}"
        ref = entry.predictions
        summary = entry.score(ref.eval_set) if ref is not None else None
        if summary is not None and summary.interval is not None:
            line += f"; {score_label(ref.eval_set, a.main_score.metric)} {summary.interval.describe()}"
        out.lines.append(line)
        for w in entry.warnings:
            out.lines.append(f"  warning ({tag}): {w.message}")
    out.lines.append(f"difference A - B in mean {label}: {out.difference:+.4f}")
    out.lines += _setting_and_data_notes(a, b)
    if a.axis is not None and b.axis is not None and (a.axis.name, a.axis.main) != (b.axis.name, b.axis.main):
        out.lines.append(
            f"  note: A is scored at {a.axis.name}={fmt_axis_value(a.axis.main)}, B at {b.axis.name}={fmt_axis_value(b.axis.main)}: "
            "this compares two settings as well as two backbones"
        )


def _fold_test(out: Comparison, *, alpha: float) -> int | None:
    """The corrected resampled t-test over paired folds, when the folds pair up: +1 when it says A
    is better, -1 when B, 0 when it cannot tell; None without paired folds."""
    from ocbench.stats import corrected_resampled_t_test

    sa, sb = out.a.main, out.b.main
    if not sa.n == sb.n >= 2:
        out.lines.append(f"  no paired folds ({sa.n} and {sb.n} values): no t-test over folds")
        return None
    t = corrected_resampled_t_test(sa.values, sb.values, test_train_ratio=1.0 / (sa.n - 1), level=1 - alpha)
    out.t_test = t
    out.lines.append(
        f"  corrected resampled t-test (Nadeau & Bengio) over the {sa.n} paired folds: t = {t.t:.3g}, "
        f"p = {t.p_value:.3g}; {1 - alpha:.0%} CI of the difference [{t.low:+.4f}, {t.high:+.4f}]"
    )
    a_higher = t.mean_difference > 0
    # the folds are of the main score: where lower is better, the lower mean is the better one
    return 0 if t.p_value >= alpha else (1 if a_higher == out.a.main_score.higher_is_better else -1)


def _bootstrap_test(out: Comparison, pa: Path, pb: Path, *, alpha: float) -> int | None:
    """The paired cluster bootstrap of the main metric on the kept predictions' items: +1 (A better),
    -1 (B better), 0 (cannot tell); None when either entry kept no predictions or they cannot give
    the main metric. Predictions on different items are a DataError: the entries' scores are then
    not on the same items."""
    from ocbench.leaderboard.separation import no_paired_bootstrap_reason
    from ocbench.stats import N_RESAMPLES, paired_bootstrap

    a, b = out.a, out.b
    pred_a, why_a = _predictions(a, pa)
    pred_b, why_b = _predictions(b, pb)
    if pred_a is None or pred_b is None:
        out.lines.append(f"  no paired bootstrap: {why_a or why_b}")
        return None
    if pred_a.eval_set != pred_b.eval_set or not pred_a.same_items(pred_b):
        raise DataError(f"{pa.name} and {pb.name}: their predictions are not on the same items; re-run both on one split")
    metric = a.main_score.metric  # B's too: _comparable refuses entries with different main scores
    why_not = no_paired_bootstrap_reason(metric)
    if why_not:
        out.lines.append(f"  {why_not}")
        return None
    axis_a = a.axis.main if a.axis is not None else None
    axis_b = b.axis.main if b.axis is not None else None
    r = paired_bootstrap(
        pred_a.y_true, pred_a.at(axis_a), pred_b.at(axis_b), pred_a.groups,
        n_resamples=N_RESAMPLES, level=1 - alpha, group_name=pred_a.group_name, metric=metric,
    )
    out.bootstrap = r
    d = r.difference
    out.lines.append(
        f"  paired {d.group} bootstrap on the {pred_a.eval_set} items ({d.n_groups} {_plural(d.group, d.n_groups)}, "
        f"{d.n_resamples} resamples): {score_label(pred_a.eval_set, metric)} difference {d.estimate:+.4f} "
        f"[{d.low:+.4f}, {d.high:+.4f}] {1 - alpha:.0%} CI"
    )
    # the difference is of the main score: where lower is better, the lower one is the better one
    return 0 if not r.separable else (1 if (d.estimate > 0) == a.main_score.higher_is_better else -1)


def _verdict(separated: list[int], a: Entry, b: Entry, *, level: str) -> str:
    """What the tests say together (+1: A better, -1: B better, 0: cannot tell, per test), and
    whether either entry collapsed."""
    if not separated:
        verdict = "no paired evidence (no folds, no predictions): the difference of means alone cannot say how sure we are"
    elif all(s == 1 for s in separated):
        verdict = f"A is better than B at the {level} level on every test"
    elif all(s == -1 for s in separated):
        verdict = f"B is better than A at the {level} level on every test"
    elif any(s != 0 for s in separated) and len(set(separated)) > 1 and 0 not in separated:
        verdict = "the tests disagree on which is better: treat A and B as not separable"
    else:
        verdict = (
            f"cannot tell A and B apart at the {level} level: the difference is within what another split of "
            "proteins or another probe seed could give"
        )
    collapsed = [tag for tag, entry in (("A", a), ("B", b)) if _collapsed(entry)]
    if len(collapsed) == 2:
        verdict += ("; both entries collapsed (constant predictions or no positive for most classes): "
                    "neither learned the task, so their difference says nothing about the backbones")
    elif collapsed:
        verdict += f"; entry {collapsed[0]} collapsed (see its warning)"
    return verdict


def compare_entries(path_a: str | os.PathLike, path_b: str | os.PathLike, *, alpha: float = 0.05) -> Comparison:
    """Compare two entry files (see the module docstring); DataError with one line if impossible."""
    pa, pb = Path(path_a), Path(path_b)
    a, b = load_entry(pa), load_entry(pb)
    _comparable(a, b, pa, pb)
    label = score_label(a.main_score.eval_set, a.main_score.metric)
    out = Comparison(a, b, label, a.main.mean - b.main.mean)
    _entry_lines(out, pa, pb)
    tests = (_fold_test(out, alpha=alpha), _bootstrap_test(out, pa, pb, alpha=alpha))
    out.verdict = _verdict([s for s in tests if s is not None], a, b, level=f"{1 - alpha:.0%}")
    return out


def _collapsed(entry: Entry) -> bool:
    from ocbench.chance import COLLAPSE_KINDS

    return any(w.kind in COLLAPSE_KINDS for w in entry.warnings)


def _plural(name: str, n: int) -> str:
    from ocbench.stats import plural

    return plural(name, n)
