"""Runner `inspect`, alarms: rules over the scan's rows, each with a reason and a hint.

Rules (each alarm is {"severity", "kind", "tensor", "layer", "module", "reason", "hint"}):
- nonfinite (error): a tensor holds NaN or Inf.
- norm_outlier, without a base: for a module present in at least MIN_LAYERS layers,
  x = log ||W||_F; against the *other* layers' median c and spread
  s = max(1.4826 * MAD, SPREAD_FLOOR) (log units, so 0.05 is about 5 %), |x - c| > k * s:
  an error when the norm is above the others (exploding), a warning when below (pretrained
  models have such layers: SmolLM2-135M's layer 0 input_layernorm is 0.12x and its o_proj
  0.38x the other layers'). With a base: x = log(||W||_F / ||W0||_F) against the other
  layers' median change and spread (leave-one-out), |x - c| > k * s and |x| > k * s is an
  error either way
  ("x50" and "/50" alike); a change every layer shares is no alarm.
- delta_concentrated (warning): more than CONCENTRATED_MIN_LAYERS layers changed and one
  holds more than CONCENTRATED_SHARE of the total delta energy sum ||W - W0||_F^2.
- massive_activation (warning): a hidden value above massive_ratio x its layer's median
  |value| on a probe (normal at a few dimensions in many pretrained LLMs: compare with base).
- dead_neurons (warning): a layer's MLP neurons never active (|act| <= eps on every probe
  token) above dead_fraction.
- weightwatcher_alpha (warning): a layer's power-law alpha outside [2, 6].
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

SPREAD_FLOOR = 0.05
MIN_LAYERS = 4
CONCENTRATED_SHARE = 0.5
CONCENTRATED_MIN_LAYERS = 3


@dataclass
class AlarmOptions:
    spread_k: float = 6.0
    dead_fraction: float = 0.5
    alpha_range: tuple[float, float] = (2.0, 6.0)


def alarm(
    severity: str,
    kind: str,
    reason: str,
    hint: str,
    tensor: str | None = None,
    layer: int | None = None,
    module: str | None = None,
) -> dict[str, Any]:
    return {
        "severity": severity,
        "kind": kind,
        "tensor": tensor,
        "layer": layer,
        "module": module,
        "reason": reason,
        "hint": hint,
    }


def _spread(values: list[float]) -> tuple[float, float]:
    centre = statistics.median(values)
    mad = statistics.median(abs(v - centre) for v in values)
    return centre, max(1.4826 * mad, SPREAD_FLOOR)


def nonfinite_alarms(weights: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for row in weights:
        if row.get("nonfinite"):
            out.append(
                alarm(
                    "error",
                    "nonfinite",
                    f"{row['tensor']} has {row['nonfinite']} NaN/Inf values",
                    "the checkpoint is broken: retrain from the last good checkpoint with a lower "
                    "learning rate or gradient clipping, or re-download the weights",
                    row["tensor"],
                    row["layer"],
                    row["module"],
                )
            )
    return out


def norm_alarms(
    weights: list[dict[str, Any]], base_norms: dict[str, float] | None, k: float
) -> list[dict[str, Any]]:
    """Norm outliers: across layers of the same module, or against the base's own tensor."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in weights:
        fro = row.get("frobenius")
        if row["layer"] is None or not fro or row.get("nonfinite"):
            continue
        suffix = row["tensor"].rsplit(".", 1)[-1]
        groups[(row["module"], suffix)].append(row)
    out = []
    for (module, _suffix), rows in sorted(groups.items()):
        if base_norms is not None:
            pairs = [(r, base_norms.get(r["tensor"])) for r in rows]
            logs = [(r, math.log(r["frobenius"] / b)) for r, b in pairs if b]
            if not logs:
                continue
            for i, (row, x) in enumerate(logs):
                # Against the other layers' change (leave-one-out): a fine-tune that moves
                # every layer alike is no alarm; one layer out of line is, even with 2 layers.
                others = [y for j, (_, y) in enumerate(logs) if j != i] or [0.0]
                centre, spread = _spread(others)
                # ... and out of line with its own base (else, with few layers, the one
                # unchanged layer would look odd next to the damaged one).
                if abs(x - centre) > k * spread and abs(x) > k * spread:
                    ratio = math.exp(x)
                    out.append(
                        alarm(
                            "error",
                            "norm_outlier",
                            f"layer {row['layer']} {module}: norm is {ratio:.3g}x the base's "
                            f"({row['frobenius']:.4g} vs {base_norms[row['tensor']]:.4g}); "
                            f"allowed spread {math.exp(k * spread):.3g}x (k={k:g})",
                            "the fine-tune blew up (or shrank) this weight: check the learning "
                            "rate, gradient clipping and the data of this run; compare its loss "
                            "curve",
                            row["tensor"],
                            row["layer"],
                            module,
                        )
                    )
            continue
        if len(rows) < MIN_LAYERS:
            continue
        logs_all = [math.log(r["frobenius"]) for r in rows]
        for i, row in enumerate(rows):
            others = logs_all[:i] + logs_all[i + 1 :]
            centre, spread = _spread(others)
            x = logs_all[i]
            if abs(x - centre) > k * spread:
                out.append(
                    alarm(
                        "error" if x > centre else "warning",
                        "norm_outlier",
                        f"layer {row['layer']} {module}: norm {row['frobenius']:.4g} is "
                        f"{math.exp(x - centre):.3g}x the median of the other layers' "
                        f"({math.exp(centre):.4g}); robust spread {math.exp(spread):.3g}x, k={k:g}",
                        "one layer's weights are out of line with the rest: compare with the base "
                        "model (--against BASE); if it is not in the base, the checkpoint is "
                        "damaged or the run diverged",
                        row["tensor"],
                        row["layer"],
                        module,
                    )
                )
    return out


