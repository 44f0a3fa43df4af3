"""Board plots (matplotlib): per-class F1 heatmaps, channel-sweep bars, score-vs-axis curves
(e.g. macro-F1 per k) and the fine-tuning fraction curve.

Which plots a board has depends only on its data (:func:`plan_plots`); the Markdown and HTML show
them beside their tables. :func:`write_plots` draws them and raises ``ModuleNotFoundError`` when
matplotlib is missing (the builder then leaves the plots out and says so).

Bars and curves of scores start their score axis at 0, so a bar's length is its score.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ocbench.leaderboard.formatting import fmt_axis_value
from ocbench.leaderboard.tables import Board, Row, Table, trained_from
from ocbench.reported import REPORTED

__all__ = ["PlotSpec", "FRACTION_KEYS", "plan_plots", "write_plots"]

#: task_config keys a fine-tuning entry may use for the fraction of the train split it used.
FRACTION_KEYS = ("fraction", "train_fraction", "finetune_fraction")


@dataclass(frozen=True)
class PlotSpec:
    filename: str
    kind: str  # per_class | channel_sweep | axis | finetune_fraction | critical_difference
    table_id: str | None
    title: str = ""


def _sweep_rows(table: Table) -> dict[str, list[Row]]:
    """Backbones with at least two channel configurations and otherwise the same settings in one
    table (a channel sweep). The rows of a computed table share their settings; reported rows of
    one table may not (the paper's fine-tuning rows differ in epochs and data fraction), so those
    are grouped by their settings too, which the panel title names."""
    by_backbone: dict[tuple[str, str, str], list[Row]] = defaultdict(list)
    for row in table.rows:
        if row.score is not None:
            config = row.source.config if row.kind == "reported" and row.source is not None else {}
            settings = ", ".join(f"{k}={v}" for k, v in sorted((config or {}).items()))
            by_backbone[(row.backbone, row.kind, settings)].append(row)
    return {
        f"{name} ({kind}{', ' + settings if settings else ''})": rows
        for (name, kind, settings), rows in sorted(by_backbone.items())
        if len({r.channels for r in rows}) >= 2 and len({r.channels for r in rows}) == len(rows)
    }


def _fraction_of(row: Row) -> float | None:
    if row.kind == "reported":
        value = row.source.config.get("fraction") if row.source else None
    else:
        config = row.entry.entry.task_config if row.entry else {}
        value = next((config[k] for k in FRACTION_KEYS if k in config), None)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _curve_backbone(row: Row) -> str:
    """The backbone a fraction curve is drawn for. A fine-tuned row is named per run
    (``<base>.ft-<data>-f<fraction>-<hash>``); its card's notes name the base it was trained from."""
    notes = trained_from(row.entry.entry) if row.kind == "computed" and row.entry else None
    if notes is not None:
        return notes.get("fine-tuned from") or notes["trained from scratch as"]
    return row.backbone


def _fraction_series(board: Board) -> dict[str, list[tuple[float, float, float | None]]]:
    """``label -> [(fraction, mean, std)]`` for every configuration fine-tuned at >= 2 fractions."""
    series: dict[tuple, dict[float, tuple[float, float | None]]] = defaultdict(dict)
    for table in board.tables:
        for row in table.rows:
            fraction = _fraction_of(row)
            if fraction is None or row.score is None:
                continue
            config = row.source.config if row.source else (row.entry.entry.task_config if row.entry else {})
            epochs = config.get("epochs")
            tag = "reported" if row.kind == "reported" else (table.group.dataset_version[:8] if table.group else "")
            series[(_curve_backbone(row), row.channels, epochs, tag)][fraction] = (row.score.mean, row.score.std)
    out = {}
    for (backbone, channels, epochs, tag), points in series.items():
        if len(points) < 2:
            continue
        if tag == "reported" and 0.0 not in points:  # fraction 0 = the zero-shot probe of the same map
            zero = [r for r in REPORTED if r.task == "fov-mlp" and r.backbone == backbone and r.channels_label == channels]
            if zero and zero[0].mean is not None:
                points[0.0] = (zero[0].mean, zero[0].std)
        label = f"{backbone} {channels}" + (f", {epochs} epochs" if epochs else "") + f" ({tag})"
        out[label] = sorted((f, m, s) for f, (m, s) in points.items())
    return out


def _axis_rows(table: Table) -> list[Row]:
    return [r for r in table.computed_rows if len(r.axis_points) >= 2]


def plan_plots(board: Board) -> list[PlotSpec]:
    plans = []
    for table in board.tables:
        if table.class_names:
            plans.append(PlotSpec(f"per_class_f1__{table.id}.png", "per_class", table.id, f"Per-class F1, {table.title}"))
    for table in board.tables:
        if table.kind == "scores" and _sweep_rows(table):
            plans.append(PlotSpec(f"channel_sweep__{table.id}.png", "channel_sweep", table.id, f"Channel configurations, {table.title}"))
    for table in board.tables:
        if _axis_rows(table):
            plans.append(PlotSpec(f"axis__{table.id}.png", "axis", table.id, f"{table.score_label} per {table.axis_name}, {table.title}"))
    if _fraction_series(board):
        plans.append(PlotSpec("finetune_fraction.png", "finetune_fraction", None, "Fine-tuning data fraction"))
    if board.critical_difference is not None:
        plans.append(PlotSpec(
            "critical_difference.png", "critical_difference", None,
            "Critical-difference diagram: average rank across tables (Friedman + Nemenyi, 95%)",
        ))
    return plans


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


#: PNG text chunk holding what a plot draws (titles, labels, bar/line/image values, rounded), so a
#: check of a committed board compares plots by their data, not by pixels that vary by matplotlib version.
DATA_KEY = "ocbench-plot-data"


def _round(values: Any) -> Any:
    import numpy as np

    array = np.asarray(values, dtype=float)
    return [None if not np.isfinite(v) else round(float(v), 6) for v in array.ravel()]


def drawn_data(fig) -> dict[str, Any]:
    """What ``fig`` shows, as JSON-ready data: per axes its title, axis labels, fixed tick labels,
    bars (x, y, width, height), lines (x, y) and images (values)."""
    axes = []
    for ax in fig.axes:
        axes.append({
            "title": ax.get_title(),
            "xlabel": ax.get_xlabel(),
            "ylabel": ax.get_ylabel(),
            "xticklabels": [t.get_text() for t in ax.get_xticklabels()],
            "yticklabels": [t.get_text() for t in ax.get_yticklabels()],
            "bars": [_round([p.get_x(), p.get_y(), p.get_width(), p.get_height()]) for p in ax.patches
                     if hasattr(p, "get_width")],
            "lines": [_round(line.get_xydata()) for line in ax.lines],
            "images": [_round(image.get_array()) for image in ax.images],
        })
    suptitle = fig._suptitle.get_text() if getattr(fig, "_suptitle", None) is not None else ""
    return {"suptitle": suptitle, "axes": axes}


def read_drawn_data(path: str | Path) -> dict[str, Any] | None:
    """The data a plot written by a build draws (None for a PNG without it)."""
    from PIL import Image

    with Image.open(path) as image:
        text = image.info.get(DATA_KEY)
    return json.loads(text) if text else None


def _save(fig, path: Path) -> None:
    # written into the build's private staging folder, which is moved into place as a whole
    data = json.dumps(drawn_data(fig), sort_keys=True, separators=(",", ":"))
    fig.savefig(path, format="png", metadata={"Software": None, DATA_KEY: data})


def _per_class(table: Table, path: Path) -> None:
    import numpy as np

    rows = [r for r in table.computed_rows if r.per_class]
    comps = table.class_names
    data = np.array([[r.per_class.get(c, np.nan) for c in comps] for r in rows], dtype=float)
    # at least 6.5 in wide: a dataset with few classes still needs room for the row names and title
    fig = _figure(max(6.5, 1.0 + 0.45 * len(comps)), 1.6 + 0.35 * len(rows))
    ax = fig.add_subplot()
    image = ax.imshow(data, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(comps)), comps, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), [r.label for r in rows], fontsize=8)
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            if not np.isnan(data[i, j]):
                ax.text(j, i, f"{data[i, j]:.2f}", ha="center", va="center", fontsize=6, color="white" if data[i, j] < 0.6 else "black")
    eval_set = table.group.main_eval_set if table.group else "val"
    fig.colorbar(image, ax=ax, label=f"F1 ({eval_set})")
    ax.set_title(f"Per-class F1 — {table.title}", fontsize=9)
    _save(fig, path)


