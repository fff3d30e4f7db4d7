"""Report, pull request: the plan, metric tables, curves, dataset and deployment changes as
Markdown (pure: everything it shows is passed in)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from controller.plan.types import ActionKind, Plan

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
    base_lock: Mapping[str, Any]
    head_lock: Mapping[str, Any]
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


def applied(inputs: ReportInputs, address: str) -> dict[str, Any] | None:
    """The head lock's entry when it records the desired digest (this branch's result)."""
    entry = inputs.head_lock.get(address)
    if entry and entry.get("digest") == inputs.desired.get(address):
        return entry
    return None


def gate_outcomes(inputs: ReportInputs) -> list[GateOutcome]:
    out = []
    for address in sorted(inputs.desired):
        if not address.startswith("Evaluation/"):
            continue
        entry = applied(inputs, address)
        if not entry:
            continue
        outputs = entry.get("outputs") or {}
        details = outputs.get("gate_details") or {}
        for name, verdict in sorted((outputs.get("gates") or {}).items()):
            out.append(
                GateOutcome(
                    address,
                    str(outputs.get("suite", "")),
                    name,
                    verdict == "pass",
                    str(details.get(name, "")),
                )
            )
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
    for address in sorted(inputs.desired):
        if not address.startswith("Evaluation/"):
            continue
        entry = applied(inputs, address)
        if entry is None:
            continue
        base_entry = inputs.base_lock.get(address)
        if base_entry and base_entry.get("digest") == entry.get("digest"):
            continue  # unchanged by this pull request
        outputs = entry.get("outputs") or {}
        gates = outputs.get("gates") or {}
        title = f"#### `{address}`: {outputs.get('subject')}"
        if outputs.get("baseline"):
            title += f" against {outputs['baseline']}"
        lines += [title, "", f"Suite `{outputs.get('suite')}`.", ""]
        comparison = outputs.get("comparison") or []
        if comparison:
            lines += [
                "| metric | baseline | candidate | difference | 95% interval | gate |",
                "|---|---:|---:|---:|---|---|",
            ]
            for row in comparison:
                metric = row["metric"]
                verdicts = [
                    ("✅ " if v == "pass" else "❌ ") + name.split(" ", 1)[1]
                    for name, v in sorted(gates.items())
                    if name.split(" ", 1)[0] == metric
                ]
                lines.append(
                    f"| {metric} | {fmt(row.get('baseline'))} | {fmt(row.get('candidate'))} | "
                    f"{fmt(row.get('difference'), True)} | "
                    f"[{fmt(row.get('low'), True)}, {fmt(row.get('high'), True)}] | "
                    f"{'<br>'.join(verdicts) or '–'} |"
                )
        else:
            lines += ["| metric | value |", "|---|---:|"]
            for metric, value in sorted((outputs.get("metrics") or {}).items()):
                lines.append(f"| {metric} | {fmt(value)} |")
        failed = sorted(n for n, v in gates.items() if v != "pass")
        if gates:
            lines += [
                "",
                f"Gates: {len(gates) - len(failed)} passed, {len(failed)} failed"
                + (f" ({', '.join(failed)})." if failed else "."),
            ]
        if base_entry and (base_entry.get("outputs") or {}).get("metrics"):
            before = base_entry["outputs"]
            shared = sorted(set(before["metrics"]) & set(outputs.get("metrics") or {}))[:6]
            if shared:
                changes = ", ".join(
                    f"{m} {fmt(before['metrics'][m])} → {fmt(outputs['metrics'][m])}"
                    for m in shared
                )
                lines += ["", f"On `{inputs.base}` ({before.get('subject')}): {changes}."]
        lines.append("")
    return ["### Evaluations", "", *lines] if lines else []


def _training_section(inputs: ReportInputs) -> list[str]:
    rows, images = [], []
    for address in sorted(inputs.desired):
        if not address.startswith("Experiment/"):
            continue
        entry = applied(inputs, address)
        base_entry = inputs.base_lock.get(address)
        if entry is None or (base_entry and base_entry.get("digest") == entry.get("digest")):
            continue
        outputs = entry.get("outputs") or {}
        metrics = outputs.get("metrics") or {}
        curve = inputs.curves.get(address)
        rows.append(
            f"| `{address}` | {outputs.get('version', '–')} | {fmt(metrics.get('steps'))} | "
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
    for address in sorted(inputs.desired):
        if not address.startswith("Dataset/"):
            continue
        entry = applied(inputs, address)
        base_entry = inputs.base_lock.get(address)
        if entry is None or (base_entry and base_entry.get("digest") == entry.get("digest")):
            continue
        after = entry.get("outputs") or {}
        before = (base_entry or {}).get("outputs") or {}
        splits = after.get("rows") or {}
        old_splits = before.get("rows") or {}
        sizes = " / ".join(
            f"{name} {old_splits.get(name, 0)} → {count}" if old_splits else f"{name} {count}"
            for name, count in splits.items()
        )
        diff = inputs.dataset_diffs.get(address) or {}
        change = (
            f"+{diff['added']} −{diff['removed']} ~{diff['changed']}"
            if diff
            else ("new" if not before else "–")
        )
        removed = ", ".join(f"{k} {v}" for k, v in sorted((after.get("removed") or {}).items()))
        short = (after.get("version") or "")[7:19]
        old_short = (before.get("version") or "")[7:19]
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
        if not action.address.startswith("Deployment/") or action.kind == ActionKind.NOOP:
            continue
        before = (inputs.base_lock.get(action.address) or {}).get("outputs") or {}
        rows.append(
            f"| `{action.address}` | {action.kind} | {before.get('version', '–')} | "
            f"{_after_merge(inputs, action.address)} | {before.get('target', '–')} |"
        )
    if not rows:
        return []
    details = []
    for action in inputs.plan.actions:
        if not action.address.startswith("Deployment/") or action.kind == ActionKind.NOOP:
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
    model = applied(inputs, f"Model/{name}")
    outputs = (model or {}).get("outputs") or {}
    if selector and selector in (outputs.get("aliases") or []):
        return f"{ref} = {outputs.get('version')}"
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
