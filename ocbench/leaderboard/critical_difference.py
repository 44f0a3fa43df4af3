"""Across tables: the Friedman test over backbones' ranks and the Nemenyi critical difference.

Only tables that are independent evidence count: one configuration (task, track, protocol, main
score, settings) over different datasets, one table per set of images.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Sequence

from ocbench.leaderboard.board_types import Table

__all__ = ["CriticalDifference", "critical_difference"]


@dataclass(frozen=True)
class CriticalDifference:
    result: Any  # ocbench.stats.FriedmanResult
    tables: tuple[str, ...]  # titles of the tables used
    left_out: tuple[str, ...]  # backbones on several tables but not on all of the ones used

    @property
    def text(self) -> str:
        r = self.result
        ranks = ", ".join(f"{n} {v:.2f}" for n, v in sorted(zip(r.names, r.average_ranks), key=lambda t: t[1]))
        out = (
            f"Average rank over {r.n_tables} tables (1 = best; each backbone's best row per table): {ranks}. Friedman test "
            f"p = {r.p_value:.3g}; Nemenyi critical difference at {r.level:.0%}: {r.critical_difference:.2f} ranks "
            "(backbones whose average ranks differ by less are joined by a bar in the diagram)."
        )
        if self.left_out:
            out += f" Left out (not on every one of these tables): {', '.join(self.left_out)}."
        return out


def critical_difference(tables: Sequence[Table]) -> tuple[CriticalDifference | None, str]:
    """Friedman + Nemenyi across tables that are independent evidence: tables of one configuration
    (task, track, protocol, main score, settings) over different datasets (different images), one
    table per dataset; each backbone's best row per table. Tables over the same images (the demo's
    probes and split tracks) are not independent, so they never make a diagram on their own.

    Returns ``(diagram or None, why it is not drawn)``; the reason is "" when nothing on the board
    calls for a diagram (no backbone on two tables)."""
    computed = [t for t in tables if t.group is not None]
    on_tables: dict[str, int] = defaultdict(int)
    for table in computed:
        for name in {r.backbone for r in table.computed_rows if r.score is not None}:
            on_tables[name] += 1
    if sum(1 for c in on_tables.values() if c >= 2) < 2:
        return None, ""
    families: dict[tuple, dict[tuple[str, str], Table]] = defaultdict(dict)
    for table in computed:
        g = table.group
        family = (g.task, g.track, g.protocol_version, g.main_eval_set, g.main_metric, g.overrides, g.off_protocol_reasons)
        families[family].setdefault((g.dataset_name, g.dataset_version), table)  # one table per set of images
    for family in sorted(families, key=lambda f: (-len(families[f]), f)):
        if len(families[family]) < 2:
            break
        cd = _friedman_over(list(families[family].values()))
        if cd is not None:
            return cd, ""
    datasets = sorted({(t.group.dataset_name, t.group.dataset_version[:8]) for t in computed})
    if len(datasets) == 1:
        (name, version), = datasets
        why = (f"all {len(computed)} tables are over the same images (dataset {name} {version}): its probes and split "
               "tracks are not independent evidence, so no Friedman test or critical-difference diagram is drawn; one "
               "needs the same task on different datasets")
    else:
        why = ("no task, track and settings was run on two or more different datasets by the same backbones, and tables "
               "over the same images are not independent evidence: no Friedman test or critical-difference diagram is drawn")
    return None, why


def _friedman_over(tables: Sequence[Table]) -> CriticalDifference | None:
    """Friedman + Nemenyi over ``tables`` for backbones on several of them (each backbone's best row
    per table). None when fewer than 2 backbones share 2 tables.

    Rows are compared by their ranking value (the mean, negated when lower is better), so the best
    row is the lowest error where lower is better and the test's "higher is better" holds."""
    scores: dict[str, dict[str, float]] = defaultdict(dict)  # table id -> backbone -> best ranking value
    titles = {}
    for table in tables:
        titles[table.id] = table.title
        for row in table.computed_rows:
            if row.score is not None:
                scores[table.id][row.backbone] = max(row.ranking_value, scores[table.id].get(row.backbone, float("-inf")))
    counts: dict[str, int] = defaultdict(int)
    for by_backbone in scores.values():
        for name in by_backbone:
            counts[name] += 1
    names = sorted(n for n, c in counts.items() if c >= 2)
    candidates = list(names)
    while len(candidates) >= 2:
        used = [t for t, by in scores.items() if all(n in by for n in candidates)]
        if len(used) >= 2:
            from ocbench.stats import friedman_nemenyi

            matrix = [[scores[t][n] for n in candidates] for t in used]
            result = friedman_nemenyi(matrix, candidates)
            left = tuple(n for n in names if n not in candidates)
            return CriticalDifference(result, tuple(titles[t] for t in used), left)
        candidates.remove(min(candidates, key=lambda n: (counts[n], n)))  # the one on fewest tables
    return None

