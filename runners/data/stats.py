"""Runner `prepare`, statistics: rows per split, token-length histogram (numbers and PNG)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runners.data.rows import Row, full_text
from runners.data.steps import words

BINS = 20


def length_stats(lengths: list[int]) -> dict[str, Any]:
    if not lengths:
        return {"count": 0}
    ordered = sorted(lengths)
    top = max(ordered)
    width = max(1, -(-top // BINS))
    edges = [i * width for i in range(BINS + 1)]
    counts = [0] * BINS
    for value in ordered:
        counts[min(value // width, BINS - 1)] += 1
    return {
        "count": len(ordered),
        "min": ordered[0],
        "max": top,
        "mean": round(statistics.fmean(ordered), 2),
        "p50": ordered[len(ordered) // 2],
        "p95": ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))],
        "total": sum(ordered),
        "histogram": {"edges": edges, "counts": counts},
    }


def token_lengths(
    splits: dict[str, list[Row]], fmt: str, count_tokens: Callable[[str], int] | None
) -> tuple[str, dict[str, list[int]]]:
    unit = "tokens" if count_tokens else "words"
    measure = count_tokens or (lambda text: len(words(text)))
    return unit, {name: [measure(full_text(r, fmt)) for r in rows] for name, rows in splits.items()}


def plot_histogram(lengths: dict[str, list[int]], unit: str, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 3.5), dpi=100)
    values = [v for vs in lengths.values() for v in vs]
    bins = min(BINS, max(1, len(set(values))))
    labels = [name for name, vs in lengths.items() if vs]
    axes.hist([lengths[name] for name in labels], bins=bins, stacked=True, label=labels)
    axes.set_xlabel(f"length ({unit})")
    axes.set_ylabel("rows")
    axes.set_title(title)
    if labels:
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, metadata={"Software": None})
    plt.close(figure)