def _channel_sweep(table: Table, path: Path) -> None:
    groups = _sweep_rows(table)
    fig = _figure(7.5, 1.2 + 2.3 * len(groups))
    axes = fig.subplots(len(groups), 1, squeeze=False)[:, 0]
    for ax, (name, rows) in zip(axes, groups.items()):
        rows = sorted(rows, key=lambda r: -r.ranking_value)  # best first, whichever way the score ranks
        means = [r.score.mean for r in rows]  # type: ignore[union-attr]
        stds = [r.score.std or 0.0 for r in rows]  # type: ignore[union-attr]
        reported = rows[0].kind == "reported"
        ax.barh(range(len(rows)), means, xerr=stds, color="#c9b98f" if reported else "#4c78a8", hatch="//" if reported else None, capsize=2)
        ax.set_yticks(range(len(rows)), [r.channels for r in rows], fontsize=7)
        ax.invert_yaxis()
        # from 0: a cut axis would make small differences look large
        ax.set_xlim(0.0, min(1.0, max(m + s for m, s in zip(means, stds)) + 0.02) or 1.0)
        _reference_line(ax, table, vertical=True)
        ax.set_title(name, fontsize=8)
        ax.set_xlabel(f"{table.score_label} (mean ± std)", fontsize=7)
    fig.suptitle(f"Channel configurations — {table.title}", fontsize=9)
    _save(fig, path)


