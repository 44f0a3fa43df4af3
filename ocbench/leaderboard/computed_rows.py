"""One computed row per entry: its scores, interval, flags, markers and provenance.

Everything a reader must see beside an entry's number is decided here: the notes (synthetic data,
off-protocol, precision, unverified weights, warnings), the short markers beside the backbone's
name, the kept predictions behind the interval, and the provenance facts shown on demand.
"""

from __future__ import annotations

import json
from typing import Any

from ocbench.leaderboard.board_types import Row
from ocbench.leaderboard.channels import channels_label, entry_channel_map
from ocbench.leaderboard.formatting import (
    SYNTHETIC_NOTE, WEIGHTS_UNVERIFIED, fmt_axis_value, score_label, weights_note_suffix,
)
from ocbench.leaderboard.grouping import dataset_block
from ocbench.leaderboard.per_class import per_class_metric
from ocbench.leaderboard.ranking import Score
from ocbench.reported import not_comparable_reason, reported_for

__all__ = ["computed_row", "card_role"]


def _row_flags(loaded: Any) -> list[str]:
    """Short notes a reader must see beside the number (also in the CSV and tooltips)."""
    e = loaded.entry
    notes = []
    if e.dataset.synthetic:
        notes.append("synthetic data")
    if e.off_protocol:
        reasons = e.off_protocol_reasons or [f"{k}={v}" for k, v in e.overrides.items()]
        notes.append("off-protocol" + (": " + "; ".join(reasons) if reasons else ""))
    if e.environment.precision != "fp32":
        notes.append(f"precision {e.environment.precision}")
    if e.backbone.weights_verified is False:
        notes.append(WEIGHTS_UNVERIFIED)
    if e.axis is not None:
        notes.append(f"ranked at {e.axis.name}={fmt_axis_value(e.axis.main)}")
    if loaded.schema_version != e.schema_version:
        notes.append(f"upgraded from schema {loaded.schema_version}")
    if e.backbone.not_zero_shot:
        notes.append("not zero-shot: " + "; ".join(e.backbone.not_zero_shot))
    if e.seed:
        notes.append(f"seed {e.seed}")
    notes += [f"warning: {w.message}" for w in e.warnings]
    return notes


def card_role(entry: Any) -> str:
    """The backbone card's ``role`` as recorded in the entry ("model" when it says none)."""
    card = entry.backbone.card if isinstance(entry.backbone.card, dict) else {}
    return str(card.get("role") or "model")


def _predictions_of(loaded: Any) -> tuple[Any, str]:
    """The entry's kept predictions (checked when the entry was collected), or None and why there
    are none (said on the board)."""
    if loaded.entry.predictions is None:
        if loaded.schema_version < 3:
            return None, f"no interval: entries of schema {loaded.schema_version} kept no per-item predictions"
        return None, "no interval: the task kept no per-item predictions"
    if loaded.predictions is None:
        return None, f"no interval: {loaded.predictions_note}"
    return loaded.predictions, ""


def _provenance(loaded: Any, board_file: str) -> tuple[tuple[str, str], ...]:
    e = loaded.entry
    env = e.environment
    b = e.backbone
    verified = {True: "matched the card's published checksum", False: WEIGHTS_UNVERIFIED, None: "not checked"}[b.weights_verified]
    weights = f"sha256 {b.weights_sha256 or '- (no weights)'}; revision {b.revision or '-'}"
    if b.weights_sha256:
        weights += f"; {verified}"
    weights += weights_note_suffix(b.weights_note)
    facts = [
        ("entry", f"entries/{board_file} (sha256 {loaded.sha256})"),
        ("created", e.created),
        ("backbone", f"{b.name} ({b.arch}) from {b.source}"),
        ("weights", weights),
        ("channels", f"strategy {e.channels.strategy}, key {e.channels.key}, spec {e.channels.spec or '-'}"),
        (
            "dataset",
            f"{e.dataset.name} version {e.dataset.version} ({e.dataset.n_items} items)"
            + (f"; {SYNTHETIC_NOTE}" if e.dataset.synthetic else ""),
        ),
        ("split", f"{e.split.track} seed {e.split.seed} sha256 {e.split.sha256}"),
        ("task", f"{e.task} ({e.protocol_version}); overrides {json.dumps(e.overrides, sort_keys=True)}; seed {e.seed}"),
        ("main score", f"{score_label(e.main_score.eval_set, e.main_score.metric)} ({e.main_score.eval_set}/{e.main_score.metric})"),
    ]
    if e.off_protocol:
        facts.append(("off-protocol", "; ".join(e.off_protocol_reasons) or "yes (no reason recorded)"))
    card = b.card if isinstance(b.card, dict) else {}
    if card.get("training_datasets") or card.get("supervision"):
        trained = ", ".join(map(str, card.get("training_datasets") or [])) or "-"
        facts.append(("pretraining", f"data {trained}; supervision {card.get('supervision') or '-'}"))
    if b.not_zero_shot is None:
        zero_shot = "unknown (not recorded)"
    else:
        zero_shot = ("no: " + "; ".join(b.not_zero_shot)) if b.not_zero_shot else "yes"
    facts.append(("zero-shot", zero_shot))
    if e.axis is not None:
        values = ", ".join(fmt_axis_value(p.value) for p in e.axis.points)
        facts.append(("axis", f"{e.axis.name} in [{values}]; ranked at {e.axis.name}={fmt_axis_value(e.axis.main)}"))
    threads = f", {env.threads} threads" if env.threads else ""
    facts += [
        ("software", f"ocbench {env.ocbench}, torch {env.torch or '-'}, timm {env.timm or '-'}, python {env.python}"),
        ("machine", f"{env.device} on {env.platform}; precision {env.precision}{threads}"),
        ("time", f"extraction {e.timings.extraction_s if e.timings.extraction_s is not None else '-'} s, task {e.timings.task_s} s"),
    ]
    return tuple(facts)


