"""Runner `evaluate`, comparison: paired bootstrap intervals, p-values, flips and gates."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from runners.evaluate.metrics import HIGHER_IS_BETTER, PERPLEXITIES

# One sample's contribution: (value, weight). A metric is sum(value)/sum(weight), except
# perplexities, which are exp(-sum(loglikelihood)/sum(units)).
Contribution = tuple[float, float]


def aggregate(metric: str, parts: Sequence[Contribution]) -> float:
    total = sum(w for _, w in parts)
    if not total:
        return float("nan")
    value = sum(v for v, _ in parts) / total
    if metric.split("/")[-1] not in PERPLEXITIES:
        return value
    return math.exp(-value) if -value < 700 else float("inf")  # beyond float range


@dataclass
class MetricComparison:
    metric: str  # "task/metric"
    baseline: float
    candidate: float
    difference: float
    low: float
    high: float
    p_value: float
    higher_is_better: bool
    candidate_low: float
    candidate_high: float
    flipped: dict[str, list[str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def paired_bootstrap(
    metric: str,
    baseline: dict[str, Contribution],
    candidate: dict[str, Contribution],
    samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> MetricComparison:
    """Resample the shared samples with replacement; the difference is candidate - baseline.

    The p-value is two-sided: how often the resampled difference falls on the other side of
    zero from the observed one (doubled), with the usual +1 correction.
    """
    ids = sorted(set(baseline) & set(candidate))
    if not ids:
        raise ValueError(f"{metric}: the two results share no samples")
    base_parts = [baseline[i] for i in ids]
    cand_parts = [candidate[i] for i in ids]
    observed_base = aggregate(metric, base_parts)
    observed_cand = aggregate(metric, cand_parts)
    observed = observed_cand - observed_base
    rng = random.Random(seed)
    n = len(ids)
    diffs, cands = [], []
    for _ in range(samples):
        picks = [rng.randrange(n) for _ in range(n)]
        b = aggregate(metric, [base_parts[i] for i in picks])
        c = aggregate(metric, [cand_parts[i] for i in picks])
        diffs.append(c - b)
        cands.append(c)
    diffs.sort()
    cands.sort()
    tail = (1 - confidence) / 2
    low, high = _quantile(diffs, tail), _quantile(diffs, 1 - tail)
    if observed == 0 and all(d == 0 for d in diffs):
        p_value = 1.0
    else:
        opposite = sum(1 for d in diffs if (d <= 0 if observed > 0 else d >= 0))
        p_value = min(1.0, 2 * (opposite + 1) / (samples + 1))
    flipped: dict[str, list[str]] = {"better": [], "worse": []}
    higher = HIGHER_IS_BETTER.get(metric.split("/")[-1], True)
    if metric.split("/")[-1] not in PERPLEXITIES:
        for i in ids:
            b, c = baseline[i][0], candidate[i][0]
            if b != c:
                flipped["better" if (c > b) == higher else "worse"].append(i)
    return MetricComparison(
        metric,
        observed_base,
        observed_cand,
        observed,
        low,
        high,
        p_value,
        higher,
        _quantile(cands, tail),
        _quantile(cands, 1 - tail),
        flipped,
    )


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    position = q * (len(sorted_values) - 1)
    lower = math.floor(position)
    upper = min(lower + 1, len(sorted_values) - 1)
    weight = position - lower
    return sorted_values[lower] * (1 - weight) + sorted_values[upper] * weight


@dataclass
class GateResult:
    metric: str
    rule: str
    passed: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def judge_gates(
    gates: Sequence[dict[str, Any]],
    comparisons: dict[str, MetricComparison],
    values: dict[str, float],
) -> list[GateResult]:
    """min/max on the candidate's confidence bound; max_drop and non-inferiority on the
    difference (max_drop on the point estimate, the margin on the interval's worse end).
    A 'drop' is a change in the worse direction: up for perplexity and latency."""
    out = []
    for gate in gates:
        name = gate["metric"]
        higher = HIGHER_IS_BETTER.get(name.split("/")[-1], True)
        comparison = comparisons.get(name)
        value = values.get(name)
        if gate.get("min") is not None:
            bound = comparison.candidate_low if comparison else value
            ok = bound is not None and bound >= gate["min"]
            out.append(
                GateResult(
                    name,
                    f"min {gate['min']:g}",
                    ok,
                    f"lower bound {_fmt(bound)} vs min {gate['min']:g}",
                )
            )
        if gate.get("max") is not None:
            bound = comparison.candidate_high if comparison else value
            ok = bound is not None and bound <= gate["max"]
            out.append(
                GateResult(
                    name,
                    f"max {gate['max']:g}",
                    ok,
                    f"upper bound {_fmt(bound)} vs max {gate['max']:g}",
                )
            )
        for key in ("max_drop", "non_inferiority_margin"):
            if gate.get(key) is None:
                continue
            if comparison is None:
                out.append(
                    GateResult(
                        name, f"{key} {gate[key]:g}", False, "needs a baseline to compare with"
                    )
                )
                continue
            if key == "max_drop":
                drop = -comparison.difference if higher else comparison.difference
                detail = f"change {comparison.difference:+.4g} (drop {drop:.4g})"
            else:
                drop = -comparison.low if higher else comparison.high
                detail = (
                    f"95% interval [{comparison.low:+.4g}, {comparison.high:+.4g}], "
                    f"worst drop {drop:.4g}"
                )
            out.append(
                GateResult(
                    name,
                    f"{key} {gate[key]:g}",
                    drop <= gate[key],
                    f"{detail} vs allowed {gate[key]:g}",
                )
            )
    return out


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"
