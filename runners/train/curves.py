"""Runner `train`, curves: loss, eval loss, learning rate and gradient norm as PNG, with
axis ticks labelled by magnitude (the dashboard's curves.js labels its ticks the same way)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

from runners.train.log import read_log


def _decimals(spacing: float) -> int:
    """Fewest decimals that write multiples of `spacing` exactly (at most 10)."""
    for digits in range(10):
        scaled = spacing * 10**digits
        if abs(scaled - round(scaled)) < 1e-6 * max(1.0, scaled):
            return digits
    return 10


def _scientific(value: float) -> str:
    mantissa, exponent = f"{value:.3e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".") if "." in mantissa else mantissa
    return f"{mantissa}e{int(exponent)}"


def tick_label(value: float, spacing: float = 0.0, magnitude: float = 0.0) -> str:
    """An axis tick's label, by magnitude: "0" only for zero (or float noise at zero);
    scientific (2e-4, 1.5e-4, 3e5) when the axis's largest value (`magnitude`, else the
    value's own) is under 1e-3 or reaches 1e5; otherwise as many decimals as the tick
    spacing needs (0.5, 1.0, 2.25, 5.932)."""
    if not math.isfinite(value):
        return ""
    step = abs(spacing) or abs(value)
    if value == 0 or abs(value) < step * 1e-9:
        return "0"
    size = magnitude or abs(value)
    if size < 1e-3 or size >= 1e5:
        return _scientific(value)
    return f"{value:.{_decimals(step)}f}"


def tick_spacing(ticks: Sequence[float]) -> float:
    """The smallest gap between an axis's ticks (0 with fewer than two)."""
    gaps = [abs(b - a) for a, b in pairwise(ticks) if b != a]
    return min(gaps) if gaps else 0.0


def tick_labels(ticks: Sequence[float]) -> list[str]:
    """Labels for a whole axis, all with the axis's tick spacing."""
    spacing = tick_spacing(ticks)
    magnitude = max((abs(t) for t in ticks if math.isfinite(t)), default=0.0)
    return [tick_label(t, spacing, magnitude) for t in ticks]


def _by_magnitude(axis: Any) -> Any:
    """A matplotlib formatter for `axis` using tick_label with the axis's own tick spacing."""
    from matplotlib.ticker import FuncFormatter

    def label(value: float, _position: int) -> str:
        low, high = axis.get_view_interval()
        ticks = [float(t) for t in axis.get_ticklocs() if min(low, high) <= t <= max(low, high)]
        magnitude = max((abs(t) for t in ticks), default=0.0)
        return tick_label(value, tick_spacing(ticks), magnitude)

    return FuncFormatter(label)


PREFERENCE_PANELS = (
    ("rewards/chosen", "reward of chosen"),
    ("rewards/rejected", "reward of rejected"),
    ("rewards/margins", "reward margin"),
    ("rewards/accuracies", "reward accuracy"),
)


def plot_run(log: Path, target: Path, title: str) -> None:
    plot_runs({title: log}, target, title)


def plot_runs(logs: dict[str, Path], target: Path, title: str) -> None:
    """One panel each for loss, eval loss, learning rate and gradient norm; runs overlaid."""
    import matplotlib.pyplot as plt

    figure = curves_figure({name: read_log(path) for name, path in logs.items()}, title)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, metadata={"Software": None})
    plt.close(figure)


def curves_figure(runs: dict[str, list[dict[str, Any]]], title: str) -> Any:
    """The figure plot_runs saves, from each run's log records (legend: the runs' names)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: tuple[tuple[str, str], ...] = (
        ("loss", "training loss"),
        ("eval_loss", "eval loss"),
        ("lr", "learning rate"),
        ("grad_norm", "gradient norm"),
    )
    if any(k.startswith("rewards/") for run in runs.values() for r in run for k in r):
        panels += PREFERENCE_PANELS  # dpo, orpo, kto: trl's rewards as it logs them
    rows = len(panels) // 2
    figure, axes = plt.subplots(rows, 2, figsize=(10, 3 * rows), dpi=100)
    for (key, label), axis in zip(panels, axes.flat, strict=True):
        for name, run in runs.items():
            records = [r for r in run if key in r and "event" not in r]
            if records:
                axis.plot(
                    [r["step"] for r in records],
                    [r[key] for r in records],
                    marker="o" if key == "eval_loss" or len(records) < 20 else None,
                    label=name,
                )
        axis.set_title(label)
        axis.set_xlabel("step")
        axis.yaxis.set_major_formatter(_by_magnitude(axis.yaxis))
        if len(runs) > 1 and axis.lines:
            axis.legend(fontsize="small")
    figure.suptitle(title)
    figure.tight_layout()
    return figure