def _axis_points(entry: Any) -> tuple[tuple[float, Score], ...]:
    if entry.axis is None:
        return ()
    main = entry.main_score
    points = []
    for p in sorted(entry.axis.points, key=lambda p: p.value):
        summary = p.scores.get(main.eval_set, {}).get(main.metric)
        if summary is not None:
            points.append((p.value, Score.of(summary)))
    return tuple(points)


def computed_row(loaded: Any, board_file: str) -> Row:
    e = loaded.entry
    channel_map = entry_channel_map(e)
    reported = (
        reported_for(e.backbone.name, e.task, e.split.track, e.channels.strategy, channel_map, e.task_config)
        if not_comparable_reason(dataset_block(e)) is None
        else None
    )
    per_class, per_class_folds = per_class_metric(e)
    test = e.test
    predictions, no_interval = _predictions_of(loaded)
    interval_set = e.predictions.eval_set if e.predictions is not None else ""
    summary = e.scores.get(interval_set, {}).get(e.main_score.metric) if interval_set and predictions is not None else None
    # a recorded interval is shown only beside the predictions it was computed from
    interval = summary.interval if summary is not None else None
    if interval is None and not no_interval:
        no_interval = "no interval recorded for the main metric"
    # without readable predictions nothing checks the scores beyond the entry's own consistency
    unverified = no_interval.removeprefix("no interval: ") if predictions is None else ""
    notes = _row_flags(loaded) + ([f"unverified, {no_interval}" if unverified else no_interval] if no_interval else [])
    return Row(
        kind="computed",
        backbone=e.backbone.name,
        channels=channels_label(e, channel_map),
        strategy=e.channels.strategy,
        channel_map=channel_map,
        score=Score.of(e.main),
        test=Score.of(test) if test is not None and e.main_score.eval_set != "test" else None,
        higher_is_better=e.main_score.higher_is_better,
        main_metric=e.main_score.metric,
        reported=reported,
        notes="; ".join(notes),
        provenance=_provenance(loaded, board_file) + ((("interval", interval.describe()),) if interval is not None else ()),
        per_class=per_class,
        per_class_folds=per_class_folds,
        axis_points=_axis_points(e),
        axis_main=e.axis.main if e.axis is not None else None,
        entry=loaded,
        board_file=board_file,
        synthetic=bool(e.dataset.synthetic),
        interval=interval,
        interval_set=interval_set if interval is not None else "",
        predictions=predictions,
        no_interval=no_interval,
        unverified=unverified,
        seed=e.seed,
        not_zero_shot=tuple(e.backbone.not_zero_shot) if e.backbone.not_zero_shot is not None else None,
        role=card_role(e),
        warnings=tuple(w.message for w in e.warnings),
        markers=_row_markers(loaded),
    )


def _row_markers(loaded: Any) -> tuple[tuple[str, str], ...]:
    """The flags of :func:`_row_flags` that differ between rows of one table, as short badges."""
    e = loaded.entry
    out = []
    if e.backbone.not_zero_shot:
        out.append(("not zero-shot", "not zero-shot: " + "; ".join(e.backbone.not_zero_shot)))
    if e.backbone.weights_verified is False:
        out.append(("unverified weights", WEIGHTS_UNVERIFIED + weights_note_suffix(e.backbone.weights_note)))
    if e.environment.precision != "fp32":
        out.append((e.environment.precision, f"computed in {e.environment.precision}"))
    if e.seed:
        out.append((f"seed {e.seed}", f"run with seed {e.seed} (its own split and probe seed)"))
    from ocbench.chance import COLLAPSE_KINDS

    for kinds, label in ((COLLAPSE_KINDS, "⚠ collapsed"), (("chance-level",), "⚠ chance level")):
        said = [w.message for w in e.warnings if w.kind in kinds]
        if said:
            out.append((label, "; ".join(said)))
    return tuple(out)

