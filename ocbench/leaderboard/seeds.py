"""Configurations run with several seeds: their tables pooled into one view per configuration.

Tables that differ only in split (one per split seed) form a family; each configuration's per-seed
means are summarized (mean, seed std, n seeds). Backbones fine-tuned by ocbench are named per run,
seed included, so their seeds are pooled under a name without the seed (:func:`trained_from`).
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any, Sequence

from ocbench._io import json_sha256
from ocbench.leaderboard.board_types import Row, Table
from ocbench.leaderboard.grouping import GroupKey

__all__ = ["SeedRow", "SeedTable", "trained_from", "seed_tables"]


@dataclass(frozen=True)
class SeedRow:
    """One configuration over the seeds it was run with (each seed its own split and probe seed)."""

    backbone: str
    channels: str
    seeds: tuple[int, ...]
    means: tuple[float, ...]  # each seed's mean main score (over its folds)
    test_means: tuple[float, ...]
    notes: str = ""

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def mean(self) -> float:
        from ocbench.summaries import summary_mean

        return summary_mean(self.means)

    @property
    def std(self) -> float | None:
        from ocbench.summaries import summary_std

        return summary_std(self.means)

    @property
    def test_mean(self) -> float | None:
        from ocbench.summaries import summary_mean

        return summary_mean(self.test_means) if len(self.test_means) == len(self.means) else None


@dataclass(frozen=True)
class SeedTable:
    id: str
    title: str
    score_label: str
    rows: tuple[SeedRow, ...]
    rule: str
    mixed: bool  # rows with different numbers of seeds


def trained_from(entry: Any) -> dict | None:
    """The training record a backbone trained by ocbench (``ocbench finetune``) keeps in its card's
    notes (base, dataset, split, seed, settings, run hash), or None for any other backbone."""
    card = entry.backbone.card or {}
    try:
        notes = json.loads(card.get("notes") or "")
    except (TypeError, ValueError):
        return None
    if not isinstance(notes, dict):
        return None
    base = notes.get("fine-tuned from") or notes.get("trained from scratch as")
    return notes if isinstance(base, str) and base else None


def _config_across_seeds(row: Row) -> str:
    """The name a row's configuration goes by across seeds. A backbone trained by ocbench is named
    per run, seed included (``<base>.ft-<data>-f<fraction>-<run hash>``): its seeds are pooled under
    that name with the run hash replaced by a hash of the training settings without the seed."""
    notes = trained_from(row.entry.entry) if row.entry is not None else None
    run_hash = str((notes or {}).get("run_hash") or "")
    if not run_hash or not row.backbone.endswith("-" + run_hash):
        return row.backbone
    settings = {k: v for k, v in notes.items() if k not in ("seed", "run_hash", "split")}
    settings["split_track"] = (notes.get("split") or {}).get("track")
    digest = json_sha256(settings, default=str)[:8]
    return f"{row.backbone[: -len(run_hash)]}seeds-{digest}"


def seed_tables(tables: Sequence[Table]) -> tuple[SeedTable, ...]:
    """Tables of configurations run with several seeds: the tables that differ only in split (one per
    split seed) are pooled, and each configuration's per-seed means are summarized (mean, seed std
    with ddof 1, n seeds). Rows with fewer seeds than others are labelled, never silently mixed."""
    families: dict[GroupKey, list[Table]] = defaultdict(list)
    for table in tables:
        if table.group is not None:
            families[replace(table.group, split_sha256="")].append(table)
    out = []
    families_out: list[GroupKey] = []
    for family, members in sorted(families.items()):
        per_config: dict[tuple[str, str], dict[int, Row]] = defaultdict(dict)
        for table in members:
            for row in table.computed_rows:
                seed = row.seed or 0
                per_config[(_config_across_seeds(row), row.channels)][seed] = row
        if not any(len(by_seed) > 1 for by_seed in per_config.values()):
            continue
        most = max(len(by_seed) for by_seed in per_config.values())
        rows = []
        for (backbone, channels), by_seed in per_config.items():
            seeds = tuple(sorted(by_seed))
            means = tuple(by_seed[s].score.mean for s in seeds if by_seed[s].score is not None)
            tests = tuple(by_seed[s].test.mean for s in seeds if by_seed[s].test is not None)
            note = "1 seed: no seed spread, not comparable with the many-seed rows" if len(seeds) == 1 else (
                f"{len(seeds)} of {most} seeds" if len(seeds) < most else "")
            rows.append(SeedRow(backbone, channels, seeds, means, tests, note))
        sign = 1.0 if family.higher_is_better else -1.0  # best mean first, whichever way the score ranks
        rows.sort(key=lambda r: (-r.n, -sign * r.mean, r.backbone, r.channels))  # many-seed rows first, then by mean
        label = members[0].score_label
        mixed = len({r.n for r in rows}) > 1
        rule = (
            f"Each seed is its own split (unless a split file was given) and probe seed; the score is the mean over seeds of "
            f"each seed's mean {label}, and seed std is the sample std (ddof 1) of those per-seed means. Rows are sorted "
            "by number of seeds, then mean; they are not ranked."
        ) + (" Rows with fewer seeds are labelled." if mixed else "")
        digest = members[0].group.slug.rsplit("-", 1)[0] if members[0].group else "seeds"
        out.append(SeedTable(
            id=f"{digest}-seeds-{hashlib.sha256(repr(family).encode()).hexdigest()[:8]}",
            title=f"{members[0].title} · over seeds",  # the tables' own title: settings and synthetic data say so
            score_label=label, rows=tuple(rows), rule=rule, mixed=mixed,
        ))
        families_out.append(family)
    return tuple(_distinct_titles(out, families_out))


def _distinct_titles(tables: list["SeedTable"], keys: list[GroupKey]) -> list["SeedTable"]:
    """Tables whose titles would coincide get what tells their keys apart appended (protocol
    version, main score, off-protocol reasons), so no two tables share a heading."""
    seen: dict[str, list[int]] = defaultdict(list)
    for i, table in enumerate(tables):
        seen[table.title].append(i)
    out = list(tables)
    for indices in seen.values():
        if len(indices) < 2:
            continue
        fields = [f for f in ("protocol_version", "main_eval_set", "main_metric", "off_protocol_reasons", "overrides")
                  if len({getattr(keys[i], f) for i in indices}) > 1]
        for i in indices:
            said = "; ".join(f"{f.replace('_', ' ')} {getattr(keys[i], f)}" for f in fields) or f"table {i + 1}"
            out[i] = replace(out[i], title=f"{out[i].title} ({said})")
    return out