def _reference_line(ax, table: Table, *, vertical: bool) -> None:
    """The table's best chance reference as a dashed line (labelled), so no bar or curve reads as
    meaningful where it does not clear what the labels alone give."""
    ref = table.best_reference
    if ref is None or ref.score is None:
        return
    label = f"{ref.backbone} {ref.score.mean:.3f}"
    (ax.axvline if vertical else ax.axhline)(ref.score.mean, color="#d62728", linestyle="--", linewidth=1, label=label)
    if vertical:
        ax.text(ref.score.mean, -0.6, label, color="#d62728", fontsize=6, ha="left", va="bottom")


def _axis_plot(table: Table, path: Path) -> None:
    fig = _figure(6.5, 4.0)
    ax = fig.add_subplot()
    top = 0.0
    for row in _axis_rows(table):
        xs = [v for v, _ in row.axis_points]
        ys = [s.mean for _, s in row.axis_points]
        errs = [s.std or 0.0 for _, s in row.axis_points]
        top = max(top, *(y + e for y, e in zip(ys, errs)))
        line = ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=row.label)
        if row.axis_main in xs:  # the value the row is ranked at
            i = xs.index(row.axis_main)
            ax.plot([xs[i]], [ys[i]], marker="*", markersize=12, color=line[0].get_color())
    _reference_line(ax, table, vertical=False)
    values = table.axis_values
    ax.set_xticks(values, [fmt_axis_value(v) for v in values])
    ax.set_ylim(0.0, min(1.0, top + 0.05) if top > 0 else 1.0)
    ax.set_xlabel(table.axis_name or "axis")
    ax.set_ylabel(f"{table.score_label} (mean ± std)")
    ax.set_title(f"{table.title} (star: ranked value)", fontsize=9)
    ax.legend(fontsize=7)
    _save(fig, path)


