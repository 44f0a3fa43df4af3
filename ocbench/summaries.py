"""The one summary of repeated scores: values, mean, sample standard deviation, count.

Every score an entry holds (a metric over cross-validation folds, over the fold models scored on
the test set, over seeds) is summarized here and nowhere else, so tasks, the entry schema and the
leaderboard agree on what "mean ± std" means: the standard deviation uses ``ddof = 1`` (sample
std), and is ``None`` when there is a single value (undefined; JSON has no NaN).

Standard library only: the entry schema and the leaderboard use it without numpy or torch.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

__all__ = ["STD_DDOF", "summarize", "summary_mean", "summary_std"]

STD_DDOF = 1


def summary_mean(values: Sequence[float]) -> float:
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("no values to summarize")
    return math.fsum(vals) / len(vals)


def summary_std(values: Sequence[float], ddof: int = STD_DDOF) -> float | None:
    vals = [float(v) for v in values]
    n = len(vals)
    if n <= ddof:
        return None
    mean = math.fsum(vals) / n
    return math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (n - ddof))


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """``{"values": [...], "mean", "std" (ddof 1; None when n < 2), "ddof": 1, "n"}``.

    Raises ValueError for an empty sequence or a value that is not finite.
    """
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("no values to summarize")
    for i, v in enumerate(vals):
        if not math.isfinite(v):
            raise ValueError(f"value {i} is {v}, not a finite number")
    return {"values": vals, "mean": summary_mean(vals), "std": summary_std(vals), "ddof": STD_DDOF, "n": len(vals)}