def concentration_alarms(deltas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    energy: dict[int, float] = defaultdict(float)
    by_module: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for row in deltas:
        fro = row.get("delta_frobenius")
        if row.get("layer") is None or not fro:
            continue
        energy[row["layer"]] += fro * fro
        by_module[row["layer"]][row["module"]] += fro * fro
    total = sum(energy.values())
    if total <= 0 or len(energy) <= CONCENTRATED_MIN_LAYERS:
        return []
    layer, top = max(energy.items(), key=lambda item: item[1])
    share = top / total
    if share <= CONCENTRATED_SHARE:
        return []
    module = max(by_module[layer].items(), key=lambda item: item[1])[0]
    return [
        alarm(
            "warning",
            "delta_concentrated",
            f"layer {layer} holds {share:.0%} of the change against the base ({len(energy)} layers "
            f"changed), most of it in {module}",
            "a fine-tune usually spreads its change over layers: check this layer for damage "
            "(a NaN-guard, a bad merge) or confirm the run was meant to target it",
            None,
            layer,
            module,
        )
    ]


def activation_alarms(activations: dict[str, Any] | None, dead_fraction: float) -> list[dict]:
    if not activations:
        return []
    out = []
    ratio = activations["options"]["massive_ratio"]
    for hit in activations["massive"]:
        out.append(
            alarm(
                "warning",
                "massive_activation",
                f"layer {hit['layer']}: hidden value {hit['value']:.4g} at dim {hit['dim']} "
                f"on token {hit['token']!r} (probe {hit['prompt']}) is over {ratio:g}x the "
                f"layer's median |value| {hit['median_abs']:.3g}",
                "many pretrained LLMs have a few such dimensions (attention sinks): scan the base "
                "with the same probes; if it is new, the fine-tune destabilised this layer",
                None,
                hit["layer"],
                None,
            )
        )
    for layer in activations["mlp"]:
        if layer["never_active_fraction"] > dead_fraction:
            out.append(
                alarm(
                    "warning",
                    "dead_neurons",
                    f"layer {layer['layer']}: {layer['never_active_fraction']:.0%} of "
                    f"{layer['neurons']} MLP neurons never active on the probes",
                    "add more varied probes to confirm; dead neurons after a fine-tune point to "
                    "a too-high learning rate or heavy weight decay",
                    None,
                    layer["layer"],
                    "mlp",
                )
            )
    return out


def weightwatcher_alarms(result: dict[str, Any], alpha_range: tuple[float, float]) -> list[dict]:
    out = []
    lo, hi = alpha_range
    for row in result.get("layers", []):
        alpha = row.get("alpha")
        if alpha is None or lo <= alpha <= hi:
            continue
        out.append(
            alarm(
                "warning",
                "weightwatcher_alpha",
                f"{row.get('name')}: power-law alpha {alpha:.3g} outside [{lo:g}, {hi:g}]",
                "alpha < 2 suggests over-training of this layer, > 6 an under-trained or random "
                "one: compare with the base model",
                row.get("name"),
                row.get("layer"),
                row.get("module"),
            )
        )
    return out


def all_alarms(
    weights: list[dict[str, Any]],
    deltas: list[dict[str, Any]],
    base_norms: dict[str, float] | None,
    activations: dict[str, Any] | None,
    weightwatcher: dict[str, Any],
    options: AlarmOptions,
) -> list[dict[str, Any]]:
    """Every alarm, errors first."""
    found = [
        *nonfinite_alarms(weights),
        *norm_alarms(weights, base_norms, options.spread_k),
        *concentration_alarms(deltas),
        *activation_alarms(activations, options.dead_fraction),
        *weightwatcher_alarms(weightwatcher, options.alpha_range),
    ]
    return sorted(found, key=lambda a: a["severity"] != "error")