def _finetune_fraction(board: Board, path: Path) -> None:
    series = _fraction_series(board)
    fig = _figure(6.0, 4.0)
    ax = fig.add_subplot()
    for label, points in series.items():
        xs, ys, errs = zip(*points)
        ax.errorbar(xs, ys, yerr=[e or 0.0 for e in errs], marker="o", capsize=3, label=label, linestyle="--" if label.endswith("(reported)") else "-")
    ax.set_ylim(bottom=0.0)
    ax.set_xlabel("fraction of the train split used for fine-tuning (0 = none)")
    ax.set_ylabel("macro-F1 (mean ± std)")
    ax.set_title("Fine-tuning data fraction", fontsize=9)
    ax.legend(fontsize=7)
    _save(fig, path)


def _critical_difference(board: Board, path: Path) -> None:
    """Average ranks on one axis (1 = best, at the left); a bar joins backbones whose average ranks
    differ by less than the Nemenyi critical difference (not separable at 95%); the CD is drawn above."""
    cd = board.critical_difference
    r = cd.result
    k = len(r.names)
    order = sorted(range(k), key=lambda i: r.average_ranks[i])
    fig = _figure(7.0, 1.6 + 0.28 * k)
    ax = fig.add_subplot()
    ax.set_xlim(0.5, k + 0.5)
    ax.set_ylim(-(k + 1) * 0.5 - 0.5 * len(r.cliques), 1.6)
    ax.axhline(0, color="black", lw=1)
    for tick in range(1, k + 1):
        ax.plot([tick, tick], [0, 0.12], color="black", lw=1)
        ax.text(tick, 0.22, str(tick), ha="center", va="bottom", fontsize=8)
    ax.plot([1, 1 + r.critical_difference], [1.15, 1.15], color="black", lw=2)
    ax.text(1 + r.critical_difference / 2, 1.25, f"CD = {r.critical_difference:.2f}", ha="center", va="bottom", fontsize=8)
    for pos, i in enumerate(order):
        y = -0.5 * (pos + 1)
        rank = r.average_ranks[i]
        ax.plot([rank, rank], [0, y], color="gray", lw=0.8)
        ax.text(rank + 0.05, y, f"{r.names[i]} ({rank:.2f})", va="center", fontsize=8)
    for c, members in enumerate(r.cliques):
        ranks = [r.average_ranks[i] for i in members]
        y = -0.5 * (k + 1) - 0.4 * c
        ax.plot([min(ranks) - 0.03, max(ranks) + 0.03], [y, y], color="tab:red", lw=3, solid_capstyle="round")
    ax.axis("off")
    ax.set_title(f"Average rank over {r.n_tables} tables (1 = best); Friedman p = {r.p_value:.3g}", fontsize=9)
    _save(fig, path)


def write_plots(board: Board, plots_dir: Path, plans: list[PlotSpec] | None = None) -> list[Path]:
    """Draw every planned plot into ``plots_dir``; ModuleNotFoundError when matplotlib is missing."""
    import matplotlib  # noqa: F401  (fail early, before anything is written)

    plans = plan_plots(board) if plans is None else plans
    tables = {t.id: t for t in board.tables}
    written = []
    for plan in plans:
        path = Path(plots_dir) / plan.filename
        if plan.kind == "per_class":
            _per_class(tables[plan.table_id], path)  # type: ignore[index]
        elif plan.kind == "channel_sweep":
            _channel_sweep(tables[plan.table_id], path)  # type: ignore[index]
        elif plan.kind == "axis":
            _axis_plot(tables[plan.table_id], path)  # type: ignore[index]
        elif plan.kind == "critical_difference":
            _critical_difference(board, path)
        else:
            _finetune_fraction(board, path)
        written.append(path)
    return written
