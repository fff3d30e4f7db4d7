"""Runner `inspect`, pictures: heatmap data for a web UI and the same as PNGs (matplotlib Agg).

Colour limits are robust (`robust_limits`): Tukey's far-out fences Q1 - 3 IQR and Q3 + 3 IQR
of the grid's values (in log10 for the norms: LOG_SCALE) when values beyond them would squeeze
the rest's colours more than GAP-fold, so one attention-sink column does not paint every
other cell the same colour; the cells outside ("clipped") are listed in the JSON, on the
PNG (marked x, the largest named under the title) and wherever the scan is shown.
"""

from __future__ import annotations

import math
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any

ORDER = [
    "input_layernorm",
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "post_attention_layernorm",
    "gate_proj",
    "up_proj",
    "down_proj",
]
MAX_COLUMNS = 2048
FENCE = 3.0  # IQRs beyond the quartiles where the colour scale stops
# Norms drawn on a log10 scale: they span orders of magnitude (an attention sink's hidden
# norm is 100x and more the other tokens'; norm vectors vs matrices).
LOG_SCALE = ("weight_norms", "activation_norms")
GAP = 4.0  # ... when the data's range is over GAP x the fences' range (else no clipping)
MAX_CLIPPED = 12  # clipped cells listed in the JSON (largest first); the count says the rest
PNG_CLIPPED = 3  # of those, named on the picture


def _column(row: dict[str, Any]) -> str:
    suffix = row["tensor"].rsplit(".", 1)[-1]
    return row["module"] if suffix == "weight" else f"{row['module']}.{suffix}"


