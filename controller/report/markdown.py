"""Report, pull request: the plan, metric tables, curves, dataset and deployment changes as
Markdown (pure: everything it shows is passed in)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from controller.plan.address import Address
from controller.plan.types import ActionKind, Plan
from controller.state.lockfile import (
    DatasetOutputs,
    DeploymentOutputs,
    EvaluationOutputs,
    ExperimentOutputs,
    LockEntry,
    ModelOutputs,
)

MARKER = "<!-- llmops-report -->"
SPARKS = "▁▂▃▄▅▆▇█"


@dataclass(frozen=True)
class Curve:
    """A run's loss per step and where its image is (relative to the report)."""

    losses: list[float]
    image: str | None = None
    blob: str | None = None


@dataclass
class ReportInputs:
    base: str
    head: str
    plan: Plan
    base_lock: Mapping[str, LockEntry]
    head_lock: Mapping[str, LockEntry]
    desired: Mapping[str, str]  # address -> desired digest
    curves: Mapping[str, Curve] = field(default_factory=dict)
    dataset_diffs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    deployments: Mapping[str, str] = field(default_factory=dict)  # address -> model ref
    manifest_diffs: Mapping[str, str] = field(default_factory=dict)  # address -> unified diff


@dataclass(frozen=True)
class GateOutcome:
    evaluation: str
    suite: str
    name: str  # "task/metric rule"
    passed: bool
    detail: str


def sparkline(values: list[float], width: int = 24) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return ""
    if len(finite) > width:  # evenly spaced samples, always keeping the last
        step = (len(finite) - 1) / (width - 1)
        finite = [finite[round(i * step)] for i in range(width)]
    low, high = min(finite), max(finite)
    span = high - low or 1.0
    return "".join(SPARKS[min(7, int((v - low) / span * 7.999))] for v in finite)


def fmt(value: Any, signed: bool = False) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "–" if value is None else str(value)
    if not math.isfinite(value):
        return str(value)
    text = f"{value:+.4g}" if signed else f"{value:.4g}"
    return text


def applied(inputs: ReportInputs, address: str) -> LockEntry | None:
    """The head lock's entry when it records the desired digest (this branch's result)."""
    entry = inputs.head_lock.get(address)
    if entry is not None and entry.digest == inputs.desired.get(address):
        return entry
    return None


def _of_kind(inputs: ReportInputs, kind: str) -> list[str]:
    return sorted(a for a in inputs.desired if Address.parse(a).kind == kind)


def gate_outcomes(inputs: ReportInputs) -> list[GateOutcome]:
    out = []
    for address in _of_kind(inputs, "Evaluation"):
        entry = applied(inputs, address)
        if entry is None or not isinstance(entry.outputs, EvaluationOutputs):
            continue
        outputs = entry.outputs
        for name, verdict in sorted(outputs.gates.items()):
            out.append(GateOutcome(address, outputs.suite, name, verdict.passed, verdict.detail))
    return out


def _plan_section(inputs: ReportInputs) -> list[str]:
    the_plan = inputs.plan
    counts = the_plan.counts()
    changed = [a for a in the_plan.actions if a.kind != ActionKind.NOOP]
    summary = ", ".join(f"{n} {k}" for k, n in counts.items() if n and k != "noop")
    lines = [
        "### Plan",
        "",
        f"{summary or 'no changes'}; {counts.get('noop', 0)} unchanged "
        f"(specs of `{inputs.head}` against the lock file of `{inputs.base}`).",
        "",
    ]
    if not changed:
        return lines
    lines += ["| action | resource | reason | applied here |", "|---|---|---|---|"]
    for action in changed:
        reason = action.reason.replace("|", "\\|").replace("\n", "; ")
        done = (
            "yes"
            if applied(inputs, action.address)
            else ("–" if action.kind == ActionKind.DELETE else "not yet")
        )
        lines.append(f"| {action.kind} | `{action.address}` | {reason} | {done} |")
    return [*lines, ""]


