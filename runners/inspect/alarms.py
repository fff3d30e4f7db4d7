"""Runner `inspect`, alarms: rules over the scan's rows, each with a reason and a hint.

Rules (each alarm is {"severity", "kind", "tensor", "layer", "module", "reason", "hint",
"phenomenon", "layers"}):
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
  |value| on a probe, one alarm per (dimension, token) listing the layers it spans. Normal
  at a few dimensions in many pretrained LLMs (attention sinks), so with a base probed on
  the same prompts, one the base has at the same spot within SIMILAR_FACTOR of the size is
  context, not an alarm.
- dead_neurons (warning): MLP neurons never active (|act| <= eps on every probe token) above
  dead_fraction of a layer; one alarm for all such layers; layers where the base has as
  many (within DEAD_MARGIN) are context.
- weightwatcher_alpha (warning): a layer's power-law alpha outside [2, 6].
Alarms of one kind, module and severity in several layers are one alarm (`group_alarms`);
the list is ordered errors first, then by size ("magnitude").
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
SIMILAR_FACTOR = 2.0  # a base condition within this factor of the fine-tune's is context
DEAD_MARGIN = 0.1  # dead neurons count as new when the fraction exceeds the base's by this


@dataclass
class AlarmOptions:
    spread_k: float = 6.0
    dead_fraction: float = 0.5
    alpha_range: tuple[float, float] = (2.0, 6.0)
    similar: float = SIMILAR_FACTOR


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


def _ratio(hit: dict[str, Any]) -> float:
    return math.inf if hit.get("ratio") is None else float(hit["ratio"])


def _spans(layers: list[int]) -> str:
    """[1, 2, 3, 7] -> "1-3, 7"."""
    runs: list[list[int]] = []
    for layer in sorted(set(layers)):
        if runs and runs[-1][1] == layer - 1:
            runs[-1][1] = layer
        else:
            runs.append([layer, layer])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def massive_groups(hits: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Massive activations grouped by phenomenon, one per (dim, token): the layers it spans,
    its largest hit ("peak") and, where the base was probed at the same points, the base's
    largest ratio there ("base_ratio"; None when the base was not compared)."""
    groups: dict[tuple[int, str], dict[str, Any]] = {}
    for hit in hits:
        key = (hit["dim"], hit["token"])
        group = groups.setdefault(
            key, {"dim": hit["dim"], "token": hit["token"], "layers": [], "peak": hit}
        )
        group["layers"].append(hit["layer"])
        if _ratio(hit) > _ratio(group["peak"]):
            group["peak"] = hit
        if "base_ratio" in hit:
            base = hit["base_ratio"]
            seen = group.get("base_ratio")
            group["base_ratio"] = base if seen is None or (base or 0.0) > seen else seen
    for group in groups.values():
        group["layers"] = sorted(set(group["layers"]))
    return sorted(groups.values(), key=lambda g: (-_ratio(g["peak"]), g["dim"], g["token"]))


def _massive_text(group: dict[str, Any]) -> str:
    peak = group["peak"]
    size = "inf" if peak.get("ratio") is None else f"{peak['ratio']:.3g}"
    return (
        f"dim {group['dim']} on token {group['token']!r}: up to {size}x the layer's median "
        f"|value| (layer {peak['layer']}, value {peak['value']:.4g}), in layers "
        f"{_spans(group['layers'])}"
    )


def _phenomenon(kind: str, *parts: Any) -> str:
    return ":".join([kind, *(str(p) for p in parts)])


