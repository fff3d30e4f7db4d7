"""Dashboard, charts: pure data shaping for the pages' drawings (SVG geometry for intervals,
whiskers and histograms; curve series for uPlot; smoothing), no I/O."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# Keys of a training log record drawn as curves, with their labels.
CURVES = {
    "loss": "training loss",
    "eval_loss": "eval loss",
    "lr": "learning rate",
    "grad_norm": "gradient norm",
}
X_AXES = ("step", "tokens", "time")
# Fewest points of a series the pages smooth: a moving average over a handful of points
# (three evaluations) lags far behind them, so a shorter series is drawn raw.
SMOOTH_MIN_POINTS = 20


@dataclass(frozen=True)
class Scale:
    """A linear map from [low, high] onto [0, width] pixels, with some padding."""

    low: float
    high: float
    width: float

    @classmethod
    def around(cls, values: Sequence[float], width: float, include_zero: bool = True) -> Scale:
        finite = [v for v in values if math.isfinite(v)]
        if include_zero:
            finite.append(0.0)
        low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
        if high == low:
            low, high = low - 1.0, high + 1.0
        pad = (high - low) * 0.05
        return cls(low - pad, high + pad, width)

    def __call__(self, value: float) -> float:
        return round((value - self.low) / (self.high - self.low) * self.width, 1)


@dataclass(frozen=True)
class IntervalBar:
    """One row of an interval chart: the point and its interval in pixels."""

    label: str
    value: float
    low: float
    high: float
    x: float
    x_low: float
    x_high: float
    significant: bool  # the interval excludes zero


def interval_bars(
    rows: Sequence[tuple[str, float, float, float]], width: float = 320.0
) -> tuple[list[IntervalBar], float]:
    """(label, value, low, high) rows as bars on one scale that includes zero; returns the
    bars and the x of zero."""
    scale = Scale.around([v for r in rows for v in r[1:]], width)
    bars = [
        IntervalBar(
            label,
            value,
            low,
            high,
            scale(value),
            scale(low),
            scale(high),
            low > 0 or high < 0,
        )
        for label, value, low, high in rows
    ]
    return bars, scale(0.0)


def whiskers(
    standings: Sequence[tuple[str, float, float, float]], width: float = 320.0
) -> list[IntervalBar]:
    """Leaderboard ratings with their intervals on one scale (not anchored at zero)."""
    scale = Scale.around([v for s in standings for v in s[1:]], width, include_zero=False)
    return [
        IntervalBar(m, r, lo, hi, scale(r), scale(lo), scale(hi), False)
        for m, r, lo, hi in standings
    ]


@dataclass(frozen=True)
class HistogramBar:
    label: str
    count: int
    x: float
    width: float
    height: float


def histogram_bars(
    histogram: dict[str, Any] | None, width: float = 320.0, height: float = 80.0
) -> list[HistogramBar]:
    """A stored length histogram ({edges, counts}) as bars scaled to the tallest."""
    if not histogram or not histogram.get("counts"):
        return []
    counts = list(histogram["counts"])
    edges = list(histogram.get("edges") or range(len(counts) + 1))
    top = max(counts) or 1
    step = width / len(counts)
    return [
        HistogramBar(
            f"{edges[i]}-{edges[i + 1] if i + 1 < len(edges) else ''}",
            count,
            round(i * step, 1),
            round(step - 1, 1),
            round(count / top * height, 1),
        )
        for i, count in enumerate(counts)
    ]


def smooth(values: Sequence[float | None], weight: float) -> list[float | None]:
    """Exponential moving average with debiasing (TensorBoard's smoothing); None stays None."""
    if not 0 <= weight < 1:
        raise ValueError("smoothing weight must be in [0, 1)")
    out: list[float | None] = []
    last, count = 0.0, 0
    for value in values:
        if value is None or not math.isfinite(value):
            out.append(None)
            continue
        last = last * weight + (1 - weight) * value
        count += 1
        out.append(last / (1 - weight**count))
    return out


def run_series(records: Sequence[dict[str, Any]]) -> dict[str, list[float | None]]:
    """A run's log as columns: step, tokens seen and seconds of training so far (the loop
    logs each step's own tokens and rate, so both are summed), and each curve (None where a
    record has no value); events (resumed, early stop) are left out."""
    rows = [r for r in records if "step" in r and "event" not in r]
    columns: dict[str, list[float | None]] = {axis: [] for axis in X_AXES}
    tokens = seconds = 0.0
    for record in rows:
        count, rate = _number(record.get("tokens")), _number(record.get("tokens_per_s"))
        if count is not None:
            tokens += count
            if rate:
                seconds += count / rate
        columns["step"].append(_number(record.get("step")))
        columns["tokens"].append(tokens)
        columns["time"].append(round(seconds, 4))
    for key in CURVES:
        columns[key] = [_number(r.get(key)) for r in rows]
    return columns


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def config_diff(configs: dict[str, dict[str, Any]]) -> list[tuple[str, list[Any]]]:
    """Flattened keys whose values differ between runs: (key, [value per run in order])."""
    flat = {run: _flatten(config) for run, config in configs.items()}
    keys = sorted({k for f in flat.values() for k in f})
    missing = object()
    out = []
    for key in keys:
        values = [f.get(key, missing) for f in flat.values()]
        if any(v != values[0] for v in values[1:]):
            out.append((key, [None if v is missing else v for v in values]))
    return out


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(_flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def heat_colour(value: float | None) -> str:
    """A win rate in [0, 1] as a colour from red (0) through white (0.5) to green (1)."""
    if value is None:
        return "#eeeeee"
    value = min(1.0, max(0.0, value))
    if value >= 0.5:
        t = (value - 0.5) * 2
        return f"#{round(255 - 155 * t):02x}{round(255 - 55 * t):02x}{round(255 - 155 * t):02x}"
    t = (0.5 - value) * 2
    return f"#{255:02x}{round(255 - 155 * t):02x}{round(255 - 155 * t):02x}"