def _evaluation_section(inputs: ReportInputs) -> list[str]:
    lines: list[str] = []
    for address in _of_kind(inputs, "Evaluation"):
        entry = applied(inputs, address)
        if entry is None or not isinstance(entry.outputs, EvaluationOutputs):
            continue
        base_entry = inputs.base_lock.get(address)
        if base_entry is not None and base_entry.digest == entry.digest:
            continue  # unchanged by this pull request
        outputs = entry.outputs
        gates = outputs.gates
        title = f"#### `{address}`: {outputs.subject}"
        if outputs.baseline:
            title += f" against {outputs.baseline}"
        lines += [title, "", f"Suite `{outputs.suite}`.", ""]
        comparison = outputs.comparison
        if comparison:
            lines += [
                "| metric | baseline | candidate | difference | 95% interval | gate |",
                "|---|---:|---:|---:|---|---|",
            ]
            for row in comparison:
                verdicts = [
                    ("✅ " if v.passed else "❌ ") + name.split(" ", 1)[1]
                    for name, v in sorted(gates.items())
                    if name.split(" ", 1)[0] == row.metric
                ]
                lines.append(
                    f"| {row.metric} | {fmt(row.baseline)} | {fmt(row.candidate)} | "
                    f"{fmt(row.difference, True)} | "
                    f"[{fmt(row.low, True)}, {fmt(row.high, True)}] | "
                    f"{'<br>'.join(verdicts) or '–'} |"
                )
        else:
            lines += ["| metric | value |", "|---|---:|"]
            for metric, value in sorted(outputs.metrics.items()):
                lines.append(f"| {metric} | {fmt(value)} |")
        failed = outputs.failed_gates
        if gates:
            lines += [
                "",
                f"Gates: {len(gates) - len(failed)} passed, {len(failed)} failed"
                + (f" ({', '.join(failed)})." if failed else "."),
            ]
        before = base_entry.outputs if base_entry is not None else None
        if isinstance(before, EvaluationOutputs) and before.metrics:
            shared = sorted(set(before.metrics) & set(outputs.metrics))[:6]
            if shared:
                changes = ", ".join(
                    f"{m} {fmt(before.metrics[m])} → {fmt(outputs.metrics[m])}" for m in shared
                )
                lines += ["", f"On `{inputs.base}` ({before.subject}): {changes}."]
        lines.append("")
    return ["### Evaluations", "", *lines] if lines else []


def _training_section(inputs: ReportInputs) -> list[str]:
    rows, images = [], []
    for address in _of_kind(inputs, "Experiment"):
        entry = applied(inputs, address)
        base_entry = inputs.base_lock.get(address)
        if entry is None or not isinstance(entry.outputs, ExperimentOutputs):
            continue
        if base_entry is not None and base_entry.digest == entry.digest:
            continue
        outputs = entry.outputs
        metrics = outputs.metrics
        curve = inputs.curves.get(address)
        rows.append(
            f"| `{address}` | {outputs.version or '–'} | {fmt(metrics.get('steps'))} | "
            f"{fmt(metrics.get('final_loss'))} | {fmt(metrics.get('final_eval_loss'))} | "
            f"{sparkline(curve.losses) if curve else '–'} |"
        )
        if curve and curve.image:
            where = f" (artifact store: `{curve.blob}`)" if curve.blob else ""
            images.append(f"![loss curves of {address}]({curve.image}){where}")
    if not rows:
        return []
    return [
        "### Training",
        "",
        "| run | registered | steps | final loss | final eval loss | loss curve |",
        "|---|---|---:|---:|---:|---|",
        *rows,
        "",
        *images,
        *([""] if images else []),
    ]