def layer_module_grid(rows: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    """{"rows": layers, "cols": modules, "values": layers x modules (None where absent)}."""
    cells: dict[tuple[int, str], float] = {}
    for row in rows:
        value = row.get(key)
        if row.get("layer") is None or value is None:
            continue
        cells[(row["layer"], _column(row))] = float(value)
    if not cells:
        return None
    layers = sorted({layer for layer, _ in cells})
    names = {col for _, col in cells}
    cols = [c for c in ORDER if c in names] + sorted(names - set(ORDER))
    values = [[cells.get((layer, col)) for col in cols] for layer in layers]
    return {"rows": layers, "cols": cols, "values": values, "value": key}


def _quantile(ordered: list[float], q: float) -> float:
    """Linear-interpolated quantile of a sorted non-empty list (numpy's default rule)."""
    pos = q * (len(ordered) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def robust_limits(grid: dict[str, Any], log: bool = False) -> dict[str, Any]:
    """Colour limits of a grid that one outlier cannot stretch: the far-out fences
    [Q1 - FENCE * IQR, Q3 + FENCE * IQR] of its values (log10 of the positive ones when
    `log`), never beyond the values' own range; the full range instead when it is at most
    GAP x the fences' (outliers that would squeeze the rest's colours only a little, like
    layer norms next to matrices) or the fences meet (IQR 0: most cells equal).
    Returns {"vmin", "vmax", "log", "clipped": the cells outside, largest deviation first
    (at most MAX_CLIPPED: row, col, value and the cell's indices i, j), "clipped_count"};
    vmin and vmax are in the colour scale's units (log10 when `log`)."""
    cells: list[tuple[float, Any, Any, float, int, int]] = []  # scaled, row, col, raw, i, j
    nested = bool(grid["cols"]) and isinstance(grid["cols"][0], list)  # per-row columns
    for i, row in enumerate(grid["values"]):
        for j, value in enumerate(row):
            if value is None or not math.isfinite(value) or (log and value <= 0):
                continue
            col = grid["cols"][i][j] if nested else grid["cols"][j]
            scaled = math.log10(value) if log else float(value)
            cells.append((scaled, grid["rows"][i], col, float(value), i, j))
    if not cells:
        return {"vmin": None, "vmax": None, "log": log, "clipped": [], "clipped_count": 0}
    ordered = sorted(c[0] for c in cells)
    q1, q3 = _quantile(ordered, 0.25), _quantile(ordered, 0.75)
    iqr = q3 - q1
    vmin = max(ordered[0], q1 - FENCE * iqr)
    vmax = min(ordered[-1], q3 + FENCE * iqr)
    if vmax - vmin <= 0 or ordered[-1] - ordered[0] <= GAP * (vmax - vmin):
        # A constant bulk (its cells all look alike anyway: the rest is the picture), or
        # outliers that squeeze the bulk's colours less than GAP-fold: the data's own range.
        vmin, vmax = ordered[0], ordered[-1]
    outside = [c for c in cells if c[0] > vmax or c[0] < vmin]
    outside.sort(key=lambda c: -max(c[0] - vmax, vmin - c[0]))
    return {
        "vmin": vmin,
        "vmax": vmax,
        "log": log,
        "clipped": [
            {"row": r, "col": c, "value": v, "i": i, "j": j}
            for _, r, c, v, i, j in outside[:MAX_CLIPPED]
        ],
        "clipped_count": len(outside),
    }


def clipped_text(limits: dict[str, Any], listed: int = MAX_CLIPPED) -> str:
    """One line naming the cells outside the colour scale ("" when none)."""
    cells = limits.get("clipped") or []
    if not cells:
        return ""
    unit = (lambda v: f"{10**v:.4g}") if limits.get("log") else (lambda v: f"{v:.4g}")
    names = ", ".join(
        ("layer " if isinstance(c["row"], int) else "")
        + f"{c['row']} x {c['col']!r} = {c['value']:.4g}"
        for c in cells[:listed]
    )
    more = limits["clipped_count"] - min(listed, len(cells))
    return (
        f"{limits['clipped_count']} cell(s) outside the colour scale "
        f"[{unit(limits['vmin'])}, {unit(limits['vmax'])}]: {names}"
        + (f" and {more} more" if more > 0 else "")
    )


def heatmaps(
    weights: list[dict[str, Any]], deltas: list[dict[str, Any]], activations: dict[str, Any] | None
) -> dict[str, Any]:
    """All heatmaps as plain data (the JSON a web UI draws), each with its robust colour
    limits and clipped cells ("limits", with "text": the clipped cells in one line)."""
    maps = _heatmaps(weights, deltas, activations)
    for name, grid in maps.items():
        if name != "top_neurons":
            limits = robust_limits(grid, log=name in LOG_SCALE)
            grid["limits"] = {**limits, "text": clipped_text(limits)}
    return maps


def _heatmaps(
    weights: list[dict[str, Any]], deltas: list[dict[str, Any]], activations: dict[str, Any] | None
) -> dict[str, Any]:
    maps: dict[str, Any] = {}
    norms = layer_module_grid(weights, "frobenius")
    if norms:
        maps["weight_norms"] = norms
    change = layer_module_grid(deltas, "relative_change")
    if change:
        maps["weight_change"] = change
    if activations:
        norms0 = activations["hidden_norms"][0]
        maps["activation_norms"] = {
            "rows": ["embeddings", *range(len(norms0) - 1)],
            "cols": activations["tokens"],
            "values": norms0,
            "value": "hidden-state L2 norm, first probe",
        }
        maps["top_neurons"] = {
            "rows": [layer["layer"] for layer in activations["mlp"]],
            "cols": [[n["neuron"] for n in layer["top_neurons"]] for layer in activations["mlp"]],
            "values": [
                [n["max_abs"] for n in layer["top_neurons"]] for layer in activations["mlp"]
            ],
            "value": "max |activation| of each layer's top neurons (cols: neuron ids per row)",
        }
    return maps


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _grid_png(
    grid: dict[str, Any], title: str, path: Path, log: bool = False
) -> tuple[float, float]:
    """A layers x columns heatmap, coloured within the grid's robust limits; clipped cells
    are marked x and the largest named under the title. Returns the colour limits drawn."""
    import numpy as np

    data = np.array(
        [[math.nan if v is None else v for v in row] for row in grid["values"]], dtype=float
    )
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            data = np.log10(np.where(data > 0, data, np.nan))
    limits = grid.get("limits") or robust_limits(grid, log)
    fig = _figure(max(5.0, 0.6 * len(grid["cols"]) + 2), max(3.0, 0.25 * len(grid["rows"]) + 1.5))
    ax = fig.add_subplot()
    image = ax.imshow(
        data,
        aspect="auto",
        cmap="viridis",
        interpolation="nearest",
        vmin=limits["vmin"],
        vmax=limits["vmax"],
    )
    ax.set_xticks(
        range(len(grid["cols"])),
        [str(c) for c in grid["cols"]],
        rotation=60,
        ha="right",
        fontsize=7,
    )
    step = max(1, len(grid["rows"]) // 32)
    ax.set_yticks(
        range(0, len(grid["rows"]), step), [str(r) for r in grid["rows"]][::step], fontsize=7
    )
    ax.set_ylabel("layer")
    note = clipped_text(limits, PNG_CLIPPED)
    if note:
        for cell in limits["clipped"]:
            ax.text(cell["j"], cell["i"], "x", ha="center", va="center", color="red", fontsize=7)
        title += "\n" + "\n".join(textwrap.wrap("x = " + note, 110))
    ax.set_title(title, fontsize=8)
    extend = {(False, False): "neither", (True, False): "min", (False, True): "max"}.get(
        (
            any(c["value"] < _raw(limits["vmin"], log) for c in limits["clipped"]),
            any(c["value"] > _raw(limits["vmax"], log) for c in limits["clipped"]),
        ),
        "both",
    )
    fig.colorbar(
        image, ax=ax, extend=extend, label=("log10 " if log else "") + grid.get("value", "")
    )
    fig.savefig(path)
    low, high = image.get_clim()
    return float(low), float(high)


def _raw(scaled: float | None, log: bool) -> float:
    if scaled is None:
        return math.nan
    return 10**scaled if log else scaled


def _neuron_png(neuron_max: list[list[float]], path: Path) -> None:
    import numpy as np

    data = np.array(neuron_max, dtype=float)
    if data.shape[1] > MAX_COLUMNS:  # max-pool neighbouring neurons so the picture stays small
        factor = math.ceil(data.shape[1] / MAX_COLUMNS)
        pad = factor * MAX_COLUMNS - data.shape[1]
        data = np.pad(data, ((0, 0), (0, pad))).reshape(data.shape[0], -1, factor).max(axis=2)
    fig = _figure(10, max(3.0, 0.25 * data.shape[0] + 1.5))
    ax = fig.add_subplot()
    image = ax.imshow(np.log10(data + 1e-6), aspect="auto", cmap="magma", interpolation="nearest")
    ax.set_xlabel("MLP neuron")
    ax.set_ylabel("layer")
    ax.set_title("max |activation| over probe tokens (log10)", fontsize=9)
    fig.colorbar(image, ax=ax)
    fig.savefig(path)


def _histograms_png(weights: list[dict[str, Any]], path: Path) -> None:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in weights:
        if row.get("histogram", {}).get("counts"):
            key = _column(row) if row["layer"] is not None else row["module"]
            groups[key].append(row)
    names = [c for c in ORDER if c in groups] + sorted(set(groups) - set(ORDER))
    names = names[:16]
    cols = 4
    nrows = max(1, math.ceil(len(names) / cols))
    fig = _figure(12, 2.4 * nrows)
    cmap = None
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    for i, name in enumerate(names):
        ax = fig.add_subplot(nrows, cols, i + 1)
        rows = groups[name]
        for j, row in enumerate(rows):
            hist = row["histogram"]
            colour = cmap(j / max(1, len(rows) - 1))
            ax.stairs(
                [max(c, 0.5) for c in hist["counts"]], hist["edges"], color=colour, linewidth=0.8
            )
        ax.set_yscale("log")
        ax.set_title(f"{name} ({len(rows)} tensors)", fontsize=8)
        ax.tick_params(labelsize=6)
    fig.suptitle("weight histograms (colour: layer, dark = first)", fontsize=9)
    fig.savefig(path)


def write_pngs(
    out: Path,
    maps: dict[str, Any],
    weights: list[dict[str, Any]],
    activations: dict[str, Any] | None,
) -> dict[str, str]:
    """Write every picture into `out`; return {name: filename}."""
    images: dict[str, str] = {}
    if "weight_norms" in maps:
        _grid_png(
            maps["weight_norms"],
            "Frobenius norm per layer and module",
            out / "weight_norms.png",
            log=True,
        )
        images["weight_norms"] = "weight_norms.png"
    if "weight_change" in maps:
        _grid_png(
            maps["weight_change"], "relative change ||W - W0|| / ||W0||", out / "weight_change.png"
        )
        images["weight_change"] = "weight_change.png"
    _histograms_png(weights, out / "weight_histograms.png")
    images["weight_histograms"] = "weight_histograms.png"
    if activations:
        grid = maps["activation_norms"]
        _grid_png(
            grid,
            f"hidden-state norm per token: {activations['probes'][0][:60]!r}",
            out / "activation_norms.png",
            log=True,
        )
        images["activation_norms"] = "activation_norms.png"
        _neuron_png(activations["neuron_max"], out / "top_neurons.png")
        images["top_neurons"] = "top_neurons.png"
    return images
