"""Each computed row against the table's best baseline (an untrained, classical or profiling
backbone): the difference of scores with its paired interval, on the same kept items or folds."""

from __future__ import annotations

from dataclasses import replace

from ocbench.leaderboard.board_types import BaselineDifference, Row
from ocbench.leaderboard.separation import no_paired_bootstrap_reason, row_distribution

__all__ = ["with_baseline_differences"]


def with_baseline_differences(rows: list[Row], *, alpha: float) -> tuple[list[Row], str]:
    """Each computed row with its score minus the best baseline row's (paired cluster bootstrap of the
    main metric on the same kept items where predictions give that metric; else the corrected t-test
    over the same folds); the column's header."""
    from ocbench.stats import corrected_resampled_t_test, paired_from_distributions

    baselines = [r for r in rows if r.kind == "computed" and r.role == "baseline" and r.score is not None]
    if not baselines:
        return rows, ""
    best = max(baselines, key=lambda r: (r.ranking_value, r.label))
    cache: dict = {}
    methods = set()
    out = []
    for row in rows:
        if row.kind != "computed":
            out.append(row)
            continue
        if row is best:
            out.append(replace(row, vs_baseline_note="the best baseline"))
            continue
        pa, pb = row.predictions, best.predictions
        diff = None
        same_items = pa is not None and pb is not None and pa.eval_set == pb.eval_set and pa.same_items(pb)
        why_not = no_paired_bootstrap_reason(row.main_metric) if same_items else ""
        if same_items and not why_not:
            try:
                paired = paired_from_distributions(
                    row_distribution(row, cache), row_distribution(best, cache), n_groups=pa.n_groups, level=1 - alpha,
                    group_name=pa.group_name,
                ).difference
            except Exception as exc:  # a malformed file must not stop the board; the row says so
                out.append(replace(row, vs_baseline_note=f"no paired difference ({exc})"))
                continue
            method = f"paired {paired.group} bootstrap of the {pa.eval_set} score"
            diff = BaselineDifference(best.label, paired.estimate, paired.low, paired.high, 1 - alpha, method)
        else:
            sa, sb = row.score, best.score
            if sa and sb and sa.per_fold and sb.per_fold and len(sa.per_fold) == len(sb.per_fold) >= 2:
                t = corrected_resampled_t_test(sa.per_fold, sb.per_fold, test_train_ratio=1.0 / (len(sa.per_fold) - 1),
                                               level=1 - alpha)
                method = f"corrected t-test over {len(sa.per_fold)} folds of the main score"
                diff = BaselineDifference(best.label, t.mean_difference, t.low, t.high, 1 - alpha, method)
        if diff is None:
            missing = f"{why_not} and no folds" if why_not else "no kept predictions or folds"
            out.append(replace(row, vs_baseline_note=f"no paired difference: {missing} shared with the best baseline"))
            continue
        methods.add(diff.method)
        out.append(replace(row, vs_baseline=diff))
    how = "; ".join(sorted(methods)) or "paired"
    return out, f"vs best baseline ({best.label}): difference, {1 - alpha:.0%} CI ({how})"