def _dataset_section(inputs: ReportInputs) -> list[str]:
    rows = []
    for address in _of_kind(inputs, "Dataset"):
        entry = applied(inputs, address)
        base_entry = inputs.base_lock.get(address)
        if entry is None or not isinstance(entry.outputs, DatasetOutputs):
            continue
        if base_entry is not None and base_entry.digest == entry.digest:
            continue
        after = entry.outputs
        before = base_entry.outputs if base_entry is not None else DatasetOutputs()
        assert isinstance(before, DatasetOutputs)
        splits = after.rows
        old_splits = before.rows
        sizes = " / ".join(
            f"{name} {old_splits.get(name, 0)} → {count}" if old_splits else f"{name} {count}"
            for name, count in splits.items()
        )
        diff = inputs.dataset_diffs.get(address) or {}
        change = (
            f"+{diff['added']} −{diff['removed']} ~{diff['changed']}"
            if diff
            else ("new" if base_entry is None else "–")
        )
        removed = ", ".join(f"{k} {v}" for k, v in sorted(after.removed.items()))
        short = after.version[7:19]
        old_short = before.version[7:19]
        rows.append(
            f"| `{address}` | {old_short or '–'} → {short} | {sizes} | {change} | "
            f"{removed or '–'} |"
        )
    if not rows:
        return []
    return [
        "### Datasets",
        "",
        "| dataset | version | rows | rows added/removed/changed | dropped by steps |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ]


def _deployment_section(inputs: ReportInputs) -> list[str]:
    rows = []
    for action in inputs.plan.actions:
        if action.resource_kind != "Deployment" or action.kind == ActionKind.NOOP:
            continue
        entry = inputs.base_lock.get(action.address)
        before = entry.outputs if entry is not None else DeploymentOutputs()
        assert isinstance(before, DeploymentOutputs)
        rows.append(
            f"| `{action.address}` | {action.kind} | {before.version or '–'} | "
            f"{_after_merge(inputs, action.address)} | {before.target or '–'} |"
        )
    if not rows:
        return []
    details = []
    for action in inputs.plan.actions:
        if action.resource_kind != "Deployment" or action.kind == ActionKind.NOOP:
            continue
        changes = [c for c in action.changes if c.startswith("spec ")]
        if changes:
            details += [f"`{action.address}`: " + "; ".join(changes), ""]
        diff = inputs.manifest_diffs.get(action.address)
        if diff:
            details += [
                "<details><summary>KServe manifests</summary>",
                "",
                "```diff",
                diff.rstrip("\n"),
                "```",
                "",
                "</details>",
                "",
            ]
    return [
        "### Deployments",
        "",
        "Deployments roll out after merge, when `llmops apply` runs on the main branch.",
        "",
        "| deployment | action | serving now | after merge | target |",
        "|---|---|---|---|---|",
        *rows,
        "",
        *details,
    ]


def _after_merge(inputs: ReportInputs, address: str) -> str:
    """The version a deployment will serve: an alias is shown with what this branch moved it to."""
    ref = inputs.deployments.get(address)
    if not ref:
        return "as specified"
    name, _, selector = ref.partition("@")
    model = applied(inputs, str(Address("Model", name)))
    outputs = model.outputs if model is not None else None
    if selector and isinstance(outputs, ModelOutputs) and selector in outputs.aliases:
        return f"{ref} = {outputs.version}"
    return ref


def render_report(inputs: ReportInputs) -> str:
    gates = gate_outcomes(inputs)
    failed = [g for g in gates if not g.passed]
    verdict = (
        f"❌ {len(failed)} of {len(gates)} gate(s) failed"
        if failed
        else (f"✅ all {len(gates)} gate(s) passed" if gates else "no gates evaluated")
    )
    lines = [
        MARKER,
        f"## llmops: `{inputs.base}` → `{inputs.head}`",
        "",
        f"**{verdict}**",
        "",
        *_plan_section(inputs),
        *_evaluation_section(inputs),
        *_training_section(inputs),
        *_dataset_section(inputs),
        *_deployment_section(inputs),
    ]
    return "\n".join(lines).rstrip() + "\n"
