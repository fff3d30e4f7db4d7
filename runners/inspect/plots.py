"""Runner `inspect`, pictures: heatmap data for a web UI and the same as PNGs (matplotlib Agg)."""

from __future__ import annotations

import math
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


def heatmaps(
    weights: list[dict[str, Any]], deltas: list[dict[str, Any]], activations: dict[str, Any] | None
) -> dict[str, Any]:
    """All heatmaps as plain data (the JSON a web UI draws)."""
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


def _grid_png(grid: dict[str, Any], title: str, path: Path, log: bool = False) -> None:
    import numpy as np

    data = np.array(
        [[math.nan if v is None else v for v in row] for row in grid["values"]], dtype=float
    )
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            data = np.log10(np.where(data > 0, data, np.nan))
    fig = _figure(max(5.0, 0.6 * len(grid["cols"]) + 2), max(3.0, 0.25 * len(grid["rows"]) + 1.5))
    ax = fig.add_subplot()
    image = ax.imshow(data, aspect="auto", cmap="viridis", interpolation="nearest")
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
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label=("log10 " if log else "") + grid.get("value", ""))
    fig.savefig(path)


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
        )
        images["activation_norms"] = "activation_norms.png"
        _neuron_png(activations["neuron_max"], out / "top_neurons.png")
        images["top_neurons"] = "top_neurons.png"
    return images
