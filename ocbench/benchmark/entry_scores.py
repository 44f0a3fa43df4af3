"""The score value types of an entry: one score over repetitions and its interval, the main score,
and an axis of settings swept within one entry.

These are the pieces :class:`~ocbench.benchmark.entry_schema.Entry` is made of that hold numbers;
each checks what it can on its own (a summary's mean and std agree with its values, an interval's
low is below its high). The strict base models every entry block derives from live here too.
Standard library and pydantic only, like the rest of the entry schema.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

from ocbench.summaries import summary_mean, summary_std

# Aggregates must match the per-fold values up to rounding (a writer may round to 4 digits).
_AGGREGATE_TOLERANCE = 5e-4


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class _OmitsUnset(_Strict):
    """Leaves the optional fields of newer schema versions (``_OMIT_NONE``) out of the file while
    they are null, so an entry without them reads the same as before they existed."""

    _OMIT_NONE: ClassVar[frozenset[str]] = frozenset()
    _OMIT_EMPTY: ClassVar[frozenset[str]] = frozenset()  # lists left out while empty

    @model_serializer(mode="wrap")
    def _omit_nulls(self, handler: Any) -> Any:
        data = handler(self)
        for name in self._OMIT_NONE:
            if isinstance(data, dict) and data.get(name, 0) is None:
                del data[name]
        for name in self._OMIT_EMPTY:
            if isinstance(data, dict) and data.get(name, 0) == []:
                del data[name]
        return data


class IntervalInfo(_Strict):
    """A confidence interval of a score, and what it is (see :mod:`ocbench.stats`)."""

    estimate: float = Field(description="the score the interval is about (equals the summary's mean)")
    low: float
    high: float
    level: float = Field(gt=0, lt=1, description="confidence level, e.g. 0.95")
    method: str = Field(min_length=1, description="e.g. cluster bootstrap (percentile)")
    group: str = Field(min_length=1, description="what one resampled unit is (protein)")
    n_groups: int = Field(ge=1, description="number of groups in the evaluated set")
    n_resamples: int = Field(ge=1)
    seed: int = Field(ge=0, description="seed of the resampling")

    @model_validator(mode="after")
    def _ordered(self) -> "IntervalInfo":
        if not self.low <= self.high:
            raise ValueError(f"interval low {self.low} is above high {self.high}")
        return self

    def describe(self, digits: int = 3) -> str:
        """``0.822 [0.801, 0.843] 95% CI, protein bootstrap, 131 proteins``."""
        from ocbench.stats import Interval

        return Interval(**self.model_dump()).describe(digits)


class MetricSummary(_OmitsUnset):
    """One score over repetitions (cross-validation folds, fold models on the test set, seeds):
    the values and their mean and sample std (see :mod:`ocbench.summaries`), and where per-item
    predictions were kept, the interval of the mean."""

    values: list[float] = Field(min_length=1, description="one score per repetition (fold), in order")
    mean: float
    std: float | None = Field(description="standard deviation with `ddof`; null when n <= ddof")
    ddof: int = Field(ge=0, le=1)
    n: int = Field(ge=1, description="number of values")
    interval: IntervalInfo | None = Field(default=None, description="95% interval of the mean on the evaluated items")

    _OMIT_NONE: ClassVar[frozenset[str]] = frozenset({"interval"})

    @model_validator(mode="after")
    def _aggregates_match_values(self) -> "MetricSummary":
        if self.interval is not None and abs(self.interval.estimate - self.mean) > _AGGREGATE_TOLERANCE:
            raise ValueError(f"interval estimate {self.interval.estimate} does not match the mean {self.mean}")
        if self.n != len(self.values):
            raise ValueError(f"n is {self.n} but values has {len(self.values)} items")
        if not all(math.isfinite(v) for v in self.values):
            raise ValueError("values must be finite numbers")
        try:
            mean, std = summary_mean(self.values), summary_std(self.values, self.ddof)
        except OverflowError:
            raise ValueError("values are too large to be scores") from None
        if abs(mean - self.mean) > _AGGREGATE_TOLERANCE:
            raise ValueError(f"mean {self.mean} does not match the values (their mean is {mean:.6f})")
        if std is None:
            if self.std is not None:
                raise ValueError(f"std must be null when n ({self.n}) <= ddof ({self.ddof})")
        elif self.std is None or abs(std - self.std) > _AGGREGATE_TOLERANCE:
            raise ValueError(f"std {self.std} does not match the values (ddof={self.ddof} gives {std:.6f})")
        return self

    @property
    def per_fold(self) -> list[float]:  # the schema-1 name, kept for readers
        return self.values


#: ``{eval_set: {metric: summary}}``, e.g. ``{"val": {"macro_f1": ...}, "test": {...}}``.
Scores = dict[str, dict[str, MetricSummary]]


class MainScore(_Strict):
    """Which score ranks an entry: ``scores[eval_set][metric].mean``, higher is better unless
    ``higher_is_better`` is false (a loss, an error rate: then lower ranks first)."""

    eval_set: str = Field(min_length=1)
    metric: str = Field(min_length=1)
    #: Left out of the file while true (the default), so entries of higher-is-better tasks read as before.
    higher_is_better: bool = Field(default=True, description="false: lower is better (omitted when true)")

    @model_serializer(mode="wrap")
    def _omit_default_direction(self, handler: Any) -> Any:
        data = handler(self)
        if isinstance(data, dict) and data.get("higher_is_better") is True:
            del data["higher_is_better"]
        return data

    @property
    def label(self) -> str:
        return f"{self.metric} ({self.eval_set})"


class AxisPoint(_Strict):
    """The scores at one value of the entry's axis (e.g. k = 20)."""

    value: float
    scores: Scores = Field(min_length=1)
    per_class: dict[str, dict[str, dict[str, float]]] = Field(default_factory=dict)


class Axis(_Strict):
    """A named setting swept within one entry (k of a k-NN, fraction of fine-tuning data).

    ``points`` hold the scores at each value; the entry's top-level ``scores`` are those of the
    point at ``main`` (the value that ranks)."""

    name: str = Field(min_length=1, pattern=r"^[a-z][a-z0-9_]*$")
    main: float
    points: list[AxisPoint] = Field(min_length=1)

    @model_validator(mode="after")
    def _main_is_a_point(self) -> "Axis":
        values = [p.value for p in self.points]
        if len(set(values)) != len(values):
            raise ValueError(f"axis {self.name}: repeated values {values}")
        if self.main not in values:
            raise ValueError(f"axis {self.name}: main value {self.main} is not one of the points {values}")
        return self

    def point(self, value: float) -> AxisPoint:
        return next(p for p in self.points if p.value == value)


#: Metrics that are fractions: their values (and per-class values) must lie in [0, 1].
UNIT_INTERVAL_METRICS = frozenset({"macro_f1", "macro_f1_all", "f1", "precision", "recall", "accuracy"})