def activation_alarms(
    activations: dict[str, Any] | None,
    dead_fraction: float,
    base: dict[str, Any] | None = None,
    similar: float = SIMILAR_FACTOR,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(alarms, context) from the probes: one per phenomenon, not per layer. With the base's
    activations on the same probes, a massive activation the base has at a similar size
    (within `similar`x) or dead neurons it has as much are context, not alarms."""
    if not activations:
        return [], []
    alarms: list[dict[str, Any]] = []
    context: list[dict[str, Any]] = []
    _massive_alarms(activations, base, similar, alarms, context)
    if base is not None:
        context += _base_only_massive(activations, base)
    _dead_neuron_alarms(activations, base, dead_fraction, alarms, context)
    return alarms, context


def _massive_alarms(
    activations: dict[str, Any],
    base: dict[str, Any] | None,
    similar: float,
    alarms: list[dict[str, Any]],
    context: list[dict[str, Any]],
) -> None:
    """A massive activation per (dim, token) group: an alarm, or context when the base has
    it at a similar size."""
    ratio = activations["options"]["massive_ratio"]
    for group in massive_groups(activations["massive"]):
        key = _phenomenon("massive_activation", group["dim"], group["token"])
        text = _massive_text(group)
        peak = _ratio(group["peak"])
        found = alarm(
            "warning",
            "massive_activation",
            f"massive activation: {text}",
            "many pretrained LLMs have a few such dimensions (attention sinks): scan against "
            "the base with the same probes; if the base lacks it, the fine-tune destabilised "
            "these layers",
            None,
            group["layers"][0],
            None,
        )
        found.update(phenomenon=key, layers=group["layers"], dim=group["dim"], token=group["token"])
        found["magnitude"] = peak if math.isfinite(peak) else 1e300
        if base is None:
            alarms.append(found)
            continue
        base_ratio = group.get("base_ratio")
        found["base_ratio"] = base_ratio
        if base_ratio is not None and peak <= similar * base_ratio:
            context.append(
                {**found, "reason": f"in the base too, at up to {base_ratio:.3g}x: {text}"}
            )
            continue
        if base_ratio is not None and base_ratio > ratio:
            found["reason"] = f"massive activation grew from {base_ratio:.3g}x in the base: {text}"
        else:
            was = f"{base_ratio:.3g}x" if base_ratio is not None else "not measured"
            found["reason"] = f"new massive activation (base at the same spot: {was}): {text}"
        found["hint"] = (
            "the base does not have this: the fine-tune made one hidden dimension explode on "
            "this token; check the learning rate, gradient clipping and the data with this token"
        )
        alarms.append(found)


def _base_only_massive(activations: dict[str, Any], base: dict[str, Any]) -> list[dict[str, Any]]:
    """The base's massive activations the fine-tune no longer has (context)."""
    ratio = activations["options"]["massive_ratio"]
    context: list[dict[str, Any]] = []
    tuned_keys = {(g["dim"], g["token"]) for g in massive_groups(activations["massive"])}
    for group in massive_groups(base.get("massive") or []):
        if (group["dim"], group["token"]) in tuned_keys:
            continue
        context.append(
            {
                **alarm(
                    "info",
                    "massive_activation",
                    f"in the base only (below {ratio:g}x after fine-tuning): "
                    + _massive_text(group),
                    "",
                    None,
                    group["layers"][0],
                    None,
                ),
                "phenomenon": _phenomenon("massive_activation", group["dim"], group["token"]),
                "layers": group["layers"],
            }
        )
    return context


def _dead_neuron_alarms(
    activations: dict[str, Any],
    base: dict[str, Any] | None,
    dead_fraction: float,
    alarms: list[dict[str, Any]],
    context: list[dict[str, Any]],
) -> None:
    """Layers with dead MLP neurons: an alarm when the base has fewer, context otherwise."""
    base_dead = {m["layer"]: m["never_active_fraction"] for m in (base or {}).get("mlp", [])}
    dead = [m for m in activations["mlp"] if m["never_active_fraction"] > dead_fraction]
    new = [
        m
        for m in dead
        if base is None or m["never_active_fraction"] > base_dead.get(m["layer"], 0.0) + DEAD_MARGIN
    ]
    old = [m for m in dead if m not in new]
    for rows, into in ((new, alarms), (old, context)):
        if not rows:
            continue
        worst = max(rows, key=lambda m: m["never_active_fraction"])
        layers = [m["layer"] for m in rows]
        found = alarm(
            "warning",
            "dead_neurons",
            f"dead MLP neurons in layers {_spans(layers)}: up to "
            f"{worst['never_active_fraction']:.0%} of {worst['neurons']} never active on the "
            f"probes (layer {worst['layer']})"
            + ("" if into is alarms else "; the base has as many"),
            "add more varied probes to confirm; dead neurons after a fine-tune point to "
            "a too-high learning rate or heavy weight decay",
            None,
            layers[0],
            "mlp",
        )
        found.update(
            phenomenon=_phenomenon("dead_neurons"),
            layers=layers,
            magnitude=worst["never_active_fraction"],
        )
        into.append(found)


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


def group_alarms(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One alarm per phenomenon: alarms of the same kind, module and severity in several
    layers (a norm outlier in every layer's q_proj) become one that lists the layers."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for item in found:
        key = item.get("phenomenon") or _phenomenon(
            item["kind"], item.get("module") or item.get("tensor") or "", item["severity"]
        )
        groups[key].append({**item, "phenomenon": key})
    out = []
    for key, items in groups.items():
        first = items[0]
        if len(items) == 1:
            layers = first.get("layers") or ([first["layer"]] if first["layer"] is not None else [])
            out.append({**first, "layers": layers})
            continue
        layers = sorted({i["layer"] for i in items if i["layer"] is not None})
        reasons = "; ".join(i["reason"] for i in items[:3])
        more = f"; and {len(items) - 3} more" if len(items) > 3 else ""
        out.append(
            {
                **first,
                "phenomenon": key,
                "layers": layers,
                "count": len(items),
                "reason": f"{len(items)} layers ({_spans(layers)}): {reasons}{more}",
                "magnitude": max(i.get("magnitude") or 0.0 for i in items),
            }
        )
    return out


SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


def all_alarms(
    weights: list[dict[str, Any]],
    deltas: list[dict[str, Any]],
    base_norms: dict[str, float] | None,
    activations: dict[str, Any] | None,
    weightwatcher: dict[str, Any],
    options: AlarmOptions,
    base_activations: dict[str, Any] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(alarms, context): every alarm once per phenomenon, errors first, then by size; and
    what the base has as well (context, not alarms)."""
    probe_alarms, context = activation_alarms(
        activations, options.dead_fraction, base_activations, options.similar
    )
    found = [
        *nonfinite_alarms(weights),
        *norm_alarms(weights, base_norms, options.spread_k),
        *concentration_alarms(deltas),
        *probe_alarms,
        *weightwatcher_alarms(weightwatcher, options.alpha_range),
    ]
    grouped = group_alarms(found)
    grouped.sort(key=lambda a: (SEVERITY_ORDER.get(a["severity"], 3), -(a.get("magnitude") or 0)))
    return grouped, context
