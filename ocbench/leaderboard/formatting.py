"""Text helpers shared by the board renderers and the run summary: score cells, metric labels,
the board's legend, and escaping for Markdown and CSV.

Leaf module: imports nothing of ocbench, so the run summary and every renderer can use it.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = [
    "fmt_score",
    "metric_label",
    "score_label",
    "fmt_axis_value",
    "md_escape",
    "csv_safe",
    "METRIC_LABELS",
    "SYNTHETIC_NOTE",
    "CHANNEL_LEGEND",
    "WEIGHTS_UNVERIFIED",
    "weights_note_suffix",
    "score_basis",
]

#: How known metric names read in headers; any other metric is shown by its name.
METRIC_LABELS = {
    "macro_f1": "macro-F1",
    "macro_f1_all": "macro-F1 (all classes)",
    "micro_f1": "micro-F1",
    "f1": "F1",
}

SYNTHETIC_NOTE = (
    "synthetic data (the demo): these numbers test the pipeline, not how a backbone does on real cells"
)
WEIGHTS_UNVERIFIED = "weights not matched to a published checksum"


def weights_note_suffix(note: str | None) -> str:
    """`` (<note>)`` to follow a weights fact, or "" when there is none or it only repeats
    :data:`WEIGHTS_UNVERIFIED` (the loader's note for unverified weights says the same)."""
    return f" ({note})" if note and note != WEIGHTS_UNVERIFIED else ""

CHANNEL_LEGEND = (
    "Channels: `replicate` feeds each dataset channel alone into every model input and concatenates "
    "the two embeddings. A map is written as the paper does, `[1, 2] -> [G, B]`: dataset channel 1 "
    "(protein) goes to model input G and channel 2 (nucleus) to input B, the other inputs are zero. "
    "1 and 2 are the paper's names for the protein and nucleus channels, not positions in the TIFF "
    "file (OpenCell's TIFFs store the nucleus (Hoechst) as channel 0 and the protein as channel 1). "
    "Model inputs are letters for RGB models and 0-based indices otherwise (HPA's RGBY inputs: "
    "0 microtubules, 1 protein, 2 nucleus, 3 ER); `natural` marks the map into the inputs of the "
    "same name. Entry keys name the same map with 0-based input indices: `map-p1-n2` = protein into "
    "input 1, nucleus into input 2."
)


def fmt_score(score: Any, *, with_n: bool = True) -> str:
    """``0.712 ± 0.016 (n=5)`` for anything with ``mean``, ``std`` and ``n``; "" for None."""
    if score is None:
        return ""
    std = f" ± {score.std:.3f}" if score.std is not None else ""
    n = f" (n={score.n})" if with_n else ""
    return f"{score.mean:.3f}{std}{n}"


def score_basis(eval_set: str, n: int) -> str:
    """What a score of ``eval_set`` over ``n`` repetitions is, in words: folds for the probes, one
    leave-one-out pass (``loo``) for the single-cell k-NN, which has neither folds nor a test set."""
    if n >= 2:
        return (f"each of the {n} fold models scored on the held-out test set, mean ± std (ddof 1)" if eval_set == "test"
                else f"mean ± std (ddof 1) over {n} {'validation ' if eval_set == 'val' else ''}folds")
    if eval_set == "loo":
        return "one leave-one-out pass over every evaluated item (no folds, no test set)"
    return f"one score on the {eval_set} set (no folds)"


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric.replace("_", " "))


def score_label(eval_set: str, metric: str) -> str:
    """``val macro-F1``: the evaluation set, then the metric."""
    return f"{eval_set} {metric_label(metric)}"


def fmt_axis_value(value: float) -> str:
    """``20`` for whole numbers, else the shortest float text (``0.25``)."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


# Markdown: raw HTML (<script>, <img onerror=...>) and links ([x](javascript:...)) must not come
# through from entry fields, and table cells must not break on | or newlines. Backslash escapes
# of ASCII punctuation are CommonMark; < and & become entities so no HTML parser sees a tag or
# entity; [ ] are escaped so no link or image can form.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def md_escape(text: object) -> str:
    """``text`` as literal Markdown inline text (one line, no HTML, no links, no emphasis)."""
    s = str(text).replace("&", "&amp;").replace("<", "&lt;")  # no "<": no tag, so ">" may stay
    s = _MD_SPECIAL.sub(r"\\\1", s)
    return re.sub(r"[\r\n\t]+", " ", s)


def csv_safe(value: Any) -> Any:
    """A CSV cell a spreadsheet will not run: text starting with = + - @ (or a tab / CR, which
    some spreadsheets skip before looking) gets a leading apostrophe. Numbers pass unchanged."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value
